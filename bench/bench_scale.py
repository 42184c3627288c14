"""Checkup at scale: wall time and peak memory of ``dlclinic checkup`` on Fashion-MNIST at 10k / 60k / 600k rows.

The case is the one of issue 21: a user CNN (Conv-BN-ReLU ×2, max-pool, Linear 12544→32,
ReLU, Linear 32→10: 420,778 parameters) given as ``model.py:make`` plus ``.safetensors``
weights, and Fashion-MNIST as float32 N×1×28×28 in ``[0, 1]`` written to uncompressed
``.npz`` files (``np.savez``). The weights are trained here, once, for one epoch on the first
10,000 training rows (Adam, lr 1e-3, batch 128, seed 0): a real but briefly trained model,
cheap to make. Sizes: ``10k`` = the first 10,000 train rows and 1,667 test rows; ``60k`` =
the full 60,000 / 10,000; ``600k`` = the full data replicated ×10 with Gaussian noise
(σ = 0.01, clipped to [0, 1]), 600,000 / 100,000 — slow, run only when asked.

Per size it runs, each as a fresh subprocess with the same environment (threads included):

* the bare floor: load the two ``.npz`` files and run the model over every train and test
  row in batches of 256 under ``torch.inference_mode()``, the model as loaded — what a user's
  plain loop takes (dlclinic's evidence pass runs a CPU conv model channels-last, so it can
  take less: ``core.inference.conv_layout``);
* ``dlclinic checkup --train --test --model --weights --no-cache`` (all 31 checks).

It prints and writes (``--json``) the wall time and peak RSS of each (peak RSS: the
largest of the kernel's ``ru_maxrss`` of the process and the sum of the process tree's
``VmRSS`` polled every 0.2 s), the report's phase timings, each check's ``seconds``, and the
ratio of the evidence phase to the bare loop. Data: the Debian package
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

    python bench/bench_scale.py [--sizes 10k,60k] [--only CHECKS] [--budget 2m] [--workdir DIR] [--json out.json]

``--budget`` passes ``dlclinic checkup --budget``; each check's share, time used and cuts land in the JSON.

``--only data.privacy`` (a check that needs only the forward pass on both splits and takes
a second) measures loading plus the evidence pass: the floor of any checkup's memory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
SIZES = {"10k": (10_000, 1_667, 1), "60k": (60_000, 10_000, 1), "600k": (60_000, 10_000, 10)}

MODEL_PY = '''"""The issue-21 user CNN: Conv-BN-ReLU x2, max-pool, Linear 12544->32, ReLU, Linear 32->10."""
from torch import nn


def make() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 14 * 14, 32), nn.ReLU(), nn.Linear(32, 10),
    )
'''

BARE = """
import sys, time, numpy as np, torch, importlib.util
from safetensors.torch import load_file
spec = importlib.util.spec_from_file_location("m", sys.argv[1]); m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m); model = m.make(); model.load_state_dict(load_file(sys.argv[2])); model.eval()
start = time.perf_counter()
for path in sys.argv[3:]:
    x = np.load(path)["x"]
    with torch.inference_mode():
        for i in range(0, len(x), 256):
            model(torch.from_numpy(x[i : i + 256]))
print(time.perf_counter() - start)
"""


def _idx(name: str) -> np.ndarray:
    """One IDX file of the Debian package (gzip'd, big-endian header, uint8 payload)."""
    raw = gzip.decompress((FASHION / name).read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not FASHION.exists():
        sys.exit(f"Fashion-MNIST not found in {FASHION}: apt-get install dataset-fashion-mnist")
    xs = [_idx(f"{p}-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28) for p in ("train", "t10k")]
    ys = [_idx(f"{p}-labels-idx1-ubyte.gz").astype(np.int64) for p in ("train", "t10k")]
    return xs[0], ys[0], xs[1], ys[1]


def _model(work: Path, x: np.ndarray, y: np.ndarray) -> tuple[Path, Path]:
    """``model.py`` and its weights: one epoch on the first 10,000 training rows."""
    import torch
    from safetensors.torch import save_file

    py, weights = work / "model.py", work / "model.safetensors"
    if weights.exists():
        return py, weights
    py.write_text(MODEL_PY)
    namespace: dict = {}  # type: ignore[type-arg]
    exec(compile(MODEL_PY, str(py), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["make"]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x[:10_000].astype(np.float32) / 255), torch.from_numpy(y[:10_000])
    for i in range(0, len(xt), 128):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt[i : i + 128]), yt[i : i + 128]).backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return py, weights


def _split(x: np.ndarray, y: np.ndarray, n: int, copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = x[:n].astype(np.float32) / 255
    if copies == 1:
        return x, y[:n]
    rng = np.random.default_rng(seed)
    out = np.empty((len(x) * copies, *x.shape[1:]), dtype=np.float32)
    for c in range(copies):
        noise = rng.normal(0, 0.01, size=x.shape).astype(np.float32)
        out[c * len(x) : (c + 1) * len(x)] = np.clip(x + noise, 0, 1)
    return out, np.tile(y[:n], copies)


def _data(work: Path, size: str, fashion: tuple[np.ndarray, ...]) -> tuple[Path, Path]:
    n_train, n_test, copies = SIZES[size]
    paths = work / f"train-{size}.npz", work / f"test-{size}.npz"
    if not all(p.exists() for p in paths):
        for path, (x, y), seed in zip(paths, ((fashion[0], fashion[1]), (fashion[2], fashion[3])), (1, 2)):
            xs, ys = _split(x, y, n_train if seed == 1 else n_test, copies, seed)
            np.savez(path, x=xs, y=ys)  # uncompressed: the large-data format
    return paths


def _tree_kb(pid: int) -> tuple[int, int]:
    """``(RSS, PSS)`` summed over ``pid`` and its descendants (kB), read from /proc.

    Forked workers share the parent's pages copy-on-write: the RSS sum counts a shared page
    once per process, the PSS sum (each page divided by its sharers) counts it once.
    """
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    value = int(line.split()[1])
                    rss, pss = (rss + value, pss) if line.startswith("Rss:") else (rss, pss + value)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return rss, pss


def _measure(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, dict[str, int], str]:
    """Wall seconds, peak memory in MB (``rss``: one process, ``tree_rss``/``tree_pss``: the tree) and stdout of ``cmd``."""
    start = time.perf_counter()
    with log.open("w") as err, log.with_suffix(".out").open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        peak = [0, 0]
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                peak[:] = [max(a, b) for a, b in zip(peak, _tree_kb(proc.pid))]

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        done.set()
        poller.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    # ru_maxrss (kB): the largest single process of the tree (exact); the poll: the tree's sums
    mb = {"rss": usage.ru_maxrss // 1024, "tree_rss": peak[0] // 1024, "tree_pss": peak[1] // 1024}
    return wall, mb, log.with_suffix(".out").read_text()


def _checkup(work: Path, size: str, py: Path, weights: Path, env: dict[str, str], only: str, budget: str) -> dict:  # type: ignore[type-arg]
    train, test = _data(work, size, _FASHION)
    out = work / f"report-{size}"
    script = Path(sys.executable).with_name("dlclinic")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "dlclinic.cli"]
    cmd = [*base, "checkup", "--train", str(train), "--test", str(test), "--model", f"{py}:make"]
    cmd += ["--weights", str(weights), "--no-cache", "--quiet", "--out", str(out)] + (["--only", only] if only else [])
    cmd += ["--budget", budget] if budget else []
    bare = [sys.executable, "-c", BARE, str(py), str(weights), str(train), str(test)]
    bare_s, bare_mb, bare_out = _measure(bare, env, work / f"bare-{size}.log")
    wall, rss, _ = _measure(cmd, env, work / f"checkup-{size}.log")
    report = json.loads((out / "report.json").read_text())
    evidence = float(report.get("timings", {}).get("evidence", float("nan")))
    loop = float(bare_out.strip().splitlines()[-1])
    return {
        "size": size,
        "only": only or "all checks",
        "budget": budget or None,
        "train_rows": int(np.load(train, mmap_mode="r")["y"].shape[0]),
        "data_mb": round((train.stat().st_size + test.stat().st_size) / 2**20, 1),
        "wall_s": round(wall, 1),
        "peak_mb": rss,
        "bare": {"wall_s": round(bare_s, 1), "loop_s": round(loop, 2), "peak_mb": bare_mb},
        "timings": report.get("timings", {}),
        "evidence_over_bare": round(evidence / loop, 2),
        "sampled_by_budget": report.get("case", {}).get("sampled_by_budget"),
        "checks": {
            c["id"]: {"status": c["status"], "seconds": c.get("seconds"), "budget": c.get("budget")}
            for c in report["challenges"]
        },
    }


_FASHION: tuple[np.ndarray, ...] = ()


def _print(row: dict) -> None:  # type: ignore[type-arg]
    t = row["timings"]
    print(
        f"{row['size']:>5} ({row['only']}{', budget ' + row['budget'] if row['budget'] else ''}): {row['train_rows']} train rows, {row['data_mb']} MB on disk | checkup {row['wall_s']} s, "
        f"peak RSS {_mb(row['peak_mb'])} ({row['peak_mb']['rss'] / row['data_mb']:.1f}x the data) | "
        f"evidence {t.get('evidence', float('nan')):.1f} s vs bare loop {row['bare']['loop_s']} s = "
        f"{row['evidence_over_bare']}x (bare process: peak {_mb(row['bare']['peak_mb'])})"
    )
    if row.get("sampled_by_budget"):
        print(
            "       examined: "
            + ", ".join(f"{v['rows']:,} of {v['of']:,} {k} rows" for k, v in row["sampled_by_budget"].items())
        )
    slow = sorted(row["checks"].items(), key=lambda kv: -(kv[1]["seconds"] or 0))
    print("       slowest checks: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in slow[:8]))


def _mb(peak: dict[str, int]) -> str:
    return f"{peak['rss']} MB (tree: RSS {peak['tree_rss']} MB, PSS {peak['tree_pss']} MB)"


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    global _FASHION
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,60k", help="comma-separated of 10k, 60k, 600k")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dlclinic-bench-scale"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", default="", help="checks to run (dlclinic checkup --only); default all 31")
    parser.add_argument("--budget", default="", help="dlclinic checkup --budget (e.g. 2m); default none")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        sys.exit(f"unknown sizes {unknown}; expected some of {list(SIZES)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    _FASHION = _fashion()
    py, weights = _model(args.workdir, _FASHION[0], _FASHION[1])
    env = dict(os.environ)
    print(f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, load {_load()}")
    rows = []
    for size in sizes:
        row = _checkup(args.workdir, size, py, weights, env, args.only, args.budget)
        row["load_after"] = _load()
        rows.append(row)
        _print(row)
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
