"""Worker processes that never outlive their master: :func:`exit_with_parent`.

``dlclinic serve --workers N`` runs uvicorn's supervisor (the master), which starts N worker
processes and restarts one that dies. A worker killed with its master (``kill -9``, OOM) would
otherwise keep serving as an orphan, holding the port and the prediction log. Each worker
therefore asks the Linux kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``) and
runs a watchdog thread that notices a changed parent pid on any POSIX system (and covers the race
where the master died before the worker's ``prctl``). SIGTERM starts uvicorn's graceful shutdown
(queued requests finish, the log is flushed); a worker still alive ``grace_s`` later exits hard.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["exit_with_parent"]

_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int, *, poll_s: float = 0.5, grace_s: float = 35.0) -> None:
    """Stop this process when ``parent_pid`` (its master) dies: SIGTERM first, ``os._exit`` after ``grace_s``.

    Example:
        >>> exit_with_parent(int(os.environ["DLCLINIC_SERVE_MASTER_PID"]))  # doctest: +SKIP
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    watchdog = threading.Thread(
        target=_watch, args=(parent_pid, poll_s, grace_s), name="dlclinic-parent-watch", daemon=True
    )
    watchdog.start()


def _watch(parent_pid: int, poll_s: float, grace_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(1)
