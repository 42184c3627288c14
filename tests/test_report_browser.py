"""The HTML report in a real browser (headless chromium): it loads cleanly, shows all 31 ids, no table overflows."""

from __future__ import annotations

import pytest

from dlclinic.report import write_report
from dlclinic.taxonomy import CHALLENGES
from helpers_browser import chromium_binary, load_page, screenshot, table_fit
from helpers_report import synthetic_case, synthetic_report, wide_report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_binary() is None, reason="needs chromium on PATH"),
]


def test_console_detection_works(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><p>x</p><script>console.error('deliberate'); missing_fn();</script>")
    console = load_page(page, tmp_path / "profile").console
    assert any("deliberate" in line for line in console)
    assert any("Uncaught ReferenceError" in line for line in console)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    case = synthetic_case()
    out = tmp_path_factory.mktemp("report")
    return write_report(synthetic_report(case), out, case=case)


def test_report_loads_without_console_errors(written, tmp_path):
    page = load_page(written["html"], tmp_path / "profile")
    assert page.console == []
    assert "</main>" in page.dom
    for challenge in CHALLENGES:
        assert f'id="{challenge.id}"' in page.dom
        assert challenge.id in page.dom


def test_screenshot(written, tmp_path):
    png = screenshot(written["html"], tmp_path / "report.png", tmp_path / "profile")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    case = synthetic_case()
    out = tmp_path_factory.mktemp("wide")
    return write_report(wide_report(case), out, case=case)


def test_no_table_overflows_its_card_at_1280px(wide, tmp_path):
    fit = table_fit(wide["html"], tmp_path / "profile", width=1280)
    assert fit.width == 1280
    quantity = [t for t in fit.tables if t["card"] == "data.quantity"]
    assert any(t["head"] == "metric | value | threshold" for t in quantity)  # the 22-metric table
    assert len(fit.tables) >= 20  # metrics, thresholds, findings with their rows, data tables, treatments, environment
    assert fit.overflowing == []
