"""The /dashboard page in headless Chromium: loads, no console errors, shows the windows and charts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers_browser import chromium_binary, load_page, screenshot

pytest.importorskip("fastapi")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_binary() is None, reason="needs chromium on PATH"),
]


class _Backend:
    """A fake classifier whose confidence falls after the 150th row (a drifting stream)."""

    name = "fake"
    input_shape = (4,)
    n_classes = 3

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        logits = np.stack([x[:, 0], x[:, 1], x[:, 2]], axis=1) * x[:, 3:4]
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32), None


def test_dashboard_renders_windows_without_console_errors(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from dlclinic.monitoring import Reference
    from dlclinic.serve.app import ServeConfig, create_app

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    sharp = np.eye(3)[y] * 4 + rng.normal(0, 1, (300, 3))
    reference = Reference.build(sharp, y)
    app = create_app(_Backend(), reference=reference, config=ServeConfig(window=50))
    stream = np.concatenate(
        [np.eye(3)[rng.integers(0, 3, 300)] * 4 + rng.normal(0, 1, (300, 3)), np.ones((300, 1))], axis=1
    )
    stream[150:, 3] = 0.2  # washed-out logits: confidence and estimated accuracy fall
    with TestClient(app) as client:
        for i in range(0, 300, 25):
            assert client.post("/predict", json={"inputs": stream[i : i + 25].tolist()}).status_code == 200
        app.state.dlclinic.monitor.wait()
        page = client.get("/dashboard").text
    html = tmp_path / "dashboard.html"
    html.write_text(page)
    loaded = load_page(html, tmp_path / "profile")
    assert not loaded.console, loaded.console
    assert loaded.dom.count('<tr class="ok">') == 3
    assert loaded.dom.count('<tr class="warn">') + loaded.dom.count('<tr class="fail">') == 3
    assert (
        loaded.dom.count("<svg") == 3 and "not measured: this backend gives no embeddings" in loaded.dom
    )  # no MMD without embeddings
    assert screenshot(html, tmp_path / "dashboard.png", tmp_path / "profile2", size=(1200, 900)).stat().st_size > 10_000
