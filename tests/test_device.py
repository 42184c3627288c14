"""``--device`` / ``--precision`` (issue 21) on a machine without a GPU.

The CUDA path cannot run here: these tests pin what can — the device names resolve or fail in
one line, an explicit CPU device gives the numbers of the default path bit for bit, and bf16
mixed precision on the CPU runs a checkup and a training and is stated in the report.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import dlclinic
from conftest import blobs
from dlclinic import Case, EvidenceConfig, FitConfig
from dlclinic.cli.options import OofMethod, record_recipe
from dlclinic.core.baselines import MLP
from dlclinic.core.device import active_precision, check_precision, move_model, resolve_device, use_precision
from dlclinic.core.errors import ConfigError
from dlclinic.core.inference import predict_logits
from dlclinic.core.recipe import fit
from dlclinic.serve.backends import make_backend

FAST = FitConfig(epochs=3, batch_size=64)
QUICK = EvidenceConfig(oof="embeddings")  # no K-fold retraining: the file stays fast
NO_GPU = not torch.cuda.is_available()


def _case() -> Case:
    x, y = blobs(240, d=6, sep=3.0, seed=0)
    xt, yt = blobs(90, d=6, sep=3.0, seed=1)
    return Case.from_arrays((x, y), (xt, yt))


def test_cpu_and_auto_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if NO_GPU and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device(None) == torch.device("cpu")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:3", "mps", "tpu", "cuda:x"])
def test_an_unavailable_device_is_one_line(name: str) -> None:
    if name == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    with pytest.raises(ConfigError) as err:
        resolve_device(name)
    message = str(err.value)
    assert "\n" not in message and "expected" in message and "found" in message


def test_precision_is_checked_against_the_device() -> None:
    assert check_precision("bf16", "cpu") == "bf16"
    for bad, device in (("fp16", "cpu"), ("fp8", "cpu")):
        with pytest.raises(ConfigError, match="expected"):
            check_precision(bad, device)
    with pytest.raises(ConfigError, match="precision"):
        FitConfig(precision="half")


def test_default_recipe_fingerprint_is_unchanged() -> None:
    # device/precision appear in the recipe (and its cache keys) only when not the defaults
    assert "device" not in FitConfig().to_dict() and "precision" not in FitConfig().to_dict()
    assert FitConfig(precision="bf16").to_dict()["precision"] == "bf16"


def test_move_model_never_moves_the_users_module() -> None:
    net = MLP(4, 2)
    assert move_model(net, torch.device("cpu")) is net
    moved = move_model(net, torch.device("meta"))
    assert moved is not net and next(moved.parameters()).device.type == "meta"
    assert next(net.parameters()).device.type == "cpu"


def test_explicit_cpu_gives_the_default_numbers_bit_for_bit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    only = ["data.quality"]
    default = dlclinic.checkup(_case(), only=only, fit_config=FAST, evidence_config=QUICK, cache_dir=tmp_path / "a")
    explicit = dlclinic.checkup(
        _case(),
        only=only,
        fit_config=FAST,
        evidence_config=QUICK,
        cache_dir=tmp_path / "b",
        device="cpu",
        precision="fp32",
    )
    assert default.case["fingerprints"] == explicit.case["fingerprints"]  # the same baseline weights
    for cid in only:
        assert default[cid].metrics == explicit[cid].metrics
    assert explicit.environment["device"] == "cpu" and explicit.environment["precision"] == "fp32"


def test_bf16_on_cpu_trains_runs_a_checkup_and_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(200, d=6, sep=3.0, seed=0)
    result = fit(MLP(6, 3), x, y, FitConfig(epochs=3, precision="bf16"))
    assert np.isfinite(result.history["train_loss"]).all()
    assert next(result.model.parameters()).dtype == torch.float32  # autocast: the weights stay float32
    with use_precision("bf16"):
        assert active_precision() == "bf16"
        logits = predict_logits(result.model, x)
    assert active_precision() == "fp32" and logits.dtype == np.float32
    assert (logits.argmax(1) == predict_logits(result.model, x).argmax(1)).mean() > 0.95
    report = dlclinic.checkup(
        _case(), only=["data.quality"], fit_config=FAST, evidence_config=QUICK, cache_dir=tmp_path, precision="bf16"
    )
    assert report.environment["precision"] == "bf16" and report.environment["device"] == "cpu"
    assert report["data.quality"].status != "error"


def test_fp16_on_cpu_is_refused_before_any_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="fp16"):
        dlclinic.checkup(_case(), only=["data.quality"], cache_dir=tmp_path, precision="fp16")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cli_unavailable_device_exits_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [sys.executable, "-m", "dlclinic.cli", "checkup", "--demo", "--device", "cuda:3", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cuda:3" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_fit_on_an_explicit_cpu_is_the_default_fit() -> None:
    x, y = blobs(120, d=4, sep=3.0, seed=0)
    torch.manual_seed(0)
    plain = fit(MLP(4, 3), x, y, FitConfig(epochs=2))
    torch.manual_seed(0)
    placed = fit(MLP(4, 3), x, y, FitConfig(epochs=2, device="cpu"))
    for a, b in zip(plain.model.state_dict().values(), placed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_serving_backend_takes_the_device_and_precision() -> None:
    torch.manual_seed(0)
    net = MLP(4, 3)
    backend, desc = make_backend(net, (4,), 3, kind="torch", device="cpu", precision="bf16")
    probs, _ = backend.predict(np.zeros((2, 4), np.float32))
    assert probs.shape == (2, 3) and "bf16" in desc
    with pytest.raises(ConfigError, match="fp16"):
        make_backend(net, (4,), 3, kind="torch", device="cpu", precision="fp16")


def test_printed_remedy_commands_keep_the_device_and_precision() -> None:
    x, y = blobs(40, d=4)
    case = Case.from_arrays((x, y), metadata={"cli_args": "--train t.npz"})
    kept = record_recipe(case, 15, 0, OofMethod.auto, None, "cpu", "bf16").metadata["cli_args"]
    assert kept == "--train t.npz --device cpu --precision bf16"
    default = record_recipe(case, 15, 0, OofMethod.auto, None).metadata["cli_args"]
    assert default == "--train t.npz"
