"""2. Data audit (labels, outliers, near-duplicates) vs cleanlab Datalab, on the same evidence.

Both sides get the same out-of-fold probabilities and embeddings of the demo's train split
(computed once by the fixture): dlclinic runs ``checkup(case, only=["data.quality"])`` with
that evidence in its cache; Datalab runs ``find_issues(pred_probs=..., features=...)`` for the
label, outlier and near_duplicate issue types.
"""

from __future__ import annotations

from typing import Any

from bench.peers.common import case_entry, case_of, demo_paths, f1, load_demo, row, timed, version_of

NUMBER = 2
TITLE = "Data audit (labels, outliers, near-duplicates) vs cleanlab Datalab"
SIDES = {"ours": "project", "datalab": "datalab"}


def _dup_recall(flagged: Any, pairs: Any) -> float:
    s = {int(i) for i in flagged}
    if len(pairs) == 0:
        return float("nan")
    return round(sum(1 for a, b in pairs if int(a) in s or int(b) in s) / len(pairs), 4)


def run(side: str, cfg: dict[str, Any]) -> dict[str, Any]:
    arrays, _ = load_demo(cfg)
    flipped, pairs = arrays["flipped"], arrays["duplicate_pairs"]
    import numpy as np

    if side == "ours":
        from bench.peers.common import demo_case

        import dlclinic
        from dlclinic.core.recipe import FitConfig

        case = demo_case(cfg)
        cache = demo_paths(cfg)["cache"]

        def audit() -> Any:
            return dlclinic.checkup(
                case, only=["data.quality"], fit_config=FitConfig(epochs=cfg["epochs"]), cache_dir=cache
            )["data.quality"]

        med, times, res = timed(audit, cfg["repeats"], warmup=1)
        found = {f.code: f.indices for f in res.findings}
        dups = set(found.get("duplicate", ())) | set(found.get("embedding_near_duplicate", ()))
        q = {
            **{f"label_{k}": v for k, v in f1(found.get("label_issue", ()), flipped).items()},
            "dup_recall": _dup_recall(dups, pairs),
            "dup_flagged": len(dups),
            "dup_planted_pairs": len(pairs),
            "outliers": len(found.get("outlier", ())),
        }
        from dlclinic.functional.duplicates import find_near_duplicates
        from dlclinic.functional.labels import find_label_issues
        from dlclinic.functional.profile import find_knn_outliers

        y, oof, emb = arrays["train_y"], arrays["oof_probs"], arrays["embeddings"]

        def same_three() -> Any:
            """Datalab's three issue types on the same inputs: labels, embedding outliers, embedding near-duplicates."""
            issues = find_label_issues(y, oof)
            outliers, _ = find_knn_outliers(emb)
            e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            near = find_near_duplicates(e)
            return issues.indices, outliers, {int(i) for pair in near.pairs.tolist() for i in pair}

        med2, times2, (lab, outl, dup) = timed(same_three, cfg["repeats"], warmup=1)
        q2 = {
            **{f"label_{k}": v for k, v in f1(lab, flipped).items()},
            "dup_recall": _dup_recall(dup, pairs),
            "dup_flagged": len(dup),
            "outliers": len(outl),
        }
        return {
            "cases": {"audit": case_entry(med, times, **q), "functional": case_entry(med2, times2, **q2)},
            "versions": version_of("cleanlab"),
        }
    import warnings

    from cleanlab import Datalab

    y, oof, emb = arrays["train_y"], arrays["oof_probs"], arrays["embeddings"]

    def audit() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
            lab.find_issues(
                pred_probs=oof, features=emb, issue_types={"label": {}, "outlier": {}, "near_duplicate": {}}
            )
        return lab

    med, times, lab = timed(audit, cfg["repeats"], warmup=1)
    label = np.flatnonzero(lab.get_issues("label")["is_label_issue"].to_numpy())
    near = np.flatnonzero(lab.get_issues("near_duplicate")["is_near_duplicate_issue"].to_numpy())
    out = np.flatnonzero(lab.get_issues("outlier")["is_outlier_issue"].to_numpy())
    q = {
        **{f"label_{k}": v for k, v in f1(label, flipped).items()},
        "dup_recall": _dup_recall(near, pairs),
        "dup_flagged": len(near),
        "outliers": len(out),
    }
    return {"cases": {"audit": case_entry(med, times, **q)}, "versions": version_of("cleanlab")}


def rows(results: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    peer = case_of(results, "datalab", "audit")
    out = [
        row(
            "demo train split, warm evidence: the whole check",
            "checkup --only data.quality",
            case_of(results, "ours", "audit"),
            "Datalab.find_issues(label, outlier, near_duplicate)",
            peer,
        ),
        row(
            "demo train split, the same three issue types on the same inputs",
            "find_label_issues + find_knn_outliers + find_near_duplicates (embeddings)",
            case_of(results, "ours", "functional"),
            "Datalab.find_issues(label, outlier, near_duplicate)",
            peer,
        ),
    ]
    notes = [
        "Where dlclinic is slower (the whole check): most of its time is the duplicate and leak search in input space (784 values per image, train against train, test and deploy) and the image profiles, which Datalab does not do; on the same three issue types and the same inputs it is as fast or faster. A check-level option to skip input-space leak search when no test/deploy split exists would not help here (the demo has both); caching the input-space kNN graph across runs would.",
        "dlclinic searches duplicates in the inputs (exact hashes + a random-projection kNN verified at full resolution) and, for review, in the embeddings; Datalab searches the given features (the embeddings) only. `dup_flagged` counts rows flagged; `dup_recall` is the share of planted (original, copy) pairs with a member flagged.",
        "Outliers: dlclinic flags embedding rows beyond the far-out fence of the kNN-distance distribution (Tukey, Q3 + 3 IQR), so a set with no planted outliers gets few or none; Datalab flags rows whose outlier score falls below a threshold fitted to the same data, so it always flags some. Neither is ground truth here (the demo plants no outliers).",
        "The dlclinic time also covers train→test/deploy leak search, class balance and image profiles, which Datalab does not do (its default issue types would add non-IID and class-imbalance checks; only the three compared types are asked for).",
    ]
    return out, notes
