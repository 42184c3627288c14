"""dlclinic.monitoring: window statistics, planted drift found in the right window, quiet on stationary streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlclinic.core.errors import ConfigError, InputError
from dlclinic.monitoring import (
    MonitorConfig,
    Reference,
    alert_thresholds,
    chi2_shift,
    estimate_accuracy_cbpe,
    evaluate_stream,
    fit_temperature,
    psi,
    softmax,
    windows_by_count,
    windows_by_time,
)
from dlclinic.monitoring.windows import _holm

K, D = 4, 6
CENTRES = np.random.default_rng(42).normal(0, 2.0, size=(K, D))


def _gen(n: int, *, contrast: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings around class centres, logits from a fixed linear head; lower contrast = harder, less confident."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    emb = contrast * CENTRES[y] + rng.normal(0, 1.0, (n, D))
    logits = emb @ CENTRES.T / 2.0
    return logits, emb, y


@pytest.fixture(scope="module")
def reference() -> Reference:
    logits, emb, y = _gen(600, seed=1)
    return Reference.build(logits, y, emb)


def test_psi_chi2_and_cbpe_basics() -> None:
    assert psi(np.array([30, 30, 40]), np.array([30, 30, 40])) == pytest.approx(0.0)
    assert psi(np.array([50, 50]), np.array([95, 5])) > 0.5
    assert chi2_shift(np.array([100, 100]), np.array([100, 100]))[1] > 0.9
    assert chi2_shift(np.array([100, 100]), np.array([180, 20]))[1] < 1e-6
    est = estimate_accuracy_cbpe(np.array([[0.9, 0.1], [0.6, 0.4]]))
    assert est.accuracy == pytest.approx(0.75) and est.n == 2 and est.ci[0] < 0.75 < est.ci[1]


def test_holm_is_monotone_and_capped() -> None:
    adj = _holm([0.01, 0.04, 0.03, 0.5])
    assert adj.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_temperature_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    logits = 8.0 * np.eye(3)[y] + rng.normal(0, 5, (2000, 3))  # over-confident for its accuracy
    t = fit_temperature(logits, y)
    assert t > 1.2
    acc = float((logits.argmax(1) == y).mean())
    assert abs(estimate_accuracy_cbpe(softmax(logits, t)).accuracy - acc) < abs(
        estimate_accuracy_cbpe(softmax(logits)).accuracy - acc
    )


def test_windows_by_count_and_time() -> None:
    assert [len(w) for w in windows_by_count(250, 100, min_size=60)] == [100, 150]
    assert [len(w) for w in windows_by_count(250, 100, min_size=10)] == [100, 100, 50]
    t = np.array([0.0, 1, 2, 61, 62, 130])
    assert [w.tolist() for w in windows_by_time(t, 60)] == [[0, 1, 2], [3, 4], [5]]
    with pytest.raises(ConfigError, match="window >= 2"):
        MonitorConfig(window=1)


def test_planted_shift_alerts_in_the_right_window_with_a_cbpe_drop(reference: Reference) -> None:
    clean = _gen(300, seed=2)
    shifted = _gen(300, contrast=0.15, seed=3)  # washed-out inputs from window 3 on
    logits = np.concatenate([clean[0], shifted[0]])
    emb = np.concatenate([clean[1], shifted[1]])
    labels = np.concatenate([clean[2], shifted[2]])
    labels[::2] = -1  # labels fed back for half the rows
    res = evaluate_stream(reference, softmax(logits), embeddings=emb, labels=labels, config=MonitorConfig(window=100))
    assert [w.status for w in res.windows[:3]] == ["ok", "ok", "ok"]
    assert res.first_alert == 3
    assert all(w.status == "fail" for w in res.windows[3:])
    w = res.windows[4]
    assert w.drifted and w.adjusted["mmd"] < 0.01
    assert w.estimated_drop > 0.10 and any("CBPE" in r for r in w.reasons)
    assert w.accuracy is not None and w.accuracy_n == 50 and w.accuracy < reference.accuracy - 0.1  # type: ignore[operator]


def test_stationary_streams_raise_no_alert(reference: Reference) -> None:
    # 12 stationary streams of 6 windows; family-wise level 1 %: expect ~0.1 false alarms in total
    alarms = 0
    for seed in range(12):
        logits, emb, y = _gen(600, seed=100 + seed)
        res = evaluate_stream(
            reference, softmax(logits), embeddings=emb if seed < 1 else None, labels=y, config=MonitorConfig(window=100)
        )
        alarms += res.status != "ok"
    assert alarms <= 1


def test_time_windows_need_times(reference: Reference) -> None:
    logits, _, _ = _gen(200, seed=5)
    with pytest.raises(InputError, match="times"):
        evaluate_stream(reference, softmax(logits), config=MonitorConfig(window_seconds=60))
    res = evaluate_stream(
        reference, softmax(logits), times=np.arange(200.0), config=MonitorConfig(window_seconds=50, min_window=10)
    )
    assert len(res.windows) == 4 and res.windows[1].t_start == 50.0


def test_wrong_class_count_is_refused(reference: Reference) -> None:
    with pytest.raises(InputError, match=f"N×{K}"):
        evaluate_stream(reference, np.full((10, K + 1), 1.0 / (K + 1)))


def test_alert_thresholds_match_the_null(reference: Reference) -> None:
    thr = alert_thresholds(reference, 100, alpha=0.05, resamples=400)
    assert 0 < thr.psi < 0.5 and thr.min_detectable_drop > 0
    # stationary windows exceed the PSI quantile at about the nominal rate
    raw = softmax(reference.logits)
    counts = np.bincount(raw.argmax(1), minlength=K)
    over = 0
    for seed in range(100):
        logits, _, _ = _gen(100, seed=1000 + seed)
        over += psi(counts, np.bincount(logits.argmax(1), minlength=K)) > thr.psi
    assert over <= 15


def test_reference_roundtrip(tmp_path: Path, reference: Reference) -> None:
    path = reference.save(tmp_path / "ref.npz")
    back = Reference.load(path)
    assert back.temperature == pytest.approx(reference.temperature)
    np.testing.assert_array_equal(back.logits, reference.logits)
    assert back.labels is not None and back.embeddings is not None and back.class_names == reference.class_names
    with pytest.raises(InputError, match="not found"):
        Reference.load(tmp_path / "missing.npz")
