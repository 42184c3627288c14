"""model.interpretability — attributions, their faithfulness and sanity, and a shortcut test.

Check: for a sample of correct and wrong test predictions: Integrated Gradients, saliency
and occlusion (captum); deletion/insertion curves against random orders; captum infidelity
and sensitivity; the model-randomization sanity test; and, when the user names a region
(``suspect_region="r0:r1,c0:c1"``) or features (``suspect_feature="3,age"``), how much
attribution falls there and how often blanking it changes the prediction. For tables,
per-class global feature importance. Overlays of the attributions go to the report.

Token ids (``case.modality == "tokens"``, id 0 = padding): captum LayerIntegratedGradients
on the embedding layer (``embedding_layer=NAME``, default the first ``nn.Embedding``) from
an all-padding baseline gives one signed attribution per token; its faithfulness is token
deletion (real tokens replaced by padding in attribution order vs a random order, padding
never touched) and insertion, graded as for images and tables. Saliency, occlusion,
infidelity/sensitivity and the sanity test perturb inputs continuously and are not run on
ids; a named shortcut region or feature does not apply. Highlighted example rows (token ids
as ``#17``, or the words of ``case.metadata["vocabulary"]``) and the tokens with the highest
mean attribution per predicted class go to the report.

Verdict: ``fail`` when the named region is a shortcut by both measures (attribution
enrichment ≥ ``enrichment_warn`` and the lower 95 % Wilson bound of the flip rate ≥
``flip_warn``), ``warn`` when by one of them, or when no attribution method beats a random
order on deletion *and* insertion (CI of the paired gain includes 0), or when the
attributions barely change after re-initialising the weights (sanity correlation above
``sanity_max``). With a 95 % bound the flip test's false-alarm rate is ≤ 2.5 % for a model
whose true flip rate is at ``flip_warn``.

Remedy (``dlclinic treat model.interpretability``): the named region or features are set to
their train median in every training input, the model is retrained with the case's recipe
and seed, and the check runs again with the same options: the attribution enrichment and
the flip rate of the named region must fall. Accuracy is reported on test as given and on
test with the region blanked (what the model scores when the shortcut is absent, e.g. in
deployment).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case
from dlclinic.core.errors import ConfigError
from dlclinic.core.evidence import Evidence
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy, Status, worst
from dlclinic.core.threads import on_threads
from dlclinic.functional.attribution import (
    METHODS,
    FaithfulnessResult,
    ShortcutResult,
    attribute,
    attribute_tokens,
    class_importance,
    deletion_insertion,
    embedding_layer,
    parse_region,
    randomization_sanity,
    region_ends,
    robustness_metrics,
    shortcut_share,
    token_importance,
)
from dlclinic.providers.search import installed

__all__ = ["CHECK", "DeshortcutParams", "InterpretabilityOptions", "REMEDY", "run", "treat", "validate"]

CID = "model.interpretability"
TOKEN_METHOD = "layer_integrated_gradients"
PAD_ID = 0  # the padding id of token cases (core.case)


# --------------------------------------------------------------------------- check


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
    threads: int | None = None  # torch threads; None: the checkup's (one per worker process when there are several)
    embedding_layer: str | None = None

    def __post_init__(self) -> None:
        if self.suspect_region:
            region_ends(self.suspect_region)  # the form r0:r1,c0:c1; the bounds need the data (validate)


def validate(case: Case, options: InterpretabilityOptions) -> None:
    """The named region lies inside the inputs, the named features exist: checked before any work."""
    if case.modality == "tokens" and (options.suspect_region or options.suspect_feature):
        raise ConfigError(
            "model.interpretability on token ids: suspect_region/suspect_feature name image regions or table columns, found one given; leave them out"
        )
    if options.suspect_region:
        _suspect_mask(case, options.suspect_region, None)
    if options.suspect_feature:
        _suspect_mask(case, None, options.suspect_feature)


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
    """A boolean mask of the input shape from feature indices or names (``"3,age"``)."""
    d = int(np.prod(case.input_shape))
    names = list(case.feature_names or [])
    mask = np.zeros(d, dtype=bool)
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if token in names:
            mask[names.index(token)] = True
        elif token.lstrip("-").isdigit() and -d <= int(token) < d:
            mask[int(token)] = True
        else:
            raise ConfigError(
                f"suspect_feature {token!r}: expected a feature index in 0..{d - 1} or one of the feature names {names[:10] or '(none given)'}"
            )
    return mask.reshape(case.input_shape)


def _suspect_mask(case: Case, suspect_region: str | None, suspect_feature: str | None) -> tuple[np.ndarray, str]:
    """The mask of the named region (images) or features (tables), and how to name it."""
    try:
        if suspect_region:
            return parse_region(suspect_region, case.input_shape), f"region {suspect_region}"
        return _feature_mask(str(suspect_feature), case), f"feature(s) {suspect_feature}"
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run(case: Case, evidence: Evidence, options: InterpretabilityOptions) -> CheckResult:
    """Run the check with torch on ``options.threads`` threads."""
    return on_threads(_run, case, evidence, options)


@dataclass
class _Explained:
    """What the check measured on the sampled rows (shared by the verdict, metrics and details)."""

    split: str
    rows: np.ndarray
    x: np.ndarray
    pred: np.ndarray
    target: np.ndarray
    attrs: dict[str, np.ndarray]
    faith: dict[str, FaithfulnessResult]
    robust: dict[str, dict[str, float]]
    primary: str
    sanity_method: str
    sanity: float | None


def _run(case: Case, evidence: Evidence, options: InterpretabilityOptions) -> CheckResult:
    """Attribute a sample of predictions, score the attributions, test the named shortcut."""
    model = case.model
    if not (hasattr(model, "state_dict") and callable(model)):
        return CheckResult(
            id=CID,
            status="not_examined",
            summary="Needs a differentiable PyTorch model (file.py:factory or .pt2); an ONNX model gives no gradients for attributions.",
        )
    if not installed("captum"):
        return CheckResult(id=CID, status="not_examined", summary="Needs captum: pip install 'dlclinic[explain]'.")
    if case.modality == "tokens":
        try:
            embedding_layer(model, options.embedding_layer)
        except ValueError as exc:
            return CheckResult(id=CID, status="not_examined", summary=f"Token ids: {exc}.")
    bad = [m for m in options.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"methods {bad}: expected some of {METHODS}")
    ex = _explained(case, evidence, options)
    statuses, findings = _quality_findings(ex, options)
    shortcut, region_desc = _shortcut(case, ex, options, statuses, findings)
    status = worst(statuses) if statuses else "ok"
    leans = shortcut is not None and any(f.code == "shortcut" for f in findings)
    details = _details(case, ex)
    return CheckResult(
        id=CID,
        status=status,
        summary=_summary(ex, shortcut, region_desc, leans, status),
        metrics=_metrics(ex, shortcut),
        thresholds={
            "enrichment_warn": options.enrichment_warn,
            "flip_warn": options.flip_warn,
            "sanity_max": options.sanity_max,
        },
        findings=tuple(findings),
        remedy=_remedy(options, leans, status),
        details=details,
    )


def _explained(case: Case, evidence: Evidence, options: InterpretabilityOptions) -> _Explained:
    """:func:`_explain`, cached: the attributions as arrays, the scores as JSON."""

    def compute() -> dict[str, np.ndarray]:
        ex = _explain(case, evidence, options)
        meta = {
            "split": ex.split,
            "primary": ex.primary,
            "sanity_method": ex.sanity_method,
            "sanity": ex.sanity,
            "faith": {m: dataclasses.asdict(f) for m, f in ex.faith.items()},
            "robust": ex.robust,
        }
        return {"rows": ex.rows, "meta": np.asarray(json.dumps(meta)), **{f"attr.{m}": a for m, a in ex.attrs.items()}}

    got = evidence.cached("model.interpretability.explained", dataclasses.asdict(options), compute)
    meta = json.loads(str(got["meta"]))
    pred = evidence.get("probs", meta["split"]).argmax(1)
    rows = np.asarray(got["rows"])
    x = _inputs(case, meta["split"], rows)
    if case.modality == "tokens":  # packed inputs: the explained ids are the first columns
        x = np.ascontiguousarray(x[:, : got[f"attr.{meta['primary']}"].shape[1]])
    return _Explained(
        meta["split"],
        rows,
        x,
        pred,
        pred[rows],
        {m: got[f"attr.{m}"] for m in meta["faith"]},
        {m: FaithfulnessResult(**f) for m, f in meta["faith"].items()},
        meta["robust"],
        meta["primary"],
        meta["sanity_method"],
        meta["sanity"],
    )


def _inputs(case: Case, split: str, rows: np.ndarray) -> np.ndarray:
    """The explained rows: float32 features, or int64 token ids as they are."""
    x = np.ascontiguousarray(case.splits[split].x[rows])
    return x if case.modality == "tokens" else x.astype(np.float32, copy=False)


def _sampled(case: Case, evidence: Evidence, options: InterpretabilityOptions) -> tuple[str, np.ndarray, np.ndarray]:
    """The split explained (test when given), its predictions, and the sampled rows."""
    split = "test" if case.get("test") is not None else "train"
    pred = evidence.get("probs", split).argmax(1)
    return split, pred, _sample(pred, case.splits[split].y, options.n_samples, options.seed)


def _explain_tokens(case: Case, evidence: Evidence, options: InterpretabilityOptions) -> _Explained:
    """Per-token attributions (LayerIntegratedGradients on the embedding layer) and their token-deletion faithfulness."""
    split, pred, rows = _sampled(case, evidence, options)
    x = _inputs(case, split, rows)
    target = pred[rows]
    with evidence.progress.step("token attributions", total=1) as advance:
        a = attribute_tokens(
            case.model, x, target, layer=options.embedding_layer, pad_id=PAD_ID, n_steps=options.ig_steps
        )
        # several packed inputs: only the ids (the first columns) are deleted; masks / lengths stay
        width = a.shape[1]
        fixed = np.ones(x.shape, dtype=bool)
        fixed[:, :width] = x[:, :width] == PAD_ID
        full = np.zeros(x.shape, dtype=np.float32)
        full[:, :width] = a
        faith = deletion_insertion(
            case.model,
            x,
            target,
            full,
            method=TOKEN_METHOD,
            steps=options.steps,
            baseline=PAD_ID,
            seed=options.seed,
            fixed=fixed,
        )
        advance(1)
    m = TOKEN_METHOD
    ids = np.ascontiguousarray(x[:, :width])
    return _Explained(split, rows, ids, pred, target, {m: a}, {m: faith}, {m: {}}, m, m, None)


def _explain(case: Case, evidence: Evidence, options: InterpretabilityOptions) -> _Explained:
    """Attributions of the sampled predictions with every method, their faithfulness, robustness and sanity."""
    if case.modality == "tokens":
        return _explain_tokens(case, evidence, options)
    model = case.model
    split, pred, rows = _sampled(case, evidence, options)
    x = _inputs(case, split, rows)
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
    return _Explained(split, rows, x, pred, target, attrs, faith, robust, primary, sanity_method, sanity)


def _quality_findings(ex: _Explained, options: InterpretabilityOptions) -> tuple[list[Status], list[Finding]]:
    """Unfaithful attributions (no method beats a random order) and a failed sanity test."""
    statuses: list[Status] = []
    findings: list[Finding] = []
    faithful = [m for m, f in ex.faith.items() if f.deletion_gain_ci[0] > 0 or f.insertion_gain_ci[0] > 0]
    if not faithful:
        statuses.append("warn")
        findings.append(
            Finding(
                "unfaithful_attributions",
                "no attribution method removes or restores the predicted class faster than a random order (deletion/insertion gains not significant): explanations of this model should not be trusted",
            )
        )
    if ex.sanity is not None and ex.sanity > options.sanity_max:
        statuses.append("warn")
        findings.append(
            Finding(
                "sanity_failed",
                f"{ex.sanity_method} maps barely change when the weights are re-initialised (Spearman {ex.sanity:.2f} > {options.sanity_max}): they reflect the input, not the model",
            )
        )
    return statuses, findings


def _shortcut(
    case: Case,
    ex: _Explained,
    options: InterpretabilityOptions,
    statuses: list[Status],
    findings: list[Finding],
) -> tuple[ShortcutResult | None, str | None]:
    """Attribution share and flip rate of the named region; appends its status and finding."""
    if not (options.suspect_region or options.suspect_feature):
        return None, None
    mask, region_desc = _suspect_mask(case, options.suspect_region, options.suspect_feature)
    s = case.splits[ex.split]
    rng = np.random.default_rng(options.seed)
    flip_rows = np.sort(rng.choice(len(s), size=min(options.n_intervention, len(s)), replace=False))
    shortcut = shortcut_share(
        case.model,
        ex.x,
        ex.attrs[ex.primary],
        mask,
        x_flip=np.ascontiguousarray(s.x[flip_rows]).astype(np.float32, copy=False),
    )
    by_attr = shortcut.enrichment >= options.enrichment_warn
    by_flip = shortcut.flip_ci[0] >= options.flip_warn
    if by_attr or by_flip:
        statuses.append("fail" if (by_attr and by_flip) else "warn")
        findings.append(
            Finding(
                "shortcut",
                f"{region_desc}: {shortcut.share:.0%} of the {ex.primary.replace('_', ' ')} attribution on {shortcut.area:.1%} of the input ({shortcut.enrichment:.1f}× its area); blanking it changes {shortcut.flip_rate:.0%} of predictions (95% CI {shortcut.flip_ci[0]:.0%}..{shortcut.flip_ci[1]:.0%}, n={shortcut.n})",
            )
        )
    return shortcut, region_desc


def _best(ex: _Explained) -> FaithfulnessResult:
    return max(ex.faith.values(), key=lambda f: f.deletion_gain + f.insertion_gain)


def _summary(
    ex: _Explained, shortcut: ShortcutResult | None, region_desc: str | None, leans: bool, status: Status
) -> str:
    if shortcut is not None and leans:
        return f"The model leans on the named {region_desc}: {shortcut.enrichment:.1f}× its share of attribution, and blanking it changes {shortcut.flip_rate:.0%} of predictions."
    best = _best(ex)
    summary = f"Best-faithfulness method {best.method.replace('_', ' ')}: deletion AUC {best.deletion_auc:.2f} vs random {best.random_deletion_auc:.2f}, insertion {best.insertion_auc:.2f} vs {best.random_insertion_auc:.2f}"
    summary += f"; sanity correlation after weight re-initialisation {ex.sanity:.2f}." if ex.sanity is not None else "."
    if shortcut is not None:
        summary += f" Named {region_desc}: {shortcut.enrichment:.1f}× attribution enrichment, {shortcut.flip_rate:.0%} flips — no shortcut."
    elif status == "ok" and ex.primary != TOKEN_METHOD:
        summary += " Name a suspected shortcut with --option model.interpretability.suspect_region=r0:r1,c0:c1 (or suspect_feature=...)."
    return summary


def _metrics(ex: _Explained, shortcut: ShortcutResult | None) -> dict[str, float | int | bool | None]:
    metrics: dict[str, float | int | bool | None] = {"n_explained": int(len(ex.rows)), "sanity_spearman": ex.sanity}
    for m, f in ex.faith.items():
        metrics[f"{m}_deletion_gain"] = f.deletion_gain
        metrics[f"{m}_insertion_gain"] = f.insertion_gain
        for k, v in ex.robust[m].items():
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
    return metrics


def _faithfulness_plots(ex: _Explained) -> list[dict[str, Any]]:
    """Deletion and insertion curves of every method and of a random order."""
    best = _best(ex)
    unit = "tokens" if ex.primary == TOKEN_METHOD else "features"
    plots: list[dict[str, Any]] = []
    for name, key, rkey in (
        ("Deletion", "deletion_curve", "random_deletion_curve"),
        ("Insertion", "insertion_curve", "random_insertion_curve"),
    ):
        series = [
            {"label": m.replace("_", " "), "x": list(f.fractions), "y": list(getattr(f, key))}
            for m, f in ex.faith.items()
        ]
        series.append({"label": "random order", "x": list(best.fractions), "y": list(getattr(best, rkey))})
        plots.append(
            {
                "kind": "line",
                "title": f"{name} curve (predicted-class probability)",
                "xlabel": f"fraction of {unit} {name.lower()[:-3]}ed",
                "ylabel": "probability",
                "series": series,
            }
        )
    return plots


def _quality_table(ex: _Explained) -> dict[str, Any]:
    return {
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
                ex.robust[m].get("infidelity"),
                ex.robust[m].get("sensitivity_max"),
            ]
            for m, f in ex.faith.items()
        ],
    }


def _details(case: Case, ex: _Explained) -> dict[str, Any]:
    """Curves and tables; attribution overlays for images, per-class importance for tables."""
    plots = _faithfulness_plots(ex)
    details: dict[str, Any] = {"plots": plots, "split": ex.split, "rows": ex.rows.tolist()}
    tables = [_quality_table(ex)]
    if case.modality == "image":
        details["images"] = [_overlays(case, ex)]
    elif case.modality == "tokens":
        details["tokens"] = [_token_highlights(case, ex)]
        tables.append(_top_tokens(case, ex))
    else:
        plot, table = _class_importance(case, ex)
        plots.append(plot)
        tables.append(table)
    details["tables"] = tables
    return details


def _token_text(case: Case) -> Any:
    """How a token id reads: the word of ``case.metadata["vocabulary"]`` (a list indexed by id), else ``#id``."""
    vocab = case.metadata.get("vocabulary")
    words = list(vocab) if isinstance(vocab, (list, tuple)) else []

    def text(i: int) -> str:
        return str(words[i]) if 0 <= i < len(words) else f"#{i}"

    return text


def _caption(case: Case, ex: _Explained, r: int) -> str:
    y = case.splits[ex.split].y
    wrong = " ✗" if y is not None and ex.pred[r] != y[r] else ""
    return f"row {int(r)}: y={int(y[r]) if y is not None else '?'} pred={int(ex.pred[r])}{wrong}"


def _token_highlights(case: Case, ex: _Explained, shown: int = 8) -> dict[str, Any]:
    """Up to ``shown`` explained rows as their real tokens, each with its attribution scaled by the row's largest |attribution|."""
    text = _token_text(case)
    a = ex.attrs[ex.primary]
    rows = []
    for i, r in enumerate(ex.rows[:shown]):
        real = ex.x[i] != PAD_ID
        scale = float(np.abs(a[i][real]).max()) if real.any() else 0.0
        scores = a[i][real] / scale if scale > 0 else np.zeros(int(real.sum()))
        rows.append(
            {
                "caption": _caption(case, ex, int(r)),
                "tokens": [{"text": text(int(t)), "score": round(float(v), 3)} for t, v in zip(ex.x[i][real], scores)],
            }
        )
    return {
        "title": "Per-token attributions (LayerIntegratedGradients on the embedding): red = for the predicted class, blue = against",
        "split": ex.split,
        "rows": rows,
    }


def _top_tokens(case: Case, ex: _Explained) -> dict[str, Any]:
    """Each predicted class's five tokens with the highest mean attribution over the explained rows."""
    text = _token_text(case)
    mean, count = token_importance(ex.x, ex.attrs[ex.primary], ex.target, case.n_classes, pad_id=PAD_ID)
    rows = []
    for k in range(case.n_classes):
        seen = np.flatnonzero(count[k] > 0)
        if len(seen):
            top = seen[np.argsort(-mean[k, seen])[:5]]
            rows.append(
                [case.class_names[k], ", ".join(f"{text(int(t))} {mean[k, t]:+.3g} (×{int(count[k, t])})" for t in top)]
            )
    return {
        "title": "Tokens with the highest mean attribution per predicted class (explained rows)",
        "columns": ["class", "top tokens (mean attribution, occurrences)"],
        "rows": rows,
    }


def _overlays(case: Case, ex: _Explained) -> dict[str, Any]:
    """Heatmaps of |attribution| on up to 16 explained images."""
    s = case.splits[ex.split]
    rows, pred = ex.rows, ex.pred
    a = np.abs(ex.attrs[ex.primary])
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
    return {
        "title": f"{ex.primary.replace('_', ' ')} overlays (red = attribution)",
        "split": ex.split,
        "indices": rows[:shown].tolist(),
        "captions": captions,
        "heatmaps": heat,
    }


def _class_importance(case: Case, ex: _Explained) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-class mean |attribution|: a heatmap of the top features and a table of each class's top 5."""
    imp = class_importance(ex.attrs[ex.primary], ex.target, case.n_classes)
    names = list(case.feature_names or [f"x{i}" for i in range(imp.shape[1])])
    overall = np.nanmean(imp, 0)
    top = np.argsort(-np.nan_to_num(overall))[:20]
    class_names = (
        [str(c) for c in (case.class_names or range(case.n_classes))]
        if hasattr(case, "class_names")
        else [str(c) for c in range(case.n_classes)]
    )
    plot = {
        "kind": "heatmap",
        "title": "Per-class mean |attribution| (top features)",
        "xlabel": "feature",
        "ylabel": "class",
        "series": [{"z": np.nan_to_num(imp[:, top]).round(4).tolist(), "x": [names[i] for i in top], "y": class_names}],
    }
    table = {
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
    return plot, table


def _remedy(options: InterpretabilityOptions, leans: bool, status: Status) -> Remedy | None:
    if leans:
        named = (
            f"suspect_region={options.suspect_region}"
            if options.suspect_region
            else f"suspect_feature={options.suspect_feature}"
        )
        return Remedy(
            command=f"dlclinic treat model.interpretability --option {named}",
            description="blank the named region/feature in every training input, retrain with the same recipe, and verify that the attribution enrichment and flip rate fell",
        )
    if status in ("warn", "fail"):
        return Remedy(
            command=None,
            description="attributions of this model are not trustworthy (unfaithful or insensitive to the weights): prefer occlusion/intervention tests over gradient maps, and check the model for saturation",
        )
    return None


# --------------------------------------------------------------------------- remedy


@dataclass(frozen=True)
class DeshortcutParams:
    """The shortcut to remove (one of the two is required)."""

    suspect_region: str | None = None
    suspect_feature: str | None = None

    def __post_init__(self) -> None:
        if not self.suspect_region and not self.suspect_feature:
            raise ConfigError(
                "treat model.interpretability: expected --option suspect_region=r0:r1,c0:c1 (images) or suspect_feature=NAME_OR_INDEX (tables), found neither"
            )
        if self.suspect_region:
            region_ends(self.suspect_region)


def treat(ctx: TreatContext, params: DeshortcutParams) -> TreatOutcome:
    """Blank the named region in train, retrain, re-run the check with the same options."""
    case = ctx.case
    if ctx.retrain is None:
        raise ConfigError(
            "treat model.interpretability retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    test = case.get("test")
    if test is None or not test.labelled:
        raise ConfigError("treat model.interpretability verifies on a labelled test split; pass --test")
    options = {k: v for k, v in dataclasses.asdict(params).items() if v}
    mask, _ = _suspect_mask(case, params.suspect_region, params.suspect_feature)
    before = ctx.measure(case, options=options)
    x = np.asarray(case.train.x)
    fill = float(np.median(x.reshape(len(x), -1)[:, np.broadcast_to(mask, x.shape[1:]).reshape(-1)]))
    masked = np.where(np.broadcast_to(mask, x.shape), fill, x).astype(x.dtype, copy=False)
    with ctx.progress.step("retraining without the shortcut", total=1) as advance:
        model = ctx.retrain(masked, case.train.y, ctx.fit_config.seed)
        advance(1)
    treated = dataclasses.replace(
        case,
        splits={**case.splits, "train": dataclasses.replace(case.train, x=masked)},
        model=model,
        model_source=f"{case.model_source}, retrained with the named shortcut blanked",
    )
    after = ctx.measure(treated, options=options)
    y = np.asarray(test.y)
    blanked = np.where(np.broadcast_to(mask, test.x.shape), fill, test.x).astype(test.x.dtype, copy=False)

    def acc(m: object, xs: np.ndarray) -> float:
        return float((predict_logits(m, xs).argmax(1) == y).mean())

    return conclude(
        ctx,
        before=before,
        after=after,
        action=f"set {params.suspect_region or params.suspect_feature} to its train median ({fill:.3g}) in every training input and retrained with the same recipe and seed",
        before_values={
            "test_accuracy": acc(case.model, test.x),
            "test_accuracy_region_blanked": acc(case.model, blanked),
        },
        after_values={"test_accuracy": acc(model, test.x), "test_accuracy_region_blanked": acc(model, blanked)},
        check_metrics=("shortcut_enrichment", "shortcut_flip_rate"),
        notes=(
            "test accuracy with the region blanked is what the model scores when the shortcut is absent; a shortcut model loses most there",
        ),
    )


CHECK = CheckSpec(
    id=CID,
    requires=(("probs", "test"),),
    options=InterpretabilityOptions,
    run=run,
    description="IG/saliency/occlusion (captum), deletion/insertion vs random, infidelity/sensitivity, randomization sanity, shortcut share on a named region/feature",
    validate=validate,
)
REMEDY = RemedySpec(
    id=CID,
    params=DeshortcutParams,
    run=treat,
    description="Blank the named shortcut region/feature in train, retrain, verify the attribution enrichment and flip rate fell.",
)
