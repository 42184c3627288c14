"""8. Fairness metrics vs fairlearn, ECE vs a reference implementation.

Fairness, multiclass one-vs-rest with the worst class deciding (dlclinic's definition):
dlclinic ``estimate_fairness`` (point estimates + 500 bootstrap replicates for intervals +
500 permutations for p-values, and once with 1 of each to time the point estimates);
fairlearn ``MetricFrame`` (accuracy by group) and ``demographic_parity_difference`` /
``equalized_odds_difference`` per class, maximum over classes. On the demo test split
(groups "pen": thin/bold) and a synthetic 3-group set with a planted bias.
ECE: dlclinic ``estimate_ece`` (bincount) vs the definition of Guo et al. (2017) written
as a plain loop over 15 equal-width bins.
"""

from __future__ import annotations

from typing import Any

from bench.peers.common import case_entry, case_of, load_demo, row, timed, version_of

NUMBER = 8
TITLE = "Fairness and calibration metrics vs fairlearn / a reference ECE"
SIDES = {"ours": "project", "fairlearn": "project"}


def _sets(cfg: dict[str, Any]) -> dict[str, tuple[Any, Any, Any, Any]]:
    import numpy as np

    arrays, _ = load_demo(cfg)
    probs = arrays["test_probs"]
    out = {"demo": (arrays["test_y"], probs.argmax(1), arrays["test_groups"], probs)}
    n = 20_000 if cfg["quick"] else 50_000
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    g = rng.choice(np.array(["a", "b", "c"]), n, p=[0.5, 0.3, 0.2])
    err = rng.random(n) < np.where(g == "c", 0.25, 0.1)  # group c gets more errors
    pred = np.where(err, rng.integers(0, 10, n), y)
    logits = rng.normal(size=(n, 10)) + 4.0 * np.eye(10)[pred]
    p = np.exp(logits - logits.max(1, keepdims=True))
    out[f"synthetic {n // 1000}k"] = (y, pred, g, p / p.sum(1, keepdims=True))
    return out


def run(side: str, cfg: dict[str, Any]) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    sets = _sets(cfg)
    if side == "ours":
        from dlclinic.functional.calibration import estimate_ece
        from dlclinic.functional.fairness import estimate_fairness

        for name, (y, pred, g, p) in sets.items():
            med, times, r = timed(lambda: estimate_fairness(y, pred, g, n_classes=10), cfg["repeats"], warmup=1)
            q = {
                "acc_gap": round(r.accuracy_gap, 4),
                "dp_diff": round(r.dp_difference, 4),
                "eo_diff": round(r.eo_difference, 4),
            }
            cases[f"fair_full:{name}"] = case_entry(
                med, times, **q, dp_ci=f"[{r.dp_ci[0]:.3f}, {r.dp_ci[1]:.3f}]", dp_p=round(r.dp_p, 4)
            )
            med, times, r = timed(
                lambda: estimate_fairness(y, pred, g, n_classes=10, n_boot=1, n_perm=1), cfg["repeats"], warmup=1
            )
            cases[f"fair_point:{name}"] = case_entry(med, times, **q)
            med, times, e = timed(lambda: estimate_ece(p, y), cfg["repeats"], warmup=1)
            cases[f"ece:{name}"] = case_entry(med, times, ece=round(e, 6))
        return {"cases": cases, "versions": version_of("fairlearn")}
    import numpy as np
    from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
    from sklearn.metrics import accuracy_score

    def fair(y: Any, pred: Any, g: Any) -> dict[str, float]:
        acc = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features=g).by_group
        worst = acc.idxmin()
        gap = float(accuracy_score(y[g != worst], pred[g != worst]) - acc[worst])
        dp = max(demographic_parity_difference(y == c, pred == c, sensitive_features=g) for c in range(10))
        eo = max(equalized_odds_difference(y == c, pred == c, sensitive_features=g) for c in range(10))
        return {"acc_gap": round(gap, 4), "dp_diff": round(float(dp), 4), "eo_diff": round(float(eo), 4)}

    def ece_reference(p: Any, y: Any, bins: int = 15) -> float:
        conf, hit = p.max(1), (p.argmax(1) == y)
        total = 0.0
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            m = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
            if m.any():
                total += m.mean() * abs(hit[m].mean() - conf[m].mean())
        return float(total)

    for name, (y, pred, g, p) in sets.items():
        med, times, q = timed(lambda: fair(y, pred, g), cfg["repeats"], warmup=1)
        cases[f"fair:{name}"] = case_entry(med, times, **q)
        med, times, e = timed(lambda: ece_reference(p, y), cfg["repeats"], warmup=1)
        cases[f"ece:{name}"] = case_entry(med, times, ece=round(e, 6))
    del np
    return {"cases": cases, "versions": version_of("fairlearn", "scikit-learn")}


def rows(results: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    out = []
    names = ["demo", f"synthetic {(20_000 if cfg['quick'] else 50_000) // 1000}k"]
    for name in names:
        peer = case_of(results, "fairlearn", f"fair:{name}")
        out.append(
            row(
                f"fairness, {name}: point estimates",
                "estimate_fairness (1 bootstrap, 1 permutation)",
                case_of(results, "ours", f"fair_point:{name}"),
                "fairlearn MetricFrame + DP/EO difference per class",
                peer,
            )
        )
        out.append(
            row(
                f"fairness, {name}: with 95 % CIs and p-values",
                "estimate_fairness (500 bootstrap, 500 permutations)",
                case_of(results, "ours", f"fair_full:{name}"),
                "fairlearn (point estimates only)",
                peer,
            )
        )
        out.append(
            row(
                f"ECE, 15 bins, {name}",
                "estimate_ece",
                case_of(results, "ours", f"ece:{name}"),
                "reference loop (Guo et al. 2017)",
                case_of(results, "fairlearn", f"ece:{name}"),
            )
        )
    notes = [
        "fairlearn's DP/EO differences are binary: the peer column calls them once per class (one-vs-rest) and takes the maximum, which is dlclinic's multiclass definition; `acc_gap` is the accuracy of the other rows minus the worst group's.",
        "The full dlclinic row is slower by design: it adds bootstrap intervals (rows resampled within groups) and permutation p-values for every disparity, which fairlearn does not compute for differences; all replicates are one batched confusion-matrix count.",
    ]
    return out, notes
