"""The model.compression remedy: write the smallest (or fastest) variant within an accuracy tolerance.

1. Build every variant (:func:`~dlclinic.functional.compression.compression_sweep`) with
   fine-tuning: pruned models and the narrower student are trained by distillation from
   the original.
2. Choose on one half of the test rows (the smallest/fastest whose accuracy drop's upper
   95 % CI end is within ``max_accuracy_drop``), then verify on the other half, so the
   reported numbers are not inflated by the choice.
3. Write the chosen model atomically: ``model_compressed.onnx`` for ONNX Runtime
   variants, ``model_compressed.pt2`` (a verified ``torch.export`` program) and
   ``model_compressed.safetensors`` for torch variants, plus ``compression.json`` with
   the table of every variant.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dlclinic.core.errors import ConfigError
from dlclinic.core.registry import RemedySpec, TreatContext, TreatOutcome

__all__ = ["EDGE_REMEDY", "REALTIME_REMEDY", "REMEDY", "CompressParams", "LatencyParams", "treat_compression"]


@dataclass(frozen=True)
class CompressParams:
    """Tolerance, objective and what the sweep tries (budgets larger than the check's)."""

    max_accuracy_drop: float = 0.01
    objective: Literal["size", "latency"] = "size"
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9)
    keep_ratios: tuple[float, ...] = (0.75, 0.5)
    finetune_epochs: int = 3
    distill_epochs: int = 8
    distill_seconds: float = 300.0
    exporter: str = "dynamo"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.max_accuracy_drop < 1:
            raise ConfigError(
                f"`0 <= max_accuracy_drop < 1` must hold, but got max_accuracy_drop={self.max_accuracy_drop}"
            )


@dataclass(frozen=True)
class LatencyParams(CompressParams):
    """:class:`CompressParams` choosing the fastest variant (compute.realtime's remedy)."""

    objective: Literal["size", "latency"] = "latency"


def treat_compression(ctx: TreatContext, params: CompressParams) -> TreatOutcome:
    """Sweep, choose on half of test, verify on the other half, write the model."""
    from dlclinic.core.inference import predict_logits
    from dlclinic.core.results import Treatment
    from dlclinic.functional.compression import (
        SweepConfig,
        choose_variant,
        compression_sweep,
        paired_accuracy_drop,
        state_dict_bytes,
    )
    from dlclinic.functional.latency import measure_interleaved, onnx_runner, torch_runner

    case = ctx.case
    model = case.model
    if not (hasattr(model, "state_dict") and callable(model)):
        raise ConfigError(
            f"treat {ctx.challenge_id} needs a PyTorch model (file.py:factory or .pt2); an ONNX model cannot be pruned or re-quantized here"
        )
    test = case.get("test")
    if test is None or not test.labelled or len(test) < 60:
        raise ConfigError(
            f"treat {ctx.challenge_id} needs a labelled test split of at least 60 rows to choose and verify a variant (pass --test)"
        )
    before = ctx.measure(case)
    rng = np.random.default_rng(params.seed)
    order = rng.permutation(len(test))
    sel, ver = np.sort(order[: len(test) // 2]), np.sort(order[len(test) // 2 :])
    y_test = np.asarray(test.y)
    work = (
        (ctx.out_dir / ".compress-work")
        if ctx.out_dir is not None
        else Path(__import__("tempfile").mkdtemp(prefix="dlclinic-compress-"))
    )
    cfg = SweepConfig(
        exporter=params.exporter,
        sparsities=params.sparsities,
        keep_ratios=params.keep_ratios,
        distill_epochs=params.distill_epochs,
        distill_seconds=params.distill_seconds,
        finetune_epochs=params.finetune_epochs,
        seed=params.seed,
    )
    with ctx.progress.step("building and measuring compressed variants", total=1) as advance:
        sweep = compression_sweep(model, case.train.x, case.train.y, test.x[sel], y_test[sel], work, cfg)
        advance(1)
    chosen = choose_variant(sweep.variants, params.max_accuracy_drop, objective=params.objective)
    base_pred = predict_logits(model, test.x[ver]).argmax(1)
    base_correct = base_pred == y_test[ver]
    base_bytes = len(state_dict_bytes(model))
    artifacts: dict[str, str] = {}
    notes = [
        f"variants chosen on {len(sel)} test rows and verified on the other {len(ver)}; a variant qualifies when the upper end of its paired 95% CI of accuracy drop is ≤ {params.max_accuracy_drop}",
        *sweep.notes,
    ]
    after_model: Any = model
    if chosen is None:
        verified = {
            "accuracy": float(base_correct.mean()),
            "drop": 0.0,
            "drop_low": 0.0,
            "drop_high": 0.0,
            "size_bytes": base_bytes,
            "p50_ms": sweep.variants[0].p50_ms,
        }
        action = f"no variant stays within {params.max_accuracy_drop:.1%} accuracy drop; nothing written (the original model is the best choice)"
    else:
        if chosen.format == "onnx":
            assert chosen.path is not None
            run, _ = onnx_runner(chosen.path)
            logits = np.concatenate([np.asarray(run(test.x[ver][i : i + 256])) for i in range(0, len(ver), 256)])
            size = chosen.path.stat().st_size
            runners = {"original": torch_runner(model), chosen.name: run}
            if ctx.out_dir is not None:
                from dlclinic.core.atomic import atomic_path

                with atomic_path(ctx.out_dir / "model_compressed.onnx") as tmp:
                    shutil.copyfile(chosen.path, tmp)
                artifacts["model"] = str(ctx.out_dir / "model_compressed.onnx")
                from dlclinic.io.models import OnnxModel

                after_model = OnnxModel(ctx.out_dir / "model_compressed.onnx")
        else:
            net = sweep.models[chosen.name]
            logits = predict_logits(net, test.x[ver])
            size = chosen.size_bytes
            runners = {"original": torch_runner(model), chosen.name: torch_runner(net)}
            after_model = net
            if ctx.out_dir is not None:
                from dlclinic.core.atomic import write_weights
                from dlclinic.export import export_pt2

                exported = export_pt2(net, test.x[ver][:256], ctx.out_dir / "model_compressed.pt2")
                artifacts["model"] = str(exported.path)
                artifacts["weights"] = str(write_weights(net, ctx.out_dir / "model_compressed.safetensors"))
                notes.append(
                    f".pt2 verified against the compressed eager model: max |logit diff| {exported.max_abs_logit_diff:.1e}, argmax agreement {exported.argmax_agreement:.1%}"
                )
        correct = logits.argmax(1) == y_test[ver]
        drop, low, high = paired_accuracy_drop(base_correct, correct)
        lat = measure_interleaved(runners, np.ascontiguousarray(test.x[:1]), rounds=20, max_seconds=2.0)
        verified = {
            "accuracy": float(correct.mean()),
            "drop": drop,
            "drop_low": low,
            "drop_high": high,
            "size_bytes": int(size),
            "p50_ms": lat[chosen.name].p50_ms,
            "original_p50_ms": lat["original"].p50_ms,
        }
        action = f"chose {chosen.name} (smallest within tolerance by {params.objective}); verified on held-out test rows: accuracy drop {drop:+.2%} (95% CI {low:+.2%}..{high:+.2%}), {size / 1e6:.3f} MB vs {base_bytes / 1e6:.3f} MB"
        if high > params.max_accuracy_drop:
            notes.append(
                f"on the verification rows the drop's upper CI end ({high:+.2%}) exceeds the tolerance; treat the choice as provisional and verify on more data"
            )
    if ctx.out_dir is not None:
        from dlclinic.core.atomic import write_json

        table = [
            {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(v).items()}
            for v in sweep.variants
        ]
        artifacts["table"] = str(
            write_json(
                ctx.out_dir / "compression.json",
                {"chosen": chosen.name if chosen else None, "verified": verified, "variants": table, "notes": notes},
                default=float,
            )
        )
        shutil.rmtree(work, ignore_errors=True)
    treated = dataclasses.replace(
        case,
        model=after_model,
        model_source=f"{case.model_source}, compressed ({chosen.name if chosen else 'unchanged'})",
    )
    after = ctx.measure(treated)
    treatment = Treatment(
        challenge_id=ctx.challenge_id,
        action=action,
        before={
            "test_accuracy": float(base_correct.mean()),
            "size_mb": base_bytes / 1e6,
            "p50_ms": verified.get("original_p50_ms", sweep.variants[0].p50_ms),
        },
        after={
            "test_accuracy": verified["accuracy"],
            "size_mb": verified["size_bytes"] / 1e6,
            "p50_ms": verified["p50_ms"],
            "accuracy_drop": verified["drop"],
            "accuracy_drop_ci_low": verified["drop_low"],
            "accuracy_drop_ci_high": verified["drop_high"],
        },
        before_status=before[ctx.challenge_id].status,
        after_status=after[ctx.challenge_id].status,
        artifacts=artifacts,
        notes=tuple(notes),
    )
    return TreatOutcome(treatment, before, after)


REMEDY = RemedySpec(
    id="model.compression",
    params=CompressParams,
    run=treat_compression,
    description="Write the smallest (or fastest) compressed variant within the accuracy tolerance, chosen and verified on disjoint test rows.",
)
EDGE_REMEDY = RemedySpec(
    id="compute.edge",
    params=CompressParams,
    run=treat_compression,
    description="Fit the device: the smallest compressed variant (int8, fp16, pruning, distillation) within the accuracy tolerance, exported as .onnx/.pt2, chosen and verified on disjoint test rows; compute.edge is measured again on it.",
)
REALTIME_REMEDY = RemedySpec(
    id="compute.realtime",
    params=LatencyParams,
    run=treat_compression,
    description="Meet the latency budget: the fastest variant and backend (eager, ONNX Runtime fp32/int8, pruned, distilled) within the accuracy tolerance, chosen and verified on disjoint test rows; compute.realtime is measured again on it.",
)
