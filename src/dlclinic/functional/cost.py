"""Compute cost: FLOPs, throughput bottleneck and energy of a measured window.

* :func:`count_flops` — forward and forward+backward FLOPs per sample with
  ``torch.utils.flop_counter.FlopCounterMode`` (counts matmul/conv/attention ops; cheap
  element-wise ops are not counted, so this is the usual lower bound).
* :class:`EnergyMeter` — energy of a window of work. Sources, best first:
  ``powercap`` (Intel/AMD RAPL counters under ``/sys/class/powercap``, package domains,
  wrap-around handled), ``nvml`` (GPU energy counter via ``pynvml`` when installed and a
  CUDA device is used), otherwise ``tdp-estimate``: process CPU seconds × (TDP / cores),
  which is an *estimate* and labelled so. codecarbon does the same with more hardware
  tables, but it starts background threads and writes files; the reader here is 60 lines.
* :func:`co2e_grams` — kWh × carbon intensity (gCO₂e/kWh).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlclinic.core.inference import eval_mode, first_output, input_tensor, model_device

__all__ = [
    "EnergyMeter",
    "EnergyReading",
    "FlopCount",
    "co2e_grams",
    "count_flops",
    "DEFAULT_CPU_TDP_WATTS",
    "DEFAULT_CARBON_INTENSITY",
]

DEFAULT_CPU_TDP_WATTS = 85.0
"""Whole-package TDP assumed when no counter exists (codecarbon's fallback figure)."""

DEFAULT_CARBON_INTENSITY = 475.0
"""gCO₂e per kWh: the world-average electricity mix (IEA 2019), as used by codecarbon."""

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per sample: forward, and forward + backward (one training step's compute)."""

    forward: float
    train: float
    parameters: int


def count_flops(model: Any, example: np.ndarray) -> FlopCount:
    """FLOPs per sample of ``model`` on the rows of ``example`` (forward, and forward+backward).

    The model is run on a deep copy in train mode for the backward count, so its
    parameters, gradients and BN statistics are left untouched.

    Example:
        >>> import torch
        >>> count_flops(torch.nn.Linear(10, 5), np.zeros((4, 10), "float32")).forward
        100.0
    """
    from torch.utils.flop_counter import FlopCounterMode

    n = len(example)
    xt = input_tensor(example, device=model_device(model)) if hasattr(model, "parameters") else input_tensor(example)
    params = int(sum(p.numel() for p in model.parameters())) if hasattr(model, "parameters") else 0
    net = copy.deepcopy(model)
    with eval_mode(net), torch.no_grad(), FlopCounterMode(display=False) as fwd:
        net(xt)
    forward = fwd.get_total_flops() / n
    train = math.nan
    try:
        net.train()
        with FlopCounterMode(display=False) as both:
            out = first_output(net(xt))
            out.float().sum().backward()
        train = both.get_total_flops() / n
    except Exception:  # exported / frozen graphs may not support backward
        train = 3.0 * forward
    return FlopCount(float(forward), float(train), params)


@dataclass(frozen=True)
class EnergyReading:
    """Energy of one window: joules, seconds, the source and whether it is an estimate."""

    joules: float
    seconds: float
    cpu_seconds: float
    method: str  # "powercap" | "nvml" | "tdp-estimate"
    estimated: bool
    tdp_watts: float | None = None

    @property
    def kwh(self) -> float:
        return self.joules / 3.6e6


def _rapl_domains(root: Path = POWERCAP) -> list[Path]:
    """Top-level RAPL package domains whose counter is readable (``intel-rapl:N``, not sub-zones)."""
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.glob("*rapl:*")):
        if d.name.count(":") != 1:
            continue
        f = d / "energy_uj"
        try:
            int(f.read_text().strip())
        except (OSError, ValueError):
            continue
        out.append(d)
    return out


def _read_uj(d: Path) -> tuple[int, int]:
    value = int((d / "energy_uj").read_text().strip())
    try:
        wrap = int((d / "max_energy_range_uj").read_text().strip())
    except (OSError, ValueError):
        wrap = 2**32
    return value, wrap


def _nvml_mj() -> float | None:
    """Total energy counter (mJ) of all NVIDIA GPUs, or ``None`` without CUDA/pynvml."""
    try:
        if not torch.cuda.is_available():
            return None
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return float(
            sum(
                pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(i))
                for i in range(pynvml.nvmlDeviceGetCount())
            )
        )
    except Exception:
        return None


class EnergyMeter:
    """Measure the energy of a block of work: ``with EnergyMeter() as m: ...; m.reading``.

    Args:
        tdp_watts: package TDP used when no counter exists (default 85 W).
        root: where powercap lives (tests point it elsewhere).
    """

    def __init__(self, *, tdp_watts: float = DEFAULT_CPU_TDP_WATTS, root: Path = POWERCAP) -> None:
        self.tdp_watts = float(tdp_watts)
        self.root = Path(root)
        self.reading: EnergyReading | None = None
        self._start: dict[str, Any] = {}

    def __enter__(self) -> EnergyMeter:
        self._domains = _rapl_domains(self.root)
        self._start = {
            "wall": time.perf_counter(),
            "cpu": time.process_time(),
            "rapl": [_read_uj(d) for d in self._domains],
            "nvml": _nvml_mj(),
        }
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._start["wall"]
        cpu = time.process_time() - self._start["cpu"]
        if self._domains:
            joules = 0.0
            for d, (before, wrap) in zip(self._domains, self._start["rapl"]):
                after, _ = _read_uj(d)
                joules += ((after - before) % wrap) / 1e6
            self.reading = EnergyReading(joules, wall, cpu, "powercap", False)
            return
        gpu = _nvml_mj()
        if gpu is not None and self._start["nvml"] is not None:
            self.reading = EnergyReading((gpu - self._start["nvml"]) / 1e3, wall, cpu, "nvml", False)
            return
        cores = os.cpu_count() or 1
        self.reading = EnergyReading(cpu * self.tdp_watts / cores, wall, cpu, "tdp-estimate", True, self.tdp_watts)


def co2e_grams(kwh: float, intensity: float = DEFAULT_CARBON_INTENSITY) -> float:
    """Grams of CO₂-equivalent for ``kwh`` at ``intensity`` gCO₂e/kWh."""
    return float(kwh * intensity)
