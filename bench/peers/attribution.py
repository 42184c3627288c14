"""5. Integrated Gradients as the checkup calls it vs captum called directly (overhead).

dlclinic: ``functional.attribution.attribute(model, x, target, "integrated_gradients",
n_steps=16)`` (the model.interpretability defaults: 16 steps, 24 rows; also 256 rows).
captum: ``IntegratedGradients(model).attribute(x, baselines=0, target=..., n_steps=16,
internal_batch_size=256)`` on the same tensors. Agreement: the largest absolute difference
between the two attribution maps. A last row times the whole model.interpretability check
(IG + saliency + occlusion, deletion/insertion curves, randomisation sanity) for scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.peers.common import case_entry, case_of, load_demo, load_demo_model, row, timed, version_of

NUMBER = 5
TITLE = "Integrated Gradients in the checkup vs captum directly (overhead)"
SIDES = {"ours": "project", "captum": "project"}
STEPS = 16


def _inputs(cfg: dict[str, Any], n: int) -> tuple[Any, Any]:
    import numpy as np
    import torch

    arrays, _ = load_demo(cfg)
    x = np.ascontiguousarray(arrays["test_x"][:n], dtype=np.float32)
    model = load_demo_model(cfg)
    with torch.no_grad():
        target = model(torch.from_numpy(x)).argmax(1).numpy()
    return x, target


def run(side: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    model = load_demo_model(cfg)
    cases: dict[str, Any] = {}
    store = Path(cfg["workdir"]) / "ig_ours.npz"
    sizes = (24,) if cfg["quick"] else (24, 256)
    if side == "ours":
        from dlclinic.functional.attribution import attribute

        saved = {}
        for n in sizes:
            x, t = _inputs(cfg, n)
            med, times, a = timed(
                lambda: attribute(model, x, t, "integrated_gradients", n_steps=STEPS), cfg["repeats"], warmup=1
            )
            saved[f"n{n}"] = a
            cases[f"ig:{n}"] = case_entry(med, times, mean_abs=float(np.abs(a).mean()))
        np.savez(store, **saved)
        from bench.peers.common import demo_case, demo_paths

        import dlclinic
        from dlclinic.core.recipe import FitConfig

        case = demo_case(cfg)
        reps = 1 if cfg["quick"] else min(cfg["repeats"], 3)
        med, times, res = timed(
            lambda: dlclinic.checkup(
                case,
                only=["model.interpretability"],
                fit_config=FitConfig(epochs=cfg["epochs"]),
                cache_dir=demo_paths(cfg)["cache"],
            )["model.interpretability"],
            reps,
        )
        cases["check"] = case_entry(med, times, status=res.status)
        return {"cases": cases, "versions": version_of("captum", "torch")}
    import torch
    from captum.attr import IntegratedGradients

    ours = dict(np.load(store)) if store.exists() else {}
    for n in sizes:
        x, t = _inputs(cfg, n)
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)

        def ig() -> Any:
            model.eval()
            return (
                IntegratedGradients(model)
                .attribute(xt, baselines=0.0, target=tt, n_steps=STEPS, internal_batch_size=256)
                .detach()
                .numpy()
            )

        med, times, a = timed(ig, cfg["repeats"], warmup=1)
        q: dict[str, Any] = {"mean_abs": float(np.abs(a).mean())}
        if f"n{n}" in ours:
            q["max_abs_diff_vs_dlclinic"] = float(np.abs(a - ours[f"n{n}"]).max())
        cases[f"ig:{n}"] = case_entry(med, times, **q)
    return {"cases": cases, "versions": version_of("captum", "torch")}


def rows(results: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    out = [
        row(
            f"IG, {STEPS} steps, {n} test rows (warm)",
            "functional.attribution.attribute",
            case_of(results, "ours", f"ig:{n}"),
            "captum IntegratedGradients.attribute",
            case_of(results, "captum", f"ig:{n}"),
        )
        for n in ((24,) if cfg["quick"] else (24, 256))
    ]
    out.append(
        row(
            "whole model.interpretability check (warm evidence)",
            "checkup --only model.interpretability",
            case_of(results, "ours", "check"),
            "—",
            None,
            verdict="for scale: IG is a small part",
        )
    )
    notes = [
        "The wrapper adds input conversion (numpy → tensor with the model's dtype/device), an eval-mode guard that restores the model's mode, and numpy output; the attributions are captum's own (max |difference| ≈ 0)."
    ]
    return out, notes
