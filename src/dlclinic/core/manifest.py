"""The run manifest: what a result depends on, written next to every report as ``manifest.json``.

A manifest (schema ``dlclinic.manifest/1``) records the command, the seeds, the package
versions, the hardware, the deterministic-mode flags, and SHA-256 fingerprints of the
data (per split), the model and the configuration — plus the status and metrics of
every check, so that ``dlclinic replay manifest.json`` can re-run the command and say
what changed.

Example:
    >>> m = build_manifest(command=["dlclinic", "checkup", "--demo"], seeds={"fit": 0})
    >>> m["schema"], m["command"]["argv"][1]
    ('dlclinic.manifest/1', 'checkup')
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlclinic.core.atomic import atomic_path
from dlclinic.core.determinism import determinism_state
from dlclinic.core.errors import ConfigError, InputError
from dlclinic.core.fingerprint import fingerprint_array, fingerprint_model, fingerprint_params

if TYPE_CHECKING:
    from dlclinic.core.case import Case
    from dlclinic.core.results import Report

__all__ = [
    "MANIFEST_SCHEMA",
    "build_manifest",
    "compare_manifests",
    "manifest_json",
    "package_versions",
    "read_manifest",
    "write_manifest",
]

MANIFEST_SCHEMA = "dlclinic.manifest/1"

_PACKAGES = (
    "dlclinic",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "cleanlab",
    "safetensors",
    "onnxruntime",
    "captum",
    "opacus",
    "optuna",
    "fairlearn",
)


def package_versions(names: Sequence[str] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions (``importlib.metadata``, nothing imported); ``None`` when absent."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
    }
    info["torch_threads"] = int(torch.get_num_threads())
    info["cuda_available"] = bool(torch.cuda.is_available())
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    return info


def _git_commit(start: Path) -> str | None:
    """The commit of the enclosing git checkout (read from ``.git``, no subprocess), if any."""
    for folder in (start, *start.parents):
        head = folder / ".git" / "HEAD"
        if head.is_file():
            try:
                text = head.read_text().strip()
                if text.startswith("ref: "):
                    ref = folder / ".git" / text[5:]
                    return ref.read_text().strip() if ref.is_file() else None
                return text
            except OSError:
                return None
    return None


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def build_manifest(
    *,
    report: Report | None = None,
    case: Case | None = None,
    command: Sequence[str] | None = None,
    seeds: Mapping[str, int] | None = None,
    config: Mapping[str, Any] | None = None,
    model: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest from whatever is at hand (all arguments optional).

    Args:
        report: a checkup report: its data/model fingerprints, evidence config (seed), the
            environment and every check's status and metrics are taken from it.
        case: the case, for data fingerprints when no report is given.
        command: the command line (default ``sys.argv``).
        seeds: named seeds (``{"fit": 0, "evidence": 0}``); merged over the report's.
        config: the configuration to record and fingerprint (e.g. the fit recipe).
        model: a model to fingerprint when no report is given.
        extra: anything else to record under ``"extra"``.
    """
    argv = [str(a) for a in (command if command is not None else sys.argv)]
    manifest = _environment(argv)
    all_seeds: dict[str, int] = {}
    hashes: dict[str, Any] = {}
    if report is not None:
        _record_report(manifest, report, all_seeds, hashes)
    elif case is not None:
        hashes.update({f"data.{k}": fingerprint_array(s.x, s.y) for k, s in case.splits.items()})
        if case.model is not None and hasattr(case.model, "state_dict"):
            hashes["model"] = fingerprint_model(case.model)
    if model is not None and "model" not in hashes:
        hashes["model"] = fingerprint_model(model)
    if config is not None:
        manifest["config"] = _clean(dict(config))
        hashes["config"] = fingerprint_params(dict(config))
    all_seeds.update({k: int(v) for k, v in (seeds or {}).items()})
    manifest["seeds"] = all_seeds
    manifest["hashes"] = hashes
    if extra:
        manifest["extra"] = _clean(dict(extra))
    return manifest


def _environment(argv: list[str]) -> dict[str, Any]:
    """The manifest's head: schema, time, command, packages, hardware, git commit, environment, determinism."""
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "command": {
            "argv": argv,
            "cwd": os.getcwd(),
            "via_cli": bool(argv) and Path(argv[0]).name in ("dlclinic", "dlclinic.exe", "__main__.py"),
        },
        "packages": package_versions(),
        "hardware": _hardware(),
        "git_commit": _git_commit(Path.cwd()),
        "environment_variables": {
            k: os.environ.get(k)
            for k in (
                "PYTHONHASHSEED",
                "CUBLAS_WORKSPACE_CONFIG",
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "CUDA_VISIBLE_DEVICES",
            )
        },
    }
    manifest["determinism"] = determinism_state()
    return manifest


def _record_report(manifest: dict[str, Any], report: Report, all_seeds: dict[str, int], hashes: dict[str, Any]) -> None:
    """Fingerprints, evidence seed, case, evidence config and every check's status and metrics of a report."""
    rc = dict(report.case)
    ev_seed = (rc.get("evidence") or {}).get("config", {}).get("seed")
    if ev_seed is not None:
        all_seeds["evidence"] = int(ev_seed)
    hashes.update({k: v for k, v in (rc.get("fingerprints") or {}).items()})
    manifest["dlclinic_version"] = report.dlclinic_version
    manifest["report_created"] = report.created
    manifest["case"] = _clean({k: rc.get(k) for k in ("name", "n_classes", "modality", "input_shape", "splits")})
    manifest["model_source"] = (rc.get("model") or {}).get("source")
    manifest["evidence_config"] = _clean((rc.get("evidence") or {}).get("config"))
    manifest["results"] = {r.id: {"status": r.status, "metrics": _clean(dict(r.metrics))} for r in report.challenges}
    if report.treatments:
        manifest["treatments"] = [_clean(t.to_dict()) for t in report.treatments]
    if isinstance((rc.get("metadata") or {}).get("cli_args"), str):
        manifest["cli_args"] = rc["metadata"]["cli_args"]


def manifest_json(manifest: Mapping[str, Any]) -> str:
    """The manifest as indented JSON text (NaN/Inf and numpy values cleaned)."""
    return json.dumps(_clean(dict(manifest)), indent=2, sort_keys=False) + "\n"


def write_manifest(path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` as indented JSON, atomically (complete or absent, never partial)."""
    target = Path(path)
    text = manifest_json(manifest)
    try:
        with atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"manifest {str(target)!r}: expected a writable location, found {exc.strerror or exc}"
        ) from exc
    return target


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a manifest (a one-line InputError for a missing or foreign file)."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.is_file():
        raise InputError(f"manifest {str(p)!r}: expected a manifest.json written by dlclinic, found no such file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"manifest {str(p)!r}: expected JSON, found unreadable content ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"manifest {str(p)!r}: expected schema {MANIFEST_SCHEMA!r}, found {found!r}")
    return data


def compare_manifests(
    recorded: Mapping[str, Any], replayed: Mapping[str, Any], *, tolerance: float = 0.0
) -> dict[str, list[str]]:
    """What differs between two runs: ``hashes``, ``packages``, ``hardware``, ``seeds``, ``results``.

    Metrics differing by more than ``tolerance`` (absolute) are listed under ``results``;
    every entry is one readable line.
    """
    out: dict[str, list[str]] = {"hashes": [], "packages": [], "hardware": [], "seeds": [], "results": []}
    for section in ("hashes", "packages", "seeds"):
        a, b = recorded.get(section) or {}, replayed.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                va, vb = a.get(key), b.get(key)
                if section == "hashes":
                    va = va[:12] if isinstance(va, str) else va
                    vb = vb[:12] if isinstance(vb, str) else vb
                out[section].append(f"{key}: {va} → {vb}")
    for key in ("machine", "cpu_count", "torch_threads", "cuda_devices"):
        a, b = (recorded.get("hardware") or {}).get(key), (replayed.get("hardware") or {}).get(key)
        if a != b:
            out["hardware"].append(f"{key}: {a} → {b}")
    ra, rb = recorded.get("results") or {}, replayed.get("results") or {}
    for cid in sorted(set(ra) | set(rb)):
        a, b = ra.get(cid) or {}, rb.get(cid) or {}
        if a.get("status") != b.get("status"):
            out["results"].append(f"{cid}: status {a.get('status')} → {b.get('status')}")
        ma, mb = a.get("metrics") or {}, b.get("metrics") or {}
        for m in sorted(set(ma) | set(mb)):
            va, vb = ma.get(m), mb.get(m)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
                if abs(float(va) - float(vb)) > tolerance:
                    out["results"].append(f"{cid}.{m}: {va:.6g} → {vb:.6g}")
            elif va != vb:
                out["results"].append(f"{cid}.{m}: {va} → {vb}")
    return out
