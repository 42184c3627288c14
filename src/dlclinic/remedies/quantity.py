"""The data.quantity remedy: how many labels to buy, and the augmentation that stretches the data you have.

1. **Labels to buy.** The check's power law ``err(n) = a·n^(−b) + c`` is inverted for a
   few target accuracies (``targets``; by default the measured accuracy plus 1, 2 and 5
   points, when below the curve's floor ``1 − c``): the training-set size each target
   needs and the labels to add (``labels_to_buy.json``). A target beyond the floor is
   written as not reachable with more data of this kind.
2. **Augmentation, measured.** Each policy of :mod:`dlclinic.functional.augment` (images:
   shift, noise, same-class blend; tables: noise, blend) is tried by retraining with one
   augmented copy of a ``1 − val_fraction`` part of train and scoring on the held-out rest;
   the best policy (if it beats no augmentation there) is then retrained on all of train
   and compared with the un-augmented model on the test split, paired (bootstrap interval
   and exact McNemar test). The control without augmentation trains on the rows repeated
   as many times, so both see the same number of optimiser steps: a gain is the
   augmentation's, not extra training. The choice is made on train rows only, so the test
   comparison is not inflated by it.

The check is measured again with the treated model; its learning curve describes the
data, so expect it to move little — the paired test accuracy is the verification.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["REMEDY", "QuantityParams", "labels_to_buy", "treat_quantity"]


@dataclass(frozen=True)
class QuantityParams:
    """``policies``: augmentation policies to try (empty: all for the modality); ``copies``:
    augmented copies added to train; ``val_fraction``: train rows held out to choose the
    policy; ``targets``: accuracies for the labels-to-buy table (empty: measured + 1/2/5 points)."""

    policies: tuple[str, ...] = ()
    copies: int = 1
    val_fraction: float = 0.2
    targets: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.copies <= 4:
            raise ValueError(f"`1 <= copies <= 4` must hold, but got copies={self.copies}")
        if not 0.1 <= self.val_fraction <= 0.5:
            raise ValueError(f"`0.1 <= val_fraction <= 0.5` must hold, but got val_fraction={self.val_fraction}")
        if not all(0 < t < 1 for t in self.targets):
            raise ValueError(f"expected target accuracies in (0, 1), but got targets={self.targets}")


def labels_to_buy(a: float, b: float, c: float, n_train: int, targets: list[float]) -> list[dict[str, Any]]:
    """Per target accuracy: training-set size the power law needs, and the labels to add (``None``: beyond the curve's floor).

    Example:
        >>> rows = labels_to_buy(1.0, 0.5, 0.02, 400, [0.9, 0.99])
        >>> rows[0]["samples_needed"], rows[0]["labels_to_add"], rows[1]["reachable"]
        (157, 0, False)
    """
    from dlclinic.functional.learning_curve import PowerLaw, samples_for_error

    law = PowerLaw(a, b, c, math.nan, math.nan)
    out = []
    for t in targets:
        need = samples_for_error(law, 1.0 - t)
        ok = math.isfinite(need)
        out.append(
            {
                "target_accuracy": t,
                "reachable": ok,
                "samples_needed": int(math.ceil(need)) if ok else None,
                "labels_to_add": max(0, int(math.ceil(need)) - n_train) if ok else None,
            }
        )
    return out


def _augmented(
    x: np.ndarray, y: np.ndarray, policy: str, copies: int, modality: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from dlclinic.functional.augment import augment_copy

    if policy == "none":  # the control sees the same number of rows (and optimiser steps) as the augmented runs
        return np.concatenate([x] * (copies + 1)), np.concatenate([y] * (copies + 1))
    xs = [x] + [augment_copy(x, y, policy, modality=modality, seed=seed * 100 + i) for i in range(copies)]
    return np.concatenate(xs), np.concatenate([y] * (copies + 1))


def treat_quantity(ctx: TreatContext, params: QuantityParams) -> TreatOutcome:
    """Labels-to-buy table from the fitted curve; augmentation chosen on held-out train rows, verified on test."""
    from dlclinic.core.atomic import write_json, write_weights
    from dlclinic.core.inference import predict_logits
    from dlclinic.core.results import Treatment
    from dlclinic.functional.augment import policies_for
    from dlclinic.functional.stats import mcnemar_test, paired_accuracy_ci

    case, cfg = ctx.case, ctx.fit_config
    test = case.get("test")
    if test is None or test.y is None:
        raise ConfigError("treat data.quantity needs a labelled test split to verify the treatment (pass --test)")
    if ctx.retrain is None:
        raise ConfigError(
            "treat data.quantity retrains the model, so it needs the architecture: pass --model file.py:factory"
        )
    if case.train.y is None:
        raise ConfigError("treat data.quantity needs train labels")
    available = policies_for(case.modality)
    unknown = [p for p in params.policies if p not in available]
    if unknown:
        raise ConfigError(
            f"treat data.quantity: unknown augmentation polic{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} for {case.modality} data; expected some of: {', '.join(available)}"
        )
    policies = tuple(params.policies) or available
    before = ctx.measure(case)
    res = before[ctx.challenge_id]
    m = res.metrics
    n_train = len(case.train)
    buy: list[dict[str, Any]] = []
    if all(
        isinstance(m.get(k), (int, float))
        for k in ("power_law_a", "power_law_b", "irreducible_error", "error_at_full_size")
    ):
        acc_now = 1.0 - float(m["error_at_full_size"])  # type: ignore[arg-type]
        targets = list(params.targets) or [
            round(t, 4) for t in (acc_now + 0.01, acc_now + 0.02, acc_now + 0.05) if t < 1
        ]
        buy = labels_to_buy(
            float(m["power_law_a"]), float(m["power_law_b"]), float(m["irreducible_error"]), n_train, targets
        )  # type: ignore[arg-type]

    x, y = np.nan_to_num(case.train.x), case.train.y
    rng = np.random.default_rng(params.seed)
    order = rng.permutation(n_train)
    cut = int(round(params.val_fraction * n_train))
    val, fit_rows = np.sort(order[:cut]), np.sort(order[cut:])
    scores: dict[str, float] = {}
    with ctx.progress.step(
        "choosing an augmentation policy on held-out train rows", total=len(policies) + 1
    ) as advance:
        for policy in ("none", *policies):
            xa, ya = _augmented(x[fit_rows], y[fit_rows], policy, params.copies, case.modality, params.seed)
            net = ctx.retrain(xa, ya, cfg.seed)
            scores[policy] = float((predict_logits(net, x[val]).argmax(1) == y[val]).mean())
            advance(1)
    best = max(policies, key=lambda p: scores[p])
    chosen = best if scores[best] > scores["none"] else "none"
    y_test = np.asarray(test.y)
    before_m: dict[str, float | int | None] = {"train_rows": n_train, "val_accuracy_no_augmentation": scores["none"]}
    after_m: dict[str, float | int | None] = {f"val_accuracy_{p}": s for p, s in scores.items() if p != "none"}
    notes = [
        f"policy chosen on {len(val)} held-out train rows (trained on the other {len(fit_rows)}): "
        + ", ".join(f"{p} {s:.1%}" for p, s in scores.items())
    ]
    model = case.model
    if chosen == "none":
        action = "no augmentation policy beat training without augmentation on held-out train rows; the model is unchanged (labels_to_buy.json says what more data would bring)"
        after = before
    else:
        xa, ya = _augmented(x, y, chosen, params.copies, case.modality, params.seed)
        with ctx.progress.step(f"retraining with {chosen} augmentation", total=2) as advance:
            xr, yr = _augmented(x, y, "none", params.copies, case.modality, params.seed)
            reference = ctx.retrain(xr, yr, cfg.seed)  # same rows and steps, no augmentation
            advance(1)
            model = ctx.retrain(xa, ya, cfg.seed)
            advance(1)
        ok_before = predict_logits(reference, np.nan_to_num(test.x)).argmax(1) == y_test
        ok_after = predict_logits(model, np.nan_to_num(test.x)).argmax(1) == y_test
        low, high = paired_accuracy_ci(ok_before, ok_after)
        mc = mcnemar_test(ok_after, ok_before)
        before_m["test_accuracy"] = float(ok_before.mean())
        after_m.update(
            test_accuracy=float(ok_after.mean()),
            gain_ci_low=low,
            gain_ci_high=high,
            mcnemar_p=mc.p_exact,
            train_rows=len(ya),
        )
        action = f"retrain with {params.copies} {chosen}-augmented cop{'y' if params.copies == 1 else 'ies'} of train (same recipe and seed); test accuracy {ok_before.mean():.1%} → {ok_after.mean():.1%}"
        notes.append(
            f"on the {len(y_test)} test rows, paired 95 % CI of the gain [{low:+.3f}, {high:+.3f}], exact McNemar p={mc.p_exact:.2g}"
        )
        treated = dataclasses.replace(
            case,
            model=model,
            model_source=f"{case.model_source.replace(', from cache', '')}, retrained with {chosen} augmentation",
        )
        after = ctx.measure(treated)
        notes.append(
            "data.quantity describes the data (its learning curve), so its status moves little after augmentation: the paired test accuracy above is the verification"
        )
    if buy and not m.get("retrained_model", False):
        notes.append(
            "the labels-to-buy figures invert the proxy learning curve (a head on the model's embeddings, which learned from every train row): it is flatter than the model's own curve, so read them as a lower bound on what more data gives; run the check with --option data.quantity.mode=model for the retrained-model curve"
        )
    for row in buy:
        if row["reachable"]:
            notes.append(
                f"{row['target_accuracy']:.1%} accuracy: about {row['samples_needed']:,} training samples by the fitted curve ({row['labels_to_add']:,} more labels)"
            )
        else:
            notes.append(
                f"{row['target_accuracy']:.1%} accuracy: beyond the curve's floor — not reachable with more data of this kind alone"
            )
    artifacts: dict[str, str] = {}
    if ctx.out_dir is not None:
        path = write_json(
            ctx.out_dir / "labels_to_buy.json",
            {
                "train_size": n_train,
                "power_law": {
                    "a": m.get("power_law_a"),
                    "b": m.get("power_law_b"),
                    "c": m.get("irreducible_error"),
                    "curve": "retrained model" if m.get("retrained_model") else "proxy (head on embeddings)",
                },
                "targets": buy,
                "augmentation": {"chosen": chosen, "held_out_accuracy": scores},
            },
        )
        artifacts["labels_to_buy"] = str(path)
        if model is not case.model:
            artifacts["model"] = str(write_weights(model, ctx.out_dir / "model_treated.safetensors"))
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=action,
        before=before_m,
        after=after_m,
        before_status=res.status,
        after_status=after[ctx.challenge_id].status,
        artifacts=artifacts,
        notes=tuple(notes),
    )
    return TreatOutcome(treatment, before, after)


REMEDY = RemedySpec(
    id="data.quantity",
    params=QuantityParams,
    run=treat_quantity,
    description="Labels to buy for target accuracies (inverted learning curve); augmentation policy chosen on held-out train rows and verified on test.",
)
