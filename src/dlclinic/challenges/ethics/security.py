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
worse than the weaker one (FGSM) beyond sampling noise. Float sequences (N×T, N×C×T) take
this path with ε in units of each (channel, step) value's standard deviation.

Token ids (``case.modality == "tokens"``, id 0 = padding) are discrete, so two threat
models replace it (:mod:`dlclinic.functional.token_attacks`), both on the same stratified
test sample and both graded on retention with the same thresholds:

* embedding-space L2 PGD: a hook on the embedding layer (``embedding_layer``, default the
  first ``nn.Embedding``) moves each real token's vector by at most ε × the median L2 norm
  of the embedding rows of the train vocabulary (padding never); a curve over ε with one
  fast-gradient step (FGM) and PGD-L2, the verdict at the ε of interest;
* greedy token substitution: at most b = ``substitution_budget`` of a row's real tokens
  (at least 1) replaced by ids of the train vocabulary, ranked by HotFlip's first-order
  estimate and verified by forward passes, until the prediction flips. The realistic
  attacker; it does not know whether a substitution changes the true class.

File safety: every pickle-based file in ``model_files`` (and ``case.metadata["model_path"]``)
is scanned without loading (:mod:`dlclinic.io.pickle_scan`).

The remedy: adversarial training, then the robust accuracy measured again.

Two recipes on the case's architecture (a fresh model from its factory):

* ``fgsm_rs`` — "fast" adversarial training (Wong, Rice & Kolter 2020, "Fast is better
  than free"): FGSM from a uniform random start in the ε-ball, step 1.25 ε; one extra
  forward/backward per batch.
* ``pgd`` — Madry et al. 2018: ``steps`` PGD-L∞ iterations per batch (stronger, slower).

ε uses the check's units (value range for images, feature std for tables), inputs stay
in the valid range seen in train. A fraction ``clean_fraction`` of each batch is kept
clean, which limits the drop in clean accuracy. The before/after numbers are the same
ethics.security check (PGD-L∞ at the ε of interest) on both models.

Token models train in embedding space (:func:`embedding_adversarial_fit`, Miyato et al.
2017): the same two recipes as L2 steps on the embedding layer's output, ε per token in
units of the median embedding norm; before/after: the check (embedding PGD and the
substitution attack) and embedding PGD-L2 at the training ε.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from dlclinic.core.atomic import write_weights
from dlclinic.core.case import Case, Split, usable_inputs
from dlclinic.core.device import on_device
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import first_output, model_device, model_tensors
from dlclinic.core.recipe import prepare_inputs, seed_everything
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.functional.attacks import attack, multi_targeted_accuracy, robust_accuracy_curve
from dlclinic.functional.stats import wilson_interval
from dlclinic.functional.token_attacks import (
    embedded_width,
    embedding_pgd,
    embedding_pgd_delta,
    embedding_robustness_curve,
    greedy_substitution,
    median_embedding_norm,
    offset_embeddings,
    token_vocabulary,
)
from dlclinic.io.pickle_scan import scan_file

__all__ = [
    "AdversarialParams",
    "CHECK",
    "REMEDY",
    "SecurityOptions",
    "adversarial_fit",
    "embedding_adversarial_fit",
    "input_bounds",
    "run",
    "scan_model_files",
    "treat_security",
]

ID = "ethics.security"
PAD_ID = 0  # token models: id 0 is padding


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
        substitution_budget: token models: substitutions per row of the greedy attack, a
            fraction of the row's real tokens (at least 1) when < 1, else a count.
        substitution_candidates: token models: first-order candidates verified by a forward
            pass at each greedy step.
        embedding_layer: token models: the name of the embedding module attacked (default
            the first ``nn.Embedding``).
        grade_tokens: token models: grade both attacks on retention. Off by default, when
            they are information: the substitution attack has no semantic constraint (it
            may swap the very words that make the class, changing the true label, not
            fooling the model), and embedding-space perturbations are not text; set it when
            this threat model is the one you defend against.
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
    substitution_budget: float = 0.1
    substitution_candidates: int = field(default=8, metadata={"min": 1})
    embedding_layer: str | None = None
    grade_tokens: bool = False

    def __post_init__(self) -> None:
        b = self.substitution_budget
        if not (0 < b < 1 or (b >= 1 and b == int(b))):
            raise ConfigError(
                f"`0 < substitution_budget < 1` (a fraction of each row's real tokens) or a whole count >= 1 must hold, but got substitution_budget={b!r}"
            )


def input_bounds(case: Case) -> tuple[Any, Any, Any]:
    """``(lower, upper, scale)`` of valid inputs from train: global for images, per feature otherwise."""
    x = usable_inputs(case.train.x)
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
    try:
        rows, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    except ValueError:
        rows = np.random.default_rng(seed).choice(len(y), n, replace=False)
    return np.sort(rows)


def scan_model_files(paths: list[str]) -> tuple[Status, list[Finding], list[list[Any]]]:
    """Scan files; ``fail`` for dangerous imports, ``warn`` for unknown imports or unreadable files."""
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
    test = case.splits["test"]
    assert test.y is not None
    rows = _sample(test.y, options.n_samples, options.seed)
    lo, hi, scale = input_bounds(case)
    curve = robust_accuracy_curve(
        case.model,
        usable_inputs(test.x[rows]),
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
        _targeted(case, options, usable_inputs(test.x[rows]), test.y[rows], lo, hi, scale)
    )
    return out


def _targeted(
    case: Case, options: SecurityOptions, x: np.ndarray, y: np.ndarray, lo: Any, hi: Any, scale: Any
) -> float:
    """Multi-targeted robust accuracy at the ε of interest (NaN when off); see :func:`~dlclinic.functional.attacks.multi_targeted_accuracy`."""
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


def _model_files(case: Case, options: SecurityOptions) -> list[str]:
    files = [str(f) for f in options.model_files]
    meta_path = case.metadata.get("model_path")
    if isinstance(meta_path, str) and meta_path not in files:
        files.append(meta_path)
    return files


@dataclass
class _Parts:
    """What the file scan and the attacks found, gathered for one CheckResult."""

    statuses: list[Status] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=lambda: {"plots": [], "tables": []})
    notes: list[str] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)


def _scan_part(files: list[str], parts: _Parts) -> None:
    if not files:
        parts.notes.append("no model file scanned (pass --option ethics.security.model_files=PATH)")
        return
    st, fnd, rows = scan_model_files(files)
    parts.statuses.append(st)
    parts.findings += fnd
    parts.metrics["model_files_scanned"] = len(files)
    parts.metrics["model_files_unsafe"] = sum(1 for f in fnd if f.code in ("pickle_dangerous", "pickle_code"))
    parts.details["tables"].append(
        {
            "title": "Model-file safety scan (pickle opcodes; nothing was loaded)",
            "columns": ["file", "format", "verdict", "call opcodes", "imports outside the allow-list"],
            "rows": rows,
        }
    )


def _robust_curve(case: Case, evidence: Evidence, options: SecurityOptions) -> dict[str, np.ndarray]:
    eps_list = tuple(sorted({float(e) for e in options.epsilons} | {float(options.epsilon)}))
    return evidence.cached(
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


def _masking_finding(
    data: dict[str, np.ndarray], n: int, weak: str = "fgsm", strong: str = "pgd_linf"
) -> Finding | None:
    """Gradient masking: the stronger attack (PGD) must not do worse than the weaker one (one step)."""
    masked = [
        (float(e), float(f), float(p))
        for e, f, p in zip(data["epsilons"], data[f"robust_{weak}"], data[f"robust_{strong}"])
        if p - f > 2.0 / math.sqrt(n) and e > 0
    ]
    if not masked:
        return None
    e, f, p = masked[0]
    return Finding(
        "gradient_masking",
        f"PGD leaves more samples correct than {weak.upper()} at ε={e:g} ({p:.1%} vs {f:.1%}): gradients may be masked, so these robust accuracies may be overestimates; try random starts or a black-box attack",
        split="test",
    )


def _curve_views(case: Case, data: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The robust-accuracy plot and the attack-success table."""
    eps = data["epsilons"]
    plot = {
        "kind": "line",
        "title": "Robust accuracy vs ε (test sample)",
        "xlabel": "ε (" + ("fraction of value range" if case.modality == "image" else "feature std") + ")",
        "ylabel": "accuracy",
        "series": [
            {"label": m.replace("_", "-").upper(), "x": eps.tolist(), "y": data[f"robust_{m}"].tolist()}
            for m in ("fgsm", "pgd_linf", "pgd_l2")
        ],
    }
    table = {
        "title": "Attack success rate (fooled / initially correct)",
        "columns": ["ε", "FGSM", "PGD-L∞", "PGD-L2"],
        "rows": [
            [float(e), float(a), float(b), float(c)]
            for e, a, b, c in zip(eps, data["success_fgsm"], data["success_pgd_linf"], data["success_pgd_l2"])
        ],
    }
    return plot, table


def _grade_retention(rob: float, clean: float, n: int, options: SecurityOptions) -> tuple[Status, float, float, float]:
    """``(status, robust CI low, robust CI high, retention)``: graded on the retention's upper bound (robust CI high / clean)."""
    low, high = wilson_interval(round(rob * n), n)
    retention = rob / clean if clean > 0 else float("nan")
    retention_high = high / clean if clean > 0 else float("nan")
    status: Status = "ok"
    if clean > 0 and retention_high < options.fail_retention:
        status = "fail"
    elif clean > 0 and retention_high < options.warn_retention:
        status = "warn"
    return status, low, high, retention


def _grade_robust(
    parts: _Parts,
    options: SecurityOptions,
    outcome: tuple[float, float, int],
    attack_text: str,
    masking: Finding | None,
) -> None:
    """Grade robust accuracy ``(robust, clean, n)`` at the ε of interest: status, ``not_robust``, masking, the common metrics."""
    rob, clean, n = outcome
    status, low, high, retention = _grade_retention(rob, clean, n, options)
    parts.statuses.append(status)
    if status != "ok":
        parts.findings.append(
            Finding(
                "not_robust",
                f"{attack_text} leaves {rob:.1%} of {n} test samples correct (95 % CI {low:.1%}–{high:.1%}) vs {clean:.1%} clean: {1 - retention:.0%} of the correct predictions can be flipped",
                split="test",
            )
        )
    if masking is not None:
        parts.statuses.append("warn")
        parts.findings.append(masking)
    parts.metrics.update(
        clean_accuracy=clean,
        robust_accuracy=rob,
        robust_accuracy_ci_low=low,
        robust_accuracy_ci_high=high,
        retention=retention,
        attack_success_rate=1.0 - retention if clean > 0 else float("nan"),
        epsilon=options.epsilon,
        n_attacked=n,
    )


def _robust_part(case: Case, evidence: Evidence, options: SecurityOptions, parts: _Parts) -> None:
    """PGD-L∞ (untargeted, then multi-targeted) at the ε of interest, graded on the retention's upper bound."""
    data = _robust_curve(case, evidence, options)
    eps = data["epsilons"]
    n = int(data["n"])
    clean = float(data["clean"])
    i = int(np.argmin(np.abs(eps - options.epsilon)))
    rob_untargeted = float(data["robust_pgd_linf"][i])
    rob_targeted = float(data["robust_targeted"])
    rob = min(rob_untargeted, rob_targeted) if np.isfinite(rob_targeted) else rob_untargeted
    _grade_robust(parts, options, (rob, clean, n), f"PGD-L∞ at ε={options.epsilon:g}", _masking_finding(data, n))
    parts.metrics.update(
        robust_accuracy_untargeted=rob_untargeted,
        robust_accuracy_fgsm=float(data["robust_fgsm"][i]),
        robust_accuracy_pgd_l2=float(data["robust_pgd_l2"][i]),
    )
    plot, table = _curve_views(case, data)
    parts.details["plots"].append(plot)
    parts.details["tables"].append(table)
    unit = "the value range" if case.modality == "image" else "each input value's train standard deviation"
    parts.details["threat_model"] = [
        f"white-box PGD-L∞ on the inputs: each value moved by at most ε × {unit}, inputs kept in the range seen in train"
    ]
    parts.headline.append(
        f"under PGD-L∞ at ε={options.epsilon:g} accuracy falls from {clean:.1%} to {rob:.1%} ({n} test samples)"
    )


# -- token ids: embedding-space PGD and greedy substitution --------------------------------------

TOKEN_PGD_THREAT = "embedding-space L2 PGD: each real token's embedding moved by at most ε × the median L2 norm of the embedding rows of the train vocabulary (padding never)"


def _substitution_threat(budget: float) -> str:
    """The discrete threat model in words."""
    b = f"b = {budget:.0%} of the row's real tokens, at least 1" if budget < 1 else f"b = {int(budget)}"
    return f"greedy substitution of ≤ b tokens per row ({b}) from the train vocabulary, HotFlip-ranked, each step verified by a forward pass; padding never"


def _token_curve(case: Case, options: SecurityOptions, epsilons: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Embedding-space FGM/PGD curve and the greedy substitution attack on the stratified test sample."""
    test = case.splits["test"]
    assert test.y is not None
    rows = _sample(test.y, options.n_samples, options.seed)
    ids, y = np.asarray(test.x[rows], dtype=np.int64), test.y[rows]
    layer = options.embedding_layer
    width = embedded_width(case.model, ids, layer)  # packed inputs (ids + mask): the ids come first
    train_ids = case.train.x[:, :width]
    radius = median_embedding_norm(case.model, train_ids, layer, pad_id=PAD_ID)
    curve = embedding_robustness_curve(
        case.model, ids, y, (0.0, *epsilons), radius=radius, steps=options.steps, layer=layer, pad_id=PAD_ID
    )
    sub = greedy_substitution(
        case.model,
        ids,
        y,
        vocabulary=token_vocabulary(train_ids, pad_id=PAD_ID),
        budget=options.substitution_budget,
        candidates=options.substitution_candidates,
        layer=layer,
        pad_id=PAD_ID,
    )
    out = {"epsilons": np.asarray(curve.epsilons), "n": np.asarray(curve.n), "clean": np.asarray(curve.clean_accuracy)}
    for m in curve.robust_accuracy:
        out[f"robust_{m}"] = curve.robust_accuracy[m]
        out[f"success_{m}"] = curve.success_rate[m]
    out.update(
        radius=np.asarray(radius),
        width=np.asarray(width),
        rows=rows,
        sub_clean=sub.clean_correct,
        sub_fooled=sub.fooled,
        sub_budget=sub.budget,
        sub_used=sub.substitutions,
        sub_evaluations=np.asarray(sub.evaluations),
        sub_x_adv=sub.x_adv if sub.x_adv is not None else ids,
    )
    return out


def _token_views(case: Case, data: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The embedding-space curve and its success table."""
    eps = data["epsilons"]
    names = {"fgm": "FGM (one step)", "pgd_l2": "PGD-L2"}
    plot = {
        "kind": "line",
        "title": "Robust accuracy vs ε, embedding-space attack (test sample)",
        "xlabel": "ε (per token, fraction of the median embedding norm)",
        "ylabel": "accuracy",
        "series": [{"label": names[m], "x": eps.tolist(), "y": data[f"robust_{m}"].tolist()} for m in names],
    }
    table = {
        "title": "Embedding-space attack success rate (fooled / initially correct)",
        "columns": ["ε", "FGM", "PGD-L2"],
        "rows": [[float(e), float(a), float(b)] for e, a, b in zip(eps, data["success_fgm"], data["success_pgd_l2"])],
    }
    return plot, table


def _flipped_rows(case: Case, data: dict[str, np.ndarray], shown: int = 8) -> dict[str, Any]:
    """Up to ``shown`` rows the substitution attack flipped, substituted tokens shown ``old→new`` in red."""
    vocab = case.metadata.get("vocabulary")
    words = list(vocab) if isinstance(vocab, (list, tuple)) else []

    def text(i: int) -> str:
        return str(words[i]) if 0 <= i < len(words) else f"#{i}"

    x = case.splits["test"].x
    rows = []
    for j in np.flatnonzero(data["sub_fooled"])[:shown]:
        r = int(data["rows"][j])
        width = int(data["width"])
        old, new = np.asarray(x[r][:width], dtype=np.int64), data["sub_x_adv"][j][:width]
        tokens = [
            {"text": text(int(a)) if a == b else f"{text(int(a))}→{text(int(b))}", "score": 0.0 if a == b else 1.0}
            for a, b in zip(old[old != PAD_ID], new[old != PAD_ID])
        ]
        rows.append({"caption": f"row {r}: {int(data['sub_used'][j])} substitution(s) flip it", "tokens": tokens})
    return {
        "title": "Rows flipped by greedy token substitution (substituted tokens in red)",
        "split": "test",
        "rows": rows,
    }


def _substitution_part(case: Case, data: dict[str, np.ndarray], options: SecurityOptions, parts: _Parts) -> None:
    """The discrete attack, graded like the continuous one: retention of accuracy under ≤ b substitutions."""
    clean_rows, fooled = data["sub_clean"].astype(bool), data["sub_fooled"].astype(bool)
    n = len(clean_rows)
    clean, rob = float(clean_rows.mean()), float((clean_rows & ~fooled).mean())
    status, low, high, retention = _grade_retention(rob, clean, n, options)
    parts.statuses.append(status)
    budget = data["sub_budget"]
    threat = _substitution_threat(options.substitution_budget)
    if status != "ok":
        parts.findings.append(
            Finding(
                "substitution_flips",
                f"greedy token substitution flips {1 - retention:.0%} of the correct predictions with ≤ {int(np.median(budget))} substituted tokens in the median row ({threat}): {rob:.1%} of {n} test rows stay correct (95 % CI {low:.1%}–{high:.1%}) vs {clean:.1%} clean",
                split="test",
                indices=tuple(int(r) for r in data["rows"][fooled]),
            )
        )
    used = data["sub_used"][fooled]
    parts.metrics.update(
        substitution_robust_accuracy=rob,
        substitution_robust_accuracy_ci_low=low,
        substitution_robust_accuracy_ci_high=high,
        substitution_retention=retention,
        substitution_success_rate=1.0 - retention if clean > 0 else float("nan"),
        substitution_budget=options.substitution_budget,
        substitution_budget_median=float(np.median(budget)),
        substitutions_to_flip_mean=float(used.mean()) if len(used) else float("nan"),
        substitution_evaluations=int(data["sub_evaluations"]),
    )
    parts.details["tables"].append(
        {
            "title": "Greedy token substitution (" + threat + ")",
            "columns": [
                "rows attacked",
                "correct before",
                "flipped",
                "success rate",
                "median budget",
                "model evaluations",
            ],
            "rows": [
                [
                    n,
                    int(clean_rows.sum()),
                    int(fooled.sum()),
                    parts.metrics["substitution_success_rate"],
                    float(np.median(budget)),
                    int(data["sub_evaluations"]),
                ]
            ],
        }
    )
    if fooled.any():
        parts.details.setdefault("tokens", []).append(_flipped_rows(case, data))
    parts.headline.append(
        f"greedy substitution of ≤ {int(np.median(budget))} tokens in the median row (from the train vocabulary) leaves {rob:.1%} correct ({int(data['sub_evaluations'])} model evaluations)"
    )


def _token_part(case: Case, evidence: Evidence, options: SecurityOptions, parts: _Parts) -> None:
    """Token ids: L2 PGD in embedding space at the ε of interest and greedy substitution, both graded on retention."""
    eps_list = tuple(sorted({float(e) for e in options.epsilons} | {float(options.epsilon)}))
    params = {
        "eps": eps_list,
        "n": options.n_samples,
        "steps": options.steps,
        "seed": options.seed,
        "budget": options.substitution_budget,
        "candidates": options.substitution_candidates,
        "layer": options.embedding_layer,
        "v": 2,
    }
    try:
        data = evidence.cached("ethics.security.tokens", params, lambda: _token_curve(case, options, eps_list))
    except ValueError as exc:  # no per-token embedding layer (e.g. only an nn.EmbeddingBag)
        parts.notes.append(f"robustness not measured: {exc}")
        return
    graded_from = len(parts.statuses)
    eps, n, clean = data["epsilons"], int(data["n"]), float(data["clean"])
    i = int(np.argmin(np.abs(eps - options.epsilon)))
    rob = float(data["robust_pgd_l2"][i])
    _grade_robust(
        parts,
        options,
        (rob, clean, n),
        f"embedding-space PGD-L2 at ε={options.epsilon:g} (× the median embedding norm, per token)",
        _masking_finding(data, n, weak="fgm", strong="pgd_l2"),
    )
    parts.metrics.update(
        robust_accuracy_fgm=float(data["robust_fgm"][i]),
        embedding_norm_median=float(data["radius"]),
    )
    plot, table = _token_views(case, data)
    parts.details["plots"].append(plot)
    parts.details["tables"].append(table)
    parts.details["threat_model"] = [TOKEN_PGD_THREAT, _substitution_threat(options.substitution_budget)]
    parts.headline.append(
        f"under embedding-space PGD-L2 at ε={options.epsilon:g} (× the median embedding norm, per token) accuracy falls from {clean:.1%} to {rob:.1%} ({n} test rows)"
    )
    _substitution_part(case, data, options, parts)
    parts.metrics["token_attacks_graded"] = options.grade_tokens
    if not options.grade_tokens:  # information unless the user declares this threat model
        parts.statuses[graded_from:] = ["ok"] * (len(parts.statuses) - graded_from)
        parts.headline.append(
            "both token attacks are information, not graded: substitutions have no semantic constraint (they may change"
            " the true class) and embedding perturbations are not text; `--option ethics.security.grade_tokens=true`"
            " grades them when this is your threat model"
        )


def _summary(parts: _Parts, files: list[str]) -> str:
    metrics = parts.metrics
    bits = list(parts.headline)
    if files:
        bad = metrics["model_files_unsafe"]
        bits.append(
            f"{bad} of {len(files)} model file(s) would run code when loaded"
            if bad
            else f"{len(files)} model file(s) scanned, none runs code when loaded"
        )
    summary = "; ".join(bits) + "." if bits else ""
    summary = summary[:1].upper() + summary[1:]
    if parts.notes:
        summary += " Not measured: " + "; ".join(parts.notes) + "."
    return summary


def _remedy(case: Case, status: Status, findings: list[Finding]) -> Remedy | None:
    if status not in ("warn", "fail"):
        return None
    if any(f.code.startswith("pickle") for f in findings):
        return Remedy(
            command=None,
            description="re-save the weights as .safetensors (state_dict) or export a .pt2 with torch.export; never torch.load(weights_only=False) a file you did not write",
        )
    return Remedy(
        command="dlclinic treat ethics.security",
        description=(
            "adversarial training in embedding space (L2 PGD on the embedding layer's output) with the same recipe, then both attacks measured again"
            if case.modality == "tokens"
            else "adversarial training (PGD, or FGSM with random start) with the same recipe, then the robust accuracy measured again"
        ),
    )


def run(case: Case, evidence: Evidence, options: SecurityOptions) -> CheckResult:
    """Robust-accuracy curve under FGSM/PGD (token ids: embedding-space PGD and greedy substitution) and a pickle scan of the model files."""
    files = _model_files(case, options)
    parts = _Parts()
    _scan_part(files, parts)
    test = case.get("test")
    robust_part = (
        options.robustness
        and test is not None
        and test.labelled
        and hasattr(case.model, "parameters")
        and callable(case.model)
    )
    if options.robustness and not robust_part:
        parts.notes.append("robustness not measured: needs a labelled test split and a PyTorch model (gradients)")
    elif robust_part and case.modality == "tokens":
        _token_part(case, evidence, options, parts)
    elif robust_part:
        _robust_part(case, evidence, options, parts)
    if not parts.statuses:
        return CheckResult(id=ID, status="not_examined", summary="Nothing to examine: " + "; ".join(parts.notes) + ".")
    status = worst(parts.statuses)
    return CheckResult(
        id=ID,
        status=status,
        summary=_summary(parts, files),
        metrics=parts.metrics,
        thresholds={
            "retention.warn": options.warn_retention,
            "retention.fail": options.fail_retention,
            "epsilon": options.epsilon,
            **({"substitution_budget": options.substitution_budget} if "substitution_budget" in parts.metrics else {}),
        },
        findings=tuple(parts.findings),
        remedy=_remedy(case, status, parts.findings),
        details=parts.details,
    )


CHECK = CheckSpec(
    id=ID,
    requires=(),
    options=SecurityOptions,
    run=run,
    description="robust accuracy under FGSM / PGD-L∞ / PGD-L2 over ε (token ids: embedding-space PGD-L2 and greedy token substitution), attack success rate, gradient-masking sanity check; pickle opcode scan of model files",
)


# -- remedy --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdversarialParams:
    """``method`` fgsm_rs | pgd; ``epsilon`` (default: the check's ε of interest); ``epochs`` (default: the recipe's)."""

    method: str = "fgsm_rs"
    epsilon: float | None = None
    epochs: int | None = None
    steps: int = 5
    clean_fraction: float = 0.3
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("fgsm_rs", "pgd"):
            raise ConfigError(f"method must be 'fgsm_rs' or 'pgd', but got {self.method!r}")
        if not 0.0 <= self.clean_fraction < 1.0:
            raise ConfigError(f"`0 <= clean_fraction < 1` must hold, but got clean_fraction={self.clean_fraction}")


def _adversarial_loop(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    batch_loss: Any,
    gen: torch.Generator,
    *,
    epochs: int,
    clean_fraction: float,
    batch_size: int,
    lr: float,
    progress: Any,
) -> Any:
    """The shared training loop: ``batch_loss(xb, yb, n_clean)`` gives each batch's loss (its first ``n_clean`` rows clean).

    ``gen`` draws the batch order (and the attack's random starts, in the caller).
    """
    xt, yt = model_tensors(model, x, y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_total = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps_total, 1))
    for _epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen).to(xt.device)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            loss = batch_loss(xt[idx], yt[idx], int(round(clean_fraction * len(idx))))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(1)
    model.eval()
    return model


def adversarial_fit(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    lower: Any,
    upper: Any,
    scale: Any,
    method: str = "fgsm_rs",
    epochs: int = 10,
    steps: int = 5,
    clean_fraction: float = 0.3,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Any = None,
) -> Any:
    """Train ``model`` (in place; pass a fresh one) on adversarial examples; returns it in eval mode."""
    seed_everything(seed)
    prepare_inputs(model, x)
    device = model_device(model)
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float32), device=device)
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float32), device=device)
    sc = torch.as_tensor(np.asarray(scale, dtype=np.float32), device=device)
    gen = torch.Generator().manual_seed(seed)
    bound = epsilon * sc

    def perturb(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        delta = (torch.rand(xb.shape, generator=gen).to(xb.device) * 2 - 1) * bound
        n_iter, alpha = (1, 1.25 * epsilon) if method == "fgsm_rs" else (steps, 2.5 * epsilon / steps)
        was = model.training
        model.eval()  # keep BatchNorm statistics clean while attacking
        for _ in range(n_iter):
            delta.requires_grad_(True)
            loss = nn.functional.cross_entropy(model(torch.clamp(xb + delta, lo, hi)), yb)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = torch.clamp(delta.detach() + alpha * sc * grad.sign(), -bound, bound)
        model.train(was)
        return torch.clamp(xb + delta.detach(), lo, hi)

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor, n_clean: int) -> torch.Tensor:
        x_adv = perturb(xb[n_clean:], yb[n_clean:])
        inputs = torch.cat([xb[:n_clean], x_adv]) if n_clean else x_adv
        return nn.functional.cross_entropy(model(inputs), yb)

    return _adversarial_loop(
        model,
        x,
        y,
        batch_loss,
        gen,
        epochs=epochs,
        clean_fraction=clean_fraction,
        batch_size=batch_size,
        lr=lr,
        progress=progress,
    )


def embedding_adversarial_fit(
    model: Any,
    ids: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    method: str = "fgsm_rs",
    epochs: int = 10,
    steps: int = 5,
    clean_fraction: float = 0.3,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    layer: str | None = None,
    progress: Any = None,
) -> Any:
    """Adversarial training of a token model in embedding space; returns it (trained in place) in eval mode.

    Each batch's attacked rows get the L2 PGD perturbation of the check
    (:func:`~dlclinic.functional.token_attacks.embedding_pgd_delta`) on the embedding
    layer's output, ε per token in units of the median embedding norm of the train vocabulary
    as it is at that step: from a random start, one step of 1.25 ε (``fgsm_rs``) or ``steps``
    steps of 2.5 ε / steps (``pgd``). Miyato, Dai & Goodfellow 2017 ("Adversarial Training
    Methods for Semi-Supervised Text Classification"); FreeLB (Zhu et al. 2020) without its
    gradient accumulation. Padding is never perturbed.
    """
    seed_everything(seed)
    width = embedded_width(model, ids, layer)  # packed inputs (ids + mask): the ids come first
    vocab = token_vocabulary(ids[:, :width], pad_id=PAD_ID)
    gen = torch.Generator().manual_seed(seed)
    n_iter, step = (1, 1.25) if method == "fgsm_rs" else (steps, 2.5 / steps)  # in units of the radius
    with offset_embeddings(model, layer, pad_id=PAD_ID) as offset:

        def batch_loss(xb: torch.Tensor, yb: torch.Tensor, n_clean: int) -> torch.Tensor:
            r = epsilon * median_embedding_norm(model, vocab, layer, pad_id=PAD_ID)
            model.eval()  # attack without dropout noise
            delta, _ = embedding_pgd_delta(
                model,
                offset,
                xb[n_clean:],
                yb[n_clean:],
                radius=r,
                steps=n_iter,
                step_size=step * r,
                early_stop=False,
                generator=gen,
                width=width,
            )
            model.train()
            offset.delta = torch.cat([delta.new_zeros((n_clean, *delta.shape[1:])), delta]).detach()
            try:
                return nn.functional.cross_entropy(first_output(model(xb)), yb)
            finally:
                offset.delta = None

        return _adversarial_loop(
            model,
            ids,
            y,
            batch_loss,
            gen,
            epochs=epochs,
            clean_fraction=clean_fraction,
            batch_size=batch_size,
            lr=lr,
            progress=progress,
        )


def _validate(case: Case) -> Split:
    """The labelled test split; a ConfigError when the case cannot be retrained or measured."""
    if case.model_factory is None:
        raise ConfigError(
            "treat ethics.security retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    test = case.get("test")
    if test is None or not test.labelled:
        raise ConfigError("treat ethics.security needs a labelled test split to measure robust accuracy (pass --test)")
    if case.train.y is None:  # pragma: no cover - Case guarantees train labels
        raise ConfigError("treat ethics.security needs train labels")
    if case.modality == "tokens":
        try:
            embedded_width(case.model_factory(), case.train.x[:1])
        except ValueError as exc:
            raise ConfigError(f"treat ethics.security trains token models in embedding space: {exc}") from None
    return test


def _at_training_eps(case: Case, test: Split, models: dict[str, Any], eps: float) -> dict[str, tuple[float, float]]:
    """``name → (clean, robust)`` accuracy at the training ε on the check's test sample.

    PGD-L∞ (10 steps) on the inputs; for token ids, L2 PGD (10 steps) in embedding space with
    ε in units of each model's own median embedding norm over the train vocabulary.
    """
    opts = SecurityOptions()
    assert test.y is not None
    rows = _sample(test.y, opts.n_samples, opts.seed)
    xs, ys = usable_inputs(test.x[rows]), test.y[rows]
    steps = max(opts.steps, 10)
    at_eps = {}
    for name, m in models.items():
        if case.modality == "tokens":
            width = embedded_width(m, xs)
            radius = median_embedding_norm(m, case.train.x[:, :width], pad_id=PAD_ID)
            res = embedding_pgd(m, xs, ys, epsilon=eps, radius=radius, steps=steps, pad_id=PAD_ID)
        else:
            lo, hi, scale = input_bounds(case)
            res = attack(
                m, xs, ys, method="pgd_linf", epsilon=eps, lower=lo, upper=hi, scale=scale, steps=steps, seed=opts.seed
            )
        at_eps[name] = (res.clean_accuracy, res.robust_accuracy)
    return at_eps


_CHECK_KEYS = (
    "clean_accuracy",
    "robust_accuracy",
    "robust_accuracy_fgsm",
    "robust_accuracy_pgd_l2",
    "attack_success_rate",
)
_TOKEN_CHECK_KEYS = (
    "clean_accuracy",
    "robust_accuracy",
    "robust_accuracy_fgm",
    "attack_success_rate",
    "substitution_robust_accuracy",
    "substitution_success_rate",
)


def _check_values(result: CheckResult, at_eps: tuple[float, float], tokens: bool = False) -> dict[str, Any]:
    keys = _TOKEN_CHECK_KEYS if tokens else _CHECK_KEYS
    return {
        "robust_accuracy_at_training_eps": at_eps[1],
        "clean_accuracy_sample": at_eps[0],
        **{f"check_{k}": result.metrics.get(k) for k in keys},
    }


def _fit_robust(ctx: TreatContext, params: AdversarialParams, eps: float, epochs: int, advance: Any) -> Any:
    """A fresh model of the case's architecture, adversarially trained (in embedding space for token ids)."""
    case = ctx.case
    assert case.model_factory is not None and case.train.y is not None
    seed_everything(ctx.fit_config.seed)
    common: dict[str, Any] = {
        "epsilon": eps,
        "method": params.method,
        "epochs": epochs,
        "steps": params.steps,
        "clean_fraction": params.clean_fraction,
        "batch_size": ctx.fit_config.batch_size,
        "lr": params.lr or ctx.fit_config.lr,
        "seed": ctx.fit_config.seed,
        "progress": advance,
    }
    if case.modality == "tokens":
        return embedding_adversarial_fit(
            on_device(case.model_factory, ctx.fit_config.device)(), case.train.x, case.train.y, **common
        )
    lo, hi, scale = input_bounds(case)
    return adversarial_fit(
        on_device(case.model_factory, ctx.fit_config.device)(),
        usable_inputs(case.train.x),
        case.train.y,
        lower=lo,
        upper=hi,
        scale=scale,
        **common,
    )


def treat_security(ctx: TreatContext, params: AdversarialParams) -> TreatOutcome:
    """Adversarially train a fresh model of the case's architecture and re-measure robustness."""
    case = ctx.case
    test = _validate(case)
    tokens = case.modality == "tokens"
    eps = params.epsilon if params.epsilon is not None else SecurityOptions().epsilon
    before = ctx.measure(case)
    epochs = params.epochs or ctx.fit_config.epochs
    space = "embedding space, " if tokens else ""
    with ctx.progress.step(f"adversarial training ({space}{params.method}, ε={eps:g})", total=epochs) as advance:
        model = _fit_robust(ctx, params, eps, epochs, advance)
    treated = dataclasses.replace(
        case,
        model=model,
        model_source=f"{case.model_source.replace(', from cache', '')}, adversarially trained ({space}{params.method}, ε={eps:g})",
    )
    after = ctx.measure(treated)
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        artifacts["model"] = str(write_weights(model, ctx.out_dir / "robust_model.safetensors"))
    # the check measures at its own ε of interest; also measure both models at the training ε
    at_eps = _at_training_eps(case, test, {"before": case.model, "after": model}, eps)
    method = "FGSM with random start" if params.method == "fgsm_rs" else f"PGD-L∞, {params.steps} steps"
    if tokens:
        method = "L2 PGD on the embeddings, " + (
            "one step from a random start" if params.method == "fgsm_rs" else f"{params.steps} steps"
        )
    attack_note = (
        f"robust_accuracy_at_training_eps: embedding-space PGD-L2 (10 steps) at ε={eps:g} × each model's median embedding norm"
        if tokens
        else f"robust_accuracy_at_training_eps: PGD-L∞ (10 steps) at ε={eps:g}"
    )
    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"adversarial training ({method}, ε={eps:g}, {epochs} epochs, {params.clean_fraction:.0%} clean rows per batch)",
        before_values=_check_values(before[ctx.challenge_id], at_eps["before"], tokens),
        after_values=_check_values(after[ctx.challenge_id], at_eps["after"], tokens),
        artifacts=artifacts,
        notes=(
            f"{attack_note} on the check's stratified test sample; check_*: the ethics.security check at its own ε of interest ({SecurityOptions().epsilon:g}), before and after",
            "training in embedding space bounds a continuous attacker; check_substitution_* says whether it also helps against token substitution"
            if tokens
            else "a robust model can still hide behind gradient masking: the check's FGSM-vs-PGD sanity test runs on the treated model too",
        ),
    )


REMEDY = RemedySpec(
    id="ethics.security",
    params=AdversarialParams,
    run=treat_security,
    description="Adversarial training (FGSM with random start, or PGD; in embedding space for token ids); robust accuracy before/after.",
)
