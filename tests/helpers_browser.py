"""Headless-chromium helpers for report tests: find the binary, dump the DOM, take a screenshot, measure tables."""

from __future__ import annotations

import html
import json
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
# Opens every <details>, then for each table: does its right edge pass the content box of its card
# (.card or .panel), or does any box between it and the card scroll sideways (content clipped)?
# Writes the answer as JSON into <pre id="table-fit">, for --dump-dom to carry out.
_TABLE_FIT_JS = """
(function () {
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  var tables = [];
  document.querySelectorAll("table").forEach(function (table) {
    var card = table.closest(".card, .panel") || document.querySelector("main") || document.body;
    var cs = getComputedStyle(card), box = card.getBoundingClientRect();
    var inner = box.right - parseFloat(cs.borderRightWidth) - parseFloat(cs.paddingRight);
    var right = table.getBoundingClientRect().right, overflow = [];
    if (right > inner + 0.5) overflow.push("right edge " + right.toFixed(1) + " px > card content " + inner.toFixed(1) + " px");
    for (var el = table.parentElement; el && el !== card.parentElement; el = el.parentElement) {
      if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
        overflow.push("<" + el.tagName.toLowerCase() + " class=" + (el.className || "") + "> scrolls " + el.scrollWidth + " > " + el.clientWidth + " px");
    }
    var cells = table.rows.length ? Array.prototype.slice.call(table.rows[0].cells) : [];
    var head = cells.map(function (c) { return c.textContent.trim(); }).join(" | ");
    tables.push({card: card.id || card.className, head: head, overflow: overflow});
  });
  var out = document.createElement("pre");
  out.id = "table-fit";
  out.textContent = JSON.stringify({width: window.innerWidth, tables: tables});
  document.body.appendChild(out);
})();
"""
_TABLE_FIT = re.compile(r'<pre id="table-fit">(.*?)</pre>', re.S)


@dataclass(frozen=True)
class PageLoad:
    """What chromium made of one page: the serialised DOM and the console messages."""

    dom: str
    console: list[str]


@dataclass(frozen=True)
class TableFit:
    """Every table of a page at one window width: its card, first row, and how it overflows (if it does)."""

    width: int
    tables: list[dict[str, object]]

    @property
    def overflowing(self) -> list[dict[str, object]]:
        """The tables wider than their card or clipped by a scrolling box."""
        return [t for t in self.tables if t["overflow"]]


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


def table_fit(html_path: Path, profile: Path, width: int = 1280) -> TableFit:
    """Measure every table of ``html_path`` in a ``width`` px wide window, all ``<details>`` open.

    The page is copied next to ``profile`` with a measuring script added; the original is not touched.
    """
    probe = profile.parent / f"{html_path.stem}-table-fit.html"
    page = html_path.read_text(encoding="utf-8")
    probe.write_text(page.replace("</body>", f"<script>{_TABLE_FIT_JS}</script></body>"), encoding="utf-8")
    proc = _run([f"--window-size={width},1000", "--dump-dom", probe.resolve().as_uri()], profile)
    found = _TABLE_FIT.search(proc.stdout)
    if found is None:
        raise RuntimeError(
            f"chromium: expected <pre id='table-fit'> in the DOM of {probe}, found none: {proc.stderr[-500:]}"
        )
    data = json.loads(html.unescape(found.group(1)))
    return TableFit(width=int(data["width"]), tables=list(data["tables"]))
