"""Training monitors: framework-free statistics of a running training loop, and thin adapters.

``TrainingMonitor`` (:mod:`dlclinic.training.monitor`) works with any PyTorch loop;
:func:`dlclinic.training.lightning.monitor_callback` wraps it as a Lightning callback
(Lightning is imported only when that function is called).
"""

from __future__ import annotations

from dlclinic.training.monitor import MonitorRecord, TrainingMonitor

__all__ = ["MonitorRecord", "TrainingMonitor"]
