"""The ethics.security remedy: adversarial training, then the robust accuracy measured again.

Two recipes on the case's architecture (a fresh model from its factory):

* ``fgsm_rs`` — "fast" adversarial training (Wong, Rice & Kolter 2020, "Fast is better
  than free"): FGSM from a uniform random start in the ε-ball, step 1.25 ε; one extra
  forward/backward per batch.
* ``pgd`` — Madry et al. 2018: ``steps`` PGD-L∞ iterations per batch (stronger, slower).

ε uses the check's units (value range for images, feature std for tables), inputs stay
in the valid range seen in train. A fraction ``clean_fraction`` of each batch is kept
clean, which limits the drop in clean accuracy. The before/after numbers are the same
ethics.security check (PGD-L∞ at the ε of interest) on both models.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["REMEDY", "AdversarialParams", "adversarial_fit", "treat_security"]


@dataclass(frozen=True)
class AdversarialParams:
    """``method`` fgsm_rs | pgd; ``epsilon`` (default: the check's ε of interest); ``epochs`` (default: the recipe's)."""

    method: str = "fgsm_rs"
    epsilon: float | None = None
    epochs: int | None = None
    steps: int = 5
    clean_fraction: float = 0.3
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("fgsm_rs", "pgd"):
            raise ConfigError(f"method must be 'fgsm_rs' or 'pgd', but got {self.method!r}")
        if not 0.0 <= self.clean_fraction < 1.0:
            raise ConfigError(f"`0 <= clean_fraction < 1` must hold, but got clean_fraction={self.clean_fraction}")


def adversarial_fit(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    lower: Any,
    upper: Any,
    scale: Any,
    method: str = "fgsm_rs",
    epochs: int = 10,
    steps: int = 5,
    clean_fraction: float = 0.3,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Any = None,
) -> Any:
    """Train ``model`` (in place; pass a fresh one) on adversarial examples; returns it in eval mode."""
    import torch
    from torch import nn

    from dlclinic.core.recipe import _prepare_inputs, seed_everything

    seed_everything(seed)
    _prepare_inputs(model, x)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float32))
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float32))
    sc = torch.as_tensor(np.asarray(scale, dtype=np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_total = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps_total, 1))
    gen = torch.Generator().manual_seed(seed)
    bound = epsilon * sc

    def perturb(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        delta = (torch.rand(xb.shape, generator=gen) * 2 - 1) * bound
        n_iter, alpha = (1, 1.25 * epsilon) if method == "fgsm_rs" else (steps, 2.5 * epsilon / steps)
        was = model.training
        model.eval()  # keep BatchNorm statistics clean while attacking
        for _ in range(n_iter):
            delta.requires_grad_(True)
            loss = nn.functional.cross_entropy(model(torch.clamp(xb + delta, lo, hi)), yb)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = torch.clamp(delta.detach() + alpha * sc * grad.sign(), -bound, bound)
        model.train(was)
        return torch.clamp(xb + delta.detach(), lo, hi)

    for _epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            xb, yb = xt[idx], yt[idx]
            n_clean = int(round(clean_fraction * len(idx)))
            x_adv = perturb(xb[n_clean:], yb[n_clean:])
            inputs = torch.cat([xb[:n_clean], x_adv]) if n_clean else x_adv
            loss = nn.functional.cross_entropy(model(inputs), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(1)
    model.eval()
    return model


def treat_security(ctx: TreatContext, params: AdversarialParams) -> TreatOutcome:
    """Adversarially train a fresh model of the case's architecture and re-measure robustness."""
    from dlclinic.checks.ethics_security import SecurityOptions, input_bounds
    from dlclinic.core.recipe import seed_everything
    from dlclinic.core.results import Treatment

    case = ctx.case
    if case.model_factory is None:
        raise ConfigError(
            "treat ethics.security retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    test = case.get("test")
    if test is None or not test.labelled:
        raise ConfigError("treat ethics.security needs a labelled test split to measure robust accuracy (pass --test)")
    if case.train.y is None:  # pragma: no cover - Case guarantees train labels
        raise ConfigError("treat ethics.security needs train labels")
    eps = params.epsilon if params.epsilon is not None else SecurityOptions().epsilon
    before = ctx.measure(case)
    lo, hi, scale = input_bounds(case)
    epochs = params.epochs or ctx.fit_config.epochs
    with ctx.progress.step(f"adversarial training ({params.method}, ε={eps:g})", total=epochs) as advance:
        seed_everything(ctx.fit_config.seed)
        model = adversarial_fit(
            case.model_factory(),
            np.nan_to_num(case.train.x),
            case.train.y,
            epsilon=eps,
            lower=lo,
            upper=hi,
            scale=scale,
            method=params.method,
            epochs=epochs,
            steps=params.steps,
            clean_fraction=params.clean_fraction,
            batch_size=ctx.fit_config.batch_size,
            lr=params.lr or ctx.fit_config.lr,
            seed=ctx.fit_config.seed,
            progress=advance,
        )
    treated = dataclasses.replace(
        case,
        model=model,
        model_source=f"{case.model_source.replace(', from cache', '')}, adversarially trained ({params.method}, ε={eps:g})",
    )
    after = ctx.measure(treated)
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        from dlclinic.core.atomic import write_weights

        artifacts["model"] = str(write_weights(model, ctx.out_dir / "robust_model.safetensors"))
    rb, ra = before[ctx.challenge_id], after[ctx.challenge_id]
    keys = (
        "clean_accuracy",
        "robust_accuracy",
        "robust_accuracy_fgsm",
        "robust_accuracy_pgd_l2",
        "attack_success_rate",
    )
    # the check measures at its own ε of interest; also measure both models at the training ε
    from dlclinic.checks.ethics_security import _sample
    from dlclinic.functional.attacks import attack

    opts = SecurityOptions()
    assert test.y is not None
    rows = _sample(test.y, opts.n_samples, opts.seed)
    xs, ys = np.nan_to_num(test.x[rows]), test.y[rows]
    at_eps = {}
    for name, m in (("before", case.model), ("after", model)):
        res = attack(
            m,
            xs,
            ys,
            method="pgd_linf",
            epsilon=eps,
            lower=lo,
            upper=hi,
            scale=scale,
            steps=max(opts.steps, 10),
            seed=opts.seed,
        )
        at_eps[name] = (res.clean_accuracy, res.robust_accuracy)
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"adversarial training ({'FGSM with random start' if params.method == 'fgsm_rs' else f'PGD-L∞, {params.steps} steps'}, ε={eps:g}, {epochs} epochs, {params.clean_fraction:.0%} clean rows per batch)",
        before={
            "robust_accuracy_at_training_eps": at_eps["before"][1],
            "clean_accuracy_sample": at_eps["before"][0],
            **{f"check_{k}": rb.metrics.get(k) for k in keys},
        },
        after={
            "robust_accuracy_at_training_eps": at_eps["after"][1],
            "clean_accuracy_sample": at_eps["after"][0],
            **{f"check_{k}": ra.metrics.get(k) for k in keys},
        },
        before_status=rb.status,
        after_status=ra.status,
        artifacts=artifacts,
        notes=(
            f"robust_accuracy_at_training_eps: PGD-L∞ (10 steps) at ε={eps:g} on the check's stratified test sample; check_*: the ethics.security check at its own ε of interest ({SecurityOptions().epsilon:g}), before and after",
            "a robust model can still hide behind gradient masking: the check's FGSM-vs-PGD sanity test runs on the treated model too",
        ),
    )
    return TreatOutcome(treatment, before, after)


REMEDY = RemedySpec(
    id="ethics.security",
    params=AdversarialParams,
    run=treat_security,
    description="Adversarial training (FGSM with random start, or PGD); robust accuracy before/after.",
)
