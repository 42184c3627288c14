"""Write the validation results: ``validation.json`` (everything), ``validation.md`` (tables),
power-curve PNGs, and the compact per-check false-alarm table packaged with dlclinic."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["compact", "document", "markdown", "write_all"]

SCHEMA_VERSION = 1


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string with a ``Z`` (the stamp every table entry carries)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def document(
    checks: Mapping[str, Any], *, settings: Mapping[str, Any], wall_seconds: float, workers: int, trials: int
) -> dict[str, Any]:
    """The full JSON document of one run."""
    import dlclinic

    generated = utc_now()
    for entry in checks.values():  # merged entries keep the settings of the run that measured them
        if isinstance(entry, dict):
            entry.setdefault("settings", dict(settings))
            entry.setdefault("generated", generated)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated": generated,
        "dlclinic_version": dlclinic.__version__,
        "settings": dict(settings),
        "trials": trials,
        "wall_seconds": round(wall_seconds, 1),
        "workers": workers,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "checks": dict(checks),
    }


def compact(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The per-check false-alarm rates the HTML report shows next to each status."""
    return {
        "schema_version": SCHEMA_VERSION,
        "generated": doc["generated"],
        "mode": doc["settings"]["mode"],
        "source": "docs/validation.md",
        "checks": {
            cid: {
                "false_alarm_rate": e["false_alarm"]["rate"],
                "ci95": [round(v, 4) for v in e["false_alarm"]["ci95"]],
                "flagged": e["false_alarm"]["flagged"],
                "n": e["false_alarm"]["n"],
                "level": e["level"],
                "exceeds_level": e["exceeds_level"],
                "anchor": "#" + cid.replace(".", ""),
                "measured": e.get("generated", doc["generated"]),
                "power": {
                    name: {
                        "unit": d["unit"],
                        "rows": [[r["strength"], r["power"]["flagged"], r["power"]["n"]] for r in d["rows"]],
                    }
                    for name, d in e.get("defects", {}).items()
                },
            }
            for cid, e in sorted(doc["checks"].items())
        },
    }


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def _rate(r: Mapping[str, Any]) -> str:
    if not r["n"]:
        extra = ", ".join(f"{v} {k}" for k, v in (r.get("not_graded") or {}).items())
        return f"– ({extra})" if extra else "–"
    lo, hi = r["ci95"]
    s = f"{r['flagged']}/{r['n']} = {_pct(r['rate'], 0)} [{_pct(lo, 0)}, {_pct(hi, 0)}]"
    if r.get("not_graded"):
        s += " (+" + ", ".join(f"{v} {k}" for k, v in r["not_graded"].items()) + ")"
    return s


def _seeds(es: Mapping[str, Any]) -> str:
    """How many seeds a check ran: one phrase, or one per group of modalities whose counts differ."""

    def phrase(v: Mapping[str, Any]) -> str:
        text = f"{v['seeds_clean']} clean seeds"
        if v["seeds_defect"]:
            text += f", {v['seeds_defect']} per defect strength"
            text += "" if v.get("all_strengths", True) else " (quick-mode strengths)"
        return text

    per = es.get("by_modality")
    if not per:
        return f"{es['seeds_clean']} clean seeds per modality, {es['seeds_defect']} per defect strength"
    groups: dict[str, list[str]] = {}
    for m, v in per.items():
        groups.setdefault(phrase(v), []).append(m)
    return "; ".join(f"{', '.join(ms)}: {text}" for text, ms in groups.items())


def _verdict(e: Mapping[str, Any]) -> str:
    pooled = {"no": "yes", "point": "**above** (not significant)", "significant": "**NO — above, significant**"}[
        e["exceeds_level"]
    ]
    on = e.get("significantly_above_on")
    return pooled + (f"; **NO on {', '.join(on)}** (significantly above)" if on else "")


def _fmt_strength(s: float) -> str:
    return f"{s:g}"


def _in_taxonomy_order(checks: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Checks in the report's order (the taxonomy's), unknown ids last."""
    from dlclinic.taxonomy import CHALLENGES

    rank = {c.id: i for i, c in enumerate(CHALLENGES)}
    return sorted(checks.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


DEFECT_NOTES: dict[tuple[str, str], str] = {
    ("optimization.forgetting", "class_incremental"): (
        "Since 2026-12-03 a split-class sequence needs two classes per task, so the binary table is `not_examined`"
        " for this defect (the table row above was measured with one class per task, which is not a task); the plan"
        " now runs it on images only."
    ),
}
"""Notes printed under a defect's table (a change of plan since its rows were measured)."""

CHECK_NOTES: dict[str, str] = {
    "model.overfitting": (
        "On `sequence` the clean cases are not clean of what the check measures: dlclinic's 1-D CNN on 600 MNIST-1D"
        " rows, trained with the default recipe (15 epochs, early stopping), is overconfident (test ECE 0.085–0.142,"
        " calibration p-value 0.003 on every seed) and memorises (`memorization`), and on 5 of 12 seeds the"
        " train/test gap is above 5 points. The figure is published as measured (no recipe was changed to hide it);"
        " read it as what the check reports on that model, not as noise. On `tokens` 3 of 12 TokenBag runs were"
        " flagged for miscalibration (ECE 0.06–0.17) and memorisation."
    ),
    "model.hyperparameters": (
        "On `tokens` the published run flagged 8 of 12 clean cases, each naming the same Optuna trial (lr 8.5e-3,"
        " weight decay 0.022, batch 32) 2.4–5.6 points ahead of the clean recipe (lr 5e-3, batch 32, from a coarse"
        " learning-rate scan): the clean recipe was not near-optimal. It is now lr 9e-3, batch 32, weight decay"
        " 1e-4, the best mean of a grid that does not use the check (lr 3e-3..3e-2 × weight decay 1e-4..1e-1 ×"
        " batch 32..256 on seeds 100-105, then lr 7e-3..1.1e-2 on seeds 100-123; 800 train / 500 held-out rows,"
        " 8 epochs, as the check's study): batch 32 wins at every lr, weight decay moves the mean by ≤ 0.6 points"
        " (batch 32, lr ≤ 1e-2), lr 5e-3 scores 0.872 (seeds 100-105) and 9e-3 has the best mean, 0.919 over"
        " seeds 100-123 (8e-3 0.916, 1e-2 0.869: more runs collapse from 1e-2 on). Rerun on tokens"
        " (quick, 12 clean seeds): 1/12 clean cases flagged (95 % CI 0.2–38 %, not significantly above 5 %);"
        " lr_too_low ×3: 1/2, ×30: 2/2. The one alarm (seed 9: the recipe 0.908, the lr 8.5e-3 trial 0.946) is"
        " TokenBag's training-seed chaos near the best learning rate: in the grid, neighbouring learning rates"
        " (7e-3..1.1e-2) on the same seed differ by > 10 points on 9 of 24 seeds (seed 107: 0.920 at 8e-3, 0.792"
        " at 9e-3), a variance the McNemar test, which only resamples validation rows, does not model."
    ),
    "research.theory": (
        "Since 2026-12-04 a very heavy-tailed layer (α < 2) must agree with the measured train/test gap (≥ 5 points"
        " and z > 2, model.overfitting's gap rule) when the test split is labelled. Before, every `sequence` clean run"
        " (12/12) flagged the second convolution (`features.3`, α ≈ 1.7–1.8) of dlclinic's 1-D CNN; now the 6 seeds"
        " whose gap is 2–5 points report it as information (`heavy_tail_uncorroborated`) and the 6 that still warn"
        " all have a significant gap of 5.8–6.8 points (z 2.3–2.7), which model.overfitting's gap rule flags too: the"
        " clean case over-fits on those seeds. The `heavy_tail` defect runs with an unlabelled test split (the proxy"
        " path, where the α rule stands alone). The one image alarm is the untrained-like (permutation) flag."
    ),
    "data.quantity": (
        "On `tokens` (3 of 12 flagged) two kinds of clean runs warn: TokenBag at lr 1e-2 fails to learn the binary"
        " task on one seed (50 % error), and on two others the fitted curve still predicts a 1.5–1.6 point gain"
        " at 1.3–1.7 % error, just above the 1-point rule."
    ),
}
"""Notes printed under a check's false-alarm table (what fired on a modality's clean cases, and why)."""


def markdown(doc: Mapping[str, Any], figures: Mapping[str, str], uncovered: Mapping[str, str]) -> str:
    """``docs/validation.md``."""
    st = doc["settings"]
    lines = [
        "# How much to trust each diagnosis: measured false-alarm rates and detection power",
        "",
        "<!-- generated by `python -m validation`; do not edit by hand -->",
        "",
        "For every check that can warn, the validation suite (`validation/` at the repository root) runs the",
        "check on **clean cases** (no defect planted) and on cases with a **defect planted at several strengths**,",
        "over several seeds (fresh random splits, fresh baseline training) and four data modalities — images, tables,",
        "token ids and float sequences (three checks also on a real table, `fair`: clean cases only) — and counts how",
        "often the status is `warn` or `fail`:",
        "",
        "* **false-alarm rate** = share of clean cases flagged. It should not exceed the level the check states",
        "  (5 % unless its documentation says otherwise);",
        "* **power** = share of defective cases flagged, per strength;",
        "* for checks that flag individual rows: **precision / recall** of the flagged rows against the planted",
        "  ones (pooled over seeds, Wilson 95 % intervals) and **AUPRC** of the flagged list read top-down",
        "  (unflagged rows tie last), averaged over trials.",
        "",
        "Rates carry exact (Clopper–Pearson) 95 % intervals. With *n* clean cases and no alarm the upper bound",
        "is about 3.7/*n*, so small runs cannot prove a low rate — they can only show a high one.",
        "",
        "Each check's section says when and with how many seeds it was measured (the table merges runs; the last one:",
        f"{st['mode']} mode, {doc['trials']} trials, {doc['wall_seconds']:.0f} s on {doc['workers']} worker(s), dlclinic {doc['dlclinic_version']}, {doc['generated']}).",
        "Reproduce with `python -m validation` (release settings: 30 clean seeds per modality, 8 per defect strength,",
        "every strength; `--only ID ... --merge` reruns some checks) or `python -m validation --quick` (6 and 2 seeds,",
        "two strengths at most; < 10 min on 2 cores; prints whether its rates agree with this table).",
        "Base data: scikit-learn's digits (1×8×8 images), breast-cancer and wine tables, and Gaussian-class",
        "generators (`validation/data.py`, shared with the tests; a non-linear 16-cluster table) where the ground truth must be controlled.",
        "Token ids (`tokens`): `validation.data.token_sequences` (3,000 rows × 48 int64 ids, 0 = padding, vocabulary",
        "300, 4 classes set by the majority of cue tokens among Zipf-distributed filler) with dlclinic's TokenBag baseline.",
        "Float sequences (`sequence`): 1,200 series of MNIST-1D (N × 1 × 40, 10 classes; generated locally by the `mnist1d`",
        "package, never downloaded) with dlclinic's 1-D CNN baseline. Both train at lr 1e-2 rather than the recipe's",
        "2e-3 (on 2,100 train rows, 8 epochs at 2e-3 give 86 % and 68 %, at 1e-2 99 % and 85 %). Defects that have",
        "no meaning for token ids (a mean shift, an L∞ ball, a named input region) are replaced by their token analogue",
        "(a shift of the filler-token distribution) or left out, as each table says; a modality a plan does not run on",
        "is listed with the reason. Where a modality ran fewer seeds or strengths, its section says so per modality.",
        "The real table `fair` is statsmodels' `fair` survey (6,366 women, 8 integer-coded columns, label",
        "`affairs > 0`; read from the installed wheel, nothing downloaded): its rows repeat by nature (76 % distinct)",
        "and its labels are ambiguous (best models ≈ 72 % accurate). The clean cases of `data.quality`,",
        "`ethics.fairness` (groups drawn at random per row, as on the other modalities) and `deployment.drift` run on it",
        "too; its defects are planted on the other modalities only.",
        "Budget checks (training cost, energy, edge, latency, load, sharpness × learning rate) are validated",
        "against an independent measurement of the true cost: clean cases set the budget so the true cost is",
        "0.75× of it, defects put the true cost 1.1–3× over it, so the false-alarm rate is the share of runs",
        "in which measurement noise flips the verdict. Deterministic checks (model card, audit trail, serving",
        "parity) run the same protocol: a correct artefact must never be flagged, and each planted defect is counted.",
        "Every trial (status, finding codes, metrics, seconds) is in `docs/validation/trials.jsonl.gz`.",
        "",
        "## Summary",
        "",
        f"{sum(e['exceeds_level'] == 'no' for e in doc['checks'].values())} of {len(doc['checks'])} validated checks are within their stated level on clean cases"
        + (
            f"; above: {', '.join(f'`{c}`' for c, e in doc['checks'].items() if e['exceeds_level'] != 'no')}."
            if any(e["exceeds_level"] != "no" for e in doc["checks"].values())
            else "."
        )
        + "".join(
            f" `{c}` is significantly above its level on {', '.join(e['significantly_above_on'])}."
            for c, e in doc["checks"].items()
            if e.get("significantly_above_on") and e["exceeds_level"] != "significant"
        ),
        "",
        "| check | stated level | false alarms on clean cases [95 % CI] | within level | by modality | power at the strongest defect |",
        "|---|---|---|---|---|---|",
    ]
    for cid, e in _in_taxonomy_order(doc["checks"]):
        strongest = []
        for name, d in e["defects"].items():
            if d["rows"]:
                last = d["rows"][-1]
                strongest.append(f"{name} {_fmt_strength(last['strength'])}: {_pct(last['power']['rate'], 0)}")
        by_mod = " · ".join(f"{m} {r['flagged']}/{r['n']}" for m, r in e["false_alarm_by_modality"].items() if r["n"])
        lines.append(
            f"| [`{cid}`](#{cid.replace('.', '')}) | {_pct(e['level'], 0)} | {_rate(e['false_alarm'])} | {_verdict(e)} | {by_mod or '–'} | {'; '.join(strongest) or '–'} |"
        )
    qc = doc.get("quick_check")
    if qc:
        lines += [
            "",
            f"**Quick mode against this table** ({qc['generated']}): `python -m validation --quick` ran {qc['trials']} trials in {qc['wall_seconds'] / 60:.1f} min"
            f" on {qc['workers']} worker(s); the 95 % intervals of its false-alarm rates overlap the published ones for {qc['agree']} of {qc['checks']} checks.",
        ]
    if uncovered:
        lines += ["", "Checks without a validation plan yet (they are not covered by these numbers):", ""]
        lines += [f"* `{cid}` — {why}" for cid, why in sorted(uncovered.items())]
    for cid, e in _in_taxonomy_order(doc["checks"]):
        es = e.get("settings") or st
        lines += [
            "",
            f"## {cid}",
            "",
            f"Stated level: {_pct(e['level'], 0)} ({e['level_source']}). Clean cases: {e['clean_description']}.",
            "",
        ]
        by_date: dict[str, list[str]] = {}
        for m, when in (e.get("measured_by_modality") or {}).items():
            by_date.setdefault(when, []).append(m)
        when = (
            "; ".join(f"{', '.join(ms)} {d}" for d, ms in sorted(by_date.items()))
            if len(by_date) > 1
            else e.get("generated", doc["generated"])
        )
        lines += [f"Measured {when} in {es['mode']} mode: {_seeds(es)}.", ""]
        lines.append("| modality | false alarms [95 % CI] |")
        lines.append("|---|---|")
        for m, r in e["false_alarm_by_modality"].items():
            lines.append(f"| {m} | {_rate(r)} |")
        for m, why in (e.get("not_validated") or {}).items():
            if m not in e["false_alarm_by_modality"]:
                lines.append(f"| {m} | not validated: {why} |")
        lines.append(f"| **all** | **{_rate(e['false_alarm'])}** |")
        if cid in CHECK_NOTES:
            lines += ["", CHECK_NOTES[cid]]
        if e.get("clean_codes"):
            lines += [
                "",
                "What fired on clean cases: " + ", ".join(f"`{c}` ×{n}" for c, n in e["clean_codes"].items()) + ".",
            ]
        for name, d in e["defects"].items():
            has_samples = any("samples" in r for r in d["rows"])
            mods = sorted({m for r in d["rows"] for m in r["by_modality"]})
            has_diag = any("right_diagnosis" in r for r in d["rows"])
            head = (
                ["strength", "power (all)"] + [f"power ({m})" for m in mods] + (["right diagnosis"] if has_diag else [])
            )
            if has_samples:
                head += ["precision [CI]", "recall [CI]", "AUPRC"]
            lines += [
                "",
                f"**{name}** — strength = {d['unit']}"
                + (f"; rows scored: findings {', '.join(f'`{c}`' for c in d['codes'])}" if d["codes"] else "")
                + (
                    f"; right diagnosis = flagged with {' or '.join(f'`{c}`' for c in d['expect'])}"
                    if d.get("expect")
                    else ""
                ),
                "",
            ]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for r in d["rows"]:
                cells = [_fmt_strength(r["strength"]), _rate(r["power"])] + [
                    _rate(r["by_modality"][m]) if m in r["by_modality"] else "–" for m in mods
                ]
                if has_diag:
                    cells.append(_rate(r["right_diagnosis"]) if "right_diagnosis" in r else "–")
                if has_samples:
                    smp = r.get("samples")
                    if smp:
                        cells += [
                            f"{_pct(smp['precision'], 0)} [{_pct(smp['precision_ci95'][0], 0)}, {_pct(smp['precision_ci95'][1], 0)}]",
                            f"{_pct(smp['recall'], 0)} [{_pct(smp['recall_ci95'][0], 0)}, {_pct(smp['recall_ci95'][1], 0)}]",
                            "–" if smp["auprc_mean"] is None else f"{smp['auprc_mean']:.2f}",
                        ]
                    else:
                        cells += ["–", "–", "–"]
                lines.append("| " + " | ".join(cells) + " |")
            if (cid, name) in DEFECT_NOTES:
                lines += ["", DEFECT_NOTES[cid, name]]
        if cid in figures:
            lines += ["", f"![power curves of {cid}]({figures[cid]})"]
        lines.append(f"\nMean seconds per trial: {e['seconds_per_trial']}.")
    lines += [
        "",
        "## How to read these numbers, and their limits",
        "",
        "* A clean case is clean only of the planted defect: real data carry their own quirks (skewed columns,",
        "  genuinely hard classes). Where a check fired on clean cases, the section lists which finding fired.",
        "* Power depends on the data size as much as on the check: the same defect is easier to see in 700 test",
        '  rows than in 140. The strengths are chosen to span "barely there" to "obvious" on these sizes.',
        "* Precision and recall pool the flagged rows of all trials; their Wilson intervals treat rows as",
        "  independent, which understates the uncertainty when one trial dominates. Trials are independent.",
        '* "Right diagnosis" counts flagged cases whose findings name the planted defect (a check that fires',
        "  for another reason caught something, but not this).",
        "* The HTML report shows each check's false-alarm rate from this table next to its status",
        "  (`dlclinic.report.trust.false_alarm_for`).",
    ]
    return "\n".join(lines) + "\n"


def _figure(cid: str, e: Mapping[str, Any], path: Path) -> bool:
    """Power vs strength per defect (error bars = 95 % CI), the clean false-alarm rate at strength 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defects = [(n, d) for n, d in e["defects"].items() if d["rows"]]
    if not defects:
        return False
    fig, axes = plt.subplots(1, len(defects), figsize=(4.2 * len(defects), 3.2), squeeze=False)
    fa = e["false_alarm"]
    for ax, (name, d) in zip(axes[0], defects, strict=True):
        xs = [0.0] + [r["strength"] for r in d["rows"]]
        rates = [fa["rate"] or 0.0] + [r["power"]["rate"] or 0.0 for r in d["rows"]]
        los = [fa["ci95"][0]] + [r["power"]["ci95"][0] for r in d["rows"]]
        his = [fa["ci95"][1]] + [r["power"]["ci95"][1] for r in d["rows"]]
        order = list(range(len(xs)))  # clean, then the rows weakest to strongest
        pos = list(range(len(xs)))
        ax.errorbar(
            pos,
            [rates[i] for i in order],
            yerr=[[rates[i] - los[i] for i in order], [his[i] - rates[i] for i in order]],
            marker="o",
            capsize=3,
        )
        ax.axhline(e["level"], ls="--", color="grey", lw=1)
        ax.set_xticks(pos, ["clean"] + [f"{xs[i]:g}" for i in order[1:]])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name}", fontsize=9)
        ax.set_xlabel(d["unit"], fontsize=7)
        ax.set_ylabel("share flagged (warn/fail)", fontsize=8)
    fig.suptitle(cid, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def uncovered_checks(covered: Sequence[str]) -> dict[str, str]:
    """Registered checks without a plan, with the reason (checks that cannot warn are listed as such)."""
    from dlclinic.challenges import CHECKS
    from validation.scenarios import NOT_VALIDATED

    return {cid: NOT_VALIDATED.get(cid, "no plan yet") for cid in CHECKS if cid not in covered}


def write_all(
    doc: dict[str, Any], records: Sequence[Mapping[str, Any]], out: Path, *, packaged: Path | None = None
) -> None:
    """Write ``validation.json``, ``validation.md``, figures and trial records under ``out``."""
    for cid, e in doc["checks"].items():
        codes: dict[str, int] = {}
        for r in records:
            if r["check"] == cid and r["defect"] == "clean" and r["status"] in ("warn", "fail"):
                for c in r.get("codes", []):
                    codes[c] = codes.get(c, 0) + 1
        if codes:
            e["clean_codes"] = dict(sorted(codes.items(), key=lambda kv: -kv[1]))
    import gzip

    rerun = {r["check"] for r in records}
    old_path = out / "validation" / "trials.jsonl.gz"
    if old_path.exists():  # keep the trials of merged checks that were not rerun
        kept = []
        for line in gzip.decompress(old_path.read_bytes()).decode("utf-8").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("check") in doc["checks"] and r.get("check") not in rerun:
                kept.append(r)
        records = [*kept, *records]
    figures: dict[str, str] = {}
    for cid, e in doc["checks"].items():
        name = cid.replace(".", "_") + ".png"
        if _figure(cid, e, out / "validation" / name):
            figures[cid] = f"validation/{name}"
    _atomic_write(out / "validation.json", json.dumps(doc, indent=1, sort_keys=False) + "\n")
    trials = "".join(
        json.dumps(dict(r), sort_keys=True) + "\n"
        for r in sorted(records, key=lambda r: (r["check"], r["defect"], r["modality"], r["strength"], r["seed"]))
    )
    tmp = out / "validation" / "trials.jsonl.gz.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)  # no figure was drawn (clean trials only)
    tmp.write_bytes(gzip.compress(trials.encode("utf-8"), mtime=0))
    os.replace(tmp, out / "validation" / "trials.jsonl.gz")
    _atomic_write(out / "validation.md", markdown(doc, figures, uncovered_checks(list(doc["checks"]))))
    if packaged is not None:
        _atomic_write(packaged, json.dumps(compact(doc), indent=1) + "\n")


def rewrite_published(doc: dict[str, Any], out: Path) -> None:
    """Rewrite ``validation.json`` and ``validation.md`` from ``doc`` (figures and trials as they are)."""
    figures = {
        cid: f"validation/{cid.replace('.', '_')}.png"
        for cid in doc["checks"]
        if (out / "validation" / f"{cid.replace('.', '_')}.png").exists()
    }
    _atomic_write(out / "validation.json", json.dumps(doc, indent=1, sort_keys=False) + "\n")
    _atomic_write(out / "validation.md", markdown(doc, figures, uncovered_checks(list(doc["checks"]))))
