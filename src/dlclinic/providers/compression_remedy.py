"""The remedy shared by model.compression, compute.edge and compute.realtime: ship a smaller or faster variant.

1. Build every variant (:func:`~dlclinic.providers.compression_sweep.compression_sweep`)
   with fine-tuning: pruned models and the narrower student are trained by distillation
   from the original.
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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dlclinic.core.atomic import atomic_path, write_json, write_weights
from dlclinic.core.errors import ConfigError
from dlclinic.core.inference import predict_logits
from dlclinic.core.registry import TreatContext, TreatOutcome, conclude
from dlclinic.export import export_pt2
from dlclinic.export.onnx_variants import onnx_runner
from dlclinic.export.weights import state_dict_bytes
from dlclinic.functional.compression import Sweep, SweepConfig, Variant, choose_variant, paired_accuracy_drop
from dlclinic.functional.latency import measure_interleaved, torch_runner
from dlclinic.io.models import OnnxModel
from dlclinic.providers.compression_sweep import compression_sweep

__all__ = ["CompressParams", "compress_and_verify"]


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


def _labelled_test(ctx: TreatContext) -> tuple[Any, Any]:
    """``(model, test split)``, or a :class:`ConfigError` saying what the remedy needs."""
    model = ctx.case.model
    if not (hasattr(model, "state_dict") and callable(model)):
        raise ConfigError(
            f"treat {ctx.challenge_id} needs a PyTorch model (file.py:factory or .pt2); an ONNX model cannot be pruned or re-quantized here"
        )
    test = ctx.case.get("test")
    if test is None or not test.labelled or len(test) < 60:
        raise ConfigError(
            f"treat {ctx.challenge_id} needs a labelled test split of at least 60 rows to choose and verify a variant (pass --test)"
        )
    return model, test


def _sweep(ctx: TreatContext, params: CompressParams, model: Any, x_sel: np.ndarray, y_sel: np.ndarray) -> Sweep:
    work = (
        (ctx.out_dir / ".compress-work")
        if ctx.out_dir is not None
        else Path(tempfile.mkdtemp(prefix="dlclinic-compress-"))
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
    case = ctx.case
    with ctx.progress.step("building and measuring compressed variants", total=1) as advance:
        sweep = compression_sweep(model, case.train.x, case.train.y, x_sel, y_sel, work, cfg)
        advance(1)
    return sweep


@dataclass
class _Chosen:
    """The chosen variant run on the verification rows: logits, size, runners to time, the model to re-measure."""

    logits: np.ndarray
    size: int
    runners: dict[str, Any]
    model: Any


def _onnx_variant(
    ctx: TreatContext, chosen: Variant, model: Any, x_ver: np.ndarray, artifacts: dict[str, str]
) -> _Chosen:
    assert chosen.path is not None
    run, _ = onnx_runner(chosen.path)
    logits = np.concatenate([np.asarray(run(x_ver[i : i + 256])) for i in range(0, len(x_ver), 256)])
    size = chosen.path.stat().st_size
    after_model: Any = model
    if ctx.out_dir is not None:
        with atomic_path(ctx.out_dir / "model_compressed.onnx") as tmp:
            shutil.copyfile(chosen.path, tmp)
        artifacts["model"] = str(ctx.out_dir / "model_compressed.onnx")
        after_model = OnnxModel(ctx.out_dir / "model_compressed.onnx")
    return _Chosen(logits, size, {"original": torch_runner(model), chosen.name: run}, after_model)


def _torch_variant(
    ctx: TreatContext,
    chosen: Variant,
    sweep: Sweep,
    model: Any,
    x_ver: np.ndarray,
    artifacts: dict[str, str],
    notes: list[str],
) -> _Chosen:
    net = sweep.models[chosen.name]
    logits = predict_logits(net, x_ver)
    if ctx.out_dir is not None:
        exported = export_pt2(net, x_ver[:256], ctx.out_dir / "model_compressed.pt2")
        artifacts["model"] = str(exported.path)
        artifacts["weights"] = str(write_weights(net, ctx.out_dir / "model_compressed.safetensors"))
        notes.append(
            f".pt2 verified against the compressed eager model: max |logit diff| {exported.max_abs_logit_diff:.1e}, argmax agreement {exported.argmax_agreement:.1%}"
        )
    return _Chosen(logits, chosen.size_bytes, {"original": torch_runner(model), chosen.name: torch_runner(net)}, net)


def _verify(
    chosen: Variant, run: _Chosen, base_correct: np.ndarray, y_ver: np.ndarray, x_one: np.ndarray
) -> dict[str, Any]:
    """Accuracy drop (paired 95 % CI), size and batch-1 p50 of the chosen variant on the verification rows."""
    correct = run.logits.argmax(1) == y_ver
    drop, low, high = paired_accuracy_drop(base_correct, correct)
    lat = measure_interleaved(run.runners, x_one, rounds=20, max_seconds=2.0)
    return {
        "accuracy": float(correct.mean()),
        "drop": drop,
        "drop_low": low,
        "drop_high": high,
        "size_bytes": int(run.size),
        "p50_ms": lat[chosen.name].p50_ms,
        "original_p50_ms": lat["original"].p50_ms,
    }


def _write_table(
    out_dir: Path, sweep: Sweep, chosen: Variant | None, verified: dict[str, Any], notes: list[str]
) -> Path:
    table = [
        {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(v).items()} for v in sweep.variants
    ]
    return write_json(
        out_dir / "compression.json",
        {"chosen": chosen.name if chosen else None, "verified": verified, "variants": table, "notes": notes},
        default=float,
    )


def compress_and_verify(ctx: TreatContext, params: CompressParams) -> TreatOutcome:
    """Sweep, choose on half of test, verify on the other half, write the model."""
    model, test = _labelled_test(ctx)
    case = ctx.case
    before = ctx.measure(case)
    rng = np.random.default_rng(params.seed)
    order = rng.permutation(len(test))
    sel, ver = np.sort(order[: len(test) // 2]), np.sort(order[len(test) // 2 :])
    y_test = np.asarray(test.y)
    sweep = _sweep(ctx, params, model, test.x[sel], y_test[sel])
    chosen = choose_variant(sweep.variants, params.max_accuracy_drop, objective=params.objective)
    base_correct = predict_logits(model, test.x[ver]).argmax(1) == y_test[ver]
    base_bytes = len(state_dict_bytes(model))
    artifacts: dict[str, str] = {}
    notes = [
        f"variants chosen on {len(sel)} test rows and verified on the other {len(ver)}; a variant qualifies when the upper end of its paired 95% CI of accuracy drop is ≤ {params.max_accuracy_drop}",
        *sweep.notes,
    ]
    after_model: Any = model
    if chosen is None:
        verified: dict[str, Any] = {
            "accuracy": float(base_correct.mean()),
            "drop": 0.0,
            "drop_low": 0.0,
            "drop_high": 0.0,
            "size_bytes": base_bytes,
            "p50_ms": sweep.variants[0].p50_ms,
        }
        better = "smaller" if params.objective == "size" else "faster"
        action = f"no variant is {better} than the original within {params.max_accuracy_drop:.1%} accuracy drop; nothing written (the original model is the best choice)"
    else:
        if chosen.format == "onnx":
            run = _onnx_variant(ctx, chosen, model, test.x[ver], artifacts)
        else:
            run = _torch_variant(ctx, chosen, sweep, model, test.x[ver], artifacts, notes)
        after_model = run.model
        verified = _verify(chosen, run, base_correct, y_test[ver], np.ascontiguousarray(test.x[:1]))
        drop, low, high = verified["drop"], verified["drop_low"], verified["drop_high"]
        action = f"chose {chosen.name} (smallest within tolerance by {params.objective}); verified on held-out test rows: accuracy drop {drop:+.2%} (95% CI {low:+.2%}..{high:+.2%}), {run.size / 1e6:.3f} MB vs {base_bytes / 1e6:.3f} MB"
        if high > params.max_accuracy_drop:
            notes.append(
                f"on the verification rows the drop's upper CI end ({high:+.2%}) exceeds the tolerance; treat the choice as provisional and verify on more data"
            )
    if ctx.out_dir is not None:
        artifacts["table"] = str(_write_table(ctx.out_dir, sweep, chosen, verified, notes))
        shutil.rmtree(ctx.out_dir / ".compress-work", ignore_errors=True)
    treated = dataclasses.replace(
        case,
        model=after_model,
        model_source=f"{case.model_source}, compressed ({chosen.name if chosen else 'unchanged'})",
    )
    return conclude(
        ctx,
        before=before,
        after=ctx.measure(treated),
        action=action,
        before_values={
            "test_accuracy": float(base_correct.mean()),
            "size_mb": base_bytes / 1e6,
            "p50_ms": verified.get("original_p50_ms", sweep.variants[0].p50_ms),
        },
        after_values={
            "test_accuracy": verified["accuracy"],
            "size_mb": verified["size_bytes"] / 1e6,
            "p50_ms": verified["p50_ms"],
            "accuracy_drop": verified["drop"],
            "accuracy_drop_ci_low": verified["drop_low"],
            "accuracy_drop_ci_high": verified["drop_high"],
        },
        artifacts=artifacts,
        notes=notes,
    )
