"""Windows of a deployment stream compared with the reference, with controlled false alarms.

For each window (``window`` consecutive predictions, or ``window_seconds`` of wall time)
:func:`evaluate_stream` computes

* embedding MMD against the reference embeddings (permutation test,
  :func:`dlclinic.functional.drift.mmd_test`),
* prediction-distribution shift: PSI (effect size) and a χ² test of predicted-class counts,
* confidence shift: KS test of the top-1 confidence and the mean difference,
* estimated accuracy (CBPE, calibrated with the reference's temperature) and its drop
  from the reference's estimate, with a one-sided z test,
* observed accuracy where labels were fed back, and its drop from the reference accuracy.

False alarms: all p-values of all windows are adjusted together with Holm's step-down
procedure, so on a stationary stream the probability of *any* alert in the analysed
stream is at most ``alpha`` (default 1 %), whatever the dependence between tests. An
accuracy drop alerts only when it is significant *and* larger than ``warn_accuracy_drop``
(``fail_accuracy_drop`` for ``fail``); distribution drift alone is a ``warn``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from dlclinic.core.errors import ConfigError, InputError
from dlclinic.functional.drift import mmd_test
from dlclinic.functional.stats import holm
from dlclinic.monitoring.reference import Reference, softmax
from dlclinic.monitoring.stats import (
    AccuracyEstimate,
    chi2_shift,
    class_counts,
    confidence_shift,
    drop_p_value,
    estimate_accuracy_cbpe,
    observed_accuracy,
    psi,
)

__all__ = [
    "AlertThresholds",
    "MonitorConfig",
    "MonitorResult",
    "WindowResult",
    "alert_thresholds",
    "evaluate_stream",
    "evaluate_window",
    "windows_by_count",
    "windows_by_time",
]


@dataclass(frozen=True)
class MonitorConfig:
    """How a stream is cut into windows and when a window alerts.

    Attributes:
        window: predictions per window (count windows).
        window_seconds: when set, windows are this many seconds of wall time instead.
        min_window: windows with fewer rows are merged into the previous one (count) or skipped (time).
        alpha: family-wise false-alarm level over all windows and tests of one analysis.
        warn_accuracy_drop: a significant estimated/observed accuracy drop above this warns.
        fail_accuracy_drop: ... and above this fails.
        permutations: MMD permutations; ``None`` = enough for the smallest Holm level (capped at 6000).
        max_reference_rows: reference rows used by the MMD test (subsampled, seeded).
        min_labels: fed-back labels a window needs before its observed accuracy is graded.
        seed: seed of subsampling and permutations.
    """

    window: int = 100
    window_seconds: float | None = None
    min_window: int = 30
    alpha: float = 0.01
    warn_accuracy_drop: float = 0.05
    fail_accuracy_drop: float = 0.10
    permutations: int | None = None
    max_reference_rows: int = 300
    min_labels: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"`window >= 2` must hold, but got window={self.window}")
        if self.window_seconds is not None and self.window_seconds <= 0:
            raise ConfigError(f"`window_seconds > 0` must hold, but got window_seconds={self.window_seconds}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"`0 < alpha < 1` must hold, but got alpha={self.alpha}")
        if not 0 <= self.warn_accuracy_drop <= self.fail_accuracy_drop:
            raise ConfigError(
                f"`0 <= warn_accuracy_drop <= fail_accuracy_drop` must hold, but got ({self.warn_accuracy_drop=}, {self.fail_accuracy_drop=})"
            )


@dataclass(frozen=True)
class WindowResult:
    """The statistics and verdict of one window (p-values raw and Holm-adjusted)."""

    index: int
    start: int  # first row position in the stream
    stop: int  # one past the last row
    n: int
    t_start: float | None
    t_end: float | None
    mmd2: float | None
    mmd_p: float | None
    psi: float
    chi2: float
    chi2_p: float
    confidence_mean: float
    confidence_ks: float
    confidence_p: float
    estimated_accuracy: float
    estimated_accuracy_se: float
    estimated_drop: float
    estimated_drop_p: float
    accuracy: float | None
    accuracy_n: int
    accuracy_drop_p: float | None
    adjusted: dict[str, float] = field(default_factory=dict)
    drifted: bool = False
    status: str = "ok"
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out


@dataclass(frozen=True)
class MonitorResult:
    """All windows of a stream, the reference figures and the overall verdict."""

    windows: tuple[WindowResult, ...]
    reference_estimated_accuracy: float
    reference_accuracy: float | None
    temperature: float
    config: MonitorConfig
    permutations: int

    @property
    def status(self) -> str:
        order = {"ok": 0, "warn": 1, "fail": 2}
        return max((w.status for w in self.windows), key=lambda s: order[s], default="ok")

    @property
    def first_alert(self) -> int | None:
        return next((w.index for w in self.windows if w.status != "ok"), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "first_alert": self.first_alert,
            "reference_estimated_accuracy": self.reference_estimated_accuracy,
            "reference_accuracy": self.reference_accuracy,
            "temperature": self.temperature,
            "permutations": self.permutations,
            "config": asdict(self.config),
            "windows": [w.to_dict() for w in self.windows],
        }


@dataclass(frozen=True)
class AlertThresholds:
    """No-drift quantiles of the window statistics (bootstrap windows drawn from the reference).

    ``psi``/``estimated_drop``/``confidence_drop`` are the ``1 − alpha`` quantiles a
    window of ``window`` rows reaches by chance alone; ``min_detectable_drop`` is the
    smallest accuracy drop detected with 80 % power at one-sided level ``alpha``.
    """

    window: int
    alpha: float
    psi: float
    estimated_drop: float
    confidence_drop: float
    min_detectable_drop: float
    resamples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def windows_by_count(n: int, size: int, *, min_size: int = 1) -> list[np.ndarray]:
    """Consecutive windows of ``size`` rows; a trailing window under ``min_size`` joins the previous one.

    Example:
        >>> [len(w) for w in windows_by_count(250, 100, min_size=60)]
        [100, 150]
    """
    if size < 1:
        raise ConfigError(f"`size >= 1` must hold, but got size={size}")
    bounds = list(range(0, n, size)) + [n]
    out = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if len(out) > 1 and len(out[-1]) < min_size:
        out[-2] = np.concatenate([out[-2], out[-1]])
        out.pop()
    return out


def windows_by_time(times: np.ndarray, seconds: float, *, min_size: int = 1) -> list[np.ndarray]:
    """Row indices per ``seconds``-long wall-time window (aligned on the first time); small windows dropped."""
    t = np.asarray(times, dtype=np.float64)
    if len(t) == 0:
        return []
    key = np.floor((t - t.min()) / float(seconds)).astype(np.int64)
    order = np.argsort(key, kind="stable")
    out = [order[key[order] == k] for k in np.unique(key)]
    return [w for w in out if len(w) >= min_size]


_holm = holm  # the monitor's name for it (tests import it)


@dataclass
class _Prepared:
    ref: Reference
    raw_probs: np.ndarray
    conf: np.ndarray
    counts: np.ndarray
    cbpe: AccuracyEstimate
    observed: AccuracyEstimate | None
    emb: np.ndarray | None


def _prepare(reference: Reference, config: MonitorConfig) -> _Prepared:
    raw = softmax(reference.logits)
    emb = reference.embeddings
    if emb is not None and len(emb) > config.max_reference_rows:
        rng = np.random.default_rng(config.seed)
        emb = emb[np.sort(rng.choice(len(emb), config.max_reference_rows, replace=False))]
    observed = None if reference.labels is None else observed_accuracy(raw.argmax(1), reference.labels)
    return _Prepared(
        reference,
        raw,
        raw.max(1),
        class_counts(raw.argmax(1), reference.n_classes),
        estimate_accuracy_cbpe(reference.probs),
        observed,
        emb,
    )


def calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Re-apply a temperature to stored probabilities (``log p`` equals the logits up to a row constant)."""
    return softmax(np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None)), temperature)


def _cut(n: int, times: np.ndarray | None, cfg: MonitorConfig) -> list[np.ndarray]:
    """Row-index windows by time (``cfg.window_seconds``) or by count."""
    if cfg.window_seconds is not None:
        if times is None:
            raise InputError("time windows need the prediction times; expected `times`, found none")
        return windows_by_time(times, cfg.window_seconds, min_size=cfg.min_window)
    return windows_by_count(n, cfg.window, min_size=cfg.min_window)


def _window_row(
    wi: int,
    idx: np.ndarray,
    p: np.ndarray,
    cal: np.ndarray,
    prep: _Prepared,
    cfg: MonitorConfig,
    *,
    embeddings: np.ndarray | None,
    lab: np.ndarray | None,
    times: np.ndarray | None,
    perms: int,
    pvals: list[tuple[int, str, float]],
) -> dict[str, Any]:
    """One window's statistics (unadjusted); its p-values are appended to ``pvals``."""
    n_classes = prep.ref.n_classes
    pw = p[idx]
    pred = pw.argmax(1)
    conf = pw.max(1)
    counts = class_counts(pred, n_classes)
    chi2, chi2_p = chi2_shift(prep.counts, counts)
    ks, ks_p, _ = confidence_shift(prep.conf, conf)
    est = estimate_accuracy_cbpe(cal[idx])
    est_p = drop_p_value(prep.cbpe, est)
    mmd2 = mmd_p = None
    if embeddings is not None and prep.emb is not None:
        res = mmd_test(
            prep.emb,
            np.asarray(embeddings)[idx],
            permutations=perms,
            max_rows=max(cfg.max_reference_rows, len(idx)),
            seed=cfg.seed + wi,
        )
        mmd2, mmd_p = res.mmd2, res.p_value
        pvals.append((wi, "mmd", mmd_p))
    pvals.extend([(wi, "chi2", chi2_p), (wi, "confidence", ks_p), (wi, "estimated_drop", est_p)])
    acc = None
    acc_n = 0
    acc_p = None
    if lab is not None and prep.observed is not None:
        known = lab[idx] >= 0
        acc_n = int(known.sum())
        if acc_n:
            obs = observed_accuracy(pred[known], lab[idx][known])
            acc = obs.accuracy
            acc_p = drop_p_value(prep.observed, obs) if acc_n >= cfg.min_labels else 1.0
            pvals.append((wi, "accuracy_drop", acc_p))
        else:
            pvals.append((wi, "accuracy_drop", 1.0))
    t0 = t1 = None
    if times is not None:
        tw = np.asarray(times, dtype=np.float64)[idx]
        t0, t1 = float(tw.min()), float(tw.max())
    return {
        "index": wi,
        "start": int(np.min(idx)),
        "stop": int(np.max(idx)) + 1,
        "n": len(idx),
        "t_start": t0,
        "t_end": t1,
        "mmd2": mmd2,
        "mmd_p": mmd_p,
        "psi": psi(prep.counts, counts),
        "chi2": chi2,
        "chi2_p": chi2_p,
        "confidence_mean": float(conf.mean()),
        "confidence_ks": ks,
        "confidence_p": ks_p,
        "estimated_accuracy": est.accuracy,
        "estimated_accuracy_se": est.se,
        "estimated_drop": prep.cbpe.accuracy - est.accuracy,
        "estimated_drop_p": est_p,
        "accuracy": acc,
        "accuracy_n": acc_n,
        "accuracy_drop_p": acc_p,
    }


def _verdict(row: dict[str, Any], adj: dict[str, float], prep: _Prepared, cfg: MonitorConfig) -> WindowResult:
    """The window's status and reasons from its Holm-adjusted p-values."""
    reasons: list[str] = []
    drifted = any(adj.get(k, 1.0) < cfg.alpha for k in ("mmd", "chi2", "confidence"))
    status = "warn" if drifted else "ok"
    if adj.get("mmd", 1.0) < cfg.alpha:
        reasons.append(f"embedding MMD² {row['mmd2']:.3g} (adjusted p {adj['mmd']:.2g})")
    if adj.get("chi2", 1.0) < cfg.alpha:
        reasons.append(f"predicted-class distribution shift: PSI {row['psi']:.3f} (χ² adjusted p {adj['chi2']:.2g})")
    if adj.get("confidence", 1.0) < cfg.alpha:
        reasons.append(
            f"confidence shift: mean {row['confidence_mean']:.3f} vs {float(prep.conf.mean()):.3f} (KS adjusted p {adj['confidence']:.2g})"
        )
    for key, drop in (
        ("estimated_drop", row["estimated_drop"]),
        (
            "accuracy_drop",
            None if row["accuracy"] is None or prep.observed is None else prep.observed.accuracy - row["accuracy"],
        ),
    ):
        if drop is None or adj.get(key, 1.0) >= cfg.alpha or drop <= cfg.warn_accuracy_drop:
            continue
        label = "estimated accuracy (CBPE)" if key == "estimated_drop" else "observed accuracy (fed-back labels)"
        reasons.append(f"{label} down {drop:.1%} (adjusted p {adj[key]:.2g})")
        status = "fail" if drop > cfg.fail_accuracy_drop else ("warn" if status == "ok" else status)
    return WindowResult(**row, adjusted=adj, drifted=drifted, status=status, reasons=tuple(reasons))


def evaluate_stream(
    reference: Reference,
    probs: np.ndarray,
    *,
    embeddings: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    times: np.ndarray | None = None,
    config: MonitorConfig | None = None,
    windows: list[np.ndarray] | None = None,
) -> MonitorResult:
    """Cut a stream of served predictions into windows and compare each with the reference.

    Args:
        reference: the held-out reference (:class:`Reference`).
        probs: N×K model probabilities in serving order (uncalibrated, as served).
        embeddings: N×D embeddings of the same rows (MMD is skipped without them).
        labels: N labels fed back, ``-1`` where unknown (observed accuracy per window).
        times: N timestamps (seconds) for time windows (``config.window_seconds``).
        config: windows and alert levels.
        windows: explicit row-index windows (overrides ``config``'s cutting).

    Example:
        >>> result = evaluate_stream(ref, served_probs, embeddings=served_emb)  # doctest: +SKIP
        >>> result.status, result.first_alert                                    # doctest: +SKIP
        ('fail', 3)
    """
    cfg = config or MonitorConfig()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != reference.n_classes:
        raise InputError(
            f"stream probabilities: expected N×{reference.n_classes} like the reference, found shape {p.shape}"
        )
    if windows is None:
        windows = _cut(len(p), times, cfg)
    prep = _prepare(reference, cfg)
    use_mmd = embeddings is not None and prep.emb is not None
    lab = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    tests_per_window = 3 + int(use_mmd) + int(lab is not None and prep.observed is not None)
    m = max(1, tests_per_window * len(windows))
    perms = cfg.permutations or int(min(6000, max(200, math.ceil(4 * m / cfg.alpha))))
    cal = calibrated(p, reference.temperature)
    pvals: list[tuple[int, str, float]] = []
    rows = [
        _window_row(
            wi,
            idx,
            p,
            cal,
            prep,
            cfg,
            embeddings=embeddings if use_mmd else None,
            lab=lab,
            times=times,
            perms=perms,
            pvals=pvals,
        )
        for wi, idx in enumerate(windows)
    ]
    adjusted = _holm([q for _, _, q in pvals])
    per_window: list[dict[str, float]] = [{} for _ in windows]
    for (wi, name, _), q in zip(pvals, adjusted, strict=True):
        per_window[wi][name] = float(q)
    return MonitorResult(
        windows=tuple(_verdict(row, adj, prep, cfg) for row, adj in zip(rows, per_window, strict=True)),
        reference_estimated_accuracy=prep.cbpe.accuracy,
        reference_accuracy=None if prep.observed is None else prep.observed.accuracy,
        temperature=reference.temperature,
        config=cfg,
        permutations=perms,
    )


def evaluate_window(
    reference: Reference,
    probs: np.ndarray,
    *,
    embeddings: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    config: MonitorConfig | None = None,
) -> WindowResult:
    """One window on its own (the live server's per-window verdict; Holm over its tests only).

    Over many windows analysed one by one the false-alarm level is ``alpha`` *per window*;
    the ``monitor`` command analyses the stream as a whole instead.
    """
    n = len(probs)
    res = evaluate_stream(reference, probs, embeddings=embeddings, labels=labels, config=config, windows=[np.arange(n)])
    return res.windows[0]


def alert_thresholds(
    reference: Reference, window: int, *, alpha: float = 0.01, resamples: int = 300, seed: int = 0
) -> AlertThresholds:
    """What a window of ``window`` rows shows by chance: bootstrap windows drawn from the reference.

    Returns the ``1 − alpha`` quantiles of PSI, of the estimated-accuracy drop and of the
    mean-confidence drop under no drift, and the minimum detectable accuracy drop (80 %
    power, one-sided level ``alpha``) for windows of this size against this reference.
    """
    rng = np.random.default_rng(seed)
    raw = softmax(reference.logits)
    cal = reference.probs
    n_ref = len(raw)
    counts = class_counts(raw.argmax(1), reference.n_classes)
    base_est = float(cal.max(1).mean())
    base_conf = float(raw.max(1).mean())
    psis = np.empty(resamples)
    drops = np.empty(resamples)
    cdrops = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n_ref, window)
        psis[r] = psi(counts, class_counts(raw[idx].argmax(1), reference.n_classes))
        drops[r] = base_est - float(cal[idx].max(1).mean())
        cdrops[r] = base_conf - float(raw[idx].max(1).mean())
    a = reference.accuracy if reference.accuracy is not None else base_est
    se = math.sqrt(max(a * (1 - a), 1e-12) * (1.0 / window + 1.0 / n_ref))
    mdd = float((norm.ppf(1 - alpha) + norm.ppf(0.8)) * se)
    q = 1 - alpha
    return AlertThresholds(
        window=window,
        alpha=alpha,
        psi=float(np.quantile(psis, q)),
        estimated_drop=float(np.quantile(drops, q)),
        confidence_drop=float(np.quantile(cdrops, q)),
        min_detectable_drop=mdd,
        resamples=resamples,
    )
