"""Duplicates and train/test leaks of token-id rows (issue 19): texts, not Euclidean vectors.

Data: ``validation.data.token_sequences`` (12..48 Zipf-distributed ids, 0 = padding at the end).
A near copy is a row whose unigram multiset keeps Jaccard ≥ 0.8 with its source (about one
token in nine changed, functional.text_duplicates); the planted near copies change 1–2 tokens
and drop or add one (so the padding length differs) in source rows of at least 30 tokens,
which keeps every one of them within that definition (Jaccard ≥ 27/32). Planted rows that
change half the tokens must not be reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dlclinic
from dlclinic.core.case import Case
from dlclinic.functional.duplicates import chance_overlap, find_exact_duplicates, pattern_ids
from dlclinic.functional.text_duplicates import (
    find_token_cross_duplicates,
    find_token_near_duplicates,
    jaccard,
    lsh_layout,
    shingle_sets,
)
from validation.data import token_sequences

VOCAB, K, T = 300, 4, 48
# the label part of data.quality is not under test here: two clean-label draws keep it quick
QUICK = {"data.quality": {"label_null_draws": 2}}


class BagClassifier(nn.Module):
    """Embedding → mean over real tokens → linear head: a token model that trains in a blink."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.head = nn.Linear(16, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x != 0).unsqueeze(-1).float()
        return self.head((self.emb(x) * mask).sum(1) / mask.sum(1).clamp(min=1))


def _edit(row: np.ndarray, rng: np.random.Generator, changes: int, width: int = T) -> np.ndarray:
    """``row``'s text with ``changes`` tokens replaced and one token dropped or added, padded at the end to ``width``."""
    text = row[row != 0].copy()
    for pos in rng.choice(len(text), size=changes, replace=False):
        text[pos] = rng.integers(21, VOCAB)
    if rng.random() < 0.5 and len(text) < width:
        text = np.insert(text, rng.integers(len(text) + 1), rng.integers(21, VOCAB))
    else:
        text = np.delete(text, rng.integers(len(text)))
    out = np.zeros(width, dtype=np.int64)
    out[: len(text)] = text
    return out


def _long_rows(x: np.ndarray, count: int, rng: np.random.Generator, exclude: int = 0) -> np.ndarray:
    """``count`` distinct rows of at least 30 real tokens (the planted sources)."""
    long = np.flatnonzero((x != 0).sum(1) >= 30)
    return rng.choice(long[long >= exclude], size=count, replace=False)


def test_clean_token_rows_have_no_duplicates_and_no_leaks() -> None:
    x, _ = token_sequences(3000, seed=11)
    assert len(find_token_near_duplicates(x[:2000])) == 0
    assert len(find_token_cross_duplicates(x[:2000], x[2000:])) == 0
    assert find_exact_duplicates(x[:2000], pad_id=0) == []


def test_planted_near_copies_within_a_split_are_found_and_every_pair_is_exactly_above_the_threshold() -> None:
    x, _ = token_sequences(2000, seed=12)
    rng = np.random.default_rng(0)
    sources = _long_rows(x[:1500], 60, rng)
    for k, src in enumerate(sources):
        x[1500 + k] = _edit(x[src], rng, changes=1 + k % 2)
    heavy = _long_rows(x[:1500], 20, rng)
    for k, src in enumerate(heavy):  # half the tokens replaced: different texts
        x[1900 + k] = _edit(x[src], rng, changes=int((x[src] != 0).sum()) // 2)
    found = find_token_near_duplicates(x)
    pairs = {tuple(p) for p in found.pairs.tolist()}
    hits = sum((int(s), 1500 + k) in pairs for k, s in enumerate(sources))
    assert hits >= 0.95 * len(sources), (hits, len(sources))  # LSH misses a pair at J = 0.8 with p = 0.0017
    assert not any((int(s), 1900 + k) in pairs for k, s in enumerate(heavy))
    shingles = shingle_sets(x)
    exact = [jaccard(shingles.row(i), shingles.row(j)) for i, j in found.pairs.tolist()]
    assert min(exact) >= 0.8 and np.allclose(found.distances, 1 - np.asarray(exact))
    assert len(pairs) <= len(sources) + 2  # nothing but the planted copies (clean data: no pair, above)


def test_planted_test_from_train_leaks_are_found_exact_and_near_with_another_padding() -> None:
    x, _ = token_sequences(2600, seed=13)
    train, test = x[:2000], np.zeros((600, 64), dtype=np.int64)  # test padded to another width
    test[:, :T] = x[2000:]
    rng = np.random.default_rng(1)
    sources = _long_rows(train, 50, rng)
    for k, src in enumerate(sources[:30]):
        test[k] = _edit(train[src], rng, changes=1 + k % 2, width=64)
    for k, src in enumerate(sources[30:]):  # exact texts, padded on the left
        text = train[src][train[src] != 0]
        test[30 + k] = 0
        test[30 + k, 64 - len(text) :] = text
    found = find_token_cross_duplicates(train, test)
    by_query = {int(q): int(r) for r, q in found.pairs.tolist()}
    assert all(by_query.get(30 + k) == int(s) for k, s in enumerate(sources[30:]))
    assert (found.distances[np.isin(found.pairs[:, 1], np.arange(30, 50))] == 0).all()
    near_hits = sum(by_query.get(k) == int(s) for k, s in enumerate(sources[:30]))
    assert near_hits >= 28 and set(by_query) <= set(range(50))


def test_exact_copies_are_the_same_text_whatever_the_padding_and_repeats_are_graded_beyond_chance() -> None:
    right = np.array([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0], [5, 6, 0, 0, 0]])
    left = np.array([[0, 0, 0, 0, 0, 5, 6, 7], [0, 0, 0, 0, 0, 0, 9, 8]])
    ids_right, ids_left = pattern_ids(right, left, pad_id=0)
    assert ids_left[0] == ids_right[0] and ids_left[1] not in ids_right  # order matters, padding does not
    assert [g.tolist() for g in find_exact_duplicates(np.array([[5, 6, 0], [0, 5, 6], [6, 5, 0]]), pad_id=0)] == [
        [0, 1]
    ]
    # the chance logic of exact repeats works on token texts: 20 copied rows are 20 excess matches
    x, _ = token_sequences(1200, seed=14)
    test = x[1000:].copy()
    for k in range(20):
        text = x[k][x[k] != 0]
        test[k] = 0
        test[k, T - len(text) :] = text
    cross, _ = chance_overlap(*pattern_ids(x[:1000], test, pad_id=0))
    assert cross.observed == 20 and cross.excess == 20
    plain, _ = chance_overlap(*pattern_ids(x[:1000], test))  # byte-wise: only the copies of full rows match
    assert plain.observed == int(((x[:20] != 0).sum(1) == T).sum()) < 20


MEMORY_PROBE = """
import json, resource, sys
import numpy as np
import datasketch  # imported before the baseline, like everything the search needs
from dlclinic.functional.text_duplicates import find_token_near_duplicates

rng = np.random.default_rng(2)
n = 20_000
x = np.zeros((n, 12), dtype=np.int64)
lengths = rng.integers(4, 13, size=n)
for i, m in enumerate(lengths):
    x[i, :m] = rng.integers(1, 5000, size=m)
x[n - 20 :] = np.roll(x[:20], 1, axis=1) * (lengths[:20, None] < 12)  # the same texts, one more padding in front
x[n - 40 : n - 20] = x[20:40]
x[n - 40 : n - 20, 0] += 5000 * (lengths[20:40] >= 11)  # one token of 11-12 changed: Jaccard >= 10/12
unit = 1 if sys.platform == "darwin" else 1024
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
pairs = {tuple(p) for p in find_token_near_duplicates(x).pairs.tolist()}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
exact = [i for i in range(20) if lengths[i] < 12]
near = [i for i in range(20, 40) if lengths[i] >= 11]
found = bool(exact and near and all((i, n - 20 + i) in pairs for i in exact) and all((i, n - 60 + i) in pairs for i in near))
print(json.dumps({"grew": after - before, "found": found, "pairs": len(pairs)}))
"""


def test_memory_stays_linear_on_20k_short_rows() -> None:
    """No N × N array: the search over 20,000 rows of 4–12 tokens grows the peak memory of a fresh
    process far less than one N × N bool would (400 MB; measured about 150 MB, most of it
    datasketch's index, about 7 KB per indexed row), and finds the planted copies."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["found"] and probe["pairs"] <= 60, probe
    assert probe["grew"] < 300e6, probe


def _tiny_model(x: np.ndarray, y: np.ndarray) -> BagClassifier:
    torch.manual_seed(0)
    model = BagClassifier()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(15):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def _token_case(planted: bool) -> tuple[Case, np.ndarray, np.ndarray]:
    """800 train / 300 test token rows; with ``planted``, 16 near copies and 8 exact (left-padded)
    copies inside train, and 10 test rows that near-copy train rows."""
    x, y = token_sequences(1100, seed=15)
    xtr, ytr, xte, yte = x[:800].copy(), y[:800].copy(), x[800:].copy(), y[800:].copy()
    rng = np.random.default_rng(3)
    sources = _long_rows(xtr[:600], 34, rng)
    copies, leaks = np.arange(600, 624), np.arange(10)
    if planted:
        for k, src in enumerate(sources[:24]):
            text = xtr[src][xtr[src] != 0]
            xtr[600 + k] = _edit(xtr[src], rng, 1) if k < 16 else np.r_[np.zeros(T - len(text), np.int64), text]
            ytr[600 + k] = ytr[src]
        for k, src in enumerate(sources[24:]):
            xte[k], yte[k] = _edit(xtr[src], rng, 1), ytr[src]
    case = Case.from_arrays((xtr, ytr), (xte, yte), model=_tiny_model(xtr, ytr))
    assert case.modality == "tokens"
    return case, copies, leaks


@pytest.mark.parametrize("planted", [False, True])
def test_data_quality_on_token_rows_reports_planted_duplicates_and_leaks_and_stays_quiet_on_clean(
    tmp_path: Path, planted: bool
) -> None:
    case, copies, leaks = _token_case(planted)
    report = dlclinic.checkup(case, only=["data.quality"], options=QUICK, cache_dir=tmp_path)
    row = report["data.quality"]
    assert row.status != "error", row.summary
    assert row.metrics["near_duplicate_jaccard_threshold"] == 0.8
    assert row.metrics["near_duplicate_lsh_miss_probability"] == pytest.approx(lsh_layout(0.8).miss_probability)
    codes = {f.code: f for f in row.findings}
    if not planted:
        assert row.metrics["duplicate_fraction"] == 0 and row.metrics["test_leaks"] == 0
        assert not {"duplicate", "leak", "near_duplicates_not_searched"} & set(codes)
        return
    dup, leak = codes["duplicate"], codes["leak"]
    assert set(dup.indices) == set(copies.tolist())
    assert dup.extra["method"] == "minhash_jaccard" and row.metrics["exact_duplicate_groups"] == 8
    assert set(leak.indices) == set(leaks.tolist()) and row.metrics["test_leak_fraction"] == pytest.approx(10 / 300)
    assert row.metrics["duplicate_fraction"] == pytest.approx(24 / 800)


def test_without_datasketch_only_exact_copies_are_searched_and_the_report_says_how_to_get_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case, copies, _ = _token_case(planted=True)
    monkeypatch.setitem(sys.modules, "datasketch", None)  # find_spec → None, import → error
    with pytest.raises(ImportError):
        find_token_near_duplicates(case.train.x)
    row = dlclinic.checkup(case, only=["data.quality"], options=QUICK, cache_dir=tmp_path)["data.quality"]
    assert row.status != "error", row.summary
    codes = {f.code: f for f in row.findings}
    assert "pip install 'dlclinic[text]'" in codes["near_duplicates_not_searched"].message
    assert set(codes["duplicate"].indices) == set(copies[16:].tolist())  # the 8 exact copies only
    assert row.metrics["near_duplicate_lsh_miss_probability"] is None and "leak" not in codes


def test_float_sequences_keep_the_euclidean_search_and_find_a_copied_series(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, size=500)
    t = np.arange(64) / 64
    x = np.sin(2 * np.pi * (2 + 2 * y[:, None]) * t + rng.uniform(0, 6.3, (500, 1))) + rng.normal(0, 0.6, (500, 64))
    x = x[:, None, :].astype(np.float32)
    x[350:360] = x[:10] + rng.normal(0, 1e-3, size=(10, 1, 64)).astype(np.float32)  # near copies
    model = nn.Sequential(
        nn.Conv1d(1, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 4)
    )
    case = Case.from_arrays((x[:400], y[:400]), (x[400:], y[400:]), model=model.eval())
    assert case.modality == "sequence"
    row = dlclinic.checkup(case, only=["data.quality"], options=QUICK, cache_dir=tmp_path)["data.quality"]
    assert row.status != "error", row.summary
    dup = next(f for f in row.findings if f.code == "duplicate")
    assert set(dup.indices) == set(range(350, 360)) and "near_duplicate_jaccard_threshold" not in row.metrics


class MaskedBag(nn.Module):
    """``forward(input_ids, attention_mask)``: the case packs both side by side in one row."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.head = nn.Linear(8, K)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).float()
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1))


def test_packed_inputs_compare_the_token_ids_not_the_attention_mask(tmp_path: Path) -> None:
    """With the mask's ones counted as tokens, a row with 4 of 24 tokens changed (Jaccard 20/28
    on the ids) would read as a near copy (44/52 with the mask); on the ids it is not one."""
    x, y = token_sequences(700, seed=16)
    rng = np.random.default_rng(5)
    src = [int(i) for i in np.flatnonzero((x[:400] != 0).sum(1) == 24)[:2]]
    x[400] = x[src[0]]
    x[400, rng.choice(24, size=4, replace=False)] = rng.integers(200, VOCAB, size=4)
    x[401] = x[src[1]]
    x[401, 5] = 1 + x[401, 5] % (VOCAB - 1)  # one token changed: Jaccard 23/25
    named = {"input_ids": x, "attention_mask": (x != 0).astype(np.int64)}
    train = ({k: v[:500] for k, v in named.items()}, y[:500])
    test = ({k: v[500:] for k, v in named.items()}, y[500:])
    case = Case.from_arrays(train, test, model=MaskedBag().eval())
    assert case.modality == "tokens" and case.train.x.shape == (500, 2 * T)
    row = dlclinic.checkup(case, only=["data.quality"], options=QUICK, cache_dir=tmp_path)["data.quality"]
    assert row.status != "error", row.summary
    dup = next(f for f in row.findings if f.code == "duplicate")
    assert dup.indices == (401,) and [src[1], 401] in dup.extra["pairs"]
