"""Shared plumbing for the peer benchmarks: timing, data hand-over, the demo fixture.

Every benchmark module in ``bench/peers/`` defines:

* ``TITLE`` (one line), ``NUMBER`` (the item of issue 10) and ``SIDES``: ``{side: env}``,
  where ``env`` is ``"project"`` (the project's ``.venv``) or the name of a peer venv
  (``bench/peers/requirements-<name>.txt``);
* ``run(side, cfg) -> dict``: runs one side, in a fresh process started by ``run.py``
  (``bench/peers/worker.py``), and returns ``{"cases": {case: {"seconds": median,
  "times": [...], "quality": {...}}}, "versions": {...}, "notes": [...]}``;
* ``rows(results, cfg) -> list[dict]``: the table rows, from the sides' results (runs in
  the runner, no heavy imports).

``cfg`` is a plain dict: ``quick``, ``repeats``, ``threads``, ``workdir`` (where the demo
fixture lives), ``seed``. Nothing here imports torch at module level, so the runner
stays light and a peer venv without torch can still load it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def fix_threads(n: int) -> None:
    """Pin torch's intra-op threads (the BLAS ones are pinned by the runner's environment)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass


def timed(fn: Callable[[], Any], repeats: int, *, warmup: int = 0) -> tuple[float, list[float], Any]:
    """``(median seconds, all seconds, last result)`` of ``repeats`` calls after ``warmup`` calls."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def case_entry(seconds: float, times: list[float], **quality: Any) -> dict[str, Any]:
    return {"seconds": float(seconds), "times": [float(t) for t in times], "quality": quality}


def version_of(*dists: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = "absent"
    return out


def f1(flagged: Any, truth: Any) -> dict[str, float]:
    """Precision, recall and F1 of a set of flagged rows against the planted ones."""
    a, b = {int(i) for i in flagged}, {int(i) for i in truth}
    tp = len(a & b)
    p = tp / len(a) if a else 0.0
    r = tp / len(b) if b else 0.0
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        "flagged": len(a),
    }


# -- the demo fixture: built once per run in the project venv, read by every side ----------
def demo_paths(cfg: dict[str, Any]) -> dict[str, Path]:
    w = Path(cfg["workdir"])
    return {"data": w / "demo.npz", "model": w / "demo_model.pt", "meta": w / "demo.json", "cache": w / "cache"}


def build_fixture(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build the demo case, train (and cache) its baseline, store arrays + weights + OOF evidence."""
    import numpy as np
    import torch

    from dlclinic.api import prepare_model, retrainer
    from dlclinic.core.evidence import Evidence, EvidenceConfig
    from dlclinic.core.recipe import FitConfig
    from dlclinic.demo import build_demo

    fix_threads(cfg["threads"])
    paths = demo_paths(cfg)
    paths["cache"].mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    case, truth = build_demo()
    fit_cfg = FitConfig(epochs=cfg["epochs"])
    case = prepare_model(case, fit_config=fit_cfg, cache_dir=paths["cache"])
    train_s = time.perf_counter() - t
    retrain, recipe = retrainer(case, fit_cfg)
    ev = Evidence(
        case,
        EvidenceConfig(),
        retrain=retrain,
        recipe=recipe,
        cheap_retrain=True,
        cache_dir=paths["cache"],
        fit_config=fit_cfg,
    )
    t = time.perf_counter()
    oof = ev.get("oof_probs", "train")
    oof_s = time.perf_counter() - t
    arrays = {"oof_probs": oof, "embeddings": ev.get("embeddings", "train")}
    for name, s in case.splits.items():
        arrays[f"{name}_x"] = s.x
        if s.y is not None:
            arrays[f"{name}_y"] = s.y
        if s.groups is not None:
            arrays[f"{name}_groups"] = np.asarray(s.groups).astype(str)
        arrays[f"{name}_probs"] = ev.get("probs", name)
    arrays["flipped"] = truth.flipped
    arrays["duplicate_pairs"] = truth.duplicate_pairs
    arrays["original_labels"] = truth.original_labels
    np.savez(paths["data"], **arrays)
    torch.save(case.model.state_dict(), paths["model"])
    meta = {
        "input_shape": list(case.input_shape),
        "n_classes": int(case.n_classes),
        "modality": case.modality,
        "epochs": cfg["epochs"],
        "baseline_seconds": train_s,
        "oof_seconds": oof_s,
        "recipe": recipe,
    }
    paths["meta"].write_text(json.dumps(meta))
    return meta


def load_demo(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np

    paths = demo_paths(cfg)
    with np.load(paths["data"]) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(paths["meta"].read_text())


def load_demo_model(cfg: dict[str, Any]) -> Any:
    """The demo baseline (dlclinic's SmallCNN architecture, weights from the fixture), in eval mode."""
    import torch

    from dlclinic.core.baselines import baseline_for

    meta = json.loads(demo_paths(cfg)["meta"].read_text())
    model = baseline_for(meta["input_shape"], meta["n_classes"], meta["modality"])
    model.load_state_dict(torch.load(demo_paths(cfg)["model"], weights_only=True))
    return model.eval()


def demo_case(cfg: dict[str, Any], *, cache_dir: Path | None = None) -> Any:
    """The demo :class:`Case` with its trained baseline, loaded from the fixture's model cache.

    With ``cache_dir``, the baseline weights are copied there first, so a checkup on that
    folder starts with a trained model but no cached evidence (a "cold" evidence cache).
    """
    import shutil

    from dlclinic.api import prepare_model
    from dlclinic.core.recipe import FitConfig
    from dlclinic.demo import build_demo

    src = demo_paths(cfg)["cache"]
    if cache_dir is not None:
        shutil.copytree(src / "models", Path(cache_dir) / "models", dirs_exist_ok=True)
    case, _ = build_demo()
    return prepare_model(case, fit_config=FitConfig(epochs=cfg["epochs"]), cache_dir=Path(cache_dir or src))


def env_info() -> dict[str, Any]:
    import platform

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "os": platform.platform(terse=True),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def row(
    case: str,
    ours_label: str,
    ours: dict[str, Any] | None,
    peer_label: str,
    peer: dict[str, Any] | None,
    *,
    ours_q: Any = None,
    peer_q: Any = None,
    verdict: str | None = None,
) -> dict[str, Any]:
    """One table row from two case entries (``{"seconds", "quality"}``); ratio = peer / ours."""
    ours_s = ours.get("seconds") if ours else None
    peer_s = peer.get("seconds") if peer else None
    ratio = (peer_s / ours_s) if (ours_s and peer_s) else None
    if verdict is None:
        if ratio is None:
            verdict = "no comparison" if peer is None else ""
        elif ratio >= 1.1:
            verdict = f"dlclinic {ratio:.1f}× faster"
        elif ratio <= 0.9:
            verdict = f"**dlclinic {1 / ratio:.1f}× slower**"
        else:
            verdict = "same speed (±10 %)"
    return {
        "case": case,
        "ours_label": ours_label,
        "ours_s": ours_s,
        "peer_label": peer_label,
        "peer_s": peer_s,
        "ratio": ratio,
        "ours_q": ours_q if ours_q is not None else (ours or {}).get("quality"),
        "peer_q": peer_q if peer_q is not None else (peer or {}).get("quality"),
        "verdict": verdict,
    }


def case_of(results: dict[str, Any], side: str, case: str) -> dict[str, Any] | None:
    r = results.get(side) or {}
    return (r.get("cases") or {}).get(case)
