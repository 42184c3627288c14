"""Validation plans of the governance checks: ethics.security, ethics.misuse, ethics.compliance
and deployment.integration.

* ethics.security grades a *measurement* (PGD-L∞ retention = robust / clean accuracy at the ε
  of interest, on a 128-row test sample) against a threshold (50 %). Its ground truth is a
  model whose exact worst case is computable: a logistic regression (one affine map) on the
  real digits / breast-cancer data. For an affine model the largest logit change inside the
  clamped ε-box is closed-form, so the true retention on the whole test split is known; the
  builder picks ε so that it equals a target. Clean: true retention 0.65; defects: 0.45 …
  0.05 (the check must see a truth below its threshold through sampling noise and a
  5-step attack; the curve is measured at the ε of interest only). Unsafe model files are planted in the containers the scanner claims to read.
* ethics.misuse / ethics.compliance grade documentation: a card file written as a user would
  (JSON / YAML / TOML by seed), an audit trail written by :func:`append_audit`, a PII file, ids
  and a retraining recipe. Defects remove, blank or stub out fields, edit or delete audit
  records at several positions, drop what erasure needs.
* deployment.integration: a trained network behind a frozen input standardisation; defects make
  served / batch-scored / exported predictions differ from the offline ones by a controlled
  amount (batch-statistics preprocessing, noise at inference, an export path that scales the
  inputs). Everything runs in-process (FastAPI TestClient, no port).

Files a builder writes (cards, logs, model files) go to one private temporary folder per
process, removed when the process exits.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from validation.data import Splits, split
from validation.plan import (
    FLOAT_MODALITIES,
    NEW_MODALITIES,
    Defect,
    Plan,
    Trial,
    baseline,
    case_from,
    fast_fit,
    rng_for,
)

__all__ = ["PLANS"]

_WORKDIR: list[Path] = []


def _trial_dir(tag: str) -> Path:
    """A fresh folder for one trial's files (inside this process's private temporary folder)."""
    if not _WORKDIR:
        root = Path(tempfile.mkdtemp(prefix="dlclinic-validation-governance-"))
        atexit.register(shutil.rmtree, root, True)
        _WORKDIR.append(root)
    return Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=_WORKDIR[0]))


# ----------------------------------------------------------------------------- shared: an affine model


def _affine_module(mean: np.ndarray, std: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> Any:
    """``logits = ((x.flatten(1) − mean) / std) Wᵀ + b`` as an ``nn.Module`` (a logistic regression)."""
    return _Affine(
        torch.as_tensor(mean, dtype=torch.float32),
        torch.as_tensor(std, dtype=torch.float32),
        torch.as_tensor(weight, dtype=torch.float32),
        torch.as_tensor(bias, dtype=torch.float32),
    )


class _Affine(nn.Module):
    """A logistic regression on standardised inputs (weights fitted by scikit-learn)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x.flatten(1) - self.mean) / self.std)


def _logistic(s: Splits, seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """A logistic regression fitted on the train split; returns ``(module, A, c)`` with ``logits = x A ᵀ + c`` in raw units."""
    from sklearn.linear_model import LogisticRegression

    x = s.x_train.reshape(len(s.x_train), -1).astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit((x - mean) / std, s.y_train)
    w, b = clf.coef_, clf.intercept_
    if w.shape[0] == 1:  # binary: two logits whose difference is sklearn's decision function
        w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    module = _affine_module(mean, std, w, b)
    return module, w / std, b - (w / std) @ mean


# ----------------------------------------------------------------------------- ethics.security


def _exact_robust(
    a: np.ndarray, c: np.ndarray, x: np.ndarray, y: np.ndarray, eps: float, lo: Any, hi: Any, scale: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(clean_correct, robust_correct)`` of the affine model ``x Aᵀ + c`` against the best L∞
    attack the check can mount: ``x' = clamp(x + δ, lo, hi)``, ``|δ| ≤ ε · scale`` (exact: the
    feasible set is a box, and the logit gap towards every class is linear on it)."""
    xf = x.reshape(len(x), -1).astype(np.float64)
    lo_f = np.broadcast_to(np.asarray(lo, dtype=np.float64).reshape(-1), xf.shape[1:])
    hi_f = np.broadcast_to(np.asarray(hi, dtype=np.float64).reshape(-1), xf.shape[1:])
    sc = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), xf.shape[1:])
    low = np.clip(xf - eps * sc, lo_f, hi_f)
    high = np.clip(xf + eps * sc, lo_f, hi_f)
    z = xf @ a.T + c
    clean = z.argmax(1) == y
    g = a[None, :, :] - a[y][:, None, :]  # N×K×d: gradient of z_j − z_y
    best = np.where(g > 0, g * high[:, None, :], g * low[:, None, :]).sum(2) + (c[None, :] - c[y][:, None])
    best[np.arange(len(y)), y] = -np.inf
    return clean, clean & (best.max(1) < 0)


def _security_setup(modality: str, seed: int) -> tuple[Splits, Any, Any]:
    s = split(modality, seed, (0.5, 0.5, 0.0))
    case = case_from(s, modality, deploy=False)
    from dlclinic.challenges.ethics.security import input_bounds

    return s, case, input_bounds(case)


def _epsilon_for(a: np.ndarray, c: np.ndarray, s: Splits, bounds: Any, target: float) -> float:
    """The smallest ε at which the exact retention on the whole test split falls to ``target``."""
    lo, hi, scale = bounds

    def retention(eps: float) -> float:
        clean, rob = _exact_robust(a, c, s.x_test, s.y_test, eps, lo, hi, scale)
        return float(rob.sum() / max(clean.sum(), 1))

    a_, b_ = 0.0, 0.05
    while retention(b_) > target and b_ < 50:
        a_, b_ = b_, b_ * 2
    for _ in range(30):
        m = 0.5 * (a_ + b_)
        a_, b_ = (m, b_) if retention(m) > target else (a_, m)
    return b_


def _token_security_trial(seed: int) -> Trial:
    """Token ids: dlclinic's TokenBag trained on the split, the file scan only (``robustness=False``). No token
    model has a closed-form worst case under greedy substitution, so the attack's verdict has no ground truth here."""
    from dlclinic.core.recipe import fit, seed_everything

    s = split("tokens", seed, (0.5, 0.5, 0.0))
    seed_everything(seed)
    model = fit(baseline(s, "tokens"), s.x_train, s.y_train, fast_fit("tokens")).model.eval()
    return Trial(case_from(s, "tokens", deploy=False, model=model), options={"robustness": False})


def _security_trial(modality: str, seed: int, target: float) -> Trial:
    """A logistic regression and the ε of interest at which its exact retention on the test split is ``target``."""
    if modality == "tokens":
        return _token_security_trial(seed)
    s, _, bounds = _security_setup(modality, seed)
    model, a, c = _logistic(s, seed)
    eps = _epsilon_for(a, c, s, bounds, target)
    return Trial(case_from(s, modality, deploy=False, model=model), options={"epsilon": round(eps, 6), "epsilons": ()})


_CLEAN_RETENTION = 0.65


def _safe_weights(model: Any, folder: Path) -> str:
    """The model's ``state_dict`` written with ``torch.save`` (what the scanner must pass)."""
    path = folder / "weights.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def security_clean(modality: str, seed: int) -> Trial:
    """True retention 0.65 at the ε of interest (attack success 35 %, 0.7× the warn level); a ``state_dict`` checkpoint to scan."""
    t = _security_trial(modality, seed, _CLEAN_RETENTION)
    return Trial(t.case, options={**t.options, "model_files": (_safe_weights(t.case.model, _trial_dir("security")),)})


def security_not_robust(modality: str, success: float, seed: int) -> Trial:
    """True attack success rate ``success`` (fooled / correct) at the ε of interest; the check warns below 50 % retention."""
    t = _security_trial(modality, seed, 1.0 - success)
    return Trial(t.case, options={**t.options, "model_files": (_safe_weights(t.case.model, _trial_dir("security")),)})


class _Payload:
    """Unpickling this calls ``os.getcwd`` (harmless, but an ``os`` import: what a malicious file does)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import os

        return (os.getcwd, ())


def _unsafe_file(model: Any, folder: Path, container: int, malicious: bool) -> str:
    """A model file that runs code when loaded, in container 1 (bare pickle), 2 (``torch.save`` zip)
    or 3 (a second pickle after a clean one, joblib style); the code is the model's own class
    (a pickled module) or, when ``malicious``, an ``os`` call."""
    import pickle

    extra: Any = _Payload() if malicious else model
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    if container == 1:
        path = folder / "model.pkl"
        path.write_bytes(pickle.dumps({"weights": state, "extra": extra}))
    elif container == 2:
        path = folder / "model.pt"
        torch.save({"state_dict": model.state_dict(), "extra": extra}, path)
    else:
        path = folder / "model.joblib"
        path.write_bytes(pickle.dumps(state) + pickle.dumps(extra))
    return str(path)


def _security_file_defect(malicious: bool) -> Any:
    def build(modality: str, container: float, seed: int) -> Trial:
        t = _security_trial(modality, seed, _CLEAN_RETENTION)
        folder = _trial_dir("security")
        files = (_safe_weights(t.case.model, folder), _unsafe_file(t.case.model, folder, int(container), malicious))
        return Trial(t.case, options={**t.options, "model_files": files})

    return build


# ----------------------------------------------------------------------------- ethics.misuse


_CARD_TEXT: dict[str, Any] = {
    "model_name": "tumour-screen-mlp",
    "version": "1.4.0",
    "owner": "Diagnostics ML team, example hospital",
    "contact": "ml-team@example.org",
    "license": "internal use only",
    "intended_use": "Second reader for fine-needle aspirate measurements; a pathologist makes every decision",
    "intended_users": ["pathologists", "lab technicians"],
    "out_of_scope": ["screening without a pathologist", "patients under 18", "other tissue types"],
    "data_provenance": "Wisconsin diagnostic breast-cancer data (UCI, 569 cases), split at random",
    "limitations": "one site, one instrument; no demographic attributes recorded",
    "risks": "a false negative delays treatment",
    "ethical_considerations": "outputs are advisory only",
}
_COMPLIANCE_TEXT: dict[str, Any] = {
    "lawful_basis": "GDPR Art. 6(1)(e) and 9(2)(h): provision of health care",
    "data_controller": "Example hospital, data protection office",
    "retention": "raw measurements kept 10 years, then deleted; models retrained without erased rows",
    "dpia": "DPIA 2024-07 approved by the DPO",
    "human_oversight": "a pathologist confirms every prediction (AI Act Art. 14)",
    "risk_management": "risk register reviewed quarterly (AI Act Art. 9)",
    "post_market_monitoring": "dlclinic monitor on every weekly batch, alerts to the owner",
}
_REQUIRED = ("intended_use", "out_of_scope", "data_provenance", "owner")
_FORMATS = ("json", "yaml", "toml")


def _write_card(cfg: dict[str, Any], folder: Path, fmt: str) -> str:
    """The card file as a user writes it (``None`` values written as YAML nulls / JSON nulls; TOML has none: empty string)."""
    path = folder / f"card.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    elif fmt == "yaml":
        import yaml

        path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    else:
        lines = []
        for k, v in cfg.items():
            v = "" if v is None else v
            lines.append(f"{k} = {json.dumps(v, ensure_ascii=False)}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _governance_case(seed: int, *, ids: bool = True, factory: bool = True) -> Any:
    """The breast-cancer table with a logistic regression (its fingerprints are what the checks hash)."""
    import functools

    s = split("table", seed, (0.5, 0.5, 0.0))
    model, _, _ = _logistic(s, seed)
    kw: dict[str, Any] = {"model": model}
    if factory:
        kw["model_factory"] = functools.partial(
            _affine_module,
            model.mean.numpy(),
            model.std.numpy(),
            np.zeros_like(model.linear.weight.detach().numpy()),
            np.zeros(model.linear.bias.shape, dtype=np.float32),
        )
    if ids:
        kw["ids"] = {"train": np.array([f"patient-{seed}-{i:04d}" for i in range(len(s.y_train))])}
    return case_from(s, "table", deploy=False, **kw), s


def _misuse_card(seed: int) -> dict[str, Any]:
    """Required fields filled; each optional field present with probability 1/2 (seeded)."""
    rng = rng_for(seed, 11)
    return {k: v for k, v in _CARD_TEXT.items() if k in _REQUIRED or rng.random() < 0.5}


def misuse_clean(modality: str, seed: int) -> Trial:
    case, _ = _governance_case(seed)
    card = _write_card(_misuse_card(seed), _trial_dir("misuse"), _FORMATS[seed % 3])
    return Trial(case, options={"card_config": card})


def _damaged_card(seed: int, k: float, how: str) -> dict[str, Any]:
    rng = rng_for(seed, k, 12)
    cfg = _misuse_card(seed)
    hit = rng.choice(_REQUIRED, size=int(k), replace=False)
    blanks: tuple[Any, ...] = ("", "   ", [], None)
    stubs = ("TODO", "TBD", "…", "to be written")
    for i, f in enumerate(hit):
        if how == "missing":
            cfg.pop(str(f))
        elif how == "blank":
            cfg[str(f)] = blanks[(seed + i) % len(blanks)]
        else:
            cfg[str(f)] = stubs[(seed + i) % len(stubs)]
    return cfg


def _misuse_defect(how: str) -> Any:
    def build(modality: str, k: float, seed: int) -> Trial:
        case, _ = _governance_case(seed)
        card = _write_card(_damaged_card(seed, k, how), _trial_dir("misuse"), _FORMATS[seed % 3])
        return Trial(case, options={"card_config": card})

    return build


def misuse_no_card(modality: str, k: float, seed: int) -> Trial:
    case, _ = _governance_case(seed)
    return Trial(case)


# ----------------------------------------------------------------------------- ethics.compliance


def _pii_file(s: Splits, folder: Path, seed: int, emails: int = 0) -> str:
    """The train table as the CSV it came from, with an ``email`` contact in ``emails`` rows."""
    import pandas as pd

    df = pd.DataFrame(s.x_train, columns=[f"f{j}" for j in range(s.x_train.shape[1])])
    df.insert(0, "record", [f"r{seed}-{i}" for i in range(len(df))])
    contact = [""] * len(df)
    for i in rng_for(seed, emails, 13).choice(len(df), size=min(int(emails), len(df)), replace=False):
        contact[int(i)] = f"patient{int(i)}@example-mail.org"
    df["contact"] = contact
    path = folder / "train.csv"
    df.to_csv(path, index=False)
    return str(path)


def _audit_log(folder: Path, seed: int, case: Any) -> tuple[Path, int]:
    """An intact audit trail of 5–8 earlier runs, written by dlclinic's own :func:`append_audit`."""
    from dlclinic.governance.audit import append_audit

    log = folder / "audit.jsonl"
    n = 5 + seed % 4
    for i in range(n):
        append_audit(
            log,
            {
                "event": "checkup",
                "who": ["ana", "ben", "chen"][i % 3],
                "host": "ci-runner",
                "case": case.name,
                "cli_args": f"--test test.csv --run {i}",
                "model_source": case.model_source,
                "inputs_sha256": {"model": f"{seed:02d}{i:02d}" * 16},
                "versions": {"dlclinic": "0"},
            },
        )
    return log, n


def _compliance_trial(
    seed: int, *, drop: tuple[str, ...] = (), emails: int = 0, ids: bool = True, factory: bool = True
) -> tuple[Trial, Path, int]:
    case, s = _governance_case(seed, ids=ids, factory=factory)
    folder = _trial_dir("compliance")
    cfg = {k: v for k, v in {**_CARD_TEXT, **_COMPLIANCE_TEXT}.items() if k not in drop}
    card = _write_card(cfg, folder, _FORMATS[seed % 3])
    log, n = _audit_log(folder, seed, case)
    opts = {"card_config": card, "audit_log": str(log), "pii_files": (_pii_file(s, folder, seed, emails),)}
    return Trial(case, options=opts), log, n


def compliance_clean(modality: str, seed: int) -> Trial:
    """Complete card (lawful basis documented), an intact trail, a scanned table, ids and a recipe."""
    return _compliance_trial(seed)[0]


def compliance_missing_docs(modality: str, k: float, seed: int) -> Trial:
    """``k`` of the seven compliance fields absent from the card."""
    fields = list(_COMPLIANCE_TEXT)
    drop = tuple(str(f) for f in rng_for(seed, k, 14).choice(fields, size=int(k), replace=False))
    return _compliance_trial(seed, drop=drop)[0]


def compliance_pii_no_basis(modality: str, rows: float, seed: int) -> Trial:
    """Personal data (an e-mail column filled in ``rows`` rows) and no lawful basis documented."""
    return _compliance_trial(seed, drop=("lawful_basis",), emails=int(rows))[0]


def _tamper(how: str) -> Any:
    def build(modality: str, position: float, seed: int) -> Trial:
        trial, log, n = _compliance_trial(seed)
        lines = log.read_text(encoding="utf-8").splitlines()
        i = n - int(position)  # 1 = the newest record
        if how == "edit":
            rec = json.loads(lines[i])
            rec["who"] = "someone-else"
            lines[i] = json.dumps(rec, sort_keys=True)
        else:
            del lines[i]
        log.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return trial

    return build


def compliance_no_erasure(modality: str, level: float, seed: int) -> Trial:
    """1: no per-sample ids on train; 2: no ids and no retraining recipe (a model without factory)."""
    return _compliance_trial(seed, ids=False, factory=level < 2)[0]


# ----------------------------------------------------------------------------- deployment.integration


class _Served(nn.Module):
    """A trained network behind a frozen input standardisation (train mean/std), and three
    planted faults: ``batch_weight`` blends in the request batch's own statistics, ``noise``
    adds N(0, noise²) to the logits at inference, ``export_scale`` multiplies the standardised
    inputs by (1 + export_scale) only in the exported graph."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        mean: Any,
        std: Any,
        per_feature: bool,
        batch_weight: float = 0.0,
        noise: float = 0.0,
        export_scale: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.per_feature = per_feature
        self.batch_weight = float(batch_weight)
        self.noise = float(noise)
        self.export_scale = float(export_scale)

    def extra_repr(self) -> str:
        return f"batch_weight={self.batch_weight}, noise={self.noise}, export_scale={self.export_scale}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean, self.std
        if self.batch_weight:
            w = self.batch_weight
            bm = x.mean(0) if self.per_feature else x.mean()
            bs = x.std(0, unbiased=False) if self.per_feature else x.std(unbiased=False)
            mean = (1 - w) * mean + w * bm
            std = (1 - w) * std + w * bs + 1e-6
        z = (x - mean) / std
        if self.export_scale and torch.onnx.is_in_onnx_export():
            z = z * (1.0 + self.export_scale)
        out = self.net(z)
        if self.noise:
            out = out + self.noise * torch.randn_like(out)
        return out


class _ServedTokens(nn.Module):
    """Token ids: the trained network with the two faults that apply to ids (there is no input
    standardisation to give batch statistics): ``noise`` on the logits at inference, and
    ``export_scale`` multiplying the logits by (1 + export_scale) only in the exported graph."""

    def __init__(self, net: nn.Module, noise: float = 0.0, export_scale: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.noise = float(noise)
        self.export_scale = float(export_scale)

    def extra_repr(self) -> str:
        return f"noise={self.noise}, export_scale={self.export_scale}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.export_scale and torch.onnx.is_in_onnx_export():
            out = out * (1.0 + self.export_scale)
        if self.noise:
            out = out + self.noise * torch.randn_like(out)
        return out


def _integration_trial(modality: str, seed: int, **fault: float) -> Trial:
    from dlclinic.core.recipe import fit, seed_everything

    s = split(modality, seed, (0.5, 0.5, 0.0))
    if modality == "tokens":
        seed_everything(seed)
        served = _ServedTokens(fit(baseline(s, modality), s.x_train, s.y_train, fast_fit(modality)).model, **fault)
        return Trial(case_from(s, modality, deploy=False, model=served.eval()))
    per_feature = modality not in ("image", "mnist")
    if per_feature:
        mean, std = s.x_train.mean(0), s.x_train.std(0) + 1e-6
    else:
        mean, std = np.float32(s.x_train.mean()), np.float32(s.x_train.std())
    z = ((s.x_train - mean) / std).astype(np.float32)
    seed_everything(seed)
    net = fit(baseline(s, modality), z, s.y_train, fast_fit(modality)).model
    model = _Served(net, mean, std, per_feature, **fault)
    model.eval()
    return Trial(case_from(s, modality, deploy=False, model=model))


def integration_clean(modality: str, seed: int) -> Trial:
    return _integration_trial(modality, seed)


def _integration_defect(fault: str) -> Any:
    def build(modality: str, strength: float, seed: int) -> Trial:
        return _integration_trial(modality, seed, **{fault: float(strength)})

    return build


# ----------------------------------------------------------------------------- plans


_CONTAINERS = "container (1 = bare pickle, 2 = torch.save zip archive, 3 = second pickle of a joblib-style stream)"

_ALL = ("image", "table", *NEW_MODALITIES)

PLANS: tuple[Plan, ...] = (
    Plan(
        "ethics.security",
        0.05,
        "default; the check warns only when the upper end of the 95 % Wilson interval of the retention is below 50 %",
        _ALL,
        security_clean,
        (
            Defect(
                "not_robust",
                "true PGD-L∞ attack success rate at the ε of interest (fooled / correct; warn level 50 %)",
                (0.55, 0.75, 0.95),
                security_not_robust,
                quick_strengths=(0.75, 0.95),
                # token ids: no token model has a closed-form worst case under greedy substitution (no ground truth)
                modalities=FLOAT_MODALITIES,
                expect=("not_robust",),
            ),
            Defect(
                "pickled_code",
                "a pickled nn.Module next to the weights; " + _CONTAINERS,
                (1.0, 2.0, 3.0),
                _security_file_defect(False),
                quick_strengths=(2.0,),
                expect=("pickle_code",),
            ),
            Defect(
                "malicious_pickle",
                "an os call planted in a model file; " + _CONTAINERS,
                (1.0, 2.0, 3.0),
                _security_file_defect(True),
                quick_strengths=(3.0,),
                expect=("pickle_dangerous",),
            ),
        ),
        "logistic regressions on the real digits / breast-cancer / MNIST-1D data, whose exact worst case is closed-form: ε chosen so that the true retention on the whole test split is 0.65 (attack success 35 %, 0.7× the 50 % warn level); a state_dict checkpoint to scan. Token ids: dlclinic's TokenBag, file scan only (robustness=false: on ids both attacks are information unless the user declares a threat model, and no token model has a closed-form worst case, so the attacks are not validated there)",
    ),
    Plan(
        "ethics.misuse",
        0.05,
        "default (deterministic: warns when a required card field is missing)",
        ("table",),
        misuse_clean,
        (
            Defect(
                "missing_fields",
                "required card fields absent (of 4)",
                (1.0, 2.0, 4.0),
                _misuse_defect("missing"),
                quick_strengths=(1.0,),
                expect=("card_field_missing",),
            ),
            Defect(
                "blank_fields",
                'required card fields present but empty ("", spaces, [], null)',
                (1.0, 2.0, 4.0),
                _misuse_defect("blank"),
                quick_strengths=(1.0,),
                expect=("card_field_missing",),
            ),
            Defect(
                "placeholder_fields",
                "required card fields holding a placeholder (TODO, TBD, …)",
                (1.0, 2.0, 4.0),
                _misuse_defect("stub"),
                quick_strengths=(1.0,),
                expect=("card_field_missing",),
            ),
            Defect("no_card", "no card file at all", (1.0,), misuse_no_card, expect=("undocumented_use",)),
        ),
        "a card file (JSON / YAML / TOML by seed) with the four required fields written out and a random half of the optional ones; documentation only, so one modality",
        cost=0.5,
        not_validated={
            m: "documentation only: the check reads the card, audit trail and files, never the model's inputs, so the"
            " table case stands for every modality"
            for m in NEW_MODALITIES
        },
    ),
    Plan(
        "ethics.compliance",
        0.05,
        "default (deterministic: warns on any compliance gap, fails on a broken audit trail)",
        ("table",),
        compliance_clean,
        (
            Defect(
                "missing_documentation",
                "compliance fields absent from the card (of 7)",
                (1.0, 3.0, 7.0),
                compliance_missing_docs,
                quick_strengths=(1.0,),
                expect=("documentation_missing", "retention_missing", "pii_without_basis"),
            ),
            Defect(
                "pii_without_basis",
                "rows of the scanned table holding an e-mail address, no lawful basis documented",
                (1.0, 5.0, 50.0),
                compliance_pii_no_basis,
                quick_strengths=(1.0,),
                expect=("pii_without_basis",),
            ),
            Defect(
                "edited_record",
                "position of the edited audit record, counted from the newest (1 = newest)",
                (1.0, 2.0, 4.0),
                _tamper("edit"),
                quick_strengths=(1.0, 2.0),
                expect=("audit_tampered",),
            ),
            Defect(
                "deleted_record",
                "position of the deleted audit record, counted from the newest (1 = newest)",
                (1.0, 2.0, 4.0),
                _tamper("delete"),
                quick_strengths=(1.0, 2.0),
                expect=("audit_tampered",),
            ),
            Defect(
                "erasure_not_ready",
                "1 = no per-sample ids on train; 2 = no ids and no retraining recipe",
                (1.0, 2.0),
                compliance_no_erasure,
                quick_strengths=(2.0,),
                expect=("erasure_not_ready",),
            ),
        ),
        "a complete card (JSON / YAML / TOML by seed), an intact audit trail of 5–8 runs written by dlclinic, the train table scanned for PII with a lawful basis documented, per-sample ids and a retraining recipe; documentation only, so one modality",
        cost=0.5,
        not_validated={
            m: "documentation only: the check reads the card, audit trail and files, never the model's inputs, so the"
            " table case stands for every modality"
            for m in NEW_MODALITIES
        },
    ),
    Plan(
        "deployment.integration",
        0.05,
        "default (deterministic parity: served / file-scored probabilities within 1e-4, ONNX logits within 1e-3)",
        _ALL,
        integration_clean,
        (
            Defect(
                "batch_statistics",
                "weight of the request batch's own mean/std in the input standardisation",
                (0.001, 0.01, 0.1, 1.0),
                _integration_defect("batch_weight"),
                quick_strengths=(0.01, 1.0),
                modalities=FLOAT_MODALITIES,  # token ids are not standardised: there are no batch statistics to use
                expect=("served_mismatch", "file_scoring"),
            ),
            Defect(
                "nondeterministic",
                "std of noise added to the logits at inference",
                (1e-5, 1e-4, 1e-3, 1e-2),
                _integration_defect("noise"),
                quick_strengths=(1e-4, 1e-2),
                expect=("served_mismatch", "file_scoring", "onnx_mismatch"),
            ),
            Defect(
                "export_scaling",
                "relative scaling of the standardised inputs (token ids: of the logits) in the exported graph only",
                (1e-4, 1e-3, 1e-2, 1e-1),
                _integration_defect("export_scale"),
                quick_strengths=(1e-3, 1e-1),
                expect=("onnx_mismatch",),
            ),
        ),
        "dlclinic's baselines (MLP; CNN; 1-D CNN) trained behind a frozen input standardisation (TokenBag on token ids: none): served, file-scored and ONNX-exported predictions must equal the offline ones",
    ),
)
