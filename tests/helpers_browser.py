"""Headless-chromium helpers for report tests: find the binary, dump the DOM, take a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 20
_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars")
# chromium logs every console message (log, warn, error, uncaught exceptions) at INFO level as
# `[pid:tid:date:INFO:CONSOLE(line)] "message", source: url (line)`, whatever the JS level.
_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?\]|:CONSOLE:\d+\]|Uncaught")


@dataclass(frozen=True)
class PageLoad:
    """What chromium made of one page: the serialised DOM and the console messages."""

    dom: str
    console: list[str]


def chromium_binary() -> str | None:
    """The path of a chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium: expected `chromium` or `chromium-browser` on PATH, found neither")
    cmd = ["timeout", str(TIMEOUT_S), binary, *_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S + 5, check=False)


def load_page(html_path: Path, profile: Path) -> PageLoad:
    """Open ``html_path`` in headless chromium; return its DOM and any console messages."""
    proc = _run(["--enable-logging=stderr", "--v=0", "--dump-dom", html_path.resolve().as_uri()], profile)
    console = [line for line in proc.stderr.splitlines() if _CONSOLE.search(line)]
    return PageLoad(dom=proc.stdout, console=console)


def screenshot(html_path: Path, png_path: Path, profile: Path, size: tuple[int, int] = (1280, 2000)) -> Path:
    """Save a PNG screenshot of ``html_path`` (window ``size``) to ``png_path``."""
    _run(
        [f"--screenshot={png_path.resolve()}", f"--window-size={size[0]},{size[1]}", html_path.resolve().as_uri()],
        profile,
    )
    if not png_path.exists():
        raise RuntimeError(f"chromium: expected a screenshot at {png_path}, found none")
    return png_path
