"""``--nproc N``: run the same command again under ``torchrun`` on N processes of this machine.

The command line is checked here first (bad values fail with one line, before anything
starts), then ``python -m torch.distributed.run --standalone --nproc-per-node N -m dlclinic.cli``
runs it again with the same arguments less ``--nproc``; this process waits and exits with its
code. Several machines: start ``torchrun`` on each yourself (docs/distributed.md), the
command is the same. Under torchrun (``WORLD_SIZE`` set) ``--nproc`` never launches again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import typer

from dlclinic.core import distributed

__all__ = ["NO_NPROC", "exit_code", "relaunch", "remember", "torchrun_command"]

_EXIT_FILE = "DLCLINIC_NPROC_EXIT_FILE"  # where rank 0 leaves a --fail-on exit code for the launcher

NO_NPROC = {
    "model.hyperparameters": "its Optuna search shares work through --n-workers and --storage",
    "model.architecture": "its Optuna search shares work through --n-workers and --storage",
}
"""Remedies that refuse ``--nproc``, and why."""

_argv: list[str] = []


def remember(argv: list[str]) -> None:
    """Keep the command line (without the program name) for :func:`relaunch`."""
    _argv[:] = list(argv)


def _without_nproc(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command line that runs ``dlclinic argv`` (less ``--nproc``) on ``nproc`` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "dlclinic.cli",
        *_without_nproc(argv),
    ]


def relaunch(nproc: int) -> None:
    """With ``nproc > 1`` outside torchrun: run this command under torchrun and exit with its code.

    Returns (and the command goes on in this process) for ``nproc == 1`` or under torchrun.
    The processes share the CPUs: each gets ``cpus // nproc`` threads unless ``OMP_NUM_THREADS`` is set.
    """
    if nproc <= 1 or distributed.launched() > 1:
        return
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="dlclinic-nproc-") as folder:
        env[_EXIT_FILE] = str(Path(folder) / "exit")
        code = subprocess.call(torchrun_command(nproc, _argv), env=env)
        if code == 0 and Path(env[_EXIT_FILE]).exists():
            code = int(Path(env[_EXIT_FILE]).read_text())
    raise typer.Exit(code)


def exit_code(code: int) -> int:
    """The exit code of this process: under a ``--nproc`` launch, rank 0's ``--fail-on`` code 1 is handed
    to the launcher through a file and the rank exits 0, so torchrun does not report a crashed worker.

    Only code 1 (the report crossed ``--fail-on``), which comes after all the shared work: a rank that
    fails with an error must exit non-zero, so that torchrun stops the others instead of leaving them waiting.
    """
    target = os.environ.get(_EXIT_FILE)
    if code != 1 or not target or distributed.launched() <= 1:
        return code
    if distributed.is_main():
        Path(target).write_text(str(code))
    return 0
