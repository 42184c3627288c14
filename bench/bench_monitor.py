"""Overhead of TrainingMonitor on the demo model: monitored step time / plain step time.

Plain and monitored blocks of training steps alternate on the same model and batches, so
machine load affects both alike; the ratio of the median block times is printed (target
≤ 1.05 with the default sampling, every 10th step).

    python bench/bench_monitor.py [--steps 50] [--blocks 6] [--every 10] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from dlclinic.core.baselines import baseline_for
from dlclinic.core.device import resolve_device
from dlclinic.demo import build_demo
from dlclinic.training import TrainingMonitor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    case, _ = build_demo()
    torch.manual_seed(0)
    model = baseline_for(case.input_shape, case.n_classes, case.modality).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.from_numpy(case.train.x).to(device)
    y = torch.from_numpy(case.train.y).to(device)
    rng = np.random.default_rng(0)
    batches = [
        torch.from_numpy(rng.choice(len(x), args.batch_size, replace=False)).to(device) for _ in range(args.steps)
    ]

    def block(monitor: TrainingMonitor | None) -> float:
        start = time.perf_counter()
        for idx in batches:
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if monitor is not None:
                monitor.step(loss)
            else:
                float(loss.detach())  # the monitor reads the loss; so does the plain loop
        return time.perf_counter() - start

    model.train()
    block(None)  # warm-up
    plain, monitored = [], []
    for _ in range(args.blocks):
        plain.append(block(None))
        with TrainingMonitor(model, every=args.every) as mon:
            monitored.append(block(mon))
    p, m = statistics.median(plain), statistics.median(monitored)
    print(
        f"demo model {type(model).__name__} on {device}, batch {args.batch_size}, {args.steps} steps x {args.blocks} blocks, sampling every {args.every}, {torch.get_num_threads()} thread(s)"
    )
    print(f"plain step {p / args.steps * 1e3:.2f} ms, monitored step {m / args.steps * 1e3:.2f} ms, ratio {m / p:.3f}")


if __name__ == "__main__":
    main()
