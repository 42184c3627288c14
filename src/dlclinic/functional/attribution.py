"""Attributions, their faithfulness, and shortcut detection.

* Attributions come from captum: Integrated Gradients (Sundararajan et al., 2017),
  saliency (|∂logit/∂x|, Simonyan et al., 2014) and occlusion (Zeiler & Fergus, 2014).
* Faithfulness: deletion / insertion curves (Petsiuk et al., 2018, "RISE"): the target
  class probability as the most-attributed features are removed (set to the baseline) or
  added to the baseline, compared with the same curves in a random order. A faithful
  attribution deletes faster and inserts faster than random. captum's ``infidelity``
  (Yeh et al., 2019) and ``sensitivity_max`` are reported as they are.
* Sanity (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"): Spearman rank
  correlation between the attributions of the trained model and of the same architecture
  with re-initialised weights. Attributions that do not change are not explaining the model.
* Token ids (``nn.Embedding`` models): captum ``LayerIntegratedGradients`` on the
  embedding layer — ids are discrete, so the path runs through the embedding vectors
  (Sundararajan et al., 2017, §6.3 for text); per-token attribution = the sum over the
  embedding dimension. Faithfulness is token deletion: :func:`deletion_insertion` with the
  padding positions held fixed and real tokens replaced by the padding id.
* Shortcut share: the share of attribution mass inside a region (images) or on features
  (tables) the user names, against that region's share of the input (enrichment), and an
  intervention: how often the prediction changes when only that region is replaced by the
  baseline. Attribution alone can mislead; the intervention says whether the model uses it.

Deletion/insertion, the random baseline and the shortcut statistics are written here
(captum has no deletion/insertion metric); everything else calls captum.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from dlclinic.core.inference import eval_mode, first_output, input_tensor, model_input_spec, predict_logits

__all__ = [
    "FaithfulnessResult",
    "METHODS",
    "ShortcutResult",
    "attribute",
    "attribute_tokens",
    "class_importance",
    "deletion_insertion",
    "embedding_layer",
    "parse_region",
    "randomization_sanity",
    "region_ends",
    "robustness_metrics",
    "shortcut_share",
    "token_importance",
]

METHODS = ("integrated_gradients", "saliency", "occlusion")


def _forward(model: Any) -> Callable[[Any], Any]:
    def f(x: Any) -> Any:
        return first_output(model(x))

    return f


def _tensor(x: np.ndarray, model: Any) -> Any:
    dtype, device = model_input_spec(model)
    return input_tensor(x, dtype, device)


def _occlusion_window(shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and stride: about 1/7 of each spatial side for images, one feature for vectors."""
    if len(shape) == 1:
        return (1,), (1,)
    spatial = shape[-2:]
    win = tuple(max(1, int(round(s / 7))) for s in spatial)
    lead = tuple(shape[:-2])
    return lead + win, tuple(1 for _ in lead) + win


def attribute(
    model: Any,
    x: np.ndarray,
    target: np.ndarray,
    method: str,
    *,
    n_steps: int = 32,
    baseline: float = 0.0,
    internal_batch_size: int = 64,
) -> np.ndarray:
    """Attributions of ``target`` logits to ``x`` (same shape as ``x``), with captum.

    Args:
        model: A torch module (kept in eval mode; gradients flow to inputs only).
        x: Inputs, N×….
        target: Class per row whose logit is explained.
        method: ``integrated_gradients``, ``saliency`` or ``occlusion``.
        n_steps: Riemann steps of Integrated Gradients.
        baseline: Constant baseline (IG start point, occlusion fill value).
        internal_batch_size: rows per forward/backward pass of Integrated Gradients (the same
            attributions at any size): 64 kept the issue-21 CNN's 24 images × 32 steps at
            +95 MB instead of +358 MB at 256, in the same time.
    """
    from captum.attr import IntegratedGradients, Occlusion, Saliency

    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    f = _forward(model)
    xt = _tensor(x, model).requires_grad_(True)
    tgt = torch.as_tensor(np.asarray(target, dtype=np.int64), device=xt.device)
    with eval_mode(model):
        if method == "integrated_gradients":
            out = IntegratedGradients(f).attribute(
                xt, baselines=baseline, target=tgt, n_steps=n_steps, internal_batch_size=internal_batch_size
            )
        elif method == "saliency":
            out = Saliency(f).attribute(xt, target=tgt, abs=True)
        else:
            window, stride = _occlusion_window(x.shape[1:])
            with torch.no_grad():
                out = Occlusion(f).attribute(
                    xt.detach(),
                    sliding_window_shapes=window,
                    strides=stride,
                    target=tgt,
                    baselines=baseline,
                    # about 128 rows per forward pass: 64 perturbations of 24 images (1,536 rows) held
                    # a ~1 GB convolution workspace on the issue-21 CNN, for no speed on a CPU
                    perturbations_per_eval=max(1, 128 // max(len(x), 1)),
                )
    return np.asarray(out.detach().float().cpu().numpy())


def embedding_layer(model: Any, name: str | None = None) -> torch.nn.Embedding:
    """The ``nn.Embedding`` whose per-token outputs are attributed: the module called ``name``, or the first one.

    An ``nn.EmbeddingBag`` pools its tokens inside the layer, so its output has no per-token
    axis to attribute; such a model is refused with that reason.

    Example:
        >>> embedding_layer(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten()))
        Embedding(10, 4)
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ValueError(
                f"embedding layer {name!r}: expected one of the model's modules, e.g. {list(modules)[1:6]}"
            )
        found = modules[name]
        if not isinstance(found, torch.nn.Embedding):
            raise ValueError(f"embedding layer {name!r}: expected an nn.Embedding, found {type(found).__name__}")
        return found
    for module in modules.values():
        if isinstance(module, torch.nn.Embedding):
            return module
    bag = any(isinstance(m, torch.nn.EmbeddingBag) for m in modules.values())
    raise ValueError(
        "per-token attributions: expected an nn.Embedding layer, found "
        + ("only an nn.EmbeddingBag (it sums tokens inside the layer: no per-token output)" if bag else "none")
    )


def attribute_tokens(
    model: Any,
    ids: np.ndarray,
    target: np.ndarray,
    *,
    layer: str | None = None,
    pad_id: int = 0,
    n_steps: int = 16,
    internal_batch_size: int = 256,
) -> np.ndarray:
    """Per-token attributions (N×T) of ``target`` logits: captum ``LayerIntegratedGradients`` on the embedding layer.

    Ids are discrete, so Integrated Gradients runs along the straight path between the
    embedding vectors of a baseline and of the row (Sundararajan et al., 2017), and each
    token's attribution is the signed sum of its embedding coordinates' attributions. By
    completeness a row's attributions add up to logit(row) − logit(row with padding
    embeddings), up to the Riemann error of ``n_steps`` (measured on an LSTM: 30 % of the
    logit at 16 steps, 8 % at 32, 3 % at 128).

    The baseline is the row with every token replaced by ``pad_id`` (all padding), i.e. the
    "no text" input: with ``padding_idx`` set its embedding is the zero vector, the usual IG
    baseline for text. Only the embedding outputs move along the path; the model still sees
    the row's ids, so a padding mask computed from ids stays that of the row. Padding
    positions get 0 (their embedding equals the baseline's, so IG gives them 0 anyway).
    For packed inputs (ids followed by a mask, :mod:`dlclinic.core.inputs`) the result has
    one column per embedded position, the first T columns of ``ids``.

    Args:
        ids: Token ids, N×T integers (``pad_id`` = padding).
        target: Class per row whose logit is explained.
        layer: Name of the embedding module (``model.named_modules()``); default the first ``nn.Embedding``.
    """
    from captum.attr import LayerIntegratedGradients

    emb = embedding_layer(model, layer)
    xt = _tensor(np.asarray(ids), model)
    tgt = torch.as_tensor(np.asarray(target, dtype=np.int64), device=xt.device)
    with eval_mode(model):
        out = LayerIntegratedGradients(_forward(model), emb).attribute(
            xt,
            baselines=torch.full_like(xt, pad_id),
            target=tgt,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
        )
    per_token = out.detach().float().sum(-1).cpu().numpy()
    # several packed inputs (core.inputs): the embedded ids are the row's first T columns
    real = np.asarray(ids)[:, : per_token.shape[1]] != pad_id
    return np.asarray(np.where(real, per_token, 0.0), dtype=np.float32)


def _probs(model: Any, x: np.ndarray) -> np.ndarray:
    logits = predict_logits(model, x)
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(1, keepdims=True))


@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion/insertion AUCs of an attribution and of random orders (means over samples).

    ``deletion_gain`` = random − attribution deletion AUC (> 0: the attribution finds what
    matters faster than chance); ``insertion_gain`` = attribution − random insertion AUC.
    ``*_ci`` are 95 % normal CIs of the paired per-sample gains.
    """

    method: str
    fractions: tuple[float, ...]
    deletion_curve: tuple[float, ...]
    insertion_curve: tuple[float, ...]
    random_deletion_curve: tuple[float, ...]
    random_insertion_curve: tuple[float, ...]
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    deletion_gain: float
    deletion_gain_ci: tuple[float, float]
    insertion_gain: float
    insertion_gain_ci: tuple[float, float]


def _curves(
    model: Any,
    x: np.ndarray,
    target: np.ndarray,
    order: np.ndarray,
    fractions: np.ndarray,
    baseline: float,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample target probability under deletion and insertion, N×len(fractions) each.

    At fraction ``f`` the first ``round(f * counts[i])`` positions of ``order[i]`` are
    deleted (set to ``baseline``) or inserted (all others at ``baseline``).
    """
    n, d = x.shape[0], int(np.prod(x.shape[1:]))
    flat = x.reshape(n, d)
    deleted, inserted = [], []
    rank = np.arange(d)[None, :]
    for frac in fractions:
        mask = np.zeros((n, d), dtype=bool)
        np.put_along_axis(mask, order, rank < np.rint(frac * counts)[:, None], axis=1)
        deleted.append(np.where(mask, baseline, flat))
        inserted.append(np.where(mask, flat, baseline))
    batch = np.concatenate(deleted + inserted).reshape((-1, *x.shape[1:])).astype(x.dtype, copy=False)
    p = _probs(model, batch)
    m = len(fractions)
    tp = p[np.arange(len(batch)), np.tile(target, 2 * m)].reshape(2 * m, n).T
    return tp[:, :m], tp[:, m:]


def _auc(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Trapezoid-rule area under each row's curve."""
    widths = np.diff(fractions)
    return np.asarray(((curves[:, 1:] + curves[:, :-1]) * 0.5 * widths).sum(1))


def _ci(values: np.ndarray) -> tuple[float, float]:
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return mean - 1.96 * se, mean + 1.96 * se


def deletion_insertion(
    model: Any,
    x: np.ndarray,
    target: np.ndarray,
    attributions: np.ndarray,
    *,
    method: str = "",
    steps: int = 10,
    baseline: float = 0.0,
    random_repeats: int = 2,
    seed: int = 0,
    fixed: np.ndarray | None = None,
) -> FaithfulnessResult:
    """Deletion and insertion curves of ``attributions`` against random orders.

    Features are ranked by attribution (signed: the evidence *for* the target first);
    ``steps`` fractions from 0 to 1 are evaluated. Random orders are averaged over
    ``random_repeats`` permutations per sample.

    ``fixed`` (boolean, the shape of ``x``) marks positions neither deleted nor inserted,
    and fractions count the other positions of each row. Token deletion passes the padding
    positions with ``baseline`` = the padding id: a row's real tokens are replaced by
    padding, and a random order deletes those same tokens (deleting padding would be a
    no-op that flatters whichever order reaches it later).
    """
    n = x.shape[0]
    d = int(np.prod(x.shape[1:]))
    free = np.ones((n, d), dtype=bool) if fixed is None else ~np.asarray(fixed, dtype=bool).reshape(n, d)
    counts = free.sum(1)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    order = np.argsort(np.where(free, -attributions.reshape(n, d), np.inf), axis=1, kind="stable")
    del_a, ins_a = _curves(model, x, target, order, fractions, baseline, counts)
    rng = np.random.default_rng(seed)
    del_r = np.zeros_like(del_a)
    ins_r = np.zeros_like(ins_a)
    for _ in range(random_repeats):
        rand = np.argsort(np.where(free, rng.random((n, d)), np.inf), axis=1)
        dr, ir = _curves(model, x, target, rand, fractions, baseline, counts)
        del_r += dr / random_repeats
        ins_r += ir / random_repeats
    auc_da, auc_ia, auc_dr, auc_ir = (_auc(c, fractions) for c in (del_a, ins_a, del_r, ins_r))
    dg = auc_dr - auc_da
    ig = auc_ia - auc_ir
    return FaithfulnessResult(
        method=method,
        fractions=tuple(float(f) for f in fractions),
        deletion_curve=tuple(float(v) for v in del_a.mean(0)),
        insertion_curve=tuple(float(v) for v in ins_a.mean(0)),
        random_deletion_curve=tuple(float(v) for v in del_r.mean(0)),
        random_insertion_curve=tuple(float(v) for v in ins_r.mean(0)),
        deletion_auc=float(auc_da.mean()),
        insertion_auc=float(auc_ia.mean()),
        random_deletion_auc=float(auc_dr.mean()),
        random_insertion_auc=float(auc_ir.mean()),
        deletion_gain=float(dg.mean()),
        deletion_gain_ci=_ci(dg),
        insertion_gain=float(ig.mean()),
        insertion_gain_ci=_ci(ig),
    )


def robustness_metrics(
    model: Any,
    x: np.ndarray,
    target: np.ndarray,
    attributions: np.ndarray,
    method: str,
    *,
    n_perturb: int = 8,
    noise: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """captum ``infidelity`` (Gaussian input perturbations) and ``sensitivity_max`` (saliency; IG with 8 steps).

    Both are lower-is-better; they are scale dependent, so compare methods on the same model.
    """
    from captum.attr import IntegratedGradients, Saliency
    from captum.metrics import infidelity, sensitivity_max

    torch.manual_seed(seed)
    f = _forward(model)
    xt = _tensor(x, model)
    tgt = torch.as_tensor(np.asarray(target, dtype=np.int64), device=xt.device)
    at = torch.as_tensor(attributions, dtype=xt.dtype, device=xt.device)

    def perturb(inputs: Any) -> tuple[Any, Any]:
        eps = torch.randn_like(inputs) * noise
        return eps, inputs - eps

    out: dict[str, float] = {}
    with torch.no_grad():
        out["infidelity"] = float(infidelity(f, perturb, xt, at, target=tgt, n_perturb_samples=n_perturb).mean())
    if method in ("saliency", "integrated_gradients"):
        explainer = Saliency(f) if method == "saliency" else IntegratedGradients(f)
        kwargs: dict[str, Any] = {"target": tgt}
        if (
            method == "integrated_gradients"
        ):  # chunked: rows × perturbations × steps images at once held ~0.6 GB at 28×28
            kwargs.update(n_steps=8, internal_batch_size=64)
        out["sensitivity_max"] = float(
            sensitivity_max(
                explainer.attribute,
                xt.clone().requires_grad_(True),
                n_perturb_samples=max(2, n_perturb // 2),
                perturb_radius=noise,
                **kwargs,
            ).mean()
        )
    return out


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.asarray(np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), 0.0))


def randomization_sanity(
    model: Any,
    x: np.ndarray,
    target: np.ndarray,
    attributions: np.ndarray,
    method: str,
    *,
    seed: int = 0,
    feature_scale: np.ndarray | None = None,
) -> float:
    """Mean Spearman correlation of |attributions| between the model and a re-initialised copy.

    ``feature_scale`` (tables: each feature's train standard deviation) puts gradients in
    units of one standard deviation before comparing. Without it a model that standardises
    its inputs internally gives every copy, trained or random, gradients ∝ 1/σ per raw
    feature, and the shared factor alone makes the maps correlate.

    Every parameter is re-drawn (``reset_parameters`` where a layer has it, Gaussian
    otherwise); BatchNorm statistics are reset. Low = the attributions depend on the
    learned weights, as they must (Adebayo et al., 2018).
    """
    torch.manual_seed(seed)
    rand = copy.deepcopy(model)
    for module in rand.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        running = getattr(module, "reset_running_stats", None)
        if callable(running):
            running()
    other = attribute(rand, x, target, method)
    n = len(x)
    a, b = np.abs(attributions.reshape(n, -1)), np.abs(other.reshape(n, -1))
    if feature_scale is not None:
        scale = np.asarray(feature_scale, dtype=np.float64).reshape(1, -1)
        a, b = a * scale, b * scale
    return float(_spearman_rows(a, b).mean())


def region_ends(text: str) -> tuple[tuple[int | None, int | None], tuple[int | None, int | None]]:
    """The ``((r0, r1), (c0, c1))`` of ``"r0:r1,c0:c1"`` (``None`` for an empty end), checked without a shape.

    Example:
        >>> region_ends("0:4,-2:")
        ((0, 4), (-2, None))
    """
    parts = [p.strip() for p in str(text).split(",")]
    found: list[tuple[int | None, int | None]] = []
    for part in parts if len(parts) == 2 else ():
        lo_s, sep, hi_s = part.partition(":")
        try:
            ends = tuple(int(s) if s.strip() else None for s in (lo_s, hi_s))
        except ValueError:
            break
        if not sep:
            break
        found.append((ends[0], ends[1]))
    if len(found) != 2:
        raise ValueError(f"region {text!r}: expected 'r0:r1,c0:c1' (integer rows, then columns; e.g. 0:4,0:4)")
    return found[0], found[1]


def parse_region(text: str, shape: Sequence[int]) -> np.ndarray:
    """A boolean mask of the input shape from ``"r0:r1,c0:c1"`` (rows, columns of the last two axes).

    Example:
        >>> parse_region("0:2,0:2", (4, 4)).sum()
        np.int64(4)
    """
    ends = region_ends(text)
    if len(shape) < 2:
        raise ValueError(
            f"region {text!r}: expected an image input (…×H×W) for 'r0:r1,c0:c1', found samples of shape {tuple(shape)}; name table columns with suspect_feature"
        )
    h, w = int(shape[-2]), int(shape[-1])
    bounds = []
    for (lo_given, hi_given), size in zip(ends, (h, w), strict=True):
        lo = 0 if lo_given is None else lo_given
        hi = size if hi_given is None else hi_given
        lo, hi = (lo + size if lo < 0 else lo), (hi + size if hi < 0 else hi)
        if not 0 <= lo < hi <= size:
            raise ValueError(f"region {text!r}: expected 0 <= start < end <= {size}, found {lo}:{hi}")
        bounds.append((lo, hi))
    mask = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    (r0, r1), (c0, c1) = bounds
    mask[..., r0:r1, c0:c1] = True
    return mask


@dataclass(frozen=True)
class ShortcutResult:
    """How much the model leans on a named region/feature set.

    ``share``: mean share of |attribution| inside the region; ``area``: the region's share
    of the input; ``enrichment`` = share / area. ``flip_rate``: share of samples whose
    prediction changes when only the region is set to the baseline, with a Wilson 95 %
    interval; ``accuracy_drop`` the matching accuracy change (when labels are given).
    """

    share: float
    area: float
    enrichment: float
    flip_rate: float
    flip_ci: tuple[float, float]
    accuracy_drop: float | None
    n: int


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def shortcut_share(
    model: Any,
    x: np.ndarray,
    attributions: np.ndarray,
    mask: np.ndarray,
    *,
    y: np.ndarray | None = None,
    baseline: float | None = None,
    x_flip: np.ndarray | None = None,
) -> ShortcutResult:
    """Attribution share on ``mask`` and the prediction change when the masked inputs are replaced.

    Args:
        x: Inputs whose attributions are given (N×…).
        attributions: Same shape as ``x``.
        mask: Boolean, the shape of one input (broadcast over samples).
        y: Labels of ``x`` (for the accuracy drop).
        baseline: Fill value of the region (default: the median of ``x`` over the region,
            i.e. what the region usually looks like).
        x_flip: Inputs for the intervention (default ``x``); a larger sample narrows the CI.
    """
    n = len(x)
    a = np.abs(attributions).reshape(n, -1)
    m = np.broadcast_to(mask, x.shape[1:]).reshape(-1)
    total = a.sum(1)
    share = float(np.mean(np.where(total > 0, a[:, m].sum(1) / np.where(total > 0, total, 1), 0.0)))
    area = float(m.mean())
    xf = x if x_flip is None else x_flip
    fill = float(np.median(xf.reshape(len(xf), -1)[:, m])) if baseline is None else float(baseline)
    blanked = np.where(np.broadcast_to(mask, xf.shape), fill, xf).astype(xf.dtype, copy=False)
    p0 = _probs(model, xf).argmax(1)
    p1 = _probs(model, blanked).argmax(1)
    flips = int((p0 != p1).sum())
    acc_drop = None
    if y is not None and x_flip is None:
        acc_drop = float((p0 == y).mean() - (p1 == y).mean())
    return ShortcutResult(
        share,
        area,
        share / area if area > 0 else float("inf"),
        flips / len(xf),
        _wilson(flips, len(xf)),
        acc_drop,
        int(len(xf)),
    )


def class_importance(attributions: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class global importance: mean |attribution| per feature over samples of each class (K×D).

    Rows of classes with no sample are NaN.
    """
    n = len(attributions)
    a = np.abs(attributions.reshape(n, -1))
    out = np.full((n_classes, a.shape[1]), np.nan)
    for k in range(n_classes):
        rows = classes == k
        if rows.any():
            out[k] = a[rows].mean(0)
    return out


def token_importance(
    ids: np.ndarray, attributions: np.ndarray, classes: np.ndarray, n_classes: int, *, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean signed attribution of each token id (K×V) and how often each id occurred (K×V).

    ``V`` = the largest id + 1; padding and ids absent from a class's rows give NaN.
    """
    ids = np.asarray(ids)
    v = int(ids.max()) + 1 if ids.size else 1
    total = np.zeros((n_classes, v))
    count = np.zeros((n_classes, v))
    rows = np.broadcast_to(np.asarray(classes)[:, None], ids.shape)
    real = ids != pad_id
    np.add.at(total, (rows[real], ids[real]), np.asarray(attributions, dtype=np.float64)[real])
    np.add.at(count, (rows[real], ids[real]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan), count
