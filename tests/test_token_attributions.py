"""Per-token attributions of a token-id model (issue 19): LayerIntegratedGradients on the embedding layer.

A bidirectional LSTM (``test_tokens.LSTMClassifier``) learns ``validation.data.token_sequences``:
the class is the majority of cue tokens (ids 1..20, five per class) among Zipf filler. Its
attributions must be faithful (deleting tokens in attribution order, i.e. replacing them by
the padding id, lowers the predicted-class probability faster than a random order, paired over
rows), must find the cue tokens, and must reach the HTML report as highlighted text.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import dlclinic
from dlclinic.core.case import Case
from dlclinic.core.inference import predict_logits
from dlclinic.functional.attribution import attribute_tokens, deletion_insertion, embedding_layer
from dlclinic.report import write_report
from helpers_browser import chromium_binary, load_page
from test_tokens import LSTMClassifier, _trained
from validation.data import token_sequences

N_TRAIN = 800


@pytest.fixture(scope="module")
def trained() -> tuple[LSTMClassifier, np.ndarray, np.ndarray]:
    """The LSTM trained on 800 rows (8 epochs, ~5 s on one core) and 400 held-out rows."""
    torch.set_num_threads(1)
    x, y = token_sequences(N_TRAIN + 400, seed=0)
    model = _trained(x[:N_TRAIN], y[:N_TRAIN], epochs=8)
    return model, x, y


@pytest.fixture(scope="module")
def explained(trained):
    """Attributions of the predicted class on 64 held-out rows, with their predictions."""
    model, x, _ = trained
    ids = x[N_TRAIN : N_TRAIN + 64]
    pred = predict_logits(model, ids).argmax(1)
    return ids, pred, attribute_tokens(model, ids, pred, n_steps=16)


def test_deleting_tokens_in_attribution_order_beats_a_random_order(trained, explained):
    model, _, _ = trained
    ids, pred, attrs = explained
    assert attrs.shape == ids.shape and np.all(attrs[ids == 0] == 0)  # padding gets nothing
    faith = deletion_insertion(model, ids, pred, attrs, baseline=0, fixed=ids == 0, seed=0)
    # measured: deletion AUC 0.14 vs random 0.55, paired gain 95 % CI +0.37..+0.45 (64 rows);
    # insertion 0.91 vs 0.56
    assert faith.deletion_gain_ci[0] > 0.1, faith
    assert faith.insertion_gain_ci[0] > 0.1, faith
    # the control: the reversed order deletes the evidence against the class first, so it is no better than random
    reverse = deletion_insertion(model, ids, pred, -attrs, baseline=0, fixed=ids == 0, seed=0)
    assert reverse.deletion_gain_ci[1] < 0, reverse


def test_cue_tokens_get_more_attribution_than_filler(explained):
    ids, pred, attrs = explained
    cue = (ids >= 1) & (ids <= 20)
    own_cue = cue & ((ids - 1) // 5 == pred[:, None])  # cues of the predicted class
    filler = ids > 20
    # measured: cue 1.03, own-class cue ~1.4, filler 0.016 (logit units)
    assert attrs[cue].mean() > 0.3 > 10 * abs(attrs[filler].mean()), (attrs[cue].mean(), attrs[filler].mean())
    assert attrs[own_cue].mean() > attrs[cue].mean()
    # per row, the most attributed token is a cue of the predicted class in most rows
    top = ids[np.arange(len(ids)), attrs.argmax(1)]
    assert np.mean((top >= 1) & (top <= 20) & ((top - 1) // 5 == pred)) > 0.7


def test_attributions_add_up_to_the_logit_change_as_steps_grow(trained, explained):
    """Completeness (Sundararajan et al., 2017): Σ tokens = logit(row) − logit(row with padding embeddings)."""
    model, _, _ = trained
    ids, pred, _ = explained
    ids, pred = ids[:16], pred[:16]
    rows = np.arange(len(ids))
    logit = predict_logits(model, ids)[rows, pred]
    hook = model.emb.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    try:
        start = predict_logits(model, ids)[rows, pred]
    finally:
        hook.remove()
    fine = attribute_tokens(model, ids, pred, n_steps=128).sum(1)
    assert np.mean(np.abs(fine - (logit - start))) < 0.1 * np.mean(np.abs(logit)), (fine, logit - start)


def test_embedding_layer_is_found_or_refused_in_one_line():
    model = LSTMClassifier()
    assert embedding_layer(model) is model.emb and embedding_layer(model, "emb") is model.emb
    with pytest.raises(ValueError, match="expected an nn.Embedding, found LSTM"):
        embedding_layer(model, "lstm")
    with pytest.raises(ValueError, match="only an nn.EmbeddingBag"):
        embedding_layer(torch.nn.Sequential(torch.nn.EmbeddingBag(10, 4)))


@pytest.fixture(scope="module")
def checked(trained, tmp_path_factory):
    """``model.interpretability`` on the token case (test = 400 held-out rows), with a vocabulary to show words."""
    model, x, y = trained
    vocabulary = [f"w{i}" for i in range(300)]
    vocabulary[0], vocabulary[1] = "<pad>", "<b>cue</b>"  # markup in the data must come out as text
    case = Case.from_arrays(
        (x[:N_TRAIN], y[:N_TRAIN]),
        (x[N_TRAIN:], y[N_TRAIN:]),
        model=model,
        metadata={"vocabulary": vocabulary},
    )
    out = tmp_path_factory.mktemp("token-report")
    report = dlclinic.checkup(case, only=["model.interpretability"], cache_dir=out / "cache")
    (row,) = [r for r in report.challenges if r.id == "model.interpretability"]
    return case, report, row, out


def test_the_check_examines_token_models_and_grades_faithfulness(checked):
    _, _, row, _ = checked
    assert row.status in ("ok", "warn", "fail"), row.summary
    assert row.status == "ok" and not row.findings, (row.summary, row.findings)  # faithful: nothing to warn about
    assert row.metrics["n_explained"] == 24
    assert row.metrics["layer_integrated_gradients_deletion_gain"] > 0.1, row.metrics
    (spec,) = row.details["tokens"]
    assert len(spec["rows"]) == 8 and all(-1 <= t["score"] <= 1 for r in spec["rows"] for t in r["tokens"])
    assert "<pad>" not in {t["text"] for r in spec["rows"] for t in r["tokens"]}  # padding is not shown
    tables = {t["title"]: t for t in row.details["tables"]}
    top = next(t for title, t in tables.items() if title.startswith("Tokens with the highest"))
    assert len(top["rows"]) >= 3


@pytest.mark.browser
@pytest.mark.skipif(chromium_binary() is None, reason="needs chromium on PATH")
def test_html_report_shows_the_tokens_highlighted(checked, tmp_path):
    case, report, row, out = checked
    written = write_report(report, out / "report", case=case)
    page = load_page(written["html"], tmp_path / "profile")
    assert page.console == []
    spans = re.findall(
        r'<span class="tok" style="background: rgba\((\d+), \d+, \d+, ([\d.]+)\)(?:; color: #fff)?" title="([^"]+)">([^<]*)</span>',
        page.dom,
    )
    shown = row.details["tokens"][0]["rows"]
    assert len(spans) == sum(len(r["tokens"]) for r in shown) > 8 * 12  # every real token of the 8 rows, as text
    reds = [float(a) for red, a, _, _ in spans if red == "220"]
    assert reds and max(reds) == 1.0  # the strongest token of a row is fully red (positive)
    texts = [t for _, _, _, t in spans]
    assert all(re.fullmatch(r"w\d+|&lt;b&gt;cue&lt;/b&gt;", t) for t in texts), texts[:20]  # words, markup escaped
    assert "<b>cue</b>" not in page.dom
