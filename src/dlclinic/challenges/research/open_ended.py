"""research.open_ended — does the model notice inputs of classes it never saw, and can it learn them?

The check runs an open-set experiment: held-out classes (or a file of new inputs) scored
with a novelty score (kNN on embeddings, energy or max-softmax), the AUROC unseen vs known
with a bootstrap interval, a rejection threshold calibrated on known validation rows, and
clusters of the rejected rows (candidate new classes, with purity when labels are known).
When it simulates the open world it retrains the recipe without the held-out classes on a
stratified subsample of ``max_train_rows`` rows. The remedy learns the discovered classes
incrementally with experience replay and shows what naive fine-tuning would have forgotten.

What is graded and what is information: inputs of new classes that the user passed
(``ood``), or held-out classes the user named (``unknown_classes``) or asked to simulate
(``simulate=yes``), are graded (warn below ``warn_auroc``). The default simulation (the
last classes held out, run because the baseline's recipe is cheap) is a what-if the user did
not ask for: it is measured and reported with status ``ok`` (``graded: false``), and the
remedy stays offered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlclinic.core.case import Case, usable_inputs
from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.evidence import Evidence
from dlclinic.core.registry import CheckSpec, RemedySpec, TreatContext, TreatOutcome, conclude
from dlclinic.core.results import CheckResult, Finding, Remedy
from dlclinic.core.sampling import stratified_rows
from dlclinic.functional.continual import ContinualConfig, TaskSequence, run_task_sequence, tasks_from_classes
from dlclinic.functional.embeddings import logits_and_embeddings
from dlclinic.functional.ood import score_energy, score_knn, score_max_softmax
from dlclinic.functional.openset import calibrate_rejection, cluster_rejected, novelty_auroc
from dlclinic.io.data import load_like

__all__ = [
    "CHECK",
    "REMEDY",
    "OpenEndedOptions",
    "OpenEndedParams",
    "open_set_experiment",
    "run_open_ended",
    "treat_open_ended",
]

CID = "research.open_ended"


@dataclass(frozen=True)
class OpenEndedOptions:
    """Open-set recognition settings.

    ``ood``: a file of inputs from classes the model never saw, in the format of
    ``--train`` (``.npz`` with ``x`` and optional ``y`` = class ids of the new classes,
    CSV/Parquet or an image folder); scored with the case's model against
    half of the test split (the other half calibrates the threshold). Otherwise the check
    *simulates* an open world: ``unknown_classes`` (default: the last ``n_unknown``
    classes) are held out, the recipe retrains on the others (``max_train_rows``; 20 %
    kept for calibration), and the held-out test rows are the unknowns. ``simulate``:
    ``auto`` retrains only when the recipe is cheap (the baseline dlclinic trains).
    ``score``: ``knn`` (embeddings), ``energy`` or ``msp``. Warn when the AUROC is below
    ``warn_auroc``.
    """

    unknown_classes: tuple[int, ...] = ()
    ood: str | None = None
    n_unknown: int = 2
    simulate: str = "auto"
    score: str = "knn"
    reject_rate: float = 0.05
    max_train_rows: int = 1200
    warn_auroc: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.simulate not in ("auto", "yes", "no"):
            raise ValueError(f"simulate must be 'auto', 'yes' or 'no', but got {self.simulate!r}")
        if self.score not in ("knn", "energy", "msp"):
            raise ValueError(f"score must be 'knn', 'energy' or 'msp', but got {self.score!r}")


@dataclass
class _OpenSet:
    """The inputs of one open-set experiment: a model, calibration rows, known and unknown test rows."""

    model: Any
    x_val: np.ndarray
    x_known: np.ndarray
    y_known: np.ndarray
    x_unk: np.ndarray
    y_unk: np.ndarray | None
    ref: np.ndarray
    unknown: np.ndarray
    mode: str


def _labelled_test(case: Case) -> Any:
    test = case.get("test")
    return test if test is not None and test.labelled else None


def _scores(kind: str, logits: np.ndarray, emb: np.ndarray, ref: np.ndarray) -> np.ndarray:
    if kind == "knn":
        return score_knn(ref, emb, k=10)
    if kind == "energy":
        return score_energy(logits)
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return score_max_softmax(p)


# -- the experiment ------------------------------------------------------------------------------
def _from_ood_file(case: Case, evidence: Evidence, test: Any, options: OpenEndedOptions) -> _OpenSet:
    """New inputs from a file, scored with the case's model; half of test calibrates, half is the known set."""
    loaded = load_like(str(options.ood), case, name="ood")  # same formats as --train: npz, CSV/Parquet, image folder  # type: ignore[arg-type]
    x_unk = np.asarray(loaded.x, dtype=np.float32)
    y_unk = np.asarray(loaded.y, dtype=np.int64) if loaded.y is not None else None
    order = np.random.default_rng(options.seed).permutation(len(test))
    val_rows, known_rows = order[: len(order) // 2], order[len(order) // 2 :]
    return _OpenSet(
        model=case.model,
        x_val=test.x[val_rows],
        x_known=test.x[known_rows],
        y_known=test.y[known_rows],
        x_unk=x_unk,
        y_unk=y_unk,
        ref=evidence.get("embeddings", "train"),
        unknown=np.unique(y_unk) if y_unk is not None else np.zeros(0, np.int64),
        mode="ood file",
    )


def _default_unknown(k: int, n_unknown: int) -> list[int]:
    """The last ``n_unknown`` classes, fewer when that would leave under 2 known ones."""
    return list(range(k - max(1, min(n_unknown, k - 2)), k))


def _held_out_classes(case: Case, evidence: Evidence, test: Any, options: OpenEndedOptions) -> _OpenSet:
    """Retrain without the held-out classes; their test rows are the unknowns."""
    k = case.n_classes
    unknown = np.array(sorted(set(options.unknown_classes)) or _default_unknown(k, options.n_unknown), dtype=np.int64)
    if unknown.min() < 0 or unknown.max() >= k or len(unknown) >= k - 1:
        raise ConfigError(f"unknown_classes: expected 1..{k - 2} class ids in 0..{k - 1}, found {unknown.tolist()}")
    known_tr = np.flatnonzero(~np.isin(case.train.y, unknown))  # type: ignore[arg-type]
    rows = known_tr[stratified_rows(case.train.y[known_tr], options.max_train_rows, options.seed)]  # type: ignore[index]
    rng = np.random.default_rng(options.seed)
    rows = rows[rng.permutation(len(rows))]
    n_val = max(len(rows) // 5, 10)
    val, fit_rows = rows[:n_val], rows[n_val:]
    with evidence.progress.step("open-set simulation: retraining without the held-out classes", total=1) as advance:
        model = evidence.retrain(usable_inputs(case.train.x[fit_rows]), case.train.y[fit_rows], options.seed)  # type: ignore[index, misc]
        advance(1)
    is_unk = np.isin(test.y, unknown)
    return _OpenSet(
        model=model,
        x_val=case.train.x[val],
        x_known=test.x[~is_unk],
        y_known=test.y[~is_unk],
        x_unk=test.x[is_unk],
        y_unk=test.y[is_unk],
        ref=logits_and_embeddings(model, case.train.x[fit_rows])[1],
        unknown=unknown,
        mode="held-out classes",
    )


def _rejection(
    sv: np.ndarray,
    sk: np.ndarray,
    su: np.ndarray,
    ek: np.ndarray,
    eu: np.ndarray,
    lk: np.ndarray,
    s: _OpenSet,
    options: OpenEndedOptions,
) -> dict[str, np.ndarray]:
    """The calibrated threshold of the chosen score, and clusters of the rows it rejects."""
    out: dict[str, np.ndarray] = {}
    rej = calibrate_rejection(sv, sk, su, reject_rate=options.reject_rate)
    out["threshold"] = np.array(rej.threshold)
    out["false_rejection_rate"] = np.array(rej.false_rejection_rate)
    out["detection_rate"] = np.array(rej.detection_rate)
    rejected_emb = np.r_[ek[sk > rej.threshold], eu[su > rej.threshold]]
    truth = np.r_[s.y_known[sk > rej.threshold], s.y_unk[su > rej.threshold]] if s.y_unk is not None else None
    out["known_accuracy"] = np.array(float((lk.argmax(1) == s.y_known).mean()))
    if len(rejected_emb) >= 8:
        d = cluster_rejected(rejected_emb, truth, seed=options.seed)
        out.update(
            n_clusters=np.array(d.n_clusters),
            silhouette=np.array(d.silhouette),
            purity=np.array(d.purity),
            ari=np.array(d.ari),
            nmi=np.array(d.nmi),
            majority=np.array(d.majority, dtype=np.int64),
            n_rejected=np.array(len(rejected_emb)),
        )
        if truth is not None:
            sizes = np.bincount(d.labels, minlength=d.n_clusters)
            out["cluster_sizes"] = sizes
    return out


def open_set_experiment(case: Case, evidence: Evidence, options: OpenEndedOptions) -> dict[str, np.ndarray]:
    """Held-out-class (or OOD-file) experiment: novelty scores, threshold, clusters of the rejected rows."""
    test = _labelled_test(case)
    assert test is not None and case.train.y is not None
    s = (
        _from_ood_file(case, evidence, test, options)
        if options.ood
        else _held_out_classes(case, evidence, test, options)
    )
    if len(s.x_unk) < 4 or len(s.x_known) < 4:
        raise InputError(
            f"open-set evaluation needs at least 4 known and 4 unknown test rows, found {len(s.x_known)} and {len(s.x_unk)}"
        )
    lv, ev = logits_and_embeddings(s.model, s.x_val)
    lk, ek = logits_and_embeddings(s.model, s.x_known)
    lu, eu = logits_and_embeddings(s.model, s.x_unk)
    out: dict[str, np.ndarray] = {
        "mode": np.array(s.mode),
        "unknown_classes": s.unknown,
        "n_known": np.array(len(s.x_known)),
        "n_unknown": np.array(len(s.x_unk)),
    }
    for kind in ("knn", "energy", "msp"):
        sv, sk, su = (_scores(kind, l_, e_, s.ref) for l_, e_ in ((lv, ev), (lk, ek), (lu, eu)))
        auc, low, high = novelty_auroc(sk, su, n_boot=200, seed=options.seed)
        out[f"auroc_{kind}"] = np.array([auc, low, high])
        if kind == options.score:
            out.update(_rejection(sv, sk, su, ek, eu, lk, s, options))
    return out


# -- the check -----------------------------------------------------------------------------------
def _not_examined(case: Case, evidence: Evidence, options: OpenEndedOptions) -> CheckResult | None:
    """Why the check cannot run (no labelled test, no new inputs and no cheap recipe), or None."""
    if _labelled_test(case) is None:
        return CheckResult(id=CID, status="not_examined", summary="Needs a labelled test split (pass --test).")
    if options.ood:
        return None
    if case.n_classes < 3 and not options.unknown_classes:
        return CheckResult(
            id=CID,
            status="not_examined",
            summary=f"Simulating unseen classes holds at least one class out and keeps two, so it needs 3 or more classes (found {case.n_classes}); pass inputs of new classes with --option research.open_ended.ood=new.npz.",
        )
    if evidence.retrain is None:
        return CheckResult(
            id=CID,
            status="not_examined",
            summary="Needs inputs of unseen classes (--option research.open_ended.ood=new.npz) or the training recipe (--model file.py:factory) to simulate them by holding classes out; nothing was measured.",
        )
    if options.simulate == "no" or (
        options.simulate == "auto" and not evidence.cheap_retrain and not options.unknown_classes
    ):
        return CheckResult(
            id=CID,
            status="not_examined",
            summary="Simulating unseen classes retrains your model, which is not cheap: pass --option research.open_ended.ood=new.npz (inputs of new classes), or research.open_ended.simulate=yes / unknown_classes=8,9 to retrain without some classes.",
        )
    return None


def _clusters(r: dict[str, np.ndarray], unknown: list[int], metrics: dict[str, Any], findings: list[Finding]) -> str:
    """Metrics and finding of the clusters among the rejected rows; the sentence for the summary."""
    if "n_clusters" not in r:
        return ""
    metrics.update(
        n_rejected=int(r["n_rejected"]), candidate_classes=int(r["n_clusters"]), silhouette=float(r["silhouette"])
    )
    if not math.isfinite(float(r["purity"])):
        return f" The {int(r['n_rejected'])} rejected rows form {int(r['n_clusters'])} candidate classes (silhouette {float(r['silhouette']):.2f}; no labels to state purity)."
    metrics.update(purity=float(r["purity"]), ari=float(r["ari"]), nmi=float(r["nmi"]))
    maj = [int(m) for m in r["majority"]]
    recovered = sorted({m for m in maj if m in unknown})
    metrics["unknown_classes_recovered"] = len(recovered)
    findings.append(
        Finding(
            "candidate_classes",
            f"{int(r['n_clusters'])} clusters among rejected rows, majority true classes {maj}, sizes {[int(s) for s in r['cluster_sizes']]}",
            extra={"majority": maj, "purity": float(r["purity"])},
        )
    )
    return f" The {int(r['n_rejected'])} rejected rows form {int(r['n_clusters'])} candidate classes with purity {float(r['purity']):.1%}; {len(recovered)} of {len(unknown)} unseen classes are the majority of a cluster."


def _auroc_table(r: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "title": "Novelty scores: AUROC unseen vs known (95 % CI)",
        "columns": ["score", "AUROC", "95 % CI"],
        "rows": [
            [k, f"{r[f'auroc_{k}'][0]:.3f}", f"[{r[f'auroc_{k}'][1]:.3f}, {r[f'auroc_{k}'][2]:.3f}]"]
            for k in ("knn", "energy", "msp")
        ],
    }


def run_open_ended(case: Case, evidence: Evidence, options: OpenEndedOptions) -> CheckResult:
    """AUROC of a novelty score for unseen classes, a calibrated rejection threshold, clusters of rejected rows."""
    skipped = _not_examined(case, evidence, options)
    if skipped is not None:
        return skipped
    params = {
        k: getattr(options, k)
        for k in ("unknown_classes", "ood", "n_unknown", "score", "reject_rate", "max_train_rows", "seed")
    }
    r = evidence.cached("open_ended", params, lambda: open_set_experiment(case, evidence, options))
    auc, low, high = (float(v) for v in r[f"auroc_{options.score}"])
    unknown = [int(c) for c in r["unknown_classes"]]
    names = (
        ", ".join(case.class_names[c] if 0 <= c < case.n_classes else str(c) for c in unknown)
        or "unlabelled new inputs"
    )
    metrics: dict[str, float | int | bool | None] = {
        "auroc": auc,
        "auroc_low": low,
        "auroc_high": high,
        "auroc_knn": float(r["auroc_knn"][0]),
        "auroc_energy": float(r["auroc_energy"][0]),
        "auroc_msp": float(r["auroc_msp"][0]),
        "detection_rate": float(r["detection_rate"]),
        "false_rejection_rate": float(r["false_rejection_rate"]),
        "target_false_rejection": options.reject_rate,
        "known_accuracy": float(r["known_accuracy"]),
        "n_known": int(r["n_known"]),
        "n_unknown": int(r["n_unknown"]),
    }
    findings: list[Finding] = []
    cluster_text = _clusters(r, unknown, metrics, findings)
    graded = bool(options.ood or options.unknown_classes or options.simulate == "yes")
    weak = auc < options.warn_auroc
    status = "warn" if weak and graded else "ok"
    metrics["graded"] = graded
    mode = str(r["mode"])
    summary = f"Unseen classes ({names}; {mode}) are told apart from known ones with AUROC {auc:.3f} (95 % CI {low:.3f}–{high:.3f}, {options.score} score); a threshold rejecting {options.reject_rate:.0%} of known validation rows rejects {float(r['detection_rate']):.1%} of unseen and {float(r['false_rejection_rate']):.1%} of known test rows.{cluster_text}"
    if not graded:
        summary = (
            f"What-if, not graded (no new-class inputs given): {summary[0].lower()}{summary[1:]} "
            "Pass --ood new.npz or --unknown-classes to grade it."
        )
    if weak:
        findings.insert(
            0,
            Finding(
                "weak_novelty_detection",
                f"AUROC {auc:.3f} < {options.warn_auroc}: inputs of new classes are mostly given a known label with confidence",
            ),
        )
    remedy = Remedy(
        command="dlclinic treat research.open_ended",
        description="label the discovered clusters as new classes and train them in incrementally with replay (forgetting measured on the old classes)",
    )
    return CheckResult(
        id=CID,
        status=status,  # type: ignore[arg-type]
        summary=summary,
        metrics=metrics,
        thresholds={"auroc.warn": options.warn_auroc, "reject_rate": options.reject_rate},
        findings=tuple(findings),
        remedy=remedy,
        details={"tables": [_auroc_table(r)]},
    )  # type: ignore[arg-type]


CHECK = CheckSpec(
    id=CID,
    requires=(("embeddings", "train"),),
    options=OpenEndedOptions,
    run=run_open_ended,
    description="open-set recognition on held-out classes (or an OOD file): novelty AUROC, calibrated rejection, clustering of rejected rows with purity",
)


# -- the remedy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenEndedParams:
    """Held-out classes (default: the check's: the last ``n_unknown``), replay memory and training budget."""

    unknown_classes: tuple[int, ...] = ()
    n_unknown: int = 2
    memory: int = 300
    epochs: int = 5
    max_rows_per_task: int = 600


def _incremental_tasks(case: Case, test: Any, known: np.ndarray, unknown: np.ndarray, params: OpenEndedParams) -> Any:
    """Two tasks, known classes then the discovered ones, train rows capped per task."""
    assert case.train.y is not None
    seq = tasks_from_classes(case.train.y, test.y, [known, unknown])
    capped = tuple(
        r[stratified_rows(case.train.y[r], params.max_rows_per_task * (len(known) if i == 0 else len(unknown)) // 2)]
        for i, r in enumerate(seq.train_rows)
    )
    return TaskSequence(capped, seq.test_rows, seq.classes, ("known classes", "discovered classes"))


def treat_open_ended(ctx: TreatContext, params: OpenEndedParams) -> TreatOutcome:
    """Train known classes, then add the discovered classes incrementally: replay vs naive, same accuracy matrix."""
    case = ctx.case
    if case.model_factory is None:
        raise ConfigError("treat research.open_ended retrains the architecture: pass --model file.py:factory")
    test = case.get("test")
    if test is None or test.y is None:
        raise ConfigError("treat research.open_ended needs a labelled test split (pass --test)")
    before = ctx.measure(case)
    k = case.n_classes
    unknown = np.array(sorted(set(params.unknown_classes)) or _default_unknown(k, params.n_unknown), dtype=np.int64)
    known = np.setdiff1d(np.arange(k), unknown)
    tasks = _incremental_tasks(case, test, known, unknown, params)
    results = {}
    with ctx.progress.step("open-ended: incremental learning of the discovered classes", total=4) as advance:
        for strategy in ("naive", "replay"):
            results[strategy] = run_task_sequence(
                case.model_factory,
                case.train.x,
                case.train.y,  # type: ignore[arg-type]
                test.x,
                test.y,
                tasks,
                ContinualConfig(strategy=strategy, epochs=params.epochs, memory=params.memory),
                progress=advance,
            )
    n, r = results["naive"].matrix, results["replay"].matrix
    # the model is not replaced (the new classes' labels stand in for a person's), so 'after' is the same report
    return conclude(
        ctx,
        before=before,
        after=before,
        action=f"learn the discovered classes {', '.join(case.class_names[c] for c in unknown)} incrementally with experience replay ({params.memory} stored samples)",
        before_values={
            "known_accuracy_after_adding": float(n[1, 0]),
            "new_class_accuracy": float(n[1, 1]),
            "bwt": results["naive"].bwt,
        },
        after_values={
            "known_accuracy_after_adding": float(r[1, 0]),
            "new_class_accuracy": float(r[1, 1]),
            "bwt": results["replay"].bwt,
        },
        notes=(
            f"'before' is naive fine-tuning on the new classes, 'after' replay; known-class accuracy before adding them: {float(n[0, 0]):.1%}",
            "the new classes' training rows stand in for the labels a person gives the discovered clusters",
        ),
    )


REMEDY = RemedySpec(
    id=CID,
    params=OpenEndedParams,
    run=treat_open_ended,
    description="Add the discovered classes and learn them incrementally with replay (forgetting of the old classes measured).",
)
