"""data.privacy: membership leakage of an overfit model vs a generalising one, PII counts, DP-SGD."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dlclinic
from conftest import blobs
from dlclinic import Case, FitConfig
from dlclinic.functional.membership import audit_scores
from dlclinic.functional.pii import iban_valid, luhn_valid, scan_table

OVERFIT = FitConfig(epochs=60, batch_size=32, val_fraction=0.0, weight_decay=0.0, lr=3e-3)
FAST = FitConfig(epochs=8, batch_size=64)


def _overfit_case() -> Case:
    """Few, noisy training rows and a long run without early stopping: the model memorises."""
    x, y = blobs(200, k=3, d=20, sep=0.8, seed=0)
    rng = np.random.default_rng(0)
    flip = rng.random(len(y)) < 0.2
    y = np.where(flip, (y + 1) % 3, y)
    xt, yt = blobs(400, k=3, d=20, sep=0.8, seed=1)
    yt = np.where(np.random.default_rng(1).random(len(yt)) < 0.2, (yt + 1) % 3, yt)  # the same label noise as train
    return Case.from_arrays((x, y), (xt, yt))


def _general_case() -> Case:
    x, y = blobs(900, k=3, d=8, sep=4.0, seed=0)
    xt, yt = blobs(600, k=3, d=8, sep=4.0, seed=1)
    return Case.from_arrays((x, y), (xt, yt))


def test_audit_statistics_are_honest_about_small_samples() -> None:
    rng = np.random.default_rng(0)
    a = audit_scores(rng.normal(1, 1, 400), rng.normal(0, 1, 400))
    assert 0.70 < a.auc < 0.80 and a.auc_ci[0] < a.auc < a.auc_ci[1] and a.auc_p < 1e-6
    assert not a.fpr_resolvable  # 0.1 % of 400 non-members is less than one row
    assert a.fpr_used == 0.0 and a.fpr_upper_bound == pytest.approx(1 - 0.025 ** (1 / 400), rel=1e-3)
    null = audit_scores(rng.normal(0, 1, 400), rng.normal(0, 1, 400))
    assert null.auc_ci[0] < 0.5 < null.auc_ci[1] and null.auc_p > 0.01
    big = audit_scores(rng.normal(0, 1, 3000), rng.normal(0, 1, 3000))
    assert big.fpr_resolvable and big.fpr_used <= 0.001


def test_overfit_model_leaks_membership_and_general_model_does_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    leaky = dlclinic.checkup(_overfit_case(), only=["data.privacy"], fit_config=OVERFIT, cache_dir=tmp_path)[
        "data.privacy"
    ]
    assert leaky.status in ("warn", "fail"), leaky.summary
    assert leaky.metrics["mia_auc"] > 0.6 and leaky.metrics["mia_auc_calibrated"] is not None
    assert leaky.remedy is not None and "treat data.privacy" in (leaky.remedy.command or "")
    fine = dlclinic.checkup(_general_case(), only=["data.privacy"], fit_config=FAST, cache_dir=tmp_path)["data.privacy"]
    assert fine.status == "ok", fine.summary
    assert fine.metrics["mia_auc"] < 0.6


def test_luhn_and_iban() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")


def test_pii_counts_per_column_without_values(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 60
    emails = [f"user{i}@example.org" if i % 3 == 0 else "no contact" for i in range(n)]  # 20 emails
    cards = ["4111 1111 1111 1111" if i < 7 else "1234 5678 9012 3456" for i in range(n)]  # 7 valid (Luhn), 53 invalid
    df = pd.DataFrame(
        {
            "note": emails,
            "payment": cards,
            "amount": rng.random(n).round(2),
            "score": rng.normal(size=n) * 1e3,
            "order_id": np.arange(100000, 100000 + n),
            "comment": ["great product, arrived 2024-01-15" for _ in range(n)],
        }
    )
    rep = scan_table(df)
    assert rep.columns["note"]["email"] == 20 and rep.rows_with_pii["note"] == 20
    assert rep.columns["payment"]["payment_card"] == 7
    assert (
        sum(rep.columns["score"].values()) == 0
        and sum(rep.columns["amount"].values()) == 0
        and sum(rep.columns["order_id"].values()) == 0
        and sum(rep.columns["comment"].values()) == 0
    )
    assert set(rep.flagged_columns()) == {"note", "payment"}
    path = tmp_path / "customers.csv"
    df.to_csv(path, index=False)
    x, y = blobs(300, d=4, seed=0)
    case = Case.from_arrays((x, y), (x, y))
    report = dlclinic.checkup(
        case,
        only=["data.privacy"],
        options={"data.privacy": {"pii_files": str(path)}},
        fit_config=FAST,
        cache_dir=tmp_path,
    )
    res = report["data.privacy"]
    assert res.status == "fail"  # payment cards are sensitive
    assert (
        res.metrics["pii_email"] == 20
        and res.metrics["pii_payment_card"] == 7
        and res.metrics["pii_columns_flagged"] == 2
    )
    text = json.dumps(report.to_dict())
    assert "@example.org" not in text and "4111" not in text and "user0" not in text


@pytest.mark.slow
def test_dp_sgd_lowers_membership_auc(tmp_path) -> None:  # type: ignore[no-untyped-def]
    treatment, before, after = dlclinic.treat(
        _overfit_case(),
        "data.privacy",
        params={"target_epsilon": 1.0, "epochs": 15, "batch_size": 64},
        fit_config=OVERFIT,
        cache_dir=tmp_path,
        out_dir=tmp_path / "out",
    )
    assert treatment.after["epsilon"] <= 1.0 + 1e-6 and treatment.after["delta"] == pytest.approx(1 / 2000)
    assert treatment.after["mia_auc_loss"] < treatment.before["mia_auc_loss"] - 0.1
    assert abs(treatment.after["mia_auc_loss"] - 0.5) < 0.08
    assert (tmp_path / "out" / "dp_budget.json").exists()
