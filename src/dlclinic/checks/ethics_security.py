"""ethics.security — adversarial robustness curve and model-file (pickle) safety.

Robustness: FGSM, PGD-L∞ and PGD-L2 (:mod:`dlclinic.functional.attacks`) on a stratified
sample of the test split over a range of ε, inputs clamped to the range seen in train.
ε is in units of the value range for images and of each feature's standard deviation for
vectors/tables. The verdict uses PGD-L∞ at the ε of interest (``epsilon``), untargeted
(cross-entropy) and then targeted towards each of the ``targets`` most likely other classes
on the samples it left correct (multi-targeted PGD: an untargeted attack alone
overestimated the robust accuracy of a 10-class logistic regression on digits by 5–15
points against its exact worst case in the validation suite): the
*retention* robust/clean accuracy, graded on the upper end of its 95 % Wilson interval,
so a warning on a robust model needs the sample to be unluckier than 1 in 40.
A gradient-masking sanity check flags a model on which the stronger attack (PGD) does
worse than the weaker one (FGSM) beyond sampling noise.

File safety: every pickle-based file in ``model_files`` (and ``case.metadata["model_path"]``)
is scanned without loading (:mod:`dlclinic.io.pickle_scan`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.functional.stats import wilson_interval

__all__ = ["CHECK", "SecurityOptions", "input_bounds", "run", "scan_model_files"]

ID = "ethics.security"


@dataclass(frozen=True)
class SecurityOptions:
    """Attack budget and thresholds.

    Attributes:
        epsilon: the ε of interest for the verdict (PGD-L∞), in units of the value range
            (images) or of each feature's standard deviation (vectors/tables).
        epsilons: the curve's ε values (the ε of interest is added when missing).
        n_samples: test rows attacked (stratified sample; small to stay within seconds).
        steps: PGD iterations.
        targets: at the ε of interest, targeted PGD-L∞ runs towards each of this many most
            likely other classes on the samples untargeted PGD did not fool (0 = untargeted only).
        warn_retention: robust/clean accuracy below this warns...
        fail_retention: ...and below this fails (both on the interval's upper end).
        model_files: pickle-based files to scan (comma-separated on the command line).
        robustness: run the attacks (set false to scan files only).
    """

    epsilon: float = 0.1
    epsilons: tuple[float, ...] = (0.03, 0.1, 0.2)
    n_samples: int = 128
    steps: int = 5
    targets: int = 9
    warn_retention: float = 0.5
    fail_retention: float = 0.1
    model_files: tuple[str, ...] = ()
    robustness: bool = True
    seed: int = 0


def input_bounds(case: Case) -> tuple[Any, Any, Any]:
    """``(lower, upper, scale)`` of valid inputs from train: global for images, per feature otherwise."""
    x = np.nan_to_num(case.train.x)
    if case.modality == "image":
        lo, hi = float(x.min()), float(x.max())
        return lo, hi, max(hi - lo, 1e-6)
    lo, hi = x.min(axis=0), x.max(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-6, scale, np.maximum(hi - lo, 1e-6))
    return lo, hi, scale.astype(np.float32)


def _sample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(y) <= n:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    try:
        rows, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    except ValueError:
        rows = np.random.default_rng(seed).choice(len(y), n, replace=False)
    return np.sort(rows)


def scan_model_files(paths: list[str]) -> tuple[Status, list[Finding], list[list[Any]]]:
    """Scan files; ``fail`` for dangerous imports, ``warn`` for unknown imports or unreadable files."""
    from dlclinic.io.pickle_scan import scan_file

    statuses: list[Status] = []
    findings: list[Finding] = []
    rows: list[list[Any]] = []
    for path in paths:
        scan = scan_file(path)
        rows.append(
            [path, scan.format, scan.verdict, scan.call_opcodes, ", ".join(scan.dangerous + scan.unknown)[:200] or "—"]
        )
        if scan.verdict == "dangerous":
            statuses.append("fail")
            findings.append(
                Finding(
                    "pickle_dangerous",
                    f"{path}: the pickle imports {', '.join(scan.dangerous)} and would call it when loaded; do not load it (it was not loaded here)",
                    extra={"path": path, "imports": list(scan.dangerous)},
                )
            )
        elif scan.verdict == "unknown_imports":
            statuses.append("warn")
            findings.append(
                Finding(
                    "pickle_code",
                    f"{path}: loading needs torch.load(weights_only=False), which runs code from {len(scan.unknown)} importable name(s) ({', '.join(scan.unknown[:4])}{' …' if len(scan.unknown) > 4 else ''}); save a state_dict as .safetensors or export a .pt2 instead",
                    extra={"path": path, "imports": list(scan.unknown)},
                )
            )
        elif scan.verdict == "error":
            statuses.append("warn")
            findings.append(Finding("pickle_unreadable", f"{path}: {scan.error}", extra={"path": path}))
        else:
            statuses.append("ok")
    return worst(statuses), findings, rows


def _curve(case: Case, options: SecurityOptions, epsilons: tuple[float, ...]) -> dict[str, np.ndarray]:
    from dlclinic.functional.attacks import robust_accuracy_curve

    test = case.splits["test"]
    assert test.y is not None
    rows = _sample(test.y, options.n_samples, options.seed)
    lo, hi, scale = input_bounds(case)
    curve = robust_accuracy_curve(
        case.model,
        np.nan_to_num(test.x[rows]),
        test.y[rows],
        (0.0, *epsilons),
        lower=lo,
        upper=hi,
        scale=scale,
        steps=options.steps,
        seed=options.seed,
    )
    out = {"epsilons": np.asarray(curve.epsilons), "n": np.asarray(curve.n), "clean": np.asarray(curve.clean_accuracy)}
    for m in curve.robust_accuracy:
        out[f"robust_{m}"] = curve.robust_accuracy[m]
        out[f"success_{m}"] = curve.success_rate[m]
    out["robust_targeted"] = np.asarray(
        _targeted(case, options, np.nan_to_num(test.x[rows]), test.y[rows], lo, hi, scale)
    )
    return out


def _targeted(
    case: Case, options: SecurityOptions, x: np.ndarray, y: np.ndarray, lo: Any, hi: Any, scale: Any
) -> float:
    """Multi-targeted robust accuracy at the ε of interest (NaN when off); see :func:`~dlclinic.functional.attacks.multi_targeted_accuracy`."""
    from dlclinic.functional.attacks import multi_targeted_accuracy

    k = min(int(options.targets), case.n_classes - 1)
    if k <= 0 or options.epsilon <= 0:
        return float("nan")
    return multi_targeted_accuracy(
        case.model,
        x,
        y,
        epsilon=options.epsilon,
        targets=k,
        lower=lo,
        upper=hi,
        scale=scale,
        steps=options.steps,
        seed=options.seed,
    )


def run(case: Case, evidence: Evidence, options: SecurityOptions) -> CheckResult:
    """Robust-accuracy curve under FGSM/PGD and a pickle scan of the model files."""
    files = [str(f) for f in options.model_files]
    meta_path = case.metadata.get("model_path")
    if isinstance(meta_path, str) and meta_path not in files:
        files.append(meta_path)
    statuses: list[Status] = []
    findings: list[Finding] = []
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"plots": [], "tables": []}
    notes: list[str] = []
    if files:
        st, fnd, rows = scan_model_files(files)
        statuses.append(st)
        findings += fnd
        metrics["model_files_scanned"] = len(files)
        metrics["model_files_unsafe"] = sum(1 for f in fnd if f.code in ("pickle_dangerous", "pickle_code"))
        details["tables"].append(
            {
                "title": "Model-file safety scan (pickle opcodes; nothing was loaded)",
                "columns": ["file", "format", "verdict", "call opcodes", "imports outside the allow-list"],
                "rows": rows,
            }
        )
    else:
        notes.append("no model file scanned (pass --option ethics.security.model_files=PATH)")
    test = case.get("test")
    robust_part = (
        options.robustness
        and test is not None
        and test.labelled
        and hasattr(case.model, "parameters")
        and callable(case.model)
    )
    if options.robustness and not robust_part:
        notes.append("robustness not measured: needs a labelled test split and a PyTorch model (gradients)")
    retention = None
    if robust_part:
        eps_list = tuple(sorted({float(e) for e in options.epsilons} | {float(options.epsilon)}))
        data = evidence.cached(
            "ethics.security.curve",
            {
                "eps": eps_list,
                "eps_of_interest": float(options.epsilon),
                "n": options.n_samples,
                "steps": options.steps,
                "targets": options.targets,
                "seed": options.seed,
                "v": 2,
            },
            lambda: _curve(case, options, eps_list),
        )
        eps = data["epsilons"]
        n = int(data["n"])
        clean = float(data["clean"])
        i = int(np.argmin(np.abs(eps - options.epsilon)))
        rob_untargeted = float(data["robust_pgd_linf"][i])
        rob_targeted = float(data["robust_targeted"])
        rob = min(rob_untargeted, rob_targeted) if np.isfinite(rob_targeted) else rob_untargeted
        rob_fgsm = float(data["robust_fgsm"][i])
        rob_l2 = float(data["robust_pgd_l2"][i])
        low, high = wilson_interval(round(rob * n), n)
        retention = rob / clean if clean > 0 else float("nan")
        retention_high = high / clean if clean > 0 else float("nan")
        st_rob: Status = "ok"
        if clean > 0 and retention_high < options.fail_retention:
            st_rob = "fail"
        elif clean > 0 and retention_high < options.warn_retention:
            st_rob = "warn"
        statuses.append(st_rob)
        if st_rob != "ok":
            findings.append(
                Finding(
                    "not_robust",
                    f"PGD-L∞ at ε={options.epsilon:g} leaves {rob:.1%} of {n} test samples correct (95 % CI {low:.1%}–{high:.1%}) vs {clean:.1%} clean: {1 - retention:.0%} of the correct predictions can be flipped",
                    split="test",
                )
            )
        # gradient masking: the stronger attack must not do worse than the weaker one
        masked = [
            (float(e), float(f), float(p))
            for e, f, p in zip(eps, data["robust_fgsm"], data["robust_pgd_linf"])
            if p - f > 2.0 / math.sqrt(n) and e > 0
        ]
        if masked:
            statuses.append("warn")
            e, f, p = masked[0]
            findings.append(
                Finding(
                    "gradient_masking",
                    f"PGD leaves more samples correct than FGSM at ε={e:g} ({p:.1%} vs {f:.1%}): gradients may be masked, so these robust accuracies may be overestimates; try random starts or a black-box attack",
                    split="test",
                )
            )
        metrics.update(
            clean_accuracy=clean,
            robust_accuracy=rob,
            robust_accuracy_ci_low=low,
            robust_accuracy_ci_high=high,
            retention=retention,
            robust_accuracy_untargeted=rob_untargeted,
            robust_accuracy_fgsm=rob_fgsm,
            robust_accuracy_pgd_l2=rob_l2,
            attack_success_rate=1.0 - retention if clean > 0 else float("nan"),
            epsilon=options.epsilon,
            n_attacked=n,
        )
        details["plots"].append(
            {
                "kind": "line",
                "title": "Robust accuracy vs ε (test sample)",
                "xlabel": "ε (" + ("fraction of value range" if case.modality == "image" else "feature std") + ")",
                "ylabel": "accuracy",
                "series": [
                    {"label": m.replace("_", "-").upper(), "x": eps.tolist(), "y": data[f"robust_{m}"].tolist()}
                    for m in ("fgsm", "pgd_linf", "pgd_l2")
                ],
            }
        )
        details["tables"].append(
            {
                "title": "Attack success rate (fooled / initially correct)",
                "columns": ["ε", "FGSM", "PGD-L∞", "PGD-L2"],
                "rows": [
                    [float(e), float(a), float(b), float(c)]
                    for e, a, b, c in zip(eps, data["success_fgsm"], data["success_pgd_linf"], data["success_pgd_l2"])
                ],
            }
        )
    if not statuses:
        return CheckResult(id=ID, status="not_examined", summary="Nothing to examine: " + "; ".join(notes) + ".")
    status = worst(statuses)
    bits = []
    if retention is not None:
        bits.append(
            f"under PGD-L∞ at ε={options.epsilon:g} accuracy falls from {metrics['clean_accuracy']:.1%} to {metrics['robust_accuracy']:.1%} ({metrics['n_attacked']} test samples)"
        )
    if files:
        bad = metrics["model_files_unsafe"]
        bits.append(
            f"{bad} of {len(files)} model file(s) would run code when loaded"
            if bad
            else f"{len(files)} model file(s) scanned, none runs code when loaded"
        )
    summary = "; ".join(bits) + "." if bits else ""
    summary = summary[:1].upper() + summary[1:]
    if notes:
        summary += " Not measured: " + "; ".join(notes) + "."
    remedy = None
    if status in ("warn", "fail"):
        if any(f.code.startswith("pickle") for f in findings):
            remedy = Remedy(
                command=None,
                description="re-save the weights as .safetensors (state_dict) or export a .pt2 with torch.export; never torch.load(weights_only=False) a file you did not write",
            )
        else:
            remedy = Remedy(
                command=f"dlclinic treat ethics.security {case.metadata.get('cli_args', '<data options>')}".strip(),
                description="adversarial training (PGD, or FGSM with random start) with the same recipe, then the robust accuracy measured again",
            )
    return CheckResult(
        id=ID,
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={
            "retention.warn": options.warn_retention,
            "retention.fail": options.fail_retention,
            "epsilon": options.epsilon,
        },
        findings=tuple(findings),
        remedy=remedy,
        details=details,
    )


CHECK = CheckSpec(
    id=ID,
    requires=(),
    options=SecurityOptions,
    run=run,
    description="robust accuracy under FGSM / PGD-L∞ / PGD-L2 over ε, attack success rate, gradient-masking sanity check; pickle opcode scan of model files",
)
