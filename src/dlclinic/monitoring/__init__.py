"""Drift monitoring of a served model: windows of predictions compared with a reference.

* :mod:`~dlclinic.monitoring.reference` — the :class:`Reference` a deployment is compared
  with (held-out logits, embeddings, labels, a fitted temperature), saved as ``.npz``;
* :mod:`~dlclinic.monitoring.stats` — the per-window statistics (PSI, χ², confidence
  shift, confidence-based performance estimation, accuracy with a CI);
* :mod:`~dlclinic.monitoring.windows` — windows by count or time, one
  :class:`WindowResult` per window, alerts with family-wise error control.

Everything here is numpy/scipy on evidence arrays; no web framework, no database.
"""

from __future__ import annotations

from dlclinic.monitoring.reference import Reference, fit_temperature, softmax
from dlclinic.monitoring.stats import (
    AccuracyEstimate,
    chi2_shift,
    confidence_shift,
    estimate_accuracy_cbpe,
    observed_accuracy,
    psi,
)
from dlclinic.monitoring.windows import (
    MonitorConfig,
    MonitorResult,
    WindowResult,
    alert_thresholds,
    evaluate_stream,
    evaluate_window,
    windows_by_count,
    windows_by_time,
)

__all__ = [
    "AccuracyEstimate",
    "MonitorConfig",
    "MonitorResult",
    "Reference",
    "WindowResult",
    "alert_thresholds",
    "chi2_shift",
    "confidence_shift",
    "estimate_accuracy_cbpe",
    "evaluate_stream",
    "evaluate_window",
    "fit_temperature",
    "observed_accuracy",
    "psi",
    "softmax",
    "windows_by_count",
    "windows_by_time",
]
