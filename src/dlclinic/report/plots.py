"""Turn the plain-data plot specs of ``CheckResult.details["plots"]`` into inline SVG.

A spec is a dict::

    {"kind": "line" | "bar" | "hist" | "reliability" | "scatter" | "heatmap",
     "title": str, "xlabel": str, "ylabel": str,
     "xscale": "linear" | "log", "yscale": "linear" | "log",   # optional
     "series": [{"label": str, "x": [...], "y": [...]}, ...]}

``"hist"`` series carry ``"values"`` instead of ``x``/``y`` (overlaid, density-normalised
histograms on shared bins); ``"reliability"`` takes one series with ``x`` = mean confidence
per bin, ``y`` = accuracy per bin and an optional ``"count"``, and draws the diagonal.
``"scatter"`` series are points (``x``, ``y``, optional per-point ``"text"`` labels and
``"line": true`` to join them, e.g. a Pareto front). ``"heatmap"`` takes one series with
``"z"`` (a 2-D list of numbers, rows × columns) and optional ``"x"`` / ``"y"`` tick labels
(columns / rows) and ``"annotate": true`` to print the values in the cells.

Figures are built with the object API (``matplotlib.figure.Figure``), never ``pyplot``, so
no global figure state exists; the only rcParams touched are set inside an
``rc_context`` for the duration of one ``savefig`` and restored afterwards.

Drawing is most of the time it takes to write a report (~0.2 s a plot), so an SVG is kept
on disk under ``<cache>/plots`` keyed by a hash of the spec, this module and the matplotlib
version (``$DLCLINIC_CACHE``; a report of the same results draws nothing again), and
:func:`prerender` draws the plots of a whole report on several processes.

Example:
    >>> svg = plot_to_svg({"kind": "line", "title": "loss",
    ...                    "series": [{"label": "train", "x": [0, 1, 2], "y": [1.0, 0.5, 0.4]}]})
    >>> svg.startswith("<svg")
    True
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlclinic.core.atomic import atomic_path
from dlclinic.core.evidence import default_cache_dir
from dlclinic.core.workers import default_workers, run_tasks

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["KINDS", "PlotSpecError", "plot_to_svg", "prerender"]

KINDS = ("line", "bar", "hist", "reliability", "scatter", "heatmap")
_SIZE = (4.5, 3.0)
_COLORS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#4b5563")
_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.IGNORECASE)
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.DOTALL)
_ID = re.compile(r'\sid="([^"]*)"')
_REF = re.compile(r'(?:url\(#|href="#)([^")]+)')
_RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"]}
_MAX_POINTS = 1_000_000
_MAX_LINE_POINTS = 2_000


class PlotSpecError(ValueError):
    """A plot spec that cannot be drawn; the report shows the message instead of the plot."""


def _text(value: Any) -> str:
    """A label for matplotlib, with ``$`` escaped so user text never enters mathtext."""
    return "" if value is None else str(value).replace("$", r"\$")


def _floats(values: Any, what: str) -> list[float]:
    """Numbers as floats; ``None`` becomes NaN. Raises :class:`PlotSpecError` otherwise."""
    if values is None:
        raise PlotSpecError(f"{what}: expected a list of numbers, found nothing")
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise PlotSpecError(f"{what}: expected a list of numbers, found {type(values).__name__}")
    if len(values) > _MAX_POINTS:
        raise PlotSpecError(f"{what}: expected at most {_MAX_POINTS} points, found {len(values)}")
    out: list[float] = []
    for v in values:
        if v is None:
            out.append(math.nan)
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise PlotSpecError(f"{what}: expected numbers, found {v!r}") from None
    return out


def _series(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    series = spec.get("series")
    if not isinstance(series, Sequence) or isinstance(series, (str, bytes)) or not series:
        raise PlotSpecError("expected a non-empty list 'series'")
    if not all(isinstance(s, Mapping) for s in series):
        raise PlotSpecError("expected every entry of 'series' to be a dict")
    return list(series)


def _xy(s: Mapping[str, Any], i: int) -> tuple[list[float], list[float]]:
    y = _floats(s.get("y"), f"series {i} y")
    x = _floats(s["x"], f"series {i} x") if s.get("x") is not None else [float(k) for k in range(len(y))]
    if len(x) != len(y):
        raise PlotSpecError(f"series {i}: expected x and y of equal length, found {len(x)} and {len(y)}")
    if not y:
        raise PlotSpecError(f"series {i}: expected at least one point, found none")
    return x, y


def _draw_line(ax: Axes, series: list[Mapping[str, Any]]) -> None:
    for i, s in enumerate(series):
        x, y = _xy(s, i)
        if len(x) > _MAX_LINE_POINTS:  # keep the SVG small: every k-th point, plus the last
            step = -(-len(x) // _MAX_LINE_POINTS)
            x, y = x[::step] + x[-1:], y[::step] + y[-1:]
        ax.plot(
            x,
            y,
            label=_text(s.get("label")),
            color=_COLORS[i % len(_COLORS)],
            lw=1.6,
            marker="o" if len(x) <= 30 else None,
            ms=3,
        )


def _draw_bar(ax: Axes, series: list[Mapping[str, Any]]) -> None:
    cats: list[str] = []
    for i, s in enumerate(series):
        y = s.get("y")
        xs = s.get("x")
        if xs is None:
            xs = list(range(len(_floats(y, f"series {i} y"))))
        for c in xs.tolist() if hasattr(xs, "tolist") else xs:
            if str(c) not in cats:
                cats.append(str(c))
    if not cats:
        raise PlotSpecError("bar: expected at least one category, found none")
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        y = _floats(s.get("y"), f"series {i} y")
        xs = s.get("x")
        labels = (
            [str(c) for c in (xs.tolist() if hasattr(xs, "tolist") else xs)]
            if xs is not None
            else [str(k) for k in range(len(y))]
        )
        if len(labels) != len(y):
            raise PlotSpecError(f"series {i}: expected x and y of equal length, found {len(labels)} and {len(y)}")
        pos = [cats.index(c) - 0.4 + width * (i + 0.5) for c in labels]
        ax.bar(pos, y, width=width * 0.95, label=_text(s.get("label")), color=_COLORS[i % len(_COLORS)])
    ax.set_xticks(range(len(cats)))
    long = len(cats) > 8 or max(len(c) for c in cats) > 6
    ax.set_xticklabels(
        [_text(c[:18]) for c in cats], rotation=45 if long else 0, ha="right" if long else "center", fontsize=8
    )


def _draw_hist(ax: Axes, series: list[Mapping[str, Any]]) -> None:
    arrays = [np.asarray(_floats(s.get("values"), f"series {i} values")) for i, s in enumerate(series)]
    arrays = [a[np.isfinite(a)] for a in arrays]
    pooled = np.concatenate(arrays) if arrays else np.empty(0)
    if pooled.size == 0:
        raise PlotSpecError("hist: expected finite values, found none")
    edges = np.histogram_bin_edges(pooled, bins="auto")
    if len(edges) > 61:
        edges = np.histogram_bin_edges(pooled, bins=60)
    for i, (s, a) in enumerate(zip(series, arrays)):
        if a.size:
            ax.hist(
                a,
                bins=edges.tolist(),
                density=True,
                alpha=0.45,
                histtype="stepfilled",
                color=_COLORS[i % len(_COLORS)],
                edgecolor=_COLORS[i % len(_COLORS)],
                label=_text(s.get("label")),
            )
    if not ax.get_ylabel():
        ax.set_ylabel("density")


def _draw_reliability(ax: Axes, series: list[Mapping[str, Any]]) -> None:
    s = series[0]
    x, y = _xy(s, 0)
    ax.plot([0, 1], [0, 1], ls="--", color="#9ca3af", lw=1, label="perfect calibration")
    if s.get("count") is not None:
        count = _floats(s.get("count"), "series 0 count")
        if len(count) == len(x):
            twin = ax.twinx()
            twin.bar(x, count, width=0.8 / max(len(x), 1), color="#d1d5db", alpha=0.5, zorder=0)
            twin.set_ylabel("samples", fontsize=8, color="#6b7280")
            twin.tick_params(labelsize=8, colors="#6b7280")
            ax.set_zorder(twin.get_zorder() + 1)
            ax.patch.set_visible(False)
    ax.plot(x, y, marker="o", ms=4, lw=1.6, color=_COLORS[0], label=_text(s.get("label")) or "model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if not ax.get_xlabel():
        ax.set_xlabel("confidence")
    if not ax.get_ylabel():
        ax.set_ylabel("accuracy")


def _draw_scatter(ax: Axes, series: list[Mapping[str, Any]]) -> None:
    for i, s in enumerate(series):
        x, y = _xy(s, i)
        color = _COLORS[i % len(_COLORS)]
        ax.scatter(x, y, s=18, color=color, label=_text(s.get("label")), zorder=3)
        if s.get("line"):
            order = sorted(range(len(x)), key=lambda k: x[k])
            ax.plot([x[k] for k in order], [y[k] for k in order], color=color, lw=1.2, zorder=2)
        texts = s.get("text")
        if (
            isinstance(texts, Sequence)
            and not isinstance(texts, (str, bytes))
            and len(texts) == len(x)
            and len(x) <= 40
        ):
            for xi, yi, t in zip(x, y, texts):
                ax.annotate(_text(t)[:24], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")


def _draw_heatmap(ax: Axes, series: list[Mapping[str, Any]]) -> None:
    s = series[0]
    z: Any = s.get("z")
    if hasattr(z, "tolist"):
        z = z.tolist()
    if (
        not isinstance(z, Sequence)
        or not z
        or not all(isinstance(r, Sequence) and not isinstance(r, (str, bytes)) for r in z)
    ):
        raise PlotSpecError("heatmap: expected 'z' as a non-empty 2-D list of numbers")
    rows = [_floats(r, f"heatmap row {i}") for i, r in enumerate(z)]
    if len({len(r) for r in rows}) != 1 or not rows[0]:
        raise PlotSpecError("heatmap: expected every row of 'z' to have the same, non-zero length")
    arr = np.asarray(rows)
    im = ax.imshow(arr, aspect="auto", cmap="viridis", origin="upper")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    for axis, key, n in ((ax.set_xticks, "x", arr.shape[1]), (ax.set_yticks, "y", arr.shape[0])):
        labels = s.get(key)
        if isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)) and len(labels) == n and n <= 40:
            axis(range(n), [_text(str(v))[:12] for v in labels], fontsize=7)
    if s.get("annotate") and arr.size <= 144:
        finite = arr[np.isfinite(arr)]
        mid = float(finite.mean()) if finite.size else 0.0
        for (r, c), v in np.ndenumerate(arr):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white" if v < mid else "black")
    ax.grid(False)


_DRAW = {
    "line": _draw_line,
    "bar": _draw_bar,
    "hist": _draw_hist,
    "reliability": _draw_reliability,
    "scatter": _draw_scatter,
    "heatmap": _draw_heatmap,
}


_drawn: dict[str, str] = {}  # spec key -> SVG, in this process


@functools.cache
def _style() -> str:
    """What else an SVG depends on: this module's code and matplotlib's version."""
    try:
        mpl = importlib.metadata.version("matplotlib")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - matplotlib is a dependency
        mpl = "?"
    return hashlib.sha256(Path(__file__).read_bytes() + mpl.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(type(value).__name__)


def _key(spec: Any) -> str | None:
    """The cache key of a spec (``None``: not plain data, not cached)."""
    try:
        text = json.dumps(spec, sort_keys=True, default=_plain)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256((_style() + text).encode()).hexdigest()


def _cache_path(key: str) -> Path:
    return default_cache_dir() / "plots" / key[:2] / f"{key}.svg"


def _read(key: str) -> str | None:
    try:
        return _cache_path(key).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _keep(key: str, svg: str) -> None:
    _drawn[key] = svg
    try:
        with atomic_path(_cache_path(key)) as tmp:
            tmp.write_text(svg, encoding="utf-8")
    except OSError:  # a read-only cache only costs time
        pass


def _draw_or_none(spec: Mapping[str, Any]) -> str | None:
    try:
        return _render(spec)
    except Exception:  # plot_to_svg raises it again, with the message the report shows
        return None


def prerender(specs: Sequence[Any]) -> None:
    """Draw the specs not drawn yet on several forked processes, for :func:`plot_to_svg` to return.

    Runs in this process only when it has other threads (forking them is unsafe) or one CPU.
    """
    todo: dict[str, Any] = {}
    for spec in specs:
        key = _key(spec) if isinstance(spec, Mapping) else None
        if key is None or key in _drawn or key in todo:
            continue
        cached = _read(key)
        if cached is not None:
            _drawn[key] = cached
        else:
            todo[key] = spec
    workers = default_workers() if threading.active_count() == 1 else 1
    if workers < 2 or len(todo) < 2:
        return
    import matplotlib.backends.backend_svg  # imported once, before the workers fork
    import matplotlib.figure  # noqa: F401

    for key, svg in zip(todo, run_tasks(list(todo.values()), _draw_or_none, workers=workers)):
        if svg is not None:
            _keep(key, svg)


def plot_to_svg(spec: Mapping[str, Any]) -> str:
    """Render one plot spec to an inline ``<svg>`` string (no XML prolog), or return the one kept.

    Args:
        spec: A plot spec as described in the module docstring.

    Returns:
        The SVG markup, starting with ``<svg``.

    Raises:
        PlotSpecError: If the spec is malformed (unknown kind, no series, bad numbers).
    """
    key = _key(spec)
    if key is None:
        return _render(spec)
    svg = _drawn.get(key)
    if svg is None:
        svg = _read(key)
        if svg is None:
            svg = _render(spec)
            _keep(key, svg)
        _drawn[key] = svg
    return svg


def _render(spec: Mapping[str, Any]) -> str:
    if not isinstance(spec, Mapping):
        raise PlotSpecError(f"expected a dict, found {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _DRAW:
        raise PlotSpecError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    series = _series(spec)

    import matplotlib

    with matplotlib.rc_context(_RC):  # type: ignore[arg-type]
        svg = _draw(kind, spec, series)
    svg = _METADATA.sub("", _PROLOG.sub("", svg, count=1), count=1)
    return _drop_unused_ids(svg).strip()


def _drop_unused_ids(svg: str) -> str:
    """Remove matplotlib's fixed ids (``figure_1``, ``axes_1``...) that would repeat across
    the inline SVGs of one page; keep the hashed ids that clip paths and markers use."""
    used = set(_REF.findall(svg))
    return _ID.sub(lambda m: m.group(0) if m.group(1) in used else "", svg)


def _draw(kind: str, spec: Mapping[str, Any], series: list[Mapping[str, Any]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE, dpi=100)
    ax = fig.add_subplot()
    ax.set_title(_text(spec.get("title")), fontsize=10, loc="left")
    ax.set_xlabel(_text(spec.get("xlabel")), fontsize=9)
    ax.set_ylabel(_text(spec.get("ylabel")), fontsize=9)
    ax.grid(True, color="#e5e7eb", lw=0.6)
    _DRAW[kind](ax, series)
    for setter, key in ((ax.set_xscale, "xscale"), (ax.set_yscale, "yscale")):
        if spec.get(key) in ("log", "symlog"):
            setter(spec[key])
    ax.tick_params(labelsize=8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(ax.get_legend_handles_labels()[1]) > 1:  # one series needs no legend: the title names it
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()
