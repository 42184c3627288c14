"""Export to ONNX and .pt2 agrees with eager PyTorch on real inputs (a CNN with BN and a residual block)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dlclinic.core.errors import InputError, ModelError
from dlclinic.export import export_onnx, export_pt2, verify_export
from dlclinic.io.models import OnnxModel, load_model


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """Small models train faster on one thread, and much faster on a CPU shared with other jobs."""
    from dlclinic.core.threads import torch_threads

    with torch_threads(1):
        yield


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class ResCNN(nn.Module):
    """Conv-BN stem, one residual block, global pooling, linear head; accepts N×H×W."""

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = _Res(8)
        self.head = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _model() -> ResCNN:
    torch.manual_seed(0)
    m = ResCNN()
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN matters
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    return m.train()  # exported in eval mode, mode restored


X = np.random.default_rng(0).random((40, 12, 12), dtype=np.float32)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_export_agrees_with_eager_and_has_a_dynamic_batch(tmp_path, exporter) -> None:  # type: ignore[no-untyped-def]
    model = _model()
    res = export_onnx(model, X, tmp_path / "m.onnx", exporter=exporter)
    assert res.format == "onnx" and res.exporter == f"torch.onnx.export(dynamo={exporter == 'dynamo'})"
    assert res.max_abs_logit_diff < 1e-4 and res.argmax_agreement == 1.0 and res.n_verified == 40
    assert res.size_bytes == (tmp_path / "m.onnx").stat().st_size > 0
    assert model.training  # mode restored
    onnx = OnnxModel(tmp_path / "m.onnx")
    assert onnx.input_shape[0] is None
    model.eval()
    for n in (1, 3, 17):
        with torch.no_grad():
            ref = model(torch.from_numpy(X[:n])).numpy()
        assert np.abs(onnx.predict_logits(X[:n]) - ref).max() < 1e-4
    assert not list(tmp_path.glob(".*.tmp"))


def test_pt2_export_agrees_and_loads_with_io_models(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = export_pt2(_model(), X, tmp_path / "m.pt2")
    assert res.format == "pt2" and res.dynamic_batch and res.max_abs_logit_diff < 1e-5 and res.argmax_agreement == 1.0
    loaded, source = load_model(str(tmp_path / "m.pt2"))
    assert "torch.export" in source
    out = loaded(torch.from_numpy(X[:5]))
    assert out.shape == (5, 4)


def test_failed_export_leaves_no_file_and_bad_input_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.sum()) > 0:  # data-dependent Python control flow
                return x.flatten(1)[:, :2]
            return x.flatten(1)[:, 2:4]

    with pytest.raises(ModelError):
        export_pt2(DataDependent(), X, tmp_path / "bad.pt2")
    assert not any(tmp_path.iterdir())
    with pytest.raises(InputError):
        export_onnx(_model(), np.zeros((0, 12, 12), np.float32), tmp_path / "x.onnx")
    with pytest.raises(ModelError):
        export_onnx(object(), X, tmp_path / "x.onnx")


def test_verify_export_counts_disagreement() -> None:
    a = np.array([[0.0, 1.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    diff, agree = verify_export(a, b)
    assert diff == 1.0 and agree == 0.5


def test_cli_export_writes_a_verified_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from conftest import blobs
    from dlclinic.cli import main

    x, y = blobs(200, k=3, d=6, seed=0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    code = main(
        [
            "export",
            "--train",
            str(tmp_path / "train.npz"),
            "--out",
            str(tmp_path / "m.onnx"),
            "--exporter",
            "torchscript",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    assert "argmax agreement 100.00%" in capsys.readouterr().out
    assert OnnxModel(tmp_path / "m.onnx").predict_logits(x[:3]).shape == (3, 3)
