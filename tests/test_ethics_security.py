"""ethics.security: attacks agree with captum, robust vs undefended models, pickle scan, adversarial training."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import dlclinic
from dlclinic import Case, FitConfig
from dlclinic.functional.attacks import attack
from dlclinic.io.pickle_scan import scan_file, scan_pickle_bytes


def _small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 10 * 10, 3)
    ).eval()


def _image_data(n: int = 300) -> tuple[np.ndarray, np.ndarray, torch.nn.Module]:
    net = _small_cnn()
    x = np.random.default_rng(0).random((n, 1, 10, 10)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    y[: n // 10] = (y[: n // 10] + 1) % 3  # some rows start misclassified
    return x, y, net


@pytest.mark.parametrize("eps", [0.01, 0.03, 0.06])
def test_fgsm_and_pgd_agree_with_captum(eps: float) -> None:
    from captum.robust import FGSM, PGD

    x, y, net = _image_data()
    ce = torch.nn.CrossEntropyLoss(reduction="none")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    mine = attack(net, x, y, method="fgsm", epsilon=eps, lower=0.0, upper=1.0)
    adv = FGSM(net, loss_func=ce, lower_bound=0.0, upper_bound=1.0).perturb(xt, eps, yt)
    with torch.no_grad():
        ref = float(((net(adv).argmax(1) == yt).numpy() & mine.clean_correct).mean())
    assert abs(mine.robust_accuracy - ref) <= 0.01
    mine = attack(net, x, y, method="pgd_linf", epsilon=eps, lower=0.0, upper=1.0, steps=10)
    adv = PGD(net, loss_func=ce, lower_bound=0.0, upper_bound=1.0).perturb(xt, eps, 2.5 * eps / 10, 10, yt, norm="Linf")
    with torch.no_grad():
        ref = float(((net(adv).argmax(1) == yt).numpy() & mine.clean_correct).mean())
    # early stop keeps the first adversarial point, so it can only be at least as strong
    assert mine.robust_accuracy <= ref + 0.01 and abs(mine.robust_accuracy - ref) <= 0.01


def test_pgd_l2_respects_ball_and_range() -> None:
    x, y, net = _image_data(120)
    res = attack(
        net, x, y, method="pgd_l2", epsilon=0.05, lower=0.0, upper=1.0, steps=10, keep_inputs=True, random_start=True
    )
    assert res.x_adv is not None
    delta = (res.x_adv - x).reshape(len(x), -1)
    assert np.all(np.linalg.norm(delta, axis=1) <= 0.05 * np.sqrt(100) + 1e-4)
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    weaker = attack(net, x, y, method="fgsm", epsilon=0.05, lower=0.0, upper=1.0)
    assert res.robust_accuracy <= weaker.robust_accuracy + 0.02


def _weak_and_strong(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature 0 is strongly predictive (margin 3σ); features 1..40 each weakly (0.3σ)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 2.0 * y - 1.0
    x = rng.normal(size=(n, 41))
    x[:, 0] += 3.0 * s
    x[:, 1:] += 0.3 * s[:, None]
    return x.astype(np.float32), y


def _linear(weights: np.ndarray) -> torch.nn.Module:
    net = torch.nn.Linear(len(weights), 2)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(np.stack([-weights, weights]).astype(np.float32)))
        net.bias.zero_()
    return net.eval()


def test_undefended_model_warns_and_robust_model_is_ok(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = _weak_and_strong(600, 0)
    xt, yt = _weak_and_strong(400, 1)
    fragile = _linear(np.r_[0.0, np.ones(40)])  # relies on many weak features: small L∞ steps add up
    robust = _linear(np.r_[1.0, np.zeros(40)])  # relies on the one strong feature only
    opts = {"ethics.security": {"epsilon": 0.5, "epsilons": "0.5", "n_samples": 120}}
    bad = dlclinic.checkup(
        Case.from_arrays((x, y), (xt, yt), model=fragile), only=["ethics.security"], options=opts, cache_dir=tmp_path
    )["ethics.security"]
    good = dlclinic.checkup(
        Case.from_arrays((x, y), (xt, yt), model=robust), only=["ethics.security"], options=opts, cache_dir=tmp_path
    )["ethics.security"]
    assert bad.status in ("warn", "fail"), bad.summary
    assert good.status == "ok", good.summary
    assert good.metrics["robust_accuracy"] > bad.metrics["robust_accuracy"] + 0.3
    assert bad.remedy is not None and "treat ethics.security" in (bad.remedy.command or "")
    # the verdict follows the user's ε of interest: at a tiny ε the fragile model is fine
    small = dlclinic.checkup(
        Case.from_arrays((x, y), (xt, yt), model=fragile),
        only=["ethics.security"],
        options={"ethics.security": {"epsilon": 0.01, "epsilons": "0.01", "n_samples": 120}},
        cache_dir=tmp_path,
    )["ethics.security"]
    assert small.status == "ok", small.summary


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_flagged_and_never_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Evil(marker)))
    evil_zip = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": _Evil(marker)}, evil_zip)
    plain = tmp_path / "plain.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).state_dict(), plain)
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), legacy, _use_new_zipfile_serialization=False)
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(3, 2), whole)
    for proto in range(0, 6):
        assert scan_pickle_bytes(pickle.dumps(_Evil(marker), protocol=proto)).verdict == "dangerous"
    assert scan_file(evil).verdict == "dangerous" and any("system" in t for t in scan_file(evil).dangerous)
    assert scan_file(evil_zip).verdict == "dangerous"
    assert scan_file(plain).verdict == "safe"
    assert scan_file(legacy).verdict == "safe"
    assert scan_file(whole).verdict == "unknown_imports" and any("Linear" in t for t in scan_file(whole).unknown)
    assert not marker.exists()
    x, y = _weak_and_strong(100, 0)
    case = Case.from_arrays((x, y), (x, y), model=_linear(np.r_[1.0, np.zeros(40)]))
    res = dlclinic.checkup(
        case,
        only=["ethics.security"],
        options={"ethics.security": {"model_files": f"{evil},{plain}", "robustness": "false"}},
        cache_dir=tmp_path,
    )["ethics.security"]
    assert res.status == "fail" and any(f.code == "pickle_dangerous" for f in res.findings)
    ok = dlclinic.checkup(
        case,
        only=["ethics.security"],
        options={"ethics.security": {"model_files": str(plain), "robustness": "false"}},
        cache_dir=tmp_path,
    )["ethics.security"]
    assert ok.status == "ok", ok.summary
    assert not marker.exists()
    from dlclinic.cli import main

    assert main(["scan-model", str(evil)]) == 1
    assert main(["scan-model", str(plain)]) == 0
    assert not marker.exists()


@pytest.mark.slow
def test_adversarial_training_raises_robust_accuracy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = _weak_and_strong(800, 0)
    xt, yt = _weak_and_strong(300, 1)
    case = Case.from_arrays((x, y), (xt, yt))
    treatment, before, after = dlclinic.treat(
        case,
        "ethics.security",
        params={"epsilon": 0.5, "epochs": 10},
        fit_config=FitConfig(epochs=6),
        cache_dir=tmp_path,
        out_dir=tmp_path / "out",
    )
    assert (
        treatment.after["robust_accuracy_at_training_eps"] > treatment.before["robust_accuracy_at_training_eps"] + 0.3
    ), (treatment.before, treatment.after)
    assert (tmp_path / "out" / "robust_model.safetensors").exists()


@pytest.mark.slow
def test_demo_model_robust_accuracy_agrees_with_captum() -> None:
    from captum.robust import FGSM, PGD

    from dlclinic.api import prepare_model
    from dlclinic.demo import build_demo

    case = prepare_model(build_demo()[0])
    test = case.splits["test"]
    assert test.y is not None
    x, y, net = test.x[:200], test.y[:200], case.model.eval()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    ce = torch.nn.CrossEntropyLoss(reduction="none")
    for eps in (0.05, 0.1):
        mine = attack(net, x, y, method="fgsm", epsilon=eps, lower=0.0, upper=1.0)
        with torch.no_grad():
            ref = float(
                (
                    (
                        net(FGSM(net, loss_func=ce, lower_bound=0.0, upper_bound=1.0).perturb(xt, eps, yt)).argmax(1)
                        == yt
                    ).numpy()
                    & mine.clean_correct
                ).mean()
            )
        assert abs(mine.robust_accuracy - ref) <= 0.01
        mine = attack(net, x, y, method="pgd_linf", epsilon=eps, lower=0.0, upper=1.0, steps=10)
        with torch.no_grad():
            ref = float(
                (
                    (
                        net(
                            PGD(net, loss_func=ce, lower_bound=0.0, upper_bound=1.0).perturb(
                                xt, eps, 2.5 * eps / 10, 10, yt, norm="Linf"
                            )
                        ).argmax(1)
                        == yt
                    ).numpy()
                    & mine.clean_correct
                ).mean()
            )
        assert abs(mine.robust_accuracy - ref) <= 0.01


def test_multi_targeted_pgd_reaches_the_exact_worst_case_of_a_linear_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """For an affine 10-class model the best L∞ attack is closed-form; untargeted PGD misses some of it, the check's targeted passes do not."""
    rng = np.random.default_rng(0)
    k, d, n, eps = 10, 20, 400, 0.15
    w, b = rng.normal(size=(k, d)).astype(np.float32), rng.normal(size=k).astype(np.float32)
    net = torch.nn.Linear(d, k)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(w))
        net.bias.copy_(torch.from_numpy(b))
    x = rng.normal(size=(n, d)).astype(np.float32)
    z = x @ w.T + b
    y = z.argmax(1)
    gap = (z - z[np.arange(n), y][:, None]) + eps * np.abs(w[None] - w[y][:, None]).sum(2)  # best logit gain per class
    gap[np.arange(n), y] = -np.inf
    exact = float((gap.max(1) < 0).mean())
    untargeted = attack(net, x, y, method="pgd_linf", epsilon=eps, steps=5).robust_accuracy
    assert untargeted > exact + 0.01
    fooled = np.zeros(n, dtype=bool)
    for j in range(k - 1):
        live = np.flatnonzero(~fooled)
        others = np.argsort(-np.where(np.arange(k)[None] == y[:, None], -np.inf, z), axis=1)
        fooled[live] |= attack(
            net, x[live], y[live], method="pgd_linf", epsilon=eps, steps=5, targets=others[live, j]
        ).fooled
    assert float((~fooled).mean()) == pytest.approx(exact)
    # the check (scale = 1 per feature: x is standard normal) measures on a sample; targeted ≤ untargeted
    case = Case.from_arrays((x, y), (x, y), model=net)
    res = dlclinic.checkup(
        case,
        only=["ethics.security"],
        options={"ethics.security": {"epsilon": eps, "epsilons": str(eps), "n_samples": n}},
        cache_dir=tmp_path,
    )["ethics.security"]
    assert res.metrics["robust_accuracy"] <= res.metrics["robust_accuracy_untargeted"]
    off = dlclinic.checkup(
        case,
        only=["ethics.security"],
        options={"ethics.security": {"epsilon": eps, "epsilons": str(eps), "n_samples": n, "targets": 0}},
        cache_dir=tmp_path,
    )["ethics.security"]
    assert off.metrics["robust_accuracy"] == off.metrics["robust_accuracy_untargeted"]
