"""Run the validation suite: every planned check on clean and defective cases, many seeds.

Usage::

    python -m validation --quick              # < 10 min on 2 cores; writes out/validation/
    python -m validation                      # full mode; publishes docs/validation.{md,json}
    python -m validation --only data.quality deployment.drift --seeds-clean 20

Quick mode runs fewer seeds and strengths and, unless ``--publish`` is given, writes to
``out/validation/`` and compares each false-alarm rate with the published one (do their
95 % intervals overlap?). Full mode writes ``docs/validation.md``, ``docs/validation.json``,
the power-curve figures in ``docs/validation/`` and the compact per-check copy
``src/dlclinic/report/validation.json`` that the HTML report reads.

Each trial is one ``dlclinic.checkup(case, only=[check])`` in a worker process (one torch
thread each); a trial that raises or returns ``error`` is counted separately, never as a
silent ``ok``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Job", "Settings", "aggregate", "jobs_for", "main", "run_job", "run_jobs"]


@dataclass(frozen=True)
class Settings:
    """How many seeds and which strengths a run uses."""

    mode: str  # "quick" | "full"
    seeds_clean: int
    seeds_defect: int
    all_strengths: bool


QUICK = Settings("quick", seeds_clean=6, seeds_defect=2, all_strengths=False)
FULL = Settings("full", seeds_clean=30, seeds_defect=8, all_strengths=True)


@dataclass(frozen=True)
class Job:
    """One trial: a check on one case (``defect == "clean"`` and ``strength == 0`` for clean ones)."""

    check: str
    modality: str
    defect: str
    strength: float
    seed: int
    cost: float = 1.0


def jobs_for(checks: Sequence[str], settings: Settings, modalities: Sequence[str] | None = None) -> list[Job]:
    """Every trial of a run (on ``modalities`` only, when given), most expensive first (better packing over workers)."""
    from validation.scenarios import plan_for

    jobs: list[Job] = []
    for cid in checks:
        plan = plan_for(cid)
        for mod in plan.modalities:
            jobs += [Job(cid, mod, "clean", 0.0, seed, plan.cost) for seed in range(settings.seeds_clean)]
        for d in plan.defects:
            strengths = d.strengths if settings.all_strengths or d.quick_strengths is None else d.quick_strengths
            for mod in d.modalities or plan.modalities:
                for s in strengths:
                    jobs += [
                        Job(cid, mod, d.name, float(s), 1000 + seed, plan.cost) for seed in range(settings.seeds_defect)
                    ]
    if modalities:
        jobs = [j for j in jobs if j.modality in modalities]
    return sorted(jobs, key=lambda j: -j.cost)


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("DLCLINIC_WORKERS", "1")  # the suite already runs one trial per core
    import torch

    torch.set_num_threads(1)


def run_job(job: Job, cache_dir: str) -> dict[str, Any]:
    """Build the job's case, run its check, score per-sample findings; never raises."""
    import warnings

    import dlclinic
    from validation.scenarios import fast_fit, plan_for
    from validation.stats import detection_scores

    warnings.filterwarnings("ignore")
    rec: dict[str, Any] = asdict(job)
    rec.pop("cost")
    t0 = time.perf_counter()
    try:
        plan = plan_for(job.check)
        if job.defect == "clean":
            trial = plan.clean(job.modality, job.seed)
            codes: tuple[str, ...] = ()
        else:
            defect = next(d for d in plan.defects if d.name == job.defect)
            trial = defect.build(job.modality, job.strength, job.seed)
            codes = defect.codes
            rec["expect"] = list(defect.expect)
        kw: dict[str, Any] = {"fit_config": trial.fit or fast_fit(job.modality), "cache_dir": cache_dir}
        if trial.evidence is not None:
            kw["evidence_config"] = trial.evidence
        report = dlclinic.checkup(
            trial.case, only=[job.check], options={job.check: dict(trial.options)} if trial.options else None, **kw
        )
        res = report[job.check]
        rec["status"] = res.status
        rec["summary"] = res.summary[:300]
        rec["codes"] = sorted({f.code for f in res.findings})
        rec["metrics"] = {k: v for k, v in res.metrics.items() if isinstance(v, (int, float, bool)) or v is None}
        if rec.get("expect"):
            rec["right_diagnosis"] = res.status in ("warn", "fail") and bool(set(rec["codes"]) & set(rec["expect"]))
        if trial.truth is not None and codes:
            per: dict[str, Any] = {}
            for split_name, rows in trial.truth.items():
                n = len(trial.case.splits[split_name])
                flagged = [
                    i for f in res.findings if f.code in codes and (f.split in (None, split_name)) for i in f.indices
                ]
                per[split_name] = detection_scores(n, rows, flagged)
            rec["samples"] = per
    except Exception as exc:  # a broken scenario is a row in the table, not a lost run
        rec["status"] = "exception"
        rec["summary"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def run_jobs(jobs: Sequence[Job], workers: int, cache_dir: str, log: Any = None) -> list[dict[str, Any]]:
    """Run ``jobs`` on ``workers`` processes (in-process when ``workers <= 1``)."""
    records: list[dict[str, Any]] = []
    start = time.perf_counter()

    def note(rec: dict[str, Any]) -> None:
        records.append(rec)
        if log is not None:
            log.write(
                f"[{time.perf_counter() - start:6.0f}s {len(records)}/{len(jobs)}] {rec['check']} {rec['modality']} {rec['defect']}={rec['strength']:g} seed {rec['seed']}: {rec['status']} ({rec['seconds']:.1f}s)\n"
            )
            log.flush()

    if workers <= 1:
        _init_worker()
        for job in jobs:
            note(run_job(job, cache_dir))
        return records
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        futures = [pool.submit(run_job, job, cache_dir) for job in jobs]
        for fut in as_completed(futures):
            note(fut.result())
    return records


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rates with Clopper–Pearson intervals per check (clean), per (defect, strength, modality) and pooled."""
    from validation.scenarios import plan_for
    from validation.stats import clopper_pearson, exceeds_level, wilson

    def rate(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        valid = [r for r in recs if r["status"] in ("ok", "warn", "fail")]
        k = sum(r["status"] in ("warn", "fail") for r in valid)
        n = len(valid)
        lo, hi = clopper_pearson(k, n)
        out: dict[str, Any] = {
            "n": n,
            "flagged": k,
            "rate": k / n if n else None,
            "ci95": [lo, hi],
            "fail": sum(r["status"] == "fail" for r in valid),
        }
        other = [r for r in recs if r["status"] not in ("ok", "warn", "fail")]
        if other:
            out["not_graded"] = {s: sum(r["status"] == s for r in other) for s in sorted({r["status"] for r in other})}
            out["example"] = other[0]["summary"]
        return out

    def samples(recs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        per = [v for r in recs for v in (r.get("samples") or {}).values()]
        if not per:
            return None
        tp, fp, fn = (sum(int(v[key]) for v in per) for key in ("tp", "fp", "fn"))
        aps = [float(v["auprc"]) for v in per if v["auprc"] is not None]
        return {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "precision_ci95": list(wilson(tp, tp + fp)),
            "recall": tp / (tp + fn) if tp + fn else None,
            "recall_ci95": list(wilson(tp, tp + fn)),
            "auprc_mean": sum(aps) / len(aps) if aps else None,
            "trials": len(per),
        }

    checks: dict[str, Any] = {}
    for cid in sorted({r["check"] for r in records}):
        plan = plan_for(cid)
        recs = [r for r in records if r["check"] == cid]
        clean = [r for r in recs if r["defect"] == "clean"]
        fa = rate(clean)
        entry: dict[str, Any] = {
            "level": plan.level,
            "level_source": plan.level_source,
            "clean_description": plan.clean_description,
            "false_alarm": fa,
            "false_alarm_by_modality": {m: rate([r for r in clean if r["modality"] == m]) for m in plan.modalities},
            "exceeds_level": exceeds_level(fa["flagged"], fa["n"], plan.level) if fa["n"] else "no",
            "defects": {},
            "seconds_per_trial": round(sum(r["seconds"] for r in recs) / max(1, len(recs)), 2),
        }
        above = {
            m: exceeds_level(r["flagged"], r["n"], plan.level)
            for m, r in entry["false_alarm_by_modality"].items()
            if r["n"] and exceeds_level(r["flagged"], r["n"], plan.level) == "significant"
        }
        if above:  # a modality significantly above the level even where the pooled rate is not
            entry["significantly_above_on"] = sorted(above)
        if plan.not_validated:
            entry["not_validated"] = dict(plan.not_validated)
        for d in plan.defects:
            rows = []
            present = {r["strength"] for r in recs if r["defect"] == d.name}
            # weakest to strongest, as the plan lists them ("fewer rows" defects run downwards)
            for s in [float(v) for v in d.strengths if float(v) in present] + sorted(
                present - {float(v) for v in d.strengths}
            ):
                sel = [r for r in recs if r["defect"] == d.name and r["strength"] == s]
                row: dict[str, Any] = {
                    "strength": s,
                    "power": rate(sel),
                    "by_modality": {
                        m: rate([r for r in sel if r["modality"] == m]) for m in sorted({r["modality"] for r in sel})
                    },
                }
                diag = [r for r in sel if "right_diagnosis" in r]
                if diag:
                    k = sum(bool(r["right_diagnosis"]) for r in diag)
                    row["right_diagnosis"] = {
                        "n": len(diag),
                        "flagged": k,
                        "rate": k / len(diag),
                        "ci95": list(clopper_pearson(k, len(diag))),
                    }
                smp = samples(sel)
                if smp is not None:
                    row["samples"] = smp
                rows.append(row)
            if rows:
                entry["defects"][d.name] = {
                    "unit": d.unit,
                    "codes": list(d.codes),
                    "expect": list(d.expect),
                    "rows": rows,
                }
        checks[cid] = entry
    return checks


def recorded_settings(check: str, recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The seed counts a check's trials really had: clean seeds per modality (the most of any), seeds per
    defect strength (the fewest of any), and, when the modalities differ, each modality's own counts and
    whether it ran every strength of its defects (``by_modality``)."""
    from validation.scenarios import plan_for

    plan = plan_for(check)
    per: dict[str, dict[str, Any]] = {}
    for m in sorted({r["modality"] for r in recs}):
        mine = [r for r in recs if r["modality"] == m]
        keys = {(r["defect"], r["strength"]) for r in mine if r["defect"] != "clean"}
        counts = [sum((r["defect"], r["strength"]) == k for r in mine) for k in keys]
        every = all(
            {float(v) for v in d.strengths} <= {s for n, s in keys if n == d.name}
            for d in plan.defects
            if m in (d.modalities or plan.modalities)
        )
        per[m] = {
            "seeds_clean": sum(r["defect"] == "clean" for r in mine),
            "seeds_defect": min(counts, default=0),
            "all_strengths": every,
        }
    n_clean = max((v["seeds_clean"] for v in per.values()), default=0)
    n_defect = min((v["seeds_defect"] for v in per.values() if v["seeds_defect"]), default=0)
    full = all(  # a modality without defects (the real table) needs clean seeds only
        v["seeds_clean"] >= FULL.seeds_clean
        and (
            v["seeds_defect"] >= FULL.seeds_defect
            or not any(m in (d.modalities or plan.modalities) for d in plan.defects)
        )
        and v["all_strengths"]
        for m, v in per.items()
    )
    out: dict[str, Any] = {
        "mode": "full" if full else "reduced",
        "seeds_clean": n_clean,
        "seeds_defect": n_defect,
        "all_strengths": all(v["all_strengths"] for v in per.values()),
    }
    if len({tuple(v.values()) for v in per.values()}) > 1:
        out["by_modality"] = per
    return out


def compare(current: dict[str, Any], published: dict[str, Any]) -> list[str]:
    """Lines saying, per check, whether the current false-alarm interval overlaps the published one."""
    lines = []
    for cid, entry in current.items():
        pub = published.get("checks", {}).get(cid)
        if pub is None:
            lines.append(f"{cid}: not in the published table")
            continue
        a, b = entry["false_alarm"]["ci95"], pub["false_alarm"]["ci95"]
        agree = a[0] <= b[1] and b[0] <= a[1]
        lines.append(
            f"{cid}: false alarms {entry['false_alarm']['flagged']}/{entry['false_alarm']['n']} now vs {pub['false_alarm']['flagged']}/{pub['false_alarm']['n']} published: {'agree' if agree else 'DISAGREE'} (95 % intervals {'overlap' if agree else 'do not overlap'})"
        )
    return lines


def _read_trials(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Trial records of earlier runs (``trials.jsonl.gz`` files), de-duplicated by job (the last file wins)."""
    import gzip

    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in paths:
        for line in gzip.decompress(Path(path).read_bytes()).decode("utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                seen[(r["check"], r["modality"], r["defect"], float(r["strength"]), int(r["seed"]))] = r
    return list(seen.values())


def _keep_measured_dates(checks: dict[str, Any], published: Mapping[str, Any], now: str) -> None:
    """Re-aggregated entries keep the date they were measured: a modality whose clean rates and
    defect rows are those already published keeps its published date, a new or changed one is
    dated ``now`` (``measured_by_modality``); ``generated`` is the latest of them."""
    for cid, entry in checks.items():
        old = published.get(cid)
        if not old:
            continue
        old_date = old.get("generated")
        dates: dict[str, str] = {}
        for m, rate in entry["false_alarm_by_modality"].items():
            if not rate["n"] and not rate.get("not_graded"):
                continue  # a planned modality without trials yet: nothing was measured
            same_clean = (old.get("false_alarm_by_modality") or {}).get(m) == rate
            same_defects = all(  # rows without this modality (a defect planted on others only) do not count
                [r["by_modality"][m] for r in d["rows"] if m in r["by_modality"]]
                == [
                    r["by_modality"][m]
                    for r in (old.get("defects") or {}).get(name, {}).get("rows", [])
                    if m in r["by_modality"]
                ]
                for name, d in entry.get("defects", {}).items()
            )
            dates[m] = (old.get("measured_by_modality") or {}).get(m, old_date) if same_clean and same_defects else now
        if dates and all(dates.values()):
            entry["generated"] = max(dates.values())
            if len(set(dates.values())) > 1:
                entry["measured_by_modality"] = dates


def main(argv: Sequence[str] | None = None) -> int:
    from validation.scenarios import PLANS

    ap = argparse.ArgumentParser(prog="python -m validation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds and strengths (< 10 min on 2 cores)")
    ap.add_argument("--only", nargs="+", metavar="ID", help="check ids to validate (default: every planned check)")
    ap.add_argument(
        "--modality",
        nargs="+",
        metavar="NAME",
        help="run only the trials on these modalities (e.g. fair, the real categorical table); aggregate with --from-trials",
    )
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seeds-clean", type=int, default=None)
    ap.add_argument("--seeds-defect", type=int, default=None)
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: docs/ in full mode, out/validation/ in quick mode)",
    )
    ap.add_argument(
        "--publish", action="store_true", help="write to docs/ and the packaged report JSON even in quick mode"
    )
    ap.add_argument("--merge", action="store_true", help="keep published checks not rerun (with --only)")
    ap.add_argument(
        "--record",
        action="store_true",
        help="quick mode: record the agreement with the published table in docs/validation.{json,md}",
    )
    ap.add_argument(
        "--from-trials",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="aggregate these trials.jsonl.gz files (from earlier runs) instead of running trials; the settings recorded are --seeds-clean/--seeds-defect and the mode",
    )
    args = ap.parse_args(argv)

    settings = QUICK if args.quick else FULL
    if args.seeds_clean or args.seeds_defect:
        settings = Settings(
            settings.mode,
            args.seeds_clean or settings.seeds_clean,
            args.seeds_defect or settings.seeds_defect,
            settings.all_strengths,
        )
    known = [p.check for p in PLANS]
    checks = args.only or known
    unknown = sorted(set(checks) - set(known))
    if unknown:
        print(
            f"error: no validation plan for {', '.join(unknown)}; expected among: {', '.join(known)}", file=sys.stderr
        )
        return 2
    publish = args.publish or not args.quick
    out = args.out or (
        ROOT / "docs" if publish else ROOT / "out" / "validation"
    )  # the packaged table follows docs/ only
    t0 = time.perf_counter()
    if args.from_trials:
        records = [r for r in _read_trials(args.from_trials) if r["check"] in checks]
        wall = sum(float(r.get("seconds", 0.0)) for r in records) / max(1, args.workers)
        print(
            f"{len(records)} recorded trials of {len({r['check'] for r in records})} check(s) from {len(args.from_trials)} file(s)",
            file=sys.stderr,
        )
    else:
        jobs = jobs_for(checks, settings, args.modality)
        print(
            f"{settings.mode} mode: {len(jobs)} trials of {len(checks)} check(s) on {args.workers} worker(s)",
            file=sys.stderr,
        )
        with tempfile.TemporaryDirectory(prefix="dlclinic-validation-") as cache:
            records = run_jobs(jobs, args.workers, cache, log=sys.stderr)
        wall = time.perf_counter() - t0
    checks_agg = aggregate(records)
    if args.from_trials:  # each check keeps the seed counts its trials really had
        for cid, entry in checks_agg.items():
            entry["settings"] = recorded_settings(cid, [r for r in records if r["check"] == cid])

    from validation import report

    published_path = ROOT / "docs" / "validation.json"
    published = json.loads(published_path.read_text()) if published_path.exists() else None
    if args.from_trials and published is not None:
        _keep_measured_dates(checks_agg, published.get("checks", {}), report.utc_now())
        order = {cid: i for i, cid in enumerate(published.get("checks", {}))}  # the published order: a small diff
        checks_agg = dict(sorted(checks_agg.items(), key=lambda kv: order.get(kv[0], len(order))))
    if published is not None and not publish:
        lines = compare(checks_agg, published)
        for line in lines:
            print(line, file=sys.stderr)
        if args.record:
            agree = sum(line.endswith("overlap)") and "DISAGREE" not in line for line in lines)
            published["quick_check"] = {
                "generated": report.utc_now(),
                "settings": asdict(settings),
                "wall_seconds": round(wall, 1),
                "workers": args.workers,
                "trials": len(records),
                "checks": len(lines),
                "agree": agree,
                "lines": lines,
                "false_alarms": {
                    cid: [e["false_alarm"]["flagged"], e["false_alarm"]["n"]] for cid, e in checks_agg.items()
                },
            }
            report.rewrite_published(published, ROOT / "docs")
            print(
                f"recorded the quick-mode agreement in {ROOT / 'docs'}: {agree} of {len(lines)} checks agree",
                file=sys.stderr,
            )
    if args.merge and published is not None:
        checks_agg = {**published.get("checks", {}), **checks_agg}
    doc = report.document(
        checks_agg, settings=asdict(settings), wall_seconds=wall, workers=args.workers, trials=len(records)
    )
    if args.from_trials and published is not None and "quick_check" in published:
        doc["quick_check"] = published["quick_check"]  # dated: the quick run it records is unchanged
    packaged = ROOT / "src" / "dlclinic" / "report" / "validation.json"
    report.write_all(
        doc, records, out, packaged=packaged if publish and out.resolve() == (ROOT / "docs").resolve() else None
    )
    print(f"wrote {out} in {wall:.0f} s", file=sys.stderr)
    for cid, entry in checks_agg.items():
        fa = entry["false_alarm"]
        if entry["exceeds_level"] != "no":
            print(
                f"ABOVE LEVEL: {cid} false alarms {fa['flagged']}/{fa['n']} > {entry['level']:.0%} ({entry['exceeds_level']})",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
