"""Run one side of one benchmark in this (fresh) process: ``worker.py MODULE SIDE CFG.json OUT.json``.

Started by ``bench/peers/run.py`` with the interpreter of the side's environment and the
thread-count variables already set; writes the side's result dict as JSON.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
for p in (str(_REPO / "src"), str(_REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)


def main() -> int:
    module, side, cfg_path, out_path = sys.argv[1:5]
    t0 = time.perf_counter()
    from bench.peers.common import fix_threads

    cfg = json.loads(Path(cfg_path).read_text())
    fix_threads(int(cfg["threads"]))
    try:
        if module == "fixture":
            from bench.peers.common import build_fixture

            result = {"meta": build_fixture(cfg)}
        else:
            mod = importlib.import_module(f"bench.peers.{module}")
            result = mod.run(side, cfg)
        result["process_seconds"] = time.perf_counter() - t0
        result["python"] = sys.executable
    except Exception as exc:
        result = {
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300],
            "traceback": traceback.format_exc()[-3000:],
        }
    Path(out_path).write_text(json.dumps(result, default=_plain))
    return 0


def _plain(value: object) -> object:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
