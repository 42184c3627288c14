"""Text users (issue 19): a CSV text column and the user's own tokenizer.

``--text-col`` + ``--tokenizer`` (a ``file.py:function`` or a Hugging Face ``tokenizers``
JSON file) turn a table of texts into token ids (padding 0), and the report shows the *text*
of flagged rows, not only their numbers. Data: ``validation.data.token_sequences`` written
out as words (``w17`` for id 17), so the truth is known; 10 % of train labels flipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dlclinic.cli import app
from dlclinic.core.errors import InputError
from dlclinic.core.results import Finding
from dlclinic.io import load_case
from dlclinic.io.text import encode_texts
from dlclinic.report.html import _finding_view
from validation.data import token_sequences

TOKENIZER = """
def encode(text):
    return [int(w[1:]) for w in text.split()]


def zero_based(text):
    return [int(w[1:]) - 1 for w in text.split()]
"""


def _texts(x: np.ndarray) -> list[str]:
    return [" ".join(f"w{int(t)}" for t in row if t) for row in x]


def _write(tmp_path: Path, n: int = 1500, flip: float = 0.1) -> tuple[Path, Path, np.ndarray, list[str]]:
    x, y = token_sequences(n, seed=5)
    texts = _texts(x)
    n_tr = 2 * n // 3
    flipped = np.sort(np.random.default_rng(0).choice(n_tr, int(flip * n_tr), replace=False))
    labels = np.array(["sports", "science", "politics", "arts"])[y]
    labels[flipped] = np.array(["science", "politics", "arts", "sports"])[y[flipped]]
    frame = pd.DataFrame({"id": [f"doc{i}" for i in range(n)], "text": texts, "label": labels})
    frame.iloc[:n_tr].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[n_tr:].to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "tok.py").write_text(TOKENIZER)
    return tmp_path / "train.csv", tmp_path / "test.csv", flipped, texts


def test_a_text_column_becomes_token_ids_with_the_texts_kept(tmp_path: Path) -> None:
    train, test, _, texts = _write(tmp_path, n=300)
    case = load_case(
        train, test, label_col="label", id_col="id", text_col="text", tokenizer=f"{tmp_path}/tok.py:encode"
    )
    assert case.modality == "tokens" and case.train.x.dtype == np.int64
    assert case.train.x.shape[1] == case.get("test").x.shape[1] == 48  # test padded to train's length
    assert list(case.train.texts[:3]) == texts[:3] and case.get("test").texts[0] == texts[200]
    assert case.train.ids[0] == "doc0"
    row = case.train.x[0]
    assert [f"w{t}" for t in row[row != 0]] == texts[0].split() and np.all(row[len(texts[0].split()) :] == 0)
    assert case.metadata["io"]["text"]["rows_cut"] == {"train": 0, "test": 0}
    cut = load_case(train, label_col="label", text_col="text", tokenizer=f"{tmp_path}/tok.py:encode", max_length=20)
    assert cut.train.x.shape[1] == 20 and cut.metadata["io"]["text"]["rows_cut"]["train"] > 100
    kept = cut.with_train(np.array([5, 2]))
    assert list(kept.train.texts) == [texts[5], texts[2]]  # row selections carry the texts


def test_a_tokenizers_json_file_is_used_without_any_download(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    train, test, _, texts = _write(tmp_path, n=300)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"])
    tok.train_from_iterator(texts[:200], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    case = load_case(train, test, label_col="label", text_col="text", tokenizer=str(tmp_path / "tokenizer.json"))
    assert case.modality == "tokens" and int(case.train.x.min()) == 0
    assert case.train.x[0, 0] == tok.token_to_id(texts[0].split()[0])
    assert "tokenizers file tokenizer.json" in case.metadata["io"]["text"]["tokenizer"]
    first = int(case.train.x[0, 0])  # per-token attributions read as the tokenizer's words
    assert case.metadata["vocabulary"][first] == texts[0].split()[0]


def test_bad_text_inputs_are_one_line_errors(tmp_path: Path) -> None:
    train, _, _, _ = _write(tmp_path, n=60)
    tok = f"{tmp_path}/tok.py:encode"
    with pytest.raises(InputError, match="--text-col and --tokenizer together"):
        load_case(train, label_col="label", text_col="text")
    with pytest.raises(InputError, match="expected a text column 'body'"):
        load_case(train, label_col="label", text_col="body", tokenizer=tok)
    with pytest.raises(InputError, match="id 0 is padding"):
        load_case(train, label_col="label", text_col="text", tokenizer=f"{tmp_path}/tok.py:zero_based")
    np.savez(tmp_path / "t.npz", x=np.zeros((3, 2)), y=np.arange(3))
    with pytest.raises(InputError, match="expected a .csv or .parquet table for text_col"):
        load_case(tmp_path / "t.npz", text_col="text", tokenizer=tok)
    with pytest.raises(InputError, match="expected one id sequence per text"):
        encode_texts(["a", "b"], lambda ts: [[1]], name="train", max_length=None)


def test_the_report_shows_the_text_of_flagged_rows_escaped(tmp_path: Path) -> None:
    train, _, _, texts = _write(tmp_path, n=60)
    case = load_case(train, label_col="label", text_col="text", tokenizer=f"{tmp_path}/tok.py:encode")
    hostile = case.train.texts.copy()
    hostile[3] = "<script>alert(1)</script> " + "x" * 400
    case = case.with_train(np.arange(len(hostile)))
    object.__setattr__(case.splits["train"], "texts", hostile)
    view = _finding_view(Finding(code="label_issues", message="m", indices=[3, 7], split="train"), case)
    assert [t["index"] for t in view["texts"]] == ["3", "7"] and view["texts"][1]["text"] == texts[7]
    assert len(view["texts"][0]["text"]) == 240 and view["texts"][0]["text"].endswith("…")
    assert _finding_view(Finding(code="c", message="m", indices=[3], split="train"))["texts"] == []


@pytest.mark.slow
def test_checkup_on_a_text_csv_finds_the_flips_and_shows_their_text(tmp_path: Path) -> None:
    train, test, flipped, texts = _write(tmp_path)
    out = tmp_path / "out"
    args = ["checkup", "--train", str(train), "--test", str(test), "--label-col", "label", "--id-col", "id"]
    args += ["--text-col", "text", "--tokenizer", f"{tmp_path}/tok.py:encode", "--only", "data.quality"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--quiet", "--no-cache"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["case"]["modality"] == "tokens"
    (row,) = [c for c in report["challenges"] if c["id"] == "data.quality"]
    (labels,) = [f for f in row["findings"] if f["code"] == "label_issue"]
    hits = np.intersect1d(labels["indices"], flipped).size
    assert row["status"] in ("warn", "fail"), row["summary"]
    assert hits / len(flipped) > 0.6 and hits / len(labels["indices"]) > 0.3  # precision by chance: 10 %
    html = (out / "report.html").read_text()
    shown = [i for i in labels["indices"][:10]]
    assert "text of the first rows" in html and all(texts[i] in html for i in shown)
    assert "--text-col text" in html  # the printed remedy command reloads the same text column
