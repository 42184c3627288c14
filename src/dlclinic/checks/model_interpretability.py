"""model.interpretability — attributions, their faithfulness and sanity, and a shortcut test.

For a sample of correct and wrong test predictions: Integrated Gradients, saliency and
occlusion (captum); deletion/insertion curves against random orders; captum infidelity and
sensitivity; the model-randomization sanity test; and, when the user names a region
(``suspect_region="r0:r1,c0:c1"``) or features (``suspect_feature="3,age"``), how much
attribution falls there and how often blanking it changes the prediction. For tables,
per-class global feature importance. Overlays of the attributions go to the report.

Verdict: ``fail`` when the named region is a shortcut by both measures (attribution
enrichment ≥ ``enrichment_warn`` and the lower 95 % Wilson bound of the flip rate ≥
``flip_warn``), ``warn`` when by one of them, or when no attribution method beats a random
order on deletion *and* insertion (CI of the paired gain includes 0), or when the
attributions barely change after re-initialising the weights (sanity correlation above
``sanity_max``). With a 95 % bound the flip test's false-alarm rate is ≤ 2.5 % for a model
whose true flip rate is at ``flip_warn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.core.threads import on_threads

__all__ = ["CHECK", "InterpretabilityOptions", "run"]

CID = "model.interpretability"


@dataclass(frozen=True)
class InterpretabilityOptions:
    """Sample sizes, methods and thresholds (see the module docstring for the verdict)."""

    suspect_region: str | None = None
    suspect_feature: str | None = None
    n_samples: int = 24
    n_intervention: int = 500
    ig_steps: int = 16
    methods: tuple[str, ...] = ("integrated_gradients", "saliency", "occlusion")
    enrichment_warn: float = 3.0
    flip_warn: float = 0.10
    sanity_max: float = 0.8
    steps: int = 10
    seed: int = 0
    threads: int | None = 1


def _sample(pred: np.ndarray, y: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` rows, half correct and half wrong predictions when labels exist."""
    rng = np.random.default_rng(seed)
    if y is None:
        return np.sort(rng.choice(len(pred), size=min(n, len(pred)), replace=False))
    wrong = np.flatnonzero(pred != y)
    right = np.flatnonzero(pred == y)
    n_wrong = min(len(wrong), n // 2)
    n_right = min(len(right), n - n_wrong)
    return np.sort(
        np.concatenate([rng.choice(wrong, n_wrong, replace=False), rng.choice(right, n_right, replace=False)]).astype(
            int
        )
    )


def _feature_mask(text: str, case: Case) -> np.ndarray:
    d = int(np.prod(case.input_shape))
    names = list(case.feature_names or [])
    mask = np.zeros(d, dtype=bool)
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if token in names:
            mask[names.index(token)] = True
        elif token.lstrip("-").isdigit() and -d <= int(token) < d:
            mask[int(token)] = True
        else:
            from dlclinic.core.errors import ConfigError

            raise ConfigError(
                f"suspect_feature {token!r}: expected a feature index in 0..{d - 1} or one of the feature names {names[:10] or '(none given)'}"
            )
    return mask.reshape(case.input_shape)


def run(case: Case, evidence: Evidence, options: InterpretabilityOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run, case, evidence, options)


def _run(case: Case, evidence: Evidence, options: InterpretabilityOptions) -> CheckResult:
    """Attribute a sample of predictions, score the attributions, test the named shortcut."""
    from dlclinic.core.errors import ConfigError

    model = case.model
    if not (hasattr(model, "state_dict") and callable(model)):
        return CheckResult(
            id=CID,
            status="not_examined",
            summary="Needs a differentiable PyTorch model (file.py:factory or .pt2); an ONNX model gives no gradients for attributions.",
        )
    try:
        import captum  # noqa: F401
    except ImportError:
        return CheckResult(id=CID, status="not_examined", summary="Needs captum: pip install 'dlclinic[explain]'.")
    from dlclinic.functional.attribution import (
        METHODS,
        attribute,
        class_importance,
        deletion_insertion,
        parse_region,
        randomization_sanity,
        robustness_metrics,
        shortcut_share,
    )

    bad = [m for m in options.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"methods {bad}: expected some of {METHODS}")
    split = "test" if case.get("test") is not None else "train"
    s = case.splits[split]
    probs = evidence.get("probs", split)
    pred = probs.argmax(1)
    rows = _sample(pred, s.y, options.n_samples, options.seed)
    x = np.ascontiguousarray(s.x[rows]).astype(np.float32, copy=False)
    target = pred[rows]
    attrs: dict[str, np.ndarray] = {}
    faith: dict[str, Any] = {}
    robust: dict[str, dict[str, float]] = {}
    with evidence.progress.step("attributions", total=len(options.methods)) as advance:
        for method in options.methods:
            attrs[method] = attribute(model, x, target, method, n_steps=options.ig_steps)
            faith[method] = deletion_insertion(
                model, x, target, attrs[method], method=method, steps=options.steps, seed=options.seed
            )
            robust[method] = robustness_metrics(model, x[:8], target[:8], attrs[method][:8], method, seed=options.seed)
            advance(1)
    primary = "integrated_gradients" if "integrated_gradients" in attrs else next(iter(attrs))
    sanity_method = "saliency" if "saliency" in attrs else primary
    scale = None
    if case.modality != "image":  # compare gradients per standard deviation of each feature, not per raw unit
        std = np.nanstd(np.where(np.isfinite(case.train.x), case.train.x, np.nan), axis=0).reshape(-1)
        scale = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    sanity = (
        randomization_sanity(
            model, x, target, attrs[sanity_method], sanity_method, seed=options.seed, feature_scale=scale
        )
        if sanity_method != "occlusion"
        else None
    )

    statuses: list[Status] = []
    findings: list[Finding] = []
    faithful = [m for m, f in faith.items() if f.deletion_gain_ci[0] > 0 or f.insertion_gain_ci[0] > 0]
    if not faithful:
        statuses.append("warn")
        findings.append(
            Finding(
                "unfaithful_attributions",
                "no attribution method removes or restores the predicted class faster than a random order (deletion/insertion gains not significant): explanations of this model should not be trusted",
            )
        )
    if sanity is not None and sanity > options.sanity_max:
        statuses.append("warn")
        findings.append(
            Finding(
                "sanity_failed",
                f"{sanity_method} maps barely change when the weights are re-initialised (Spearman {sanity:.2f} > {options.sanity_max}): they reflect the input, not the model",
            )
        )

    shortcut = None
    region_desc = None
    if options.suspect_region or options.suspect_feature:
        try:
            if options.suspect_region:
                mask = parse_region(options.suspect_region, case.input_shape)
                region_desc = f"region {options.suspect_region}"
            else:
                mask = _feature_mask(str(options.suspect_feature), case)
                region_desc = f"feature(s) {options.suspect_feature}"
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        rng = np.random.default_rng(options.seed)
        flip_rows = np.sort(rng.choice(len(s), size=min(options.n_intervention, len(s)), replace=False))
        shortcut = shortcut_share(
            model, x, attrs[primary], mask, x_flip=np.ascontiguousarray(s.x[flip_rows]).astype(np.float32, copy=False)
        )
        by_attr = shortcut.enrichment >= options.enrichment_warn
        by_flip = shortcut.flip_ci[0] >= options.flip_warn
        if by_attr or by_flip:
            statuses.append("fail" if (by_attr and by_flip) else "warn")
            findings.append(
                Finding(
                    "shortcut",
                    f"{region_desc}: {shortcut.share:.0%} of the {primary.replace('_', ' ')} attribution on {shortcut.area:.1%} of the input ({shortcut.enrichment:.1f}× its area); blanking it changes {shortcut.flip_rate:.0%} of predictions (95% CI {shortcut.flip_ci[0]:.0%}..{shortcut.flip_ci[1]:.0%}, n={shortcut.n})",
                )
            )
    status = worst(statuses) if statuses else "ok"
    best = max(faith.values(), key=lambda f: f.deletion_gain + f.insertion_gain)
    if shortcut is not None and any(f.code == "shortcut" for f in findings):
        summary = f"The model leans on the named {region_desc}: {shortcut.enrichment:.1f}× its share of attribution, and blanking it changes {shortcut.flip_rate:.0%} of predictions."
    else:
        summary = f"Best-faithfulness method {best.method.replace('_', ' ')}: deletion AUC {best.deletion_auc:.2f} vs random {best.random_deletion_auc:.2f}, insertion {best.insertion_auc:.2f} vs {best.random_insertion_auc:.2f}"
        summary += f"; sanity correlation after weight re-initialisation {sanity:.2f}." if sanity is not None else "."
        if shortcut is not None:
            summary += f" Named {region_desc}: {shortcut.enrichment:.1f}× attribution enrichment, {shortcut.flip_rate:.0%} flips — no shortcut."
        elif status == "ok":
            summary += " Name a suspected shortcut with --option model.interpretability.suspect_region=r0:r1,c0:c1 (or suspect_feature=...)."
    metrics: dict[str, float | int | bool | None] = {"n_explained": int(len(rows)), "sanity_spearman": sanity}
    for m, f in faith.items():
        metrics[f"{m}_deletion_gain"] = f.deletion_gain
        metrics[f"{m}_insertion_gain"] = f.insertion_gain
        for k, v in robust[m].items():
            metrics[f"{m}_{k}"] = v
    if shortcut is not None:
        metrics.update(
            {
                "shortcut_share": shortcut.share,
                "shortcut_area": shortcut.area,
                "shortcut_enrichment": shortcut.enrichment,
                "shortcut_flip_rate": shortcut.flip_rate,
                "shortcut_flip_low": shortcut.flip_ci[0],
            }
        )
    plots: list[dict[str, Any]] = []
    for name, key, rkey in (
        ("Deletion", "deletion_curve", "random_deletion_curve"),
        ("Insertion", "insertion_curve", "random_insertion_curve"),
    ):
        series = [
            {"label": m.replace("_", " "), "x": list(f.fractions), "y": list(getattr(f, key))} for m, f in faith.items()
        ]
        series.append({"label": "random order", "x": list(best.fractions), "y": list(getattr(best, rkey))})
        plots.append(
            {
                "kind": "line",
                "title": f"{name} curve (predicted-class probability)",
                "xlabel": f"fraction of features {name.lower()[:-3]}ed",
                "ylabel": "probability",
                "series": series,
            }
        )
    details: dict[str, Any] = {"plots": plots, "split": split, "rows": rows.tolist()}
    tables = [
        {
            "title": "Attribution quality",
            "columns": [
                "method",
                "deletion AUC",
                "random",
                "insertion AUC",
                "random",
                "deletion gain 95% CI",
                "insertion gain 95% CI",
                "infidelity",
                "sensitivity max",
            ],
            "rows": [
                [
                    m,
                    round(f.deletion_auc, 3),
                    round(f.random_deletion_auc, 3),
                    round(f.insertion_auc, 3),
                    round(f.random_insertion_auc, 3),
                    f"{f.deletion_gain_ci[0]:+.3f}..{f.deletion_gain_ci[1]:+.3f}",
                    f"{f.insertion_gain_ci[0]:+.3f}..{f.insertion_gain_ci[1]:+.3f}",
                    robust[m].get("infidelity"),
                    robust[m].get("sensitivity_max"),
                ]
                for m, f in faith.items()
            ],
        }
    ]
    if case.modality == "image":
        a = np.abs(attrs[primary])
        maps = a.reshape(len(a), *case.input_shape)
        if maps.ndim == 4:
            maps = maps.mean(1)
        shown = min(len(rows), 16)
        # scaled by each map's 99th percentile so one extreme pixel does not wash the rest out
        heat = [
            np.round(np.clip(mp / q, 0, 1), 2).tolist()
            if (q := float(np.percentile(mp, 99))) > 0
            else np.zeros_like(mp).tolist()
            for mp in maps[:shown]
        ]
        captions = [
            f"y={int(s.y[r]) if s.y is not None else '?'} pred={int(pred[r])}"
            + (" ✗" if s.y is not None and pred[r] != s.y[r] else "")
            for r in rows[:shown]
        ]
        details["images"] = [
            {
                "title": f"{primary.replace('_', ' ')} overlays (red = attribution)",
                "split": split,
                "indices": rows[:shown].tolist(),
                "captions": captions,
                "heatmaps": heat,
            }
        ]
    else:
        imp = class_importance(attrs[primary], target, case.n_classes)
        names = list(case.feature_names or [f"x{i}" for i in range(imp.shape[1])])
        overall = np.nanmean(imp, 0)
        top = np.argsort(-np.nan_to_num(overall))[:20]
        class_names = (
            [str(c) for c in (case.class_names or range(case.n_classes))]
            if hasattr(case, "class_names")
            else [str(c) for c in range(case.n_classes)]
        )
        plots.append(
            {
                "kind": "heatmap",
                "title": "Per-class mean |attribution| (top features)",
                "xlabel": "feature",
                "ylabel": "class",
                "series": [
                    {"z": np.nan_to_num(imp[:, top]).round(4).tolist(), "x": [names[i] for i in top], "y": class_names}
                ],
            }
        )
        tables.append(
            {
                "title": "Per-class global importance (top 5 features)",
                "columns": ["class", "top features (mean |attribution|)"],
                "rows": [
                    [
                        class_names[k],
                        ", ".join(f"{names[i]} {imp[k, i]:.3g}" for i in np.argsort(-np.nan_to_num(imp[k]))[:5]),
                    ]
                    for k in range(case.n_classes)
                    if not np.isnan(imp[k]).all()
                ],
            }
        )
    details["tables"] = tables
    remedy = None
    if shortcut is not None and any(f.code == "shortcut" for f in findings):
        named = (
            f"suspect_region={options.suspect_region}"
            if options.suspect_region
            else f"suspect_feature={options.suspect_feature}"
        )
        remedy = Remedy(
            command=f"dlclinic treat model.interpretability --option {named}",
            description="blank the named region/feature in every training input, retrain with the same recipe, and verify that the attribution enrichment and flip rate fell",
        )
    elif status in ("warn", "fail"):
        remedy = Remedy(
            command=None,
            description="attributions of this model are not trustworthy (unfaithful or insensitive to the weights): prefer occlusion/intervention tests over gradient maps, and check the model for saturation",
        )
    return CheckResult(
        id=CID,
        status=status,
        summary=summary,
        metrics=metrics,
        thresholds={
            "enrichment_warn": options.enrichment_warn,
            "flip_warn": options.flip_warn,
            "sanity_max": options.sanity_max,
        },
        findings=tuple(findings),
        remedy=remedy,
        details=details,
    )


CHECK = CheckSpec(
    id=CID,
    requires=(("probs", "test"),),
    options=InterpretabilityOptions,
    run=run,
    description="IG/saliency/occlusion (captum), deletion/insertion vs random, infidelity/sensitivity, randomization sanity, shortcut share on a named region/feature",
)
