"""Validation plans of the compute and budget checks: compute.training_cost, compute.energy,
compute.edge, compute.realtime, model.compression and deployment.scalability.

Most of these checks compare a measurement (seconds, joules, bytes, milliseconds) with a
budget the user gives. Their false alarms come from measurement noise, so a clean case is
a budget the model's true cost clearly meets (true cost = 0.75 × the budget) and a defect
is a budget below the true cost (true cost 1.1×, 1.5×, 3× the budget). The "true" cost is
a deterministic quantity where one exists (bytes on disk, peak memory) and otherwise an
independent run of the same measurement taken by the builder just before the check runs
(latency: the check's benchmark; training time and energy: the same monitored training
run), which is what a user does who sets a budget from an earlier measurement.

Two checks warn without any budget, and their cases are built around that default rule:

* ``model.compression`` warns when a variant at most half the size keeps the accuracy
  within 1 point (upper 95 % CI end). Its clean case is a model that int8 cannot compress
  for free: a trained baseline with *activation outliers*, the most active hidden unit per layer scaled
  by ``c`` and its outgoing weights by ``1/c`` (ReLU is positively homogeneous, so the fp32
  function is unchanged; LLM.int8() and SmoothQuant describe such outlier features in real
  models). Per-tensor int8 activations then lose accuracy. The defect lowers ``c`` to 1 (a
  plain over-parameterised baseline, where int8 is free).
* ``deployment.scalability`` warns when the batched p99 exceeds 250 ms by default: clean =
  dlclinic's baselines under that default; defect = a model whose every call takes a known
  service time (sleep) above a 25 ms budget.
"""

from __future__ import annotations

import copy
import tempfile
import time
from typing import Any

import numpy as np

from validation.data import Splits, split
from validation.plan import NEW_MODALITIES, Defect, Plan, Trial, baseline, case_from, fast_fit

__all__ = ["PLANS"]


# ----------------------------------------------------------------------------- shared


def _splits(modality: str, seed: int) -> Splits:
    return split(modality, seed, (0.5, 0.5, 0.0))


def _model(s: Splits, modality: str, seed: int, *, train: bool = True) -> Any:
    """dlclinic's baseline for the modality, seeded, trained with the suite's fast recipe (or freshly initialised)."""
    from dlclinic.core.recipe import fit, seed_everything

    seed_everything(seed)
    net = baseline(s, modality)
    if not train:
        return net.eval()
    return fit(net, s.x_train, s.y_train, fast_fit(modality)).model.eval()


def _no_cache() -> Any:
    """Measurement checks must measure in every trial, not read a run cached by an earlier trial."""
    from dlclinic.core.evidence import EvidenceConfig

    return EvidenceConfig(cache=False)


def _reference(case: Any, check: str, options: dict[str, Any], metric: str) -> float:
    """An independent run of ``check`` (own cache, no budget): the cost the budget is set against."""
    import dlclinic

    with tempfile.TemporaryDirectory(prefix="dlclinic-ref-") as cache:
        res = dlclinic.checkup(
            case,
            only=[check],
            options={check: options},
            fit_config=fast_fit(case.modality),
            cache_dir=cache,
            evidence_config=_no_cache(),
        )[check]
    value = res.metrics.get(metric)
    if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise RuntimeError(f"reference run of {check} gave no {metric}: {res.status} {res.summary[:200]}")
    return float(value)


# ----------------------------------------------------------------------------- compute.training_cost and compute.energy

# A shorter monitored run than the default 300 steps (the checks' own budget, not their verdict).
_RUN = {"steps": 100}


def _run_case(modality: str, seed: int) -> tuple[Any, Splits]:
    s = _splits(modality, seed)
    return case_from(s, modality, deploy=False, model=_model(s, modality, seed)), s


def _cost_trial(modality: str, seed: int, ratio: float) -> Trial:
    """A training-time budget ``true / ratio`` (ratio 0.75 = clean), true = an independent monitored run's projection."""
    case, _ = _run_case(modality, seed)
    true_s = _reference(case, "compute.training_cost", dict(_RUN), "projected_full_run_seconds")
    return Trial(case, options={**_RUN, "budget_hours": true_s / ratio / 3600.0}, evidence=_no_cache())


def training_cost_clean(modality: str, seed: int) -> Trial:
    return _cost_trial(modality, seed, 0.75)


def training_cost_over_budget(modality: str, ratio: float, seed: int) -> Trial:
    return _cost_trial(modality, seed, ratio)


def _energy_trial(modality: str, seed: int, ratio: float) -> Trial:
    case, _ = _run_case(modality, seed)
    true_kwh = _reference(case, "compute.energy", dict(_RUN), "full_run_kwh")
    return Trial(case, options={**_RUN, "warn_kwh": true_kwh / ratio}, evidence=_no_cache())


def energy_clean(modality: str, seed: int) -> Trial:
    return _energy_trial(modality, seed, 0.75)


def energy_over_budget(modality: str, ratio: float, seed: int) -> Trial:
    return _energy_trial(modality, seed, ratio)


# ----------------------------------------------------------------------------- compute.edge


def _edge_truth(model: Any, x: np.ndarray) -> tuple[float, float]:
    """``(fp32 weights MB, peak batch-1 inference MB)``: the quantities the check compares with its budgets."""
    from dlclinic.export.weights import state_dict_bytes
    from dlclinic.functional.latency import peak_inference_memory

    return len(state_dict_bytes(model)) / 1e6, peak_inference_memory(model, np.ascontiguousarray(x[:1]))[
        "peak_bytes"
    ] / 1e6


def edge_clean(modality: str, seed: int) -> Trial:
    s = _splits(modality, seed)
    model = _model(s, modality, seed)
    size, mem = _edge_truth(model, s.x_test)
    return Trial(
        case_from(s, modality, deploy=False, model=model),
        options={"max_size_mb": size / 0.75, "max_memory_mb": mem / 0.75},
    )


def edge_size(modality: str, ratio: float, seed: int) -> Trial:
    """fp32 weights ``ratio`` × the size budget (int8 is 30–47 % of fp32: warn up to ~2×, fail beyond)."""
    s = _splits(modality, seed)
    model = _model(s, modality, seed)
    size, mem = _edge_truth(model, s.x_test)
    return Trial(
        case_from(s, modality, deploy=False, model=model),
        options={"max_size_mb": size / ratio, "max_memory_mb": mem / 0.75},
    )


def edge_memory(modality: str, ratio: float, seed: int) -> Trial:
    s = _splits(modality, seed)
    model = _model(s, modality, seed)
    size, mem = _edge_truth(model, s.x_test)
    return Trial(
        case_from(s, modality, deploy=False, model=model),
        options={"max_size_mb": size / 0.75, "max_memory_mb": mem / ratio},
    )


def _branchy(net: Any) -> Any:
    """The baseline behind a data-dependent branch (``if x.mean() > t``): eager runs it, torch.export cannot trace it."""
    import torch

    class Branchy(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            if x.float().mean() > 1e6:  # never true on real inputs: the prediction is the baseline's
                out = -out
            return out

    return Branchy(net).eval()


def edge_unexportable(modality: str, strength: float, seed: int) -> Trial:
    s = _splits(modality, seed)
    model = _branchy(_model(s, modality, seed))
    size, mem = _edge_truth(model, s.x_test)
    return Trial(
        case_from(s, modality, deploy=False, model=model),
        options={"max_size_mb": size / 0.75, "max_memory_mb": mem / 0.75},
    )


# ----------------------------------------------------------------------------- compute.realtime


_LATENCY = {"seconds": 1.0}  # the benchmark's own time budget (default 3 s)


def _realtime_trial(modality: str, seed: int, ratio: float) -> Trial:
    """Latency budget ``true p99 / ratio``; true = the eager batch-1 p99 of an independent run of the check just before."""
    s = _splits(modality, seed)
    case = case_from(s, modality, deploy=False, model=_model(s, modality, seed))
    true_ms = _reference(case, "compute.realtime", dict(_LATENCY), "eager_fp32_p99_ms")
    return Trial(case, options={**_LATENCY, "latency_budget_ms": true_ms / ratio})


def realtime_clean(modality: str, seed: int) -> Trial:
    return _realtime_trial(modality, seed, 0.75)


def realtime_over_budget(modality: str, ratio: float, seed: int) -> Trial:
    return _realtime_trial(modality, seed, ratio)


# ----------------------------------------------------------------------------- model.compression

# Magnitude-pruned files keep their zeros and bf16 safetensors are (header + 2P)/(header + 4P) > 1/2
# of fp32: neither can be a "half the size" variant, so the sweep skips them (no effect on the verdict).
_SWEEP_IMAGE = {"sparsities": (), "bf16": False}
# Breast cancer is so easy that a half-width MLP (pruned or distilled) keeps the accuracy: the
# structured variants are truly free there, so the table cases validate the int8 part of the rule.
_SWEEP_TABLE = {"sparsities": (), "bf16": False, "keep_ratios": (), "distill_epochs": 0}
_CLEAN_OUTLIER = {"image": 100.0, "table": 300.0, "tokens": 300.0, "sequence": 100.0}


def _outlier_pairs(net: Any, modality: str) -> list[tuple[Any, Any]]:
    """(producer, consumer) pairs whose unit ``j`` is scaled by ``c`` and ``1/c``: each producer is followed by
    a positively homogeneous map (ReLU, pooling, mean and max over tokens) and then by its consumer."""
    if modality == "table":
        return [(net.body[0], net.embedding[0]), (net.embedding[0], net.head)]
    if modality == "tokens":  # TokenBag: embedding → mean ‖ max pools → Linear-ReLU → head
        return [(net.tokens, net.embedding[0]), (net.embedding[0], net.head)]
    f = net.features
    if modality == "sequence":  # conv-BN-ReLU ×2, global average pool, Flatten-Linear-ReLU, head
        return [(f[1], f[3]), (f[4], net.embedding[1]), (net.embedding[1], net.head)]
    # image: conv-BN-ReLU-pool ×2, Flatten-Linear-ReLU, head: scale the BN's affine output
    return [(f[1], f[4]), (f[5], net.embedding[1]), (net.embedding[1], net.head)]


def _unit_activity(module: Any, out: Any) -> Any:
    """Mean activity of each unit: after ReLU (channels of N×C×…) or, for an embedding, mean |value| per dimension."""
    import torch

    if isinstance(module, torch.nn.Embedding):
        return out.abs().reshape(-1, out.shape[-1]).mean(0)
    return out.clamp(min=0).transpose(0, 1).reshape(out.shape[1], -1).mean(1)


def _with_outliers(model: Any, c: float, modality: str, x: np.ndarray) -> Any:
    """A copy of ``model`` whose most active unit of each hidden layer is scaled by ``c`` and its outgoing weights by ``1/c``.

    After a ReLU (and max-pooling) the network computes the same function in fp32, but the
    hidden activation tensors now hold one channel ``c`` times larger than the rest, so a
    per-tensor int8 activation scale leaves the other channels a few levels. The unit is
    the one with the largest mean activation on ``x`` (a dead unit would change nothing).
    """
    import torch

    net = copy.deepcopy(model).eval()
    if c == 1.0:
        return net
    pairs = _outlier_pairs(net, modality)
    means: dict[int, torch.Tensor] = {}
    hooks = [
        prod.register_forward_hook(lambda m, _i, out, i=i: means.__setitem__(i, _unit_activity(m, out.detach())))
        for i, (prod, _) in enumerate(pairs)
    ]
    with torch.no_grad():
        net(torch.from_numpy(np.ascontiguousarray(x[:512], dtype=np.int64 if modality == "tokens" else np.float32)))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for i, (prod, cons) in enumerate(pairs):
            if isinstance(prod, torch.nn.Embedding):  # one embedding dimension; the head reads [mean ‖ max]
                j = int(means[i].argmax())
                dim = prod.weight.shape[1]
                prod.weight[:, j] *= c
                cons.weight[:, j] /= c
                cons.weight[:, dim + j] /= c
                continue
            j = int(means[i].argmax())
            prod.weight[j] *= c
            prod.bias[j] *= c
            block = cons.weight.shape[1] // prod.weight.shape[0] if isinstance(cons, torch.nn.Linear) else 1
            cons.weight[:, j * block : (j + 1) * block] /= c
    return net


def _compression_trial(modality: str, c: float, seed: int) -> Trial:
    s = _splits(modality, seed)
    model = _with_outliers(_model(s, modality, seed), c, modality, s.x_train)
    # token and series baselines: int8 variants only, as on tables (their half-width networks are not the question)
    return Trial(
        case_from(s, modality, deploy=False, model=model), options=_SWEEP_IMAGE if modality == "image" else _SWEEP_TABLE
    )


def compression_clean(modality: str, seed: int) -> Trial:
    """A model int8 cannot shrink for free: activation outliers (c = 100 image, 300 table) cost int8 2–50 points."""
    return _compression_trial(modality, _CLEAN_OUTLIER[modality], seed)


def compression_free(modality: str, c: float, seed: int) -> Trial:
    """Weaker outliers: int8 loses ≤ 1 point at c = 30 (often ≈ 0.5), nothing at c ≤ 10; c = 1 is the plain baseline."""
    return _compression_trial(modality, c, seed)


# ----------------------------------------------------------------------------- deployment.scalability


def _sleepy(net: Any, seconds: float) -> Any:
    """The baseline with a fixed service time per call (a remote accelerator, a slow pre-processing step)."""
    import torch

    class Sleepy(torch.nn.Module):
        def __init__(self, inner: Any, delay: float) -> None:
            super().__init__()
            self.inner = inner
            self.delay = delay

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(self.delay)
            return self.inner(x)

    return Sleepy(net, seconds).eval()


_SCAL_BUDGET_MS = 25.0


def scalability_clean(modality: str, seed: int) -> Trial:
    """dlclinic's baseline under the check's defaults (p99 budget 250 ms)."""
    s = _splits(modality, seed)
    return Trial(case_from(s, modality, deploy=False, model=_model(s, modality, seed)))


def scalability_slow(modality: str, ratio: float, seed: int) -> Trial:
    """Every call takes ``ratio`` × the 25 ms budget: every request waits at least that long (p99 ≥ ratio × budget)."""
    s = _splits(modality, seed)
    model = _sleepy(_model(s, modality, seed), ratio * _SCAL_BUDGET_MS / 1000.0)
    opts = {"warn_p99_ms": _SCAL_BUDGET_MS, "batch_sizes": (1, 8), "requests": 40, "time_limit": 0.5}
    return Trial(case_from(s, modality, deploy=False, model=model), options=opts)


# ----------------------------------------------------------------------------- plans

_ALL = ("image", "table", *NEW_MODALITIES)

_RATIOS = (1.1, 1.5, 3.0)
_BUDGET_UNIT = "true cost ÷ budget"

PLANS: tuple[Plan, ...] = (
    Plan(
        "compute.training_cost",
        0.05,
        "default (input-bound when > 20 % of step time waits for data; over budget when the projected run exceeds budget_hours)",
        _ALL,
        training_cost_clean,
        (
            Defect(
                "over_budget",
                _BUDGET_UNIT + " (projected full-run time)",
                _RATIOS,
                training_cost_over_budget,
                quick_strengths=(1.5,),
                expect=("over_budget",),
            ),
        ),
        "dlclinic's baselines trained in memory (no data stall possible); budget_hours = 1/0.75 × the projection of an independent monitored run of the same model just before",
        cost=2.0,
    ),
    Plan(
        "compute.energy",
        0.05,
        "default (warns when the projected full run exceeds warn_kwh)",
        _ALL,
        energy_clean,
        (
            Defect(
                "over_budget",
                _BUDGET_UNIT + " (projected full-run kWh)",
                _RATIOS,
                energy_over_budget,
                quick_strengths=(1.5,),
                expect=("energy_budget",),
            ),
        ),
        "dlclinic's baselines; warn_kwh = 1/0.75 × the projection of an independent monitored run of the same model just before (TDP estimate where no RAPL counter exists)",
        cost=2.0,
    ),
    Plan(
        "compute.edge",
        0.05,
        "default (budgets compared with deterministic sizes; export failures warn)",
        _ALL,
        edge_clean,
        (
            Defect(
                "size_over_budget",
                _BUDGET_UNIT + " (fp32 weights MB)",
                _RATIOS,
                edge_size,
                quick_strengths=(1.5, 3.0),
                expect=("fp32_over_size_budget", "over_size_budget"),
            ),
            Defect(
                "memory_over_budget",
                _BUDGET_UNIT + " (peak batch-1 memory MB)",
                _RATIOS,
                edge_memory,
                quick_strengths=(1.5,),
                expect=("over_memory_budget",),
            ),
            Defect(
                "not_exportable",
                "data-dependent branch in forward (1 = present)",
                (1.0,),
                edge_unexportable,
                expect=("pt2_export_failed", "onnx_export_failed"),
            ),
        ),
        "dlclinic's baselines (exportable); size and memory budgets = 1/0.75 × the fp32 weights and the peak batch-1 memory",
    ),
    Plan(
        "compute.realtime",
        0.05,
        "default (verdict on the batch-1 p99 against latency_budget_ms)",
        _ALL,
        realtime_clean,
        (
            Defect(
                "over_budget",
                _BUDGET_UNIT + " (eager batch-1 p99)",
                _RATIOS,
                realtime_over_budget,
                quick_strengths=(1.5,),
                expect=("eager_over_budget", "over_latency_budget"),
            ),
        ),
        "dlclinic's baselines; latency_budget_ms = 1/0.75 × the eager batch-1 p99 of an independent run of the benchmark just before (same process, same load)",
    ),
    Plan(
        "model.compression",
        0.05,
        "CompressionOptions: a variant ≤ 1/2 the size within 1 point at the upper 95 % CI end (≤ 2.5 % per variant)",
        _ALL,
        compression_clean,
        (
            Defect(
                "free_int8",
                "activation-outlier scale c (clean: 100 image, 300 table; 1 = plain baseline)",
                (30.0, 10.0, 1.0),
                compression_free,
                quick_strengths=(10.0, 1.0),
                expect=("free_compression",),
            ),
        ),
        "trained baselines with activation outliers (function-preserving rescaling of one unit per hidden layer; TokenBag: one embedding dimension and one hidden unit, c = 300; 1-D CNN: c = 100) that cost int8 2–50 points; tables, token ids and series: int8 variants only (a half-width MLP is truly free on breast cancer)",
        cost=2.0,
    ),
    Plan(
        "deployment.scalability",
        0.05,
        "ScalabilityOptions.warn_p99_ms = 250 (default budget on the batched p99)",
        _ALL,
        scalability_clean,
        (
            Defect(
                "slow_model",
                "service time per call ÷ a 25 ms p99 budget",
                _RATIOS,
                scalability_slow,
                quick_strengths=(1.5,),
                expect=("latency",),
            ),
        ),
        "dlclinic's baselines under the default load test and the default 250 ms budget",
    ),
)
