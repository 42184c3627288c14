"""Tests of dlclinic.report: JSON contract, self-contained HTML, atomic writes, terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlclinic.report as report_pkg
import dlclinic.report.files as report_files
from dlclinic.core.errors import ConfigError
from dlclinic.core.results import Report, sequence_of_results
from dlclinic.report import render_html, render_json, render_terminal, write_report
from dlclinic.report.plots import PlotSpecError, plot_to_svg
from dlclinic.report.thumbnails import png_data_uri, thumbnails
from dlclinic.taxonomy import CHALLENGES
from helpers_report import HOSTILE, synthetic_case, synthetic_report

IDS = [c.id for c in CHALLENGES]


def schema_path() -> Path:
    """The shared JSON schema: ``shared/`` next to the repository (``<repo>/../shared``) or inside it."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "shared", here.parents[2].parent / "shared", here.parents[1] / "shared"]
    return next(
        (c / "report.schema.json" for c in candidates if (c / "report.schema.json").exists()),
        candidates[0] / "report.schema.json",
    )


@pytest.fixture(scope="module")
def case():
    return synthetic_case()


@pytest.fixture(scope="module")
def report(case):
    return synthetic_report(case)


@pytest.fixture(scope="module")
def html(report, case):
    return render_html(report, case=case)


def test_public_api_is_pinned():
    assert report_pkg.__all__ == sorted(report_pkg.__all__)
    assert report_pkg.__all__ == ["render_html", "render_json", "render_terminal", "write_report"]


def test_import_is_light():
    code = (
        "import sys, dlclinic; before = set(sys.modules); import dlclinic.report; "
        "print(sorted(m.split('.')[0] for m in set(sys.modules) - before "
        "if m.split('.')[0] in ('matplotlib', 'jinja2', 'rich', 'PIL', 'numpy', 'torch')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.stdout.strip() == "[]"


def test_json_validates_against_schema(report):
    path = schema_path()
    if not path.exists():
        pytest.skip(f"schema not found at {path}")
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads(render_json(report))
    jsonschema.validate(data, json.loads(path.read_text()))
    assert [c["id"] for c in data["challenges"]] == IDS
    assert data["challenges"][IDS.index("data.quality")]["findings"][0]["extra"]["method"] == "confident learning"


def test_json_is_strict(report):
    text = render_json(report)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["treatments"][0]["after_status"] == "ok"


def test_html_lists_all_31_challenges(html):
    for cid in IDS:
        assert f'id="{cid}"' in html
        assert cid in html
    for c in CHALLENGES:
        assert c.title.replace("&", "&amp;") in html
    positions = [html.index(f'id="{cid}"') for cid in IDS]
    assert positions == sorted(positions)


def test_html_is_self_contained(html):
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", html, re.IGNORECASE)
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()
    assert "@import" not in html


def test_html_has_plots_and_thumbnails(html):
    assert html.count("<svg") == 5  # hist, reliability, bar, line, and the hostile-title line
    assert html.count("data:image/png;base64,") == 8
    assert "#0 given grad-x" in html
    assert "<?xml" not in html


def test_html_escapes_user_data(html):
    assert HOSTILE not in html
    assert "&lt;script&gt;" in html
    assert "synthetic &lt;digits&gt;" in html


def test_html_notes_bad_specs_instead_of_crashing(html):
    assert "plot (untitled) skipped: unknown kind &#39;pie&#39;" in html
    assert "plot empty skipped" in html
    assert "images bad split skipped" in html


def test_html_shows_metrics_thresholds_findings_and_remedies(html):
    assert "≤ 0.05" in html  # max_label_issue_fraction matched to label_issue_fraction
    assert "warn 0.02" in html  # warn_label_issue_fraction
    assert '<span class="lim">warn 0.05</span> · <span class="lim">fail 0.15</span>' in html  # ece.warn, ece.fail
    assert "min_confidence" in html  # a threshold that matches no metric is listed on its own
    assert "#0 <i>0.01</i>" in html
    assert "dlclinic treat data.quality --case case.py --out out/" in html
    assert "dlclinic treat ethics.fairness --reweight" in html
    assert "1.23 s" in html
    assert "Treatments" in html and "drop 12 flagged rows and retrain" in html
    assert "ignored_key" not in html


def test_html_without_case_skips_thumbnails(report):
    assert "data:image/png" not in render_html(report)


def test_html_of_a_bare_report():
    bare = Report("0.1.0", "2024-01-01T00:00:00Z", {}, sequence_of_results([]))
    out = render_html(bare)
    assert all(cid in out for cid in IDS)


def test_write_report(tmp_path, report, case):
    paths = write_report(report, tmp_path / "out", case=case)
    assert set(paths) == {"json", "html", "manifest"}
    assert json.loads(paths["json"].read_text())["schema"] == "dlclinic.report/1"
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")
    manifest = json.loads(paths["manifest"].read_text())
    assert {"command", "packages", "hardware", "hashes"} <= set(manifest)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "report.html", "report.json"]


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def test_write_report_leaves_nothing_when_rendering_fails(tmp_path, report, monkeypatch):
    monkeypatch.setattr(report_files, "render_html", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        write_report(report, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_write_report_keeps_previous_report_when_rendering_fails(tmp_path, report, monkeypatch):
    (tmp_path / "report.json").write_text("previous")
    monkeypatch.setattr(report_files, "render_html", _boom)
    with pytest.raises(RuntimeError):
        write_report(report, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert (tmp_path / "report.json").read_text() == "previous"


def test_write_report_cleans_up_when_writing_fails(tmp_path, report, monkeypatch):
    (tmp_path / "report.json").write_text("previous")

    def fail_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_files.os, "replace", fail_replace)
    with pytest.raises(ConfigError, match="writable directory"):
        write_report(report, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert (tmp_path / "report.json").read_text() == "previous"


def test_terminal(report):
    from rich.console import Console

    console = Console(record=True, width=120, file=io.StringIO())
    render_terminal(report, console)
    text = console.export_text()
    lines = text.splitlines()
    assert len(lines) <= 40
    examined = [r.id for r in report.challenges if r.status != "not_examined"]
    assert all(cid in text for cid in examined)
    assert "data.privacy" not in text
    assert "24 not examined" in text and "1 fail" in text and "3 warn" in text
    assert "dlclinic treat data.quality --case case.py --out out/" in text
    assert HOSTILE[:8] in text  # printed literally, not parsed as markup


def test_terminal_treats_summaries_as_text():
    from rich.console import Console

    from dlclinic.core.results import CheckResult

    bare = Report(
        "0.1.0", "now", {"name": "x"}, sequence_of_results([CheckResult("data.quality", "ok", "[bold]fine[/bold]")])
    )
    console = Console(record=True, width=100, file=io.StringIO())
    render_terminal(bare, console)
    assert "[bold]fine[/bold]" in console.export_text()


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "line", "series": [{"label": "a", "y": [1, 2, None, 3]}]},
        {
            "kind": "bar",
            "series": [{"label": "a", "x": ["cat", "dog"], "y": [1, 2]}, {"label": "b", "x": ["dog"], "y": [3]}],
        },
        {"kind": "hist", "series": [{"label": "a", "values": [1.0] * 5}]},
        {"kind": "hist", "series": [{"label": "a", "values": np.random.default_rng(0).normal(size=500)}]},
        {"kind": "reliability", "series": [{"x": [0.5], "y": [0.4]}]},
        {"kind": "reliability", "series": [{"x": [None, 0.3, 0.9], "y": [None, 0.2, 0.95], "count": [0, 4, 9]}]},
        {"kind": "line", "title": "price in $ and $x^2$", "series": [{"x": [0, 1], "y": [0, 1]}]},
    ],
)
def test_plot_kinds(spec):
    svg = plot_to_svg(spec)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'id="figure_1"' not in svg


@pytest.mark.parametrize(
    "spec",
    [
        None,
        {},
        {"kind": "pie", "series": [{"x": [1], "y": [1]}]},
        {"kind": "line", "series": []},
        {"kind": "line", "series": [{"x": [1, 2], "y": [1]}]},
        {"kind": "line", "series": [{"y": ["a"]}]},
        {"kind": "hist", "series": [{"values": []}]},
        {"kind": "hist", "series": [{"values": [float("nan")]}]},
    ],
)
def test_bad_plot_specs_raise(spec):
    with pytest.raises(PlotSpecError):
        plot_to_svg(spec)


@pytest.mark.parametrize("shape", [(8, 8), (1, 8, 8), (3, 8, 8), (8, 8, 3), (3, 200, 100), (2, 8, 8)])
def test_png_data_uri_shapes(shape):
    import base64
    import io

    from PIL import Image

    uri = png_data_uri(np.random.default_rng(0).random(shape).astype("float32"))
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert 40 <= max(img.size) <= 112


def test_png_of_constant_image():
    assert png_data_uri(np.full((4, 4), np.nan)).startswith("data:image/png")


def test_thumbnails_need_an_image_case(case):
    spec = {"split": "train", "indices": [0, 1]}
    assert len(thumbnails(spec, case)) == 2
    assert thumbnails(spec, None) == []
    with pytest.raises(ValueError, match="row in 0..59"):
        thumbnails({"split": "train", "indices": [99]}, case)


def test_terminal_stays_short_when_everything_needs_treatment():
    from rich.console import Console

    from dlclinic.core.results import CheckResult, Remedy

    results = [
        CheckResult(c.id, "warn", "something to fix " * 10, remedy=Remedy(f"dlclinic treat {c.id}", "fix"))
        for c in CHALLENGES
    ]
    console = Console(record=True, width=100, file=io.StringIO())
    render_terminal(Report("0.1.0", "now", {"name": "x"}, tuple(results)), console)
    lines = console.export_text().splitlines()
    # each challenge takes at most 1 + 3 lines (its summary's first sentence is wrapped, never cut mid-number),
    # then the counts and the first 5 remedy commands: bounded whatever the summaries say
    assert len(lines) <= 1 + 4 * len(CHALLENGES) + 1 + 6
    assert all(any(line.startswith(c.id) for line in lines) for c in CHALLENGES)
    assert "26 more remedies" in lines[-1]


def test_long_line_plots_are_thinned():
    svg = plot_to_svg(
        {"kind": "line", "series": [{"x": list(range(50_000)), "y": [float(i % 7) for i in range(50_000)]}]}
    )
    assert len(svg) < 200_000


def test_terminal_keeps_ids_and_statuses_on_a_narrow_console(report):
    from rich.console import Console

    console = Console(record=True, width=80, file=io.StringIO())
    render_terminal(report, console)
    rows = {
        line.split()[0]: line.split()[1]
        for line in console.export_text().splitlines()
        if line.startswith(("data.", "ethics.", "deployment."))
    }
    assert rows["data.quality"] == "fail"
    assert rows["data.generalization"] == "ok"
    assert rows["deployment.drift"] == "warn"
