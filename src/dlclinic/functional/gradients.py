"""Gradient-flow verdicts from per-layer gradient statistics (pure numpy).

The inputs are what :class:`dlclinic.training.TrainingMonitor` records: per sampled step
the RMS gradient of every parameter-owning layer in execution order (input → output), the
global gradient norm, and the loss of every step.

* **Vanishing** — the *depth ratio* of a layer is its RMS gradient divided by the RMS
  gradient of the output layer at the same step; its median over the sampled steps is
  robust to single noisy steps. Healthy networks (ReLU MLPs, CNNs with BN, residual nets)
  keep it within 10⁻²…10 at every layer; a saturating deep stack (sigmoid without
  normalisation) drives it below 10⁻⁵ (Glorot & Bengio, AISTATS 2010). The named layer
  is the one closest to the output whose ratio is below the limit: gradients have
  vanished from there down to the input.
* **Exploding** — NaN/Inf gradients, or a global gradient norm that grows by more than a
  factor ``explode_growth`` over its initial value (Pascanu et al., ICML 2013), or a
  depth ratio above ``1/vanish_warn`` (gradients blowing up towards the input).
* **Dead** — every gradient exactly zero after the start (a network killed by a bad step).
* **Loss spikes** — a step whose loss exceeds the running median of the previous window
  by more than ``z`` robust standard deviations (MAD·1.4826), like Lightning's
  ``SpikeDetection`` but robust to the slow downward trend. With ``z = 8`` a spike occurs
  by chance with probability < 10⁻¹⁴ per step under Gaussian noise; the heavy-tailed
  noise of mini-batch losses makes the real rate higher, which is why spikes alone only warn.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.inference import eval_mode, first_output, input_tensor, model_input_spec

__all__ = [
    "GradientDiagnosis",
    "TimeGradients",
    "dead_relu_share",
    "diagnose_gradients",
    "find_loss_spikes",
    "gradients_through_time",
    "layer_depth_ratios",
    "recurrent_layers",
    "summarise_time_gradients",
]


def layer_depth_ratios(grad_rms: np.ndarray) -> np.ndarray:
    """Median over sampled steps of each layer's RMS gradient / the output layer's (NaN-safe).

    Example:
        >>> layer_depth_ratios(np.array([[1e-6, 1e-3, 1.0], [2e-6, 1e-3, 2.0]])).tolist()
        [1e-06, 0.00075, 1.0]
    """
    g = np.asarray(grad_rms, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] == 0 or g.shape[0] == 0:
        return np.zeros(0)
    last = g[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((last > 0) & np.isfinite(last) & np.isfinite(g), g / last, np.nan)
    if np.isnan(ratio).all(axis=0).all():
        return np.full(g.shape[1], np.nan)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.asarray(np.nanmedian(ratio, axis=0))


def find_loss_spikes(loss: np.ndarray, *, window: int = 25, z: float = 8.0, min_rise: float = 0.5) -> np.ndarray:
    """Indices of steps whose loss jumps ``z`` robust σ above the median of the previous ``window`` steps.

    A jump must also be material: it undoes at least ``min_rise`` of the progress made
    so far (the median of the first window minus the current median), or it lifts the
    loss above its value at the first step (initialisation). Late in training the spread of
    mini-batch losses collapses, and one batch with a single hard row would otherwise
    score dozens of σ (the validation suite measured 47 % false alarms without it).
    Non-finite losses count as spikes. Example:
        >>> l = np.r_[np.linspace(2, 1, 50), 9.0, np.linspace(1, 0.9, 20)]
        >>> find_loss_spikes(l).tolist()
        [50]
    """
    x = np.asarray(loss, dtype=np.float64)
    out: list[int] = []
    head = x[: max(5, window)]
    head = head[np.isfinite(head)]
    start = float(np.median(head)) if len(head) else math.nan
    initial = float(x[0]) if len(x) and math.isfinite(x[0]) else math.inf  # the loss at initialisation
    for i in range(len(x)):
        if not math.isfinite(x[i]):
            out.append(i)
            continue
        if i < max(5, window // 2):
            continue
        prev = x[max(0, i - window) : i]
        prev = prev[np.isfinite(prev)]
        if len(prev) < 5:
            continue
        med = float(np.median(prev))
        mad = float(np.median(np.abs(prev - med))) * 1.4826
        scale = max(mad, 0.01 * abs(med), 1e-8)
        progress = start - med if math.isfinite(start) else 0.0
        material = progress <= 0 or (x[i] - med) > min_rise * progress or x[i] > initial
        if (x[i] - med) / scale > z and x[i] > 1.5 * med and material:
            out.append(i)
    return np.asarray(out, dtype=np.int64)


@dataclass(frozen=True)
class GradientDiagnosis:
    """The verdict on gradient flow.

    Attributes:
        verdict: ``healthy``, ``vanishing``, ``exploding``, ``nonfinite`` or ``dead``.
        layer: the layer the verdict names (``None`` when healthy).
        depth_ratios: per-layer median depth ratio (input → output).
        min_ratio: smallest depth ratio and ``max_ratio`` the largest.
        growth: max global gradient norm / its initial value.
        spikes: indices of loss spikes.
    """

    verdict: str
    layer: str | None
    depth_ratios: np.ndarray
    min_ratio: float
    max_ratio: float
    growth: float
    spikes: np.ndarray
    nonfinite_steps: int
    zero_grad_share: float


def diagnose_gradients(
    layers: tuple[str, ...],
    grad_rms: np.ndarray,
    grad_total: np.ndarray,
    loss: np.ndarray,
    *,
    nonfinite_grad_steps: int = 0,
    vanish_ratio: float = 1e-3,
    explode_growth: float = 100.0,
    spike_z: float = 8.0,
) -> GradientDiagnosis:
    """Classify gradient flow from monitor statistics (see the module docstring).

    Example:
        >>> g = np.array([[1e-8, 1e-4, 1.0]] * 5)
        >>> diagnose_gradients(("a", "b", "c"), g, np.ones(5), np.linspace(1, .5, 50)).verdict
        'vanishing'
    """
    ratios = layer_depth_ratios(grad_rms)
    finite = ratios[np.isfinite(ratios)]
    min_r = float(finite[:-1].min()) if len(finite) > 1 else math.nan
    max_r = float(finite[:-1].max()) if len(finite) > 1 else math.nan
    gt = np.asarray(grad_total, dtype=np.float64)
    gt_f = gt[np.isfinite(gt)]
    init = float(np.median(gt_f[: max(1, min(3, len(gt_f)))])) if len(gt_f) else math.nan
    growth = (
        float(gt_f.max() / init) if len(gt_f) and init > 0 else (math.inf if len(gt) and not len(gt_f) else math.nan)
    )
    zero_share = float(np.mean(gt_f[1:] == 0)) if len(gt_f) > 1 else 0.0
    spikes = find_loss_spikes(loss, z=spike_z)
    nonfinite_loss = int(np.sum(~np.isfinite(np.asarray(loss, dtype=np.float64))))
    verdict, layer = "healthy", None
    if nonfinite_grad_steps or nonfinite_loss:
        verdict = "nonfinite"
    elif growth > explode_growth:
        verdict = "exploding"
        if len(gt):
            g = np.asarray(grad_rms, dtype=np.float64)
            at = int(np.nanargmax(gt))
            row = g[at]
            layer = layers[int(np.nanargmax(row))] if np.isfinite(row).any() else None
    elif zero_share > 0.5:
        verdict = "dead"
    elif len(finite) > 1 and min_r < vanish_ratio:
        verdict = "vanishing"
        below = [i for i in range(len(ratios) - 1) if math.isfinite(ratios[i]) and ratios[i] < vanish_ratio]
        layer = layers[max(below)]
    elif len(finite) > 1 and max_r > 1.0 / vanish_ratio:
        verdict = "exploding"
        layer = layers[int(np.nanargmax(ratios[:-1]))]
    return GradientDiagnosis(
        verdict, layer, ratios, min_r, max_r, growth, spikes, int(nonfinite_grad_steps) + nonfinite_loss, zero_share
    )


def dead_relu_share(model: Any, x: np.ndarray, *, batch_size: int = 256) -> dict[str, float]:
    """Per ``nn.ReLU``/``ReLU6`` module, the share of units that are zero for *every* row of ``x`` (eval mode).

    Measured on a trained model over many rows, this is the dying-ReLU share proper (Lu et
    al., 2019): such units pass no gradient and no signal. The model is not changed.
    """
    alive: dict[str, Any] = {}
    handles = []

    def hook(name: str) -> Any:
        def fn(_m: Any, _i: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() < 2:
                return
            dim = 1 if out.dim() in (4, 5) else out.dim() - 1
            now = (out != 0).transpose(0, dim).reshape(out.shape[dim], -1).any(dim=1)
            alive[name] = now if name not in alive else (alive[name] | now)

        return fn

    try:
        for name, m in model.named_modules():
            if type(m) in (nn.ReLU, nn.ReLU6):
                handles.append(m.register_forward_hook(hook(name)))
        with eval_mode(model), torch.inference_mode():
            for i in range(0, len(x), batch_size):
                model(input_tensor(x[i : i + batch_size], device=model_input_spec(model)[1]))
    finally:
        for h in handles:
            h.remove()
    return {name: float(1.0 - a.float().mean()) for name, a in alive.items()}


# ---------------------------------------------------------------------------------------
# gradients through time


def recurrent_layers(model: Any) -> list[tuple[str, nn.RNNBase]]:
    """``(name, module)`` of every ``nn.RNN``/``nn.LSTM``/``nn.GRU`` in ``model`` (registration order); ``[]`` otherwise."""
    modules = getattr(model, "named_modules", None)
    if not callable(modules):
        return []
    return [(name, m) for name, m in modules() if isinstance(m, nn.RNNBase)]


@dataclass(frozen=True)
class TimeGradients:
    """The loss gradient reaching each time step of a recurrent layer, by distance from each row's last step.

    Attributes:
        layer: the recurrent layer measured.
        norms: mean over rows of ‖∂L/∂x_t‖ at lag ``k`` = 0, 1, … steps before each row's last
            real step (index ``k``); lags that fewer than ``min_share`` of the rows reach are cut off.
        rows: how many rows reach each lag.
        ratios: ``norms / norms[0]``.
        decay_log10: log10 of the mean ratio over the farthest tenth of the lags (< 0: decays;
            floored at -30, where float32 gradients underflow to 0).
        vanishing_lag: the smallest lag from which every farther ratio stays below
            ``vanish_ratio`` (``None``: the signal reaches every measured lag).
        growth: the largest ratio (> 10³: exploding through time).
        typical_length: the median number of real steps per row.
    """

    layer: str
    norms: np.ndarray
    rows: np.ndarray
    ratios: np.ndarray
    decay_log10: float
    vanishing_lag: int | None
    growth: float
    typical_length: float


def _capture(module: nn.Module, store: dict[str, Any]) -> Any:
    """A forward pre-hook keeping the recurrent layer's input sequence (first call only) with its gradient retained.

    An input that carries no gradient (a float series fed straight in) is replaced by a leaf
    copy that does; the values are the same.
    """

    def hook(_m: Any, args: tuple[Any, ...]) -> Any:
        if "in" in store or not args:
            return None
        seq = args[0]
        packed = isinstance(seq, nn.utils.rnn.PackedSequence)
        data = seq.data if packed else seq
        if not isinstance(data, torch.Tensor) or not data.is_floating_point():
            return None
        if data.requires_grad:
            data.retain_grad()
        else:
            data = data.detach().requires_grad_(True)
            seq = (
                nn.utils.rnn.PackedSequence(data, seq.batch_sizes, seq.sorted_indices, seq.unsorted_indices)
                if packed
                else data
            )
        store["in"], store["data"], store["packed"] = seq, data, packed
        return (seq, *args[1:])

    return module.register_forward_pre_hook(hook)


def _step_grads(store: dict[str, Any], module: nn.RNNBase) -> torch.Tensor:
    """N×T×F gradient of the loss w.r.t. the layer's input sequence (packed sequences padded with 0)."""
    seq, grad = store["in"], store["data"].grad
    if grad is None:
        grad = torch.zeros_like(store["data"])
    if store["packed"]:
        g = nn.utils.rnn.PackedSequence(grad, seq.batch_sizes, seq.sorted_indices, seq.unsorted_indices)
        grad, _ = nn.utils.rnn.pad_packed_sequence(g, batch_first=True)
    elif grad.dim() == 2:  # an unbatched call: one row
        grad = grad.unsqueeze(0)
    elif not module.batch_first:
        grad = grad.transpose(0, 1)
    return grad


def _lag_curve(step_norms: np.ndarray, valid: np.ndarray, min_share: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean norm per lag before each row's last valid step, over the rows that reach that lag; the median row length."""
    n, t = step_norms.shape
    last = np.where(valid.any(axis=1), t - 1 - np.argmax(valid[:, ::-1], axis=1), -1)
    lag = last[:, None] - np.arange(t)[None, :]
    keep = valid & (lag >= 0) & np.isfinite(step_norms)
    counts = np.bincount(lag[keep], minlength=t)[:t]
    sums = np.bincount(lag[keep], weights=step_norms[keep], minlength=t)[:t]
    enough = counts >= max(1, int(math.ceil(min_share * n)))
    cut = int(np.argmin(enough)) if not enough.all() else t
    return sums[:cut] / np.maximum(counts[:cut], 1), counts[:cut], float(np.median(last + 1))


def gradients_through_time(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    layer: str | None = None,
    pad_id: int | None = 0,
    vanish_ratio: float = 1e-3,
    min_share: float = 0.1,
) -> TimeGradients | None:
    """‖∂L/∂x_t‖ at a recurrent layer's input over time steps: the classic RNN vanishing/exploding diagnosis.

    The summed cross-entropy of ``model`` on ``(x, y)`` is backpropagated to the input
    sequence ``x_t`` of the first recurrent layer (or ``layer``), captured by a forward
    pre-hook. Why the input and not the output ``h_t``: ``nn.RNN``/``LSTM``/``GRU`` run the
    recurrence inside one fused kernel, so the gradient of their output tensor holds only
    the direct term of each step (zero before the read-out step of a last-state model);
    ``∂L/∂x_t = (∂h_t/∂x_t)ᵀ ∂L/∂h_t`` with the total ``∂L/∂h_t`` carries every path through
    later steps, and it is the error signal the input weights receive from step ``t``.
    Per row and step the norm is aligned on the row's last real step — for integer token
    ids the last id ≠ ``pad_id`` (padding steps are left out), for float sequences the last
    step — and averaged over the rows per lag (a bidirectional layer's input gradient gathers
    both directions). Where the gradient at lag ``k`` is below
    ``vanish_ratio`` of the gradient at lag 0, a dependency that long contributes less
    than mini-batch noise to the weight gradient, so it is not learnt (Bengio et al., IEEE
    TNN 1994; Pascanu et al., ICML 2013). A model that pools every step into its head
    gives each step a direct gradient and shows little decay. Eval mode (no dropout noise),
    cuDNN off (its RNN backward refuses eval mode). Memory is one N×T×F tensor: pass a
    sample of rows. ``None`` when the model has no recurrent layer or its input carries no
    floats (a layer fed integers). The model's weights and mode are unchanged; its
    ``.grad`` fields are cleared.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> class Last(nn.Module):
        ...     def __init__(self): super().__init__(); self.rnn = nn.RNN(3, 8, batch_first=True); self.fc = nn.Linear(8, 2)
        ...     def forward(self, x): return self.fc(self.rnn(x)[0][:, -1])
        >>> tg = gradients_through_time(Last(), np.random.randn(16, 40, 3).astype("f"), np.zeros(16, int))
        >>> tg.decay_log10 < -3 and tg.vanishing_lag is not None
        True
    """
    layers = recurrent_layers(model)
    if layer is not None:
        layers = [(n, m) for n, m in layers if n == layer]
    if not layers:
        return None
    name, module = layers[0]
    store: dict[str, Any] = {}
    handle = _capture(module, store)
    dtype, device = model_input_spec(model)
    try:
        with eval_mode(model), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            out = first_output(model(input_tensor(x, dtype, device)))
            loss = nn.functional.cross_entropy(out.float(), torch.as_tensor(y, device=out.device), reduction="sum")
            if "in" not in store:
                return None
            loss.backward()
            grad = _step_grads(store, module).detach().float()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    step_norms = grad.norm(dim=-1).cpu().numpy().astype(np.float64)
    valid = np.ones(step_norms.shape, dtype=bool)
    if x.dtype.kind in "iu" and x.ndim == 2 and pad_id is not None and x.shape[1] == step_norms.shape[1]:
        valid = np.asarray(x) != pad_id
    norms, rows, length = _lag_curve(step_norms, valid, min_share)
    return summarise_time_gradients(name, norms, rows, vanish_ratio=vanish_ratio, typical_length=length)


def summarise_time_gradients(
    layer: str, norms: np.ndarray, rows: np.ndarray, *, vanish_ratio: float = 1e-3, typical_length: float = math.nan
) -> TimeGradients:
    """Ratios to lag 0, the decay over the farthest tenth of the lags and the vanishing lag.

    Example:
        >>> tg = summarise_time_gradients("rnn", 0.5 ** np.arange(20), np.full(20, 8))
        >>> tg.vanishing_lag, round(tg.decay_log10, 1)
        (10, -5.5)
    """
    norms = np.asarray(norms, dtype=np.float64)
    if not len(norms) or not norms[0] > 0:
        nan = np.full(len(norms), np.nan)
        return TimeGradients(layer, norms, np.asarray(rows), nan, math.nan, None, math.nan, typical_length)
    ratios = norms / norms[0]
    far = ratios[-max(1, len(ratios) // 10) :]
    decay = float(np.log10(max(float(np.mean(far)), 1e-30))) if np.isfinite(far).all() else math.inf
    above = np.flatnonzero(~(ratios < vanish_ratio))  # NaN/Inf count as "not vanished"
    lag = int(above[-1]) + 1 if len(above) else 0
    vanishing_lag = lag if lag < len(ratios) else None
    growth = float(np.max(ratios)) if np.isfinite(ratios).all() else math.inf
    return TimeGradients(layer, norms, np.asarray(rows), ratios, decay, vanishing_lag, growth, typical_length)
