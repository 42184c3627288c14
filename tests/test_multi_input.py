"""Models whose ``forward`` takes several tensors (issue 19): ``input_ids`` + ``attention_mask``.

The named arrays are packed into one row and the model wrapped (``core.inputs``), so every
check, remedy, export and the server call it as the user wrote it. Checked: the wrapper
hands each tensor back in its own dtype and shape, by keyword or in the declared order;
the user's weights load and save without a prefix; the CLI reads the arrays from an
``.npz`` with ``--inputs``; the whole checkup runs with no ``error``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import dlclinic
from dlclinic.cli import app
from dlclinic.core.case import Case
from dlclinic.core.errors import InputError
from dlclinic.core.inputs import InputPart, PackedInputs, pack_inputs
from dlclinic.taxonomy import CHALLENGES
from validation.data import token_sequences

VOCAB, K = 300, 4

MODEL_FILE = """
import torch
from torch import nn


class MaskedBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(300, 16, padding_idx=0)
        self.head = nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1))


def build():
    return MaskedBag()
"""


class MaskedLSTM(nn.Module):
    """A user's model of two tensors: ids and a 0/1 mask (mean over the masked steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, K)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        assert input_ids.dtype == torch.int64 and attention_mask.dtype == torch.int64
        h, _ = self.lstm(self.emb(input_ids))
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1))


class Positional(nn.Module):
    """Takes a float series and its lengths positionally (``*args``), so no names to call by."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 2)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        series, lengths = args
        assert series.dtype == torch.float32 and lengths.dtype == torch.int64 and lengths.shape == (len(series),)
        return self.lin(series) + lengths.unsqueeze(1).float() * 0


def _named(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    x, y = token_sequences(n, seed=seed)
    return {"input_ids": x, "attention_mask": (x != 0).astype(np.int64)}, y


def test_packed_rows_come_back_as_the_named_tensors_in_their_dtypes() -> None:
    series = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    lengths = np.arange(5, dtype=np.int64)
    packed, parts = pack_inputs({"series": series, "lengths": lengths})
    assert packed.dtype == np.float32 and packed.shape == (5, 9)
    assert parts == (InputPart("series", (8,), False), InputPart("lengths", (), True))
    model = PackedInputs(Positional(), parts)
    assert not model.by_keyword
    back = model.unpack(torch.from_numpy(packed))
    assert torch.equal(back[0], torch.from_numpy(series)) and torch.equal(back[1], torch.from_numpy(lengths))
    assert model(torch.from_numpy(packed)).shape == (5, 2)
    named, _ = _named(4, 0)
    ids, parts = pack_inputs(named)
    assert ids.dtype == np.int64 and PackedInputs(MaskedLSTM(), parts).by_keyword
    with pytest.raises(InputError, match="same number of rows"):
        pack_inputs({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})
    with pytest.raises(InputError, match="expected the inputs"):
        pack_inputs({"a": np.zeros((3, 2))}, parts)


def test_a_two_input_lstm_runs_the_whole_checkup_with_no_error(tmp_path: Path) -> None:
    tr, y_tr = _named(600, 1)
    te, y_te = _named(300, 2)
    torch.manual_seed(0)
    user = MaskedLSTM()
    case = Case.from_arrays((tr, y_tr), (te, y_te), deploy=(te, y_te), model=user, model_factory=MaskedLSTM)
    assert case.modality == "tokens" and case.train.x.shape == (600, 96)
    assert [p["name"] for p in case.metadata["inputs"]] == ["input_ids", "attention_mask"]
    assert isinstance(case.model, PackedInputs) and case.model.model is user
    assert set(case.model.state_dict()) == set(user.state_dict())  # no "model." prefix in saved weights
    assert isinstance(case.model_factory(), PackedInputs)
    report = dlclinic.checkup(case, cache_dir=tmp_path, progress=False)
    rows = {r.id: r for r in report.challenges}
    assert list(rows) == [c.id for c in CHALLENGES]
    errors = {k: r.summary for k, r in rows.items() if r.status == "error"}
    assert not errors, errors
    assert sum(r.status != "not_examined" for r in rows.values()) >= 24


def test_cli_reads_named_inputs_from_npz_and_loads_the_users_weights(tmp_path: Path) -> None:
    tr, y_tr = _named(300, 3)
    te, y_te = _named(150, 4)
    np.savez(tmp_path / "train.npz", y=y_tr, **tr)
    np.savez(tmp_path / "test.npz", y=y_te, **te)
    (tmp_path / "model.py").write_text(MODEL_FILE)
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    exec(MODEL_FILE, namespace)
    save_file(namespace["build"]().state_dict(), str(tmp_path / "w.safetensors"))  # type: ignore[operator]
    out = tmp_path / "out"
    args = ["checkup", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz")]
    args += ["--inputs", "input_ids,attention_mask", "--model", f"{tmp_path}/model.py:build"]
    args += ["--weights", str(tmp_path / "w.safetensors"), "--only", "research.benchmark_saturation"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--quiet", "--no-cache"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["case"]["modality"] == "tokens"
    (row,) = [c for c in report["challenges"] if c["id"] == "research.benchmark_saturation"]
    assert row["status"] != "error", row["summary"]
    bad = CliRunner().invoke(app, [*args[:5], "--inputs", "input_ids,mask", "--out", str(out), "--quiet"])
    assert bad.exit_code != 0 and "expected arrays ['input_ids', 'mask']" in str(bad.exception)
