"""Compression and export of token and sequence models (issue 19): int8 dynamic, a dynamic time axis.

* Eager int8 dynamic quantisation (``torch.ao.quantization.quantize_dynamic``) of a trained
  token LSTM and a trained float GRU agrees with the original; a model without a recurrent
  layer gets no such variant (a note, not an error).
* The ONNX export of token (N×T int64) and sequence (N×C×T, N×T×F float) models has a
  dynamic time axis, verified with onnxruntime at the data's length and at half of it; a
  length baked into the model (``x.view(n, T * d)``) or into the trace (``/ float(T)``) is
  reported as a fixed length and the file declares it.
* model.compression, compute.edge and deployment.integration run on both modalities.

Data: ``validation.data.token_sequences`` (T = 24) and noisy sine waves whose frequency is the
class (``tests/test_sequences.py``), kept short so the file runs in well under a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import dlclinic
from dlclinic.core.case import Case
from dlclinic.core.inference import predict_logits
from dlclinic.export import export_onnx
from dlclinic.export.onnx_variants import onnx_variants
from dlclinic.functional.compression import SweepConfig, quantize_dynamic_int8
from dlclinic.io.models import OnnxModel
from test_tokens import LSTMClassifier  # the token LSTM of issue 19
from validation.data import token_sequences

T_TOKENS, T_WAVES, VOCAB, K = 24, 32, 300, 4


class GRUNet(nn.Module):
    """A GRU over N×T×F float features (batch first): the time axis is 1, not the last."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, 24, batch_first=True)
        self.head = nn.Linear(24, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x)
        return self.head(h[:, -1])


class Conv1dNet(nn.Module):
    """1-D convolutions over N×1×T, global average pooling (as in test_sequences.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(1, 8, 7, padding=3), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class FlatTokens(nn.Module):
    """A hard-coded length: the embeddings are flattened to T × 8 features (the eager model refuses other lengths)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.head = nn.Linear(T_TOKENS * 8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x).view(x.shape[0], T_TOKENS * 8))


class TracedLength(nn.Module):
    """Eager accepts any length, but ``float(x.shape[1])`` becomes a constant in the ONNX trace."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.head = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x).sum(1) / float(x.shape[1]))


def _waves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """N×1×T noisy sine waves whose frequency is the class (random phase)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, size=n)
    t = np.arange(T_WAVES) / T_WAVES
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    x = np.sin(2 * np.pi * (1 + y[:, None]) * t + phase) + rng.normal(0, 0.4, size=(n, T_WAVES))
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


def _features(waves: np.ndarray) -> np.ndarray:
    """N×T×2 (the wave and its square): the GRU's batch-first input."""
    w = waves[:, 0, :]
    return np.ascontiguousarray(np.stack([w, w**2], axis=-1), dtype=np.float32)


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            b = perm[i : i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def token_case() -> Case:
    x, y = token_sequences(1200, seed=0, length=T_TOKENS)
    torch.manual_seed(0)
    model = _fit(LSTMClassifier(), x[:800], y[:800], epochs=4)
    return Case.from_arrays((x[:800], y[:800]), (x[800:], y[800:]), model=model)


@pytest.fixture(scope="module")
def wave_case() -> Case:
    waves, y = _waves(1000, seed=0)
    x = _features(waves)
    torch.manual_seed(0)
    model = _fit(GRUNet(), x[:600], y[:600], epochs=10)
    return Case.from_arrays((x[:600], y[:600]), (x[600:], y[600:]), model=model)


def _agreement(a: Any, b: Any, x: np.ndarray) -> float:
    return float(np.mean(predict_logits(a, x).argmax(1) == predict_logits(b, x).argmax(1)))


def test_int8_dynamic_quantises_lstm_gru_linear_and_embeddings_of_trained_models(
    token_case: Case, wave_case: Case
) -> None:
    for case, layer in ((token_case, "LSTM"), (wave_case, "GRU")):
        test = case.splits["test"]
        accuracy = float(np.mean(predict_logits(case.model, test.x).argmax(1) == test.y))
        assert accuracy > 0.5, (layer, accuracy)  # trained (chance 0.25)
        q, note = quantize_dynamic_int8(case.model, test.x)
        assert q is not None, note
        dynamic = torch.ao.nn.quantized.dynamic
        assert isinstance(getattr(q, layer.lower()), getattr(dynamic, layer)) and isinstance(q.head, dynamic.Linear)
        assert _agreement(case.model, q, test.x) >= 0.95, layer
        assert type(case.model.head) is nn.Linear  # the user's model is not touched
    # token ids stay int64 on their way to the 8-bit embedding table; padding rows stay zero
    q, note = quantize_dynamic_int8(token_case.model, token_case.train.x)
    assert q is not None and "embedding tables 8-bit per row" in note
    assert isinstance(q.emb, torch.ao.nn.quantized.Embedding)
    assert token_case.train.x.dtype == np.int64
    assert torch.count_nonzero(q.emb(torch.zeros(1, 3, dtype=torch.int64))) == 0
    # the clean case: no recurrent layer, no eager int8 variant, and a reason instead of an error
    q, note = quantize_dynamic_int8(Conv1dNet().eval(), _waves(8, seed=1)[0])
    assert q is None and "no LSTM/GRU layer" in note


def _onnx_input(path: Path) -> tuple[list[int | str], int]:
    graph = onnx.load(str(path), load_external_data=False)
    inp = graph.graph.input[0]
    dims = [d.dim_param or int(d.dim_value) for d in inp.type.tensor_type.shape.dim]
    return dims, int(inp.type.tensor_type.elem_type)


def test_onnx_export_has_a_dynamic_time_axis_verified_at_two_lengths(tmp_path: Path, token_case: Case) -> None:
    x_tok = token_case.splits["test"].x
    waves = _waves(64, seed=2)[0]
    torch.manual_seed(0)
    for model, x, axis in (
        (token_case.model, x_tok, 1),
        (GRUNet().eval(), _features(waves), 1),
        (Conv1dNet(), waves, 2),
    ):
        out = tmp_path / f"{type(model).__name__}.onnx"
        result = export_onnx(model, x, out, exporter="torchscript", length_axis="auto")
        length = x.shape[axis]
        assert result.dynamic_length is True and result.length_axis == axis, result.length_note
        assert result.verified_lengths == (length, length // 2)
        assert result.max_abs_logit_diff < 1e-4 and result.length_max_abs_logit_diff is not None
        assert result.length_max_abs_logit_diff < 1e-4
        dims, _ = _onnx_input(out)
        assert isinstance(dims[0], str) and isinstance(dims[axis], str), dims
        # a third length, never seen by the export or its verification
        third = np.ascontiguousarray(np.take(x[:16], np.arange(length // 3), axis=axis))
        assert np.max(np.abs(OnnxModel(out).predict_logits(third) - predict_logits(model, third))) < 1e-4
    # token ids are an int64 input of the graph
    assert _onnx_input(tmp_path / "LSTMClassifier.onnx")[1] == onnx.TensorProto.INT64
    # the int8 files keep the dynamic length: ONNX Runtime's int8 LSTM runs at half the length
    files, _ = onnx_variants(
        token_case.model,
        token_case.train.x,
        x_tok,
        tmp_path / "variants",
        SweepConfig(exporter="torchscript", calibration_samples=32),
        length_axis="auto",
    )
    assert [kind for _, kind, _, _ in files] == ["onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static"]
    assert "length dynamic, verified at 24 and 12" in files[0][3]
    assert "LSTM left float" in files[2][3]  # static QDQ has no recurrent kernel: said, not hidden
    half = np.ascontiguousarray(x_tok[:, : T_TOKENS // 2])
    for _, _, path, _ in files:
        agreement = np.mean(
            OnnxModel(path).predict_logits(half).argmax(1) == predict_logits(token_case.model, half).argmax(1)
        )
        assert agreement >= 0.95, (path.name, agreement)
    # the clean case: no length axis asked for (an image or a vector), nothing said about it
    plain = export_onnx(nn.Linear(6, K), np.ones((8, 6), np.float32), tmp_path / "plain.onnx", exporter="torchscript")
    assert plain.dynamic_length is None and plain.verified_lengths == ()


def test_a_length_baked_into_the_model_or_the_trace_is_reported_fixed_not_an_error(tmp_path: Path) -> None:
    x, _ = token_sequences(64, seed=3, length=T_TOKENS)
    torch.manual_seed(0)
    for model, why in (
        (FlatTokens().eval(), "the PyTorch model itself accepts no other length"),
        (TracedLength().eval(), "the trace baked in length 24"),
    ):
        out = tmp_path / f"{type(model).__name__}.onnx"
        result = export_onnx(model, x, out, exporter="torchscript", length_axis="auto")
        assert result.dynamic_length is False and why in result.length_note, result.length_note
        assert result.verified_lengths == () and result.length_axis is None
        # the file declares the one length it computes correctly, and computes it correctly
        dims, _ = _onnx_input(out)
        assert dims[1] == T_TOKENS and isinstance(dims[0], str), dims
        assert result.max_abs_logit_diff < 1e-4 and result.argmax_agreement == 1.0


CHEAP = {
    "model.compression": {"sparsities": (0.5,), "keep_ratios": (), "distill_epochs": 0, "calibration_samples": 32},
    "compute.edge": {"calibration_samples": 32},
}
CHECKS = ["model.compression", "compute.edge", "deployment.integration"]


@pytest.mark.parametrize("which", ["tokens", "sequence"])
def test_compression_edge_and_integration_run_on_tokens_and_sequences(
    which: str, token_case: Case, wave_case: Case, tmp_path: Path
) -> None:
    case = token_case if which == "tokens" else wave_case
    assert case.modality == which
    report = dlclinic.checkup(case, only=CHECKS, options=CHEAP, cache_dir=tmp_path)
    rows = {r.id: r for r in report.challenges if r.id in CHECKS}
    errors = {cid: r.summary for cid, r in rows.items() if r.status in ("error", "not_examined")}
    assert not errors, errors
    compression = rows["model.compression"].metrics
    # the eager int8 variant of the trained LSTM/GRU: measured, about as accurate, smaller
    assert abs(compression["torch_int8_dynamic_drop"]) <= 0.03, compression
    assert compression["torch_int8_dynamic_size_mb"] < compression["original_size_mb"]
    edge = rows["compute.edge"].metrics
    assert edge["onnx_dynamic_batch"] is True and edge["onnx_dynamic_length"] is True, edge
    integration = rows["deployment.integration"].metrics
    assert integration["onnx_max_abs_logit_diff"] < 1e-4 and integration["onnx_dynamic_length"] is True
    assert integration["onnx_length_max_abs_logit_diff"] < 1e-4
    assert "input length dynamic (verified at" in rows["deployment.integration"].summary


def test_edge_and_integration_report_a_fixed_length_model_without_error(tmp_path: Path) -> None:
    x, y = token_sequences(300, seed=4, length=T_TOKENS)
    model = _fit(FlatTokens(), x[:200], y[:200], epochs=1)
    case = Case.from_arrays((x[:200], y[:200]), (x[200:], y[200:]), model=model)
    assert case.modality == "tokens"
    only = ["compute.edge", "deployment.integration"]
    report = dlclinic.checkup(
        case, only=only, options={"compute.edge": {"calibration_samples": 32}}, cache_dir=tmp_path
    )
    rows = {r.id: r for r in report.challenges if r.id in only}
    assert all(r.status not in ("error", "not_examined") for r in rows.values()), {
        k: r.summary for k, r in rows.items()
    }
    assert rows["compute.edge"].metrics["onnx_dynamic_length"] is False
    assert rows["deployment.integration"].metrics["onnx_dynamic_length"] is False
    assert (
        "input length fixed (the PyTorch model itself accepts no other length" in rows["deployment.integration"].summary
    )
