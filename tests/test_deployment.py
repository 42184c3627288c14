"""deployment.* checks on small synthetic cases, and the serve/monitor/predict commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dlclinic
from conftest import blobs
from dlclinic import Case, FitConfig

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

FAST = FitConfig(epochs=4, batch_size=64)
D, K = 8, 3


def _splits(shift_from: int | None) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    x, y = blobs(450, d=D, k=K, sep=3.0, seed=0)
    xt, yt = blobs(300, d=D, k=K, sep=3.0, seed=1)
    xd, yd = blobs(400, d=D, k=K, sep=3.0, seed=2)
    if shift_from is not None:
        rng = np.random.default_rng(3)
        xd[shift_from:] = 0.1 * xd[shift_from:] + rng.normal(0, 0.5, xd[shift_from:].shape).astype(
            np.float32
        )  # washed-out, noisy inputs
    return (x, y), (xt, yt), (xd, yd)


_NET: list[Any] = []


def _net() -> Any:
    """A small MLP trained once on the (shared) train split; the same weights serve every test."""
    if not _NET:
        import torch

        from dlclinic.core.recipe import fit

        (x, y), _, _ = _splits(None)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, K))
        _NET.append(fit(net, x, y, FAST).model)
    return _NET[0]


def _case(shift_from: int | None) -> Case:
    train, test, deploy = _splits(shift_from)
    return Case.from_arrays(train, test, deploy, model=_net())


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-cache")


def _run(case: Case, cache: Path, only: list[str], **options: Any) -> Any:
    return dlclinic.checkup(case, only=only, fit_config=FAST, cache_dir=cache, options=options or None)


def test_drift_alerts_in_the_window_where_the_shift_starts(cache: Path) -> None:
    res = _run(_case(shift_from=200), cache, ["deployment.drift"], **{"deployment.drift": {"window": 100}})[
        "deployment.drift"
    ]
    assert res.status == "fail", res.summary
    assert res.metrics["first_alert_window"] == 2 and res.metrics["windows"] == 4
    windows = res.details["windows"]
    assert [w["status"] for w in windows] == ["ok", "ok", "fail", "fail"]
    assert res.metrics["max_estimated_drop"] > 0.1 and res.metrics["min_observed_accuracy"] < 0.8
    assert any("CBPE" in f.message for f in res.findings)
    assert res.remedy is not None and "retrain" in res.remedy.description


def test_drift_stays_quiet_on_a_stationary_deploy_stream(cache: Path) -> None:
    res = _run(_case(shift_from=None), cache, ["deployment.drift"], **{"deployment.drift": {"window": 100}})[
        "deployment.drift"
    ]
    assert res.status == "ok", res.summary
    assert res.metrics["alert_windows"] == 0


def test_drift_needs_a_deploy_split(cache: Path) -> None:
    x, y = blobs(200, d=D, k=K)
    res = _run(Case.from_arrays((x, y), (x, y)), cache, ["deployment.drift"])["deployment.drift"]
    assert res.status == "not_examined" and "--deploy" in res.summary


def test_integration_monitoring_and_scalability_on_a_small_case(cache: Path) -> None:
    pytest.importorskip("onnxruntime")
    rep = _run(
        _case(shift_from=None),
        cache,
        ["deployment.integration", "deployment.monitoring", "deployment.scalability"],
        **{"deployment.scalability": {"requests": 40, "time_limit": 0.5, "batch_sizes": "1,16"}},
    )
    integ = rep["deployment.integration"]
    assert integ.status == "ok", integ.summary
    assert integ.metrics["served_max_abs_prob_diff"] < 1e-5 and integ.metrics["openapi_problems"] == 0
    assert integ.metrics["onnx_max_abs_logit_diff"] < 1e-3 and integ.metrics["malformed_status"] == 422
    mon = rep["deployment.monitoring"]
    assert mon.status in ("ok", "warn"), mon.summary
    assert mon.metrics["logged_rows"] == mon.metrics["expected_rows"] and mon.metrics["duplicate_rows"] == 0
    assert mon.metrics["metrics_series_missing"] == 0 and mon.metrics["feedback_labels_joined"] == 10
    assert 0 < mon.metrics["min_detectable_accuracy_drop"] < 0.5
    scal = rep["deployment.scalability"]
    assert scal.status in ("ok", "warn"), scal.summary
    assert scal.metrics["rows_per_s_c8_batched"] > 0 and scal.metrics["mean_batch_rows"] >= 1
    assert {"model_rows_per_s_batch1", "model_rows_per_s_batch16"} <= set(scal.metrics)


def test_monitoring_warns_when_windows_are_too_small_to_see_a_drop(cache: Path) -> None:
    x, y = blobs(300, d=D, k=K, sep=1.0, seed=0)  # a hard task: accuracy far from 1, so small windows are noisy
    xt, yt = blobs(200, d=D, k=K, sep=1.0, seed=1)
    hard = Case.from_arrays((x, y), (xt, yt))
    res = _run(hard, cache, ["deployment.monitoring"], **{"deployment.monitoring": {"window": 10, "rows": 40}})[
        "deployment.monitoring"
    ]
    assert res.status == "warn" and any(f.code == "blind_windows" for f in res.findings)


def _serve_files(tmp_path: Path, shift_from: int | None) -> dict[str, Any]:
    """A model file, weights and splits on disk, a served stream logged through the app."""
    from fastapi.testclient import TestClient
    from safetensors.torch import save_file

    from dlclinic.core.inference import predict_logits
    from dlclinic.monitoring import Reference
    from dlclinic.serve.app import ServeConfig, create_app
    from dlclinic.serve.backends import TorchBackend
    from dlclinic.serve.store import PredictionStore

    (tmp_path / "net.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))\n"
    )
    case = _case(shift_from)
    model = case.model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "net.safetensors"))
    test, deploy = case.splits["test"], case.splits["deploy"]
    np.savez(tmp_path / "deploy.npz", x=deploy.x)
    backend = TorchBackend(model, (D,), K)
    ref = Reference.build(predict_logits(model, test.x), test.y, backend.predict(test.x)[1])
    ref.save(tmp_path / "reference.npz")
    store = PredictionStore(tmp_path / "log.db")
    with TestClient(create_app(backend, reference=ref, store=store, config=ServeConfig())) as client:
        for i in range(0, len(deploy.x), 25):
            assert (
                client.post(
                    "/predict", json={"inputs": deploy.x[i : i + 25].tolist(), "request_id": f"d{i}"}
                ).status_code
                == 200
            )
    return {"model": model, "deploy": deploy.x}


@pytest.mark.parametrize("shift_from, code", [(200, 1), (None, 0)])
def test_monitor_command_exits_nonzero_on_an_alert(tmp_path: Path, shift_from: int | None, code: int) -> None:
    from dlclinic.cli.monitor import run_monitor

    _serve_files(tmp_path, shift_from)
    rc = run_monitor(
        store=str(tmp_path / "log.db"), reference=tmp_path / "reference.npz", out=tmp_path / "mon", window=100
    )
    assert rc == code
    report = json.loads((tmp_path / "mon" / "report.json").read_text())
    rows = {c["id"]: c for c in report["challenges"]}
    assert rows["deployment.monitoring"]["status"] == "ok" and rows["deployment.monitoring"]["metrics"]["rows"] == 400
    assert rows["deployment.drift"]["status"] == ("ok" if code == 0 else "fail")
    if code:
        assert rows["deployment.drift"]["metrics"]["first_alert_window"] == 2
    assert (tmp_path / "mon" / "report.html").exists()


def test_cli_predict_and_monitor(tmp_path: Path) -> None:
    import pandas as pd

    from dlclinic.cli import main
    from dlclinic.serve.backends import TorchBackend

    files = _serve_files(tmp_path, 200)
    rc = main(
        [
            "predict",
            str(tmp_path / "deploy.npz"),
            "--model",
            f"{tmp_path / 'net.py'}:build",
            "--weights",
            str(tmp_path / "net.safetensors"),
            "--out",
            str(tmp_path / "scored.csv"),
            "--batch-size",
            "64",
        ]
    )
    assert rc == 0
    scored = pd.read_csv(tmp_path / "scored.csv")
    expected = TorchBackend(files["model"], (D,), K).predict(files["deploy"])[0]
    np.testing.assert_allclose(scored[["p_0", "p_1", "p_2"]].to_numpy(), expected, atol=1e-5)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "monitor",
                "--store",
                str(tmp_path / "log.db"),
                "--reference",
                str(tmp_path / "reference.npz"),
                "--out",
                str(tmp_path / "m"),
                "--window",
                "100",
                "-q",
            ]
        )
    assert exc.value.code == 1
    assert (
        main(
            [
                "monitor",
                "--store",
                str(tmp_path / "log.db"),
                "--reference",
                str(tmp_path / "reference.npz"),
                "--out",
                str(tmp_path / "m2"),
                "--window",
                "100",
                "-q",
                "--fail-on",
                "never",
            ]
        )
        == 0
    )
    assert main(["predict", str(tmp_path / "missing.npz"), "--model", f"{tmp_path / 'net.py'}:build"]) == 2
    assert main(["monitor", "--store", str(tmp_path / "log.db"), "--reference", str(tmp_path / "nope.npz")]) == 2


@pytest.mark.slow
def test_serve_command_with_two_workers_and_sigterm(tmp_path: Path) -> None:
    """`dlclinic serve --workers 2` as a real process: both workers answer, SIGTERM drains, the log is intact."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from dlclinic.serve.store import PredictionStore

    _serve_files(tmp_path, None)
    case = _case(None)
    np.savez(tmp_path / "train.npz", x=case.train.x, y=case.train.y)
    np.savez(tmp_path / "test.npz", x=case.splits["test"].x, y=case.splits["test"].y)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "dlclinic.cli",
        "serve",
        "--train",
        str(tmp_path / "train.npz"),
        "--test",
        str(tmp_path / "test.npz"),
        "--model",
        f"{tmp_path / 'net.py'}:build",
        "--weights",
        str(tmp_path / "net.safetensors"),
        "--out",
        str(tmp_path / "srv"),
        "--port",
        str(port),
        "--workers",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {**os.environ, "DLCLINIC_SERVE_TOKEN": "tok"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while True:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.5)
            x = case.splits["test"].x
            for i in range(40):
                r = client.post(
                    "/predict",
                    json={"inputs": x[i : i + 1].tolist(), "request_id": f"w{i}"},
                    headers={"Authorization": "Bearer tok"},
                )
                assert r.status_code == 200
            assert client.post("/predict", json={"inputs": x[:1].tolist()}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    store = PredictionStore(tmp_path / "srv" / "predictions.db")
    assert store.count() == 40 and store.integrity_check()["ok"]
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("sync_log", [True, False])
def test_kill_9_under_load_leaves_an_intact_log(tmp_path: Path, sync_log: bool) -> None:
    """kill -9 mid-load: no duplicated or corrupt row; with --sync-log no acknowledged prediction is lost."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time

    import httpx

    from dlclinic.serve.store import PredictionStore

    _serve_files(tmp_path, None)
    case = _case(None)
    np.savez(tmp_path / "train.npz", x=case.train.x, y=case.train.y)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "dlclinic.cli",
        "serve",
        "--train",
        str(tmp_path / "train.npz"),
        "--model",
        f"{tmp_path / 'net.py'}:build",
        "--weights",
        str(tmp_path / "net.safetensors"),
        "--out",
        str(tmp_path / "srv"),
        "--port",
        str(port),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    proc = subprocess.Popen(
        cmd + (["--sync-log"] if sync_log else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    acknowledged: list[str] = []
    stop = threading.Event()
    x = case.splits["test"].x
    try:
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as probe:
            while True:
                assert proc.poll() is None
                try:
                    if probe.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.3)

        def client(cid: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
                i = 0
                while not stop.is_set():
                    rid = f"c{cid}-{i}"
                    try:
                        r = c.post("/predict", json={"inputs": x[i % 50 : i % 50 + 2].tolist(), "request_id": rid})
                    except httpx.TransportError:
                        return
                    if r.status_code == 200:
                        acknowledged.append(rid)
                    i += 1

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(4)]
        for t in threads:
            t.start()
        while len(acknowledged) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load, no shutdown of any kind
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    store = PredictionStore(tmp_path / "srv" / "predictions.db")
    integrity = store.integrity_check()
    logged = set(store.read().request_id.tolist())
    store.close()
    lost = set(acknowledged) - logged
    assert integrity["ok"], integrity
    assert len(acknowledged) >= 100 and integrity["rows"] == 2 * len(logged)
    print(f"sync_log={sync_log}: {len(acknowledged)} acknowledged, {len(lost)} acknowledged-but-lost after kill -9")
    if sync_log:
        assert not lost


def _factory() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, K))


def test_treat_drift_retrains_on_half_the_drifted_rows_and_verifies_on_the_other_half(tmp_path: Path) -> None:
    train, test, deploy = _splits(shift_from=200)
    case = Case.from_arrays(train, test, deploy, model=_net(), model_factory=_factory)
    treatment, before, _ = dlclinic.treat(
        case,
        "deployment.drift",
        out_dir=tmp_path / "t",
        fit_config=FitConfig(epochs=40, batch_size=64),
        cache_dir=tmp_path / "c",
    )
    assert before["deployment.drift"].status == "fail"
    assert (
        treatment.before["drifted_rows"] == 200 and 70 <= treatment.after["eval_rows"] <= 130
    )  # the evaluation half of the drifted span
    # rows neither model trained on: the retrained model is better there, and significantly so
    assert treatment.after["eval_accuracy"] > treatment.before["eval_accuracy"] + 0.1, (
        treatment.before,
        treatment.after,
    )
    assert treatment.after["accuracy_gain_ci_low"] > 0 and treatment.after["mcnemar_p"] < 0.01
    trigger = json.loads((tmp_path / "t" / "drift_trigger.json").read_text())
    assert trigger["rows"] == list(range(200, 400)) and [w["window"] for w in trigger["drifted_windows"]] == [2, 3]
    assert (tmp_path / "t" / "model_treated.safetensors").exists()


def test_treat_drift_without_labels_writes_the_rows_to_label_and_changes_nothing(tmp_path: Path) -> None:
    train, test, (xd, _) = _splits(shift_from=200)
    case = Case.from_arrays(train, test, (xd, None), model=_net())
    treatment, before, after = dlclinic.treat(
        case, "deployment.drift", out_dir=tmp_path / "t", fit_config=FAST, cache_dir=tmp_path / "c"
    )
    assert before["deployment.drift"].status != "ok" and treatment.after_status == treatment.before_status
    assert (
        "label" in " ".join(treatment.notes)
        and json.loads((tmp_path / "t" / "drift_trigger.json").read_text())["rows_to_label"] > 0
    )
    with pytest.raises(dlclinic.ConfigError, match="needs labels"):
        dlclinic.treat(case, "deployment.drift", fit_config=FAST, cache_dir=tmp_path / "c", params={"mode": "retrain"})


def test_treat_drift_on_a_stationary_stream_changes_nothing(tmp_path: Path) -> None:
    train, test, deploy = _splits(shift_from=None)
    case = Case.from_arrays(train, test, deploy, model=_net(), model_factory=_factory)
    treatment, before, after = dlclinic.treat(
        case, "deployment.drift", out_dir=tmp_path / "t", fit_config=FAST, cache_dir=tmp_path / "c"
    )
    assert before["deployment.drift"].status == "ok" and after is before
    assert treatment.before["drifted_rows"] == 0 and "model" not in treatment.artifacts
    assert json.loads((tmp_path / "t" / "drift_trigger.json").read_text())["rows"] == []
