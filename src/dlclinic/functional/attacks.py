"""White-box evasion attacks (FGSM, PGD L∞ and L2) and robust-accuracy curves.

Written by hand (small, batched) rather than taken from captum.robust or ART because the
checkup needs three things those do not give together: *early stop* — a sample drops out
of the batch as soon as it is misclassified, so later steps cost only the survivors —,
*per-feature budgets* (ε in units of each feature's standard deviation for tables, of the
value range for images) and clamping to the data's valid range per feature. The tests
compare the robust accuracy with ``captum.robust.FGSM`` / ``PGD`` on the same model.

Papers: Goodfellow et al. 2015 (FGSM, "Explaining and Harnessing Adversarial Examples");
Madry et al. 2018 (PGD, "Towards Deep Learning Models Resistant to Adversarial Attacks").

Targeted mode (``targets``): the objective becomes the logit margin ``z_t − z_y`` towards
a given class per sample (Carlini & Wagner 2017's targeted loss). An untargeted
cross-entropy attack follows the gradient towards a *mixture* of classes and can miss the
class that is easiest to reach, so on multiclass models it overestimates robust accuracy;
running targeted PGD towards the most likely other classes on the samples it did not fool
(multi-targeted PGD, Gowal et al. 2019; APGD-T in Croce & Hein 2020, "AutoAttack") closes
that gap — exactly, for an affine model, once every class has been a target.

Budgets: for L∞, ``|δ_j| <= ε · scale_j``. For L2, ``||δ / scale||_2 <= ε · √d``, i.e. an
RMS budget of ε per input value (the L∞ ball of the same ε lies inside it, so PGD-L2 is
at least as strong as PGD-L∞ at equal ε).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dlclinic.core.inference import (
    eval_mode,
    first_output,
    gradient_batch,
    input_tensor,
    model_input_spec,
    predict_logits,
)

__all__ = ["METHODS", "AttackResult", "RobustCurve", "attack", "multi_targeted_accuracy", "robust_accuracy_curve"]

Method = Literal["fgsm", "pgd_linf", "pgd_l2"]
METHODS: tuple[str, ...] = ("fgsm", "pgd_linf", "pgd_l2")


@dataclass(frozen=True)
class AttackResult:
    """One attack at one ε: per-sample outcome.

    ``clean_correct``: correctly classified before the attack; ``fooled``: correctly
    classified before and misclassified on the adversarial input; ``x_adv``: the
    adversarial inputs (clean inputs where the attack did not apply), or ``None`` when not kept.
    """

    method: str
    epsilon: float
    clean_correct: np.ndarray
    fooled: np.ndarray
    x_adv: np.ndarray | None

    @property
    def robust_accuracy(self) -> float:
        return float((self.clean_correct & ~self.fooled).mean())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean())

    @property
    def success_rate(self) -> float:
        """Fooled / initially correct (NaN when nothing was correct)."""
        n = int(self.clean_correct.sum())
        return float(self.fooled.sum() / n) if n else float("nan")


def _as_tensor(value: Any, like: Any) -> Any:
    if value is None:
        return None
    t = torch.as_tensor(np.asarray(value, dtype=np.float32), device=like.device, dtype=like.dtype)
    return t


def _clamp(t: Any, lo: Any, hi: Any) -> Any:
    """``t`` clamped to the valid input range (either bound may be ``None``)."""
    if lo is not None:
        t = torch.maximum(t, lo.expand_as(t))
    if hi is not None:
        t = torch.minimum(t, hi.expand_as(t))
    return t


def _objective(logits: Any, yy: Any, tt: Any, reduction: str = "mean") -> Any:
    """Cross-entropy (untargeted) or the margin ``z_t − z_y`` towards the targets ``tt``."""
    if tt is None:
        return torch.nn.functional.cross_entropy(logits, yy, reduction=reduction)
    margin = logits.gather(1, tt[:, None]).squeeze(1) - logits.gather(1, yy[:, None]).squeeze(1)
    return margin.sum() if reduction == "sum" else margin.mean()


def _logits(model: Any, t: Any) -> Any:
    return first_output(model(t))


def _unsqueeze_like(v: Any, t: Any) -> Any:
    """A per-sample vector shaped to broadcast over ``t``'s other dimensions."""
    return v.view(-1, *[1] * (t.dim() - 1))


@dataclass(frozen=True)
class _Budget:
    """The attack's settings, fixed for every batch."""

    method: str
    epsilon: float
    alpha: float
    steps: int
    random_start: bool
    early_stop: bool
    d: int


def _fgsm(model: Any, x0: Any, y0: Any, t0: Any, sc0: Any, bounds: tuple[Any, Any], budget: _Budget) -> tuple[Any, Any]:
    """One signed-gradient step of size ε; returns the adversarial inputs and which samples they fool."""
    xa = x0.clone().requires_grad_(True)
    loss = _objective(_logits(model, xa), y0, t0)
    (grad,) = torch.autograd.grad(loss, xa)
    best = _clamp(x0 + budget.epsilon * sc0 * grad.sign(), *bounds).detach()
    with torch.no_grad():
        done = _logits(model, best).argmax(1) != y0
    return best, done


def _start(x0: Any, sc0: Any, budget: _Budget, gen: Any) -> Any:
    """The initial perturbation: zero, or uniform in the L∞ ball / the L2 ball (``random_start``)."""
    delta = torch.zeros_like(x0)
    if not budget.random_start:
        return delta
    noise = torch.rand(x0.shape, generator=gen).to(device=x0.device, dtype=x0.dtype)
    if budget.method == "pgd_linf":
        return (2 * noise - 1) * budget.epsilon * sc0
    z = torch.randn(x0.shape, generator=gen).to(device=x0.device, dtype=x0.dtype)
    z = z / _unsqueeze_like(z.flatten(1).norm(dim=1).clamp_min(1e-12), x0)
    r = budget.epsilon * np.sqrt(budget.d) * _unsqueeze_like(noise.flatten(1)[:, :1], x0)
    return z * r * sc0


def _pgd_step(xa: Any, base: Any, s: Any, grad: Any, budget: _Budget) -> Any:
    """One projected step (before clamping to the input range)."""
    if budget.method == "pgd_linf":
        step = xa + budget.alpha * s * grad.sign()
        return torch.maximum(torch.minimum(step, base + budget.epsilon * s), base - budget.epsilon * s)
    g = grad * s  # gradient w.r.t. the scaled perturbation z = δ / s
    g = g / _unsqueeze_like(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
    z = (xa - base) / s + budget.alpha * np.sqrt(budget.d) * g
    norms = z.flatten(1).norm(dim=1).clamp_min(1e-12)
    z = z * _unsqueeze_like(torch.clamp(budget.epsilon * np.sqrt(budget.d) / norms, max=1.0), z)
    return base + z * s


def _pgd(
    model: Any, x0: Any, y0: Any, t0: Any, sc0: Any, bounds: tuple[Any, Any], budget: _Budget, gen: Any
) -> tuple[Any, Any]:
    """PGD-L∞ or PGD-L2; returns the adversarial inputs and which samples they fool."""
    n = len(x0)
    best = x0.clone()
    done = torch.zeros(n, dtype=torch.bool, device=x0.device)
    xa_all = _clamp(x0 + _start(x0, sc0, budget, gen), *bounds).detach()
    for _ in range(budget.steps):
        active = torch.nonzero(~done).flatten() if budget.early_stop else torch.arange(n, device=x0.device)
        if len(active) == 0:
            break
        xa = xa_all[active].clone().requires_grad_(True)
        loss = _objective(_logits(model, xa), y0[active], None if t0 is None else t0[active], reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        with torch.no_grad():
            step = _clamp(_pgd_step(xa, x0[active], sc0[active], grad, budget), *bounds)
            xa_all[active] = step
            now = _logits(model, step).argmax(1) != y0[active]
            if budget.early_stop:
                newly = active[now]
                best[newly] = step[now]
                done[newly] = True
            else:
                done[active] = now
    if not budget.early_stop:
        best = xa_all
    return best, done


def _batch_tensors(
    x: np.ndarray, y: np.ndarray, targets: np.ndarray | None, dtype: Any, device: Any
) -> tuple[Any, Any, Any]:
    """One batch as tensors on the model's device (inputs in the model's dtype)."""
    xb = input_tensor(x, dtype, device)
    yb = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    tb = None if targets is None else torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(device)
    return xb, yb, tb


def _attack_batch(
    model: Any, xb: Any, yb: Any, tb: Any, range_: tuple[Any, Any, Any], budget: _Budget, gen: Any
) -> tuple[Any, Any, Any, Any]:
    """``(clean_ok, attacked_idx, adversarial_inputs, fooled)`` for one batch (``None``s when nothing is attacked)."""
    lower, upper, scale = range_
    bounds = (_as_tensor(lower, xb), _as_tensor(upper, xb))
    sc = _as_tensor(scale, xb)
    with torch.no_grad():
        pred = _logits(model, xb).argmax(1)
    ok = pred == yb
    if budget.epsilon <= 0 or not bool(ok.any()):
        return ok, None, None, None
    idx = torch.nonzero(ok).flatten()  # only initially-correct samples are attacked
    x0, y0 = xb[idx], yb[idx]
    t0 = None if tb is None else tb[idx]
    sc0 = sc.expand_as(x0)
    if budget.method == "fgsm":
        best, done = _fgsm(model, x0, y0, t0, sc0, bounds, budget)
    else:
        best, done = _pgd(model, x0, y0, t0, sc0, bounds, budget, gen)
    return ok, idx, best, done


def attack(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: Method,
    epsilon: float,
    lower: float | np.ndarray | None = None,
    upper: float | np.ndarray | None = None,
    scale: float | np.ndarray = 1.0,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    early_stop: bool = True,
    batch_size: int | None = None,
    seed: int = 0,
    keep_inputs: bool = False,
    targets: np.ndarray | None = None,
) -> AttackResult:
    """Attack ``model`` on ``(x, y)`` with FGSM or PGD (untargeted, cross-entropy).

    Args:
        model: an ``nn.Module`` returning logits (put in eval mode for the attack).
        x: inputs ``N×…`` (float32), ``y``: labels ``(N,)``.
        method: ``"fgsm"``, ``"pgd_linf"`` or ``"pgd_l2"``.
        epsilon: budget in units of ``scale`` (see module docstring for L2).
        lower, upper: valid input range (scalars or arrays of one sample's shape);
            adversarial inputs are clamped to it.
        scale: per-feature unit of ε (scalar or one sample's shape).
        steps: PGD iterations; ``step_size``: per-step size in ε units
            (default ``2.5 ε / steps``, Madry et al.).
        random_start: start PGD from a uniform point in the ball.
        early_stop: freeze samples once misclassified (their first adversarial input is kept).
        batch_size: rows per batch; ``None``: :func:`~dlclinic.core.inference.gradient_batch` (64 on a CPU).
        seed: seed of the random start.
        keep_inputs: return the adversarial inputs (memory: one copy of ``x``).
        targets: a class per sample (``(N,)``, ≠ ``y``): maximise the margin ``z_t − z_y``
            instead of the cross-entropy (targeted attack; success is still any misclassification).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> x = np.random.rand(8, 2).astype("float32"); y = np.zeros(8, dtype=int)
        >>> int(attack(net, x, y, method="fgsm", epsilon=0.0).fooled.sum())
        0
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got {method!r}")
    dtype, device = model_input_spec(model)
    batch_size = batch_size or gradient_batch(device)
    n = len(x)
    clean_correct = np.zeros(n, dtype=bool)
    fooled = np.zeros(n, dtype=bool)
    adv_out = np.array(x, dtype=np.float32, copy=True) if keep_inputs else None
    gen = torch.Generator(device="cpu").manual_seed(seed)
    budget = _Budget(
        method=method,
        epsilon=epsilon,
        alpha=step_size if step_size is not None else 2.5 * epsilon / max(steps, 1),
        steps=steps,
        random_start=random_start,
        early_stop=early_stop,
        d=int(np.prod(x.shape[1:])),
    )
    with eval_mode(model):
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            xb, yb, tb = _batch_tensors(x[rows], y[rows], None if targets is None else targets[rows], dtype, device)
            ok, idx, best, done = _attack_batch(model, xb, yb, tb, (lower, upper, scale), budget, gen)
            clean_correct[start : start + len(xb)] = ok.cpu().numpy()
            if idx is None:
                continue
            fooled[start + idx.cpu().numpy()] = done.cpu().numpy()
            if adv_out is not None:
                adv_out[start + idx.cpu().numpy()] = best.detach().float().cpu().numpy()
    return AttackResult(
        method=method, epsilon=float(epsilon), clean_correct=clean_correct, fooled=fooled, x_adv=adv_out
    )


@dataclass(frozen=True)
class RobustCurve:
    """Robust accuracy and attack success rate per method and ε (arrays aligned with ``epsilons``)."""

    epsilons: tuple[float, ...]
    clean_accuracy: float
    n: int
    robust_accuracy: dict[str, np.ndarray]
    success_rate: dict[str, np.ndarray]


def multi_targeted_accuracy(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    targets: int,
    lower: Any = None,
    upper: Any = None,
    scale: Any = 1.0,
    steps: int = 10,
    seed: int = 0,
) -> float:
    """Robust accuracy under untargeted PGD-L∞, then targeted PGD-L∞ towards each of the
    ``targets`` most likely other classes on the samples still correct (the multi-targeted
    attack of AutoAttack, Croce & Hein 2020).

    The untargeted loss alone overstates robustness on many-class models: on a 10-class
    linear digits model it measured 0.36 robust accuracy where the exact worst case is 0.25.
    """
    kw: dict[str, Any] = {
        "method": "pgd_linf",
        "epsilon": epsilon,
        "lower": lower,
        "upper": upper,
        "scale": scale,
        "steps": steps,
        "seed": seed,
    }
    base = attack(model, x, y, **kw)
    fooled = base.fooled.copy()
    logits = predict_logits(model, x).astype(np.float64)
    logits[np.arange(len(y)), y] = -np.inf
    order = np.argsort(-logits, axis=1, kind="stable")
    for j in range(min(int(targets), logits.shape[1] - 1)):
        live = np.flatnonzero(base.clean_correct & ~fooled)
        if not len(live):
            break
        res = attack(model, x[live], y[live], targets=order[live, j], **kw)
        fooled[live] |= res.fooled
    return float((base.clean_correct & ~fooled).mean())


def robust_accuracy_curve(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    epsilons: Sequence[float],
    *,
    methods: Sequence[str] = METHODS,
    lower: float | np.ndarray | None = None,
    upper: float | np.ndarray | None = None,
    scale: float | np.ndarray = 1.0,
    steps: int = 10,
    random_start: bool = False,
    batch_size: int | None = None,
    seed: int = 0,
) -> RobustCurve:
    """Robust accuracy of every method at every ε (the clean accuracy at ε = 0).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> x = np.random.rand(8, 2).astype("float32"); y = np.zeros(8, dtype=int)
        >>> robust_accuracy_curve(net, x, y, [0.0, 0.1], methods=["fgsm"]).robust_accuracy["fgsm"].shape
        (2,)
    """
    eps = tuple(float(e) for e in epsilons)
    rob: dict[str, np.ndarray] = {}
    succ: dict[str, np.ndarray] = {}
    clean = float("nan")
    for m in methods:
        ra, sr = [], []
        for e in eps:
            res = attack(
                model,
                x,
                y,
                method=m,  # type: ignore[arg-type]
                epsilon=e,
                lower=lower,
                upper=upper,
                scale=scale,
                steps=steps,
                random_start=random_start,
                batch_size=batch_size,
                seed=seed,
            )
            clean = res.clean_accuracy
            ra.append(res.robust_accuracy)
            sr.append(res.success_rate if e > 0 else 0.0)
        rob[m], succ[m] = np.asarray(ra), np.asarray(sr)
    return RobustCurve(epsilons=eps, clean_accuracy=clean, n=len(x), robust_accuracy=rob, success_rate=succ)
