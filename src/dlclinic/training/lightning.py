"""A PyTorch Lightning callback around :class:`~dlclinic.training.monitor.TrainingMonitor`.

Lightning is an optional extra (``pip install 'dlclinic[lightning]'``); it is imported
only when :func:`monitor_callback` is called. The detection logic stays framework-free in
the monitor; this adapter only maps Lightning's hooks onto it:
``on_fit_start`` → attach to the LightningModule, ``on_train_batch_end`` (after the
optimizer step) → ``step(loss)``, ``on_train_epoch_end`` → ``log_epoch``, and
``on_fit_end`` / ``on_exception`` → detach, so no hook survives a crash.

Example:
    >>> cb, monitor = monitor_callback(every=10)                 # doctest: +SKIP
    >>> trainer = lightning.Trainer(callbacks=[cb]); trainer.fit(module)  # doctest: +SKIP
    >>> monitor.record().grad_rms                                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from dlclinic.core.errors import MissingDependencyError
from dlclinic.training.monitor import TrainingMonitor

__all__ = ["monitor_callback"]


def _callback_base() -> Any:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise MissingDependencyError("lightning", "lightning") from None
    return Callback


def monitor_callback(*, every: int = 10) -> tuple[Any, TrainingMonitor]:
    """``(callback, monitor)``: pass the callback to ``Trainer(callbacks=[...])``, read ``monitor.record()`` after."""
    base = _callback_base()
    monitor = TrainingMonitor(None, every=every)

    class _MonitorCallback(base):  # type: ignore[misc, valid-type]
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            monitor.attach(pl_module)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            monitor.step(loss)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
            }
            if metrics:
                monitor.log_epoch(**metrics)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            monitor.detach()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            monitor.detach()

    return _MonitorCallback(), monitor
