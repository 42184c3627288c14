"""The data.privacy remedy: DP-SGD retraining with opacus at a target (ε, δ), then the audit again.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") clips every
per-sample gradient to ``max_grad_norm`` and adds Gaussian noise calibrated by opacus'
accountant (RDP) so that the whole training run is (ε, δ)-differentially private with
respect to one training row. δ defaults to ``1 / (10 n)``, below the 1/n that would
allow leaking one full row. The ε *actually spent* is read back from the accountant and
reported.

opacus needs per-sample gradients, which BatchNorm does not allow (it mixes samples):
``opacus.validators.ModuleValidator.fix`` replaces BatchNorm with GroupNorm, and the
treatment notes say so. The treated model therefore has a slightly different architecture;
its weights are saved as safetensors together with that fact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.errors import ConfigError, MissingDependencyError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["REMEDY", "DPParams", "dp_fit", "treat_privacy"]


@dataclass(frozen=True)
class DPParams:
    """Privacy budget and DP-SGD settings.

    Attributes:
        target_epsilon: ε of the whole training run.
        delta: δ (default ``1 / (10 n_train)``).
        max_grad_norm: per-sample gradient clipping bound.
        epochs: default: the recipe's epochs.
        batch_size: expected (Poisson) batch size; DP-SGD prefers large batches.
        lr: learning rate (default: the recipe's × 2, compensating for clipping).
    """

    target_epsilon: float = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    epochs: int | None = None
    batch_size: int = 256
    lr: float | None = None

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0:
            raise ConfigError(f"`target_epsilon > 0` must hold, but got target_epsilon={self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"`0 < delta < 1` must hold, but got delta={self.delta}")


def dp_fit(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    target_epsilon: float,
    delta: float,
    max_grad_norm: float = 1.0,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 4e-3,
    seed: int = 0,
    progress: Any = None,
) -> tuple[Any, float, list[str]]:
    """Train ``model`` with DP-SGD; returns ``(plain nn.Module, ε spent, notes)``."""
    import warnings

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    try:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator
    except ImportError:
        raise MissingDependencyError("opacus", "privacy") from None
    from dlclinic.core.recipe import _prepare_inputs, seed_everything

    notes: list[str] = []
    seed_everything(seed)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        model = ModuleValidator.fix(model)
        notes.append(
            f"opacus ModuleValidator.fix changed the architecture for per-sample gradients ({len(errors)} incompatible module(s), e.g. BatchNorm → GroupNorm)"
        )
    _prepare_inputs(model, x)
    data = TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()  # opacus refuses a model in eval mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns about secure_mode=False and Poisson-sampling details
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        private, optimizer, loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            target_epsilon=target_epsilon,
            target_delta=delta,
            epochs=epochs,
            max_grad_norm=max_grad_norm,
        )
        for _ in range(epochs):
            private.train()
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(private(xb), yb)
                loss.backward()
                optimizer.step()
            if progress is not None:
                progress(1)
        spent = float(engine.get_epsilon(delta))
    plain = private._module if hasattr(private, "_module") else private
    plain.eval()
    notes.append(
        f"noise multiplier {optimizer.noise_multiplier:.3f}, clipping {max_grad_norm}, expected batch {batch_size} (Poisson sampling), {epochs} epochs"
    )
    return plain, spent, notes


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    from dlclinic.core.inference import predict_logits

    return float((predict_logits(model, np.nan_to_num(x)).argmax(1) == y).mean())


def treat_privacy(ctx: TreatContext, params: DPParams) -> TreatOutcome:
    """Retrain with DP-SGD at the target ε, then re-run the membership audit."""
    from dlclinic.core.results import Treatment

    case = ctx.case
    if case.model_factory is None:
        raise ConfigError(
            "treat data.privacy retrains the model with DP-SGD, so it needs the architecture: pass --model file.py:factory"
        )
    test = case.get("test")
    if test is None or test.y is None:
        raise ConfigError("treat data.privacy needs a labelled test split (the audit's non-members; pass --test)")
    if case.train.y is None:  # pragma: no cover - Case guarantees train labels
        raise ConfigError("treat data.privacy needs train labels")
    n = len(case.train)
    delta = params.delta if params.delta is not None else 1.0 / (10 * n)
    epochs = params.epochs or ctx.fit_config.epochs
    before = ctx.measure(case)
    with ctx.progress.step(
        f"DP-SGD training (target ε={params.target_epsilon:g}, δ={delta:.1e})", total=epochs
    ) as advance:
        model, spent, notes = dp_fit(
            case.model_factory(),
            np.nan_to_num(case.train.x),
            case.train.y,
            target_epsilon=params.target_epsilon,
            delta=delta,
            max_grad_norm=params.max_grad_norm,
            epochs=epochs,
            batch_size=min(params.batch_size, n),
            lr=params.lr or 2 * ctx.fit_config.lr,
            seed=ctx.fit_config.seed,
            progress=advance,
        )
    # the DP model may have another architecture (GroupNorm): remedies that retrain it must rebuild it the same way
    factory = case.model_factory

    def dp_factory() -> Any:
        from opacus.validators import ModuleValidator

        m = factory()
        return ModuleValidator.fix(m) if ModuleValidator.validate(m, strict=False) else m

    treated = dataclasses.replace(
        case,
        model=model,
        model_factory=dp_factory,
        model_source=f"{case.model_source.replace(', from cache', '')}, DP-SGD (ε={spent:.2f}, δ={delta:.1e})",
    )
    after = ctx.measure(treated)
    acc_b, acc_a = _accuracy(case.model, test.x, test.y), _accuracy(model, test.x, test.y)
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        from dlclinic.core.atomic import write_json, write_weights

        artifacts["model"] = str(write_weights(model, ctx.out_dir / "dp_model.safetensors"))
        artifacts["budget"] = str(
            write_json(
                ctx.out_dir / "dp_budget.json",
                {
                    "epsilon_target": params.target_epsilon,
                    "epsilon_spent": spent,
                    "delta": delta,
                    "max_grad_norm": params.max_grad_norm,
                    "epochs": epochs,
                    "notes": notes,
                },
                indent=1,
            )
        )
    rb, ra = before[ctx.challenge_id], after[ctx.challenge_id]
    keys = ("mia_auc", "mia_auc_loss", "mia_auc_calibrated", "mia_tpr_at_low_fpr", "mia_advantage")
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=f"retrain with DP-SGD (opacus) at ε={spent:.2f} (target {params.target_epsilon:g}), δ={delta:.1e}",
        before={"test_accuracy": acc_b, **{k: rb.metrics.get(k) for k in keys}},
        after={"test_accuracy": acc_a, "epsilon": spent, "delta": delta, **{k: ra.metrics.get(k) for k in keys}},
        before_status=rb.status,
        after_status=ra.status,
        artifacts=artifacts,
        notes=(
            f"(ε, δ) = ({spent:.2f}, {delta:.1e}) from opacus' RDP accountant: a guarantee about any single training row, stronger than the empirical audit",
            *notes,
        ),
    )
    return TreatOutcome(treatment, before, after)


REMEDY = RemedySpec(
    id="data.privacy",
    params=DPParams,
    run=treat_privacy,
    description="DP-SGD retraining with opacus at a target (ε, δ); membership audit and accuracy before/after.",
)
