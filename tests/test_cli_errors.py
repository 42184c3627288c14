"""The CLI's contract for bad input: one clear line on stderr, exit code 2, no traceback, no partial files.

Every case runs the real command line in a subprocess (``python -m dlclinic.cli``) in its own
temporary folder, on small files written there: npz splits of 60 rows × 4 features and
3 classes, a ``model.py`` with good and bad factories, corrupt weights and model files.
Each subprocess imports torch (~2 s), so the selected cases are started concurrently by a
module fixture and each test waits for its own result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

N_ROWS, N_FEATURES, N_CLASSES = 60, 4, 3

from dlclinic.challenges import REMEDIES  # noqa: E402
from dlclinic.monitoring import Reference  # noqa: E402
from dlclinic.taxonomy import CHALLENGES  # noqa: E402

NO_REMEDY = next((c.id for c in CHALLENGES if c.id not in REMEDIES), None)

MODEL_PY = """\
import torch


def factory():
    return torch.nn.Linear(4, 3)


def wide_factory():
    return torch.nn.Linear(4, 5)


def narrow_input_factory():
    return torch.nn.Linear(5, 3)


def bad_factory():
    return {"not": "a module"}


def raising_factory():
    raise RuntimeError("boom while building")


not_callable = 42
"""


def _write_inputs(root: Path) -> None:
    """Every input file the cases refer to, by relative path."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_ROWS, N_FEATURES)).astype(np.float32)
    y = np.arange(N_ROWS) % N_CLASSES
    names = np.array(["a", "b", "c"])

    np.savez(root / "train.npz", x=x, y=y)
    np.savez(root / "test.npz", x=x + 0.1, y=y)
    np.savez(root / "train_named.npz", x=x, y=y, class_names=names)  # 3 classes fixed by name

    # wrong shapes, labels and lengths
    np.savez(root / "test_5feat.npz", x=rng.normal(size=(N_ROWS, 5)).astype(np.float32), y=y)
    np.savez(root / "test_1d.npz", x=rng.normal(size=N_ROWS), y=y)
    y_nan = y.astype(np.float64)
    y_nan[5] = np.nan
    np.savez(root / "train_nan.npz", x=x, y=y_nan)
    np.savez(root / "test_nan.npz", x=x, y=y_nan)
    y_frac = y.astype(np.float64)
    y_frac[3] = 1.5
    np.savez(root / "train_frac.npz", x=x, y=y_frac)
    y_neg = y.copy()
    y_neg[2] = -1
    np.savez(root / "train_neg.npz", x=x, y=y_neg)
    y_7 = y.copy()
    y_7[4] = 7
    np.savez(root / "test_label7.npz", x=x, y=y_7)
    np.savez(root / "train_one_class.npz", x=x, y=np.zeros(N_ROWS, dtype=np.int64))
    np.savez(root / "train_short_y.npz", x=x, y=y[:-1])
    np.savez(root / "test_short_y.npz", x=x, y=y[:-3])
    np.savez(root / "train_no_x.npz", features=x, y=y)
    np.savez(root / "train_no_y.npz", x=x)
    np.savez(root / "train_empty.npz", x=np.zeros((0, N_FEATURES), np.float32), y=np.zeros(0, np.int64))
    np.savez(root / "train_object.npz", x=np.array([[1, "a"], [2, None]], dtype=object), y=np.array([0, 1]))

    # unreadable data files
    (root / "garbage.npz").write_bytes(rng.bytes(512))
    (root / "train.txt").write_text("1,2,3\n")

    # models
    (root / "model.py").write_text(MODEL_PY)
    (root / "broken_model.py").write_text("import torch\ndef factory(:\n    pass\n")
    (root / "corrupt.safetensors").write_bytes(rng.bytes(256))
    (root / "corrupt.pt").write_bytes(rng.bytes(256))
    (root / "corrupt.onnx").write_bytes(rng.bytes(256))
    (root / "corrupt.pt2").write_bytes(rng.bytes(256))
    (root / "model.bin").write_bytes(rng.bytes(16))
    torch.save(torch.nn.Linear(4, 3), root / "whole_model.pt")  # a pickled module: must be refused
    torch.save(torch.nn.Linear(4, 5).state_dict(), root / "wrong_arch.pt")
    torch.save([1, 2, 3], root / "list.pt")

    # something that is a regular file, so nothing can be created "under" it
    (root / "afile").write_text("I am a file, not a folder\n")
    (root / "outdir").mkdir()  # an existing folder where a file name is expected
    (root / "ro").mkdir()
    (root / "ro").chmod(0o555)  # read-only (for a user other than root)
    _write_issue_18_inputs(root, x, y, rng)


def _write_issue_18_inputs(root: Path, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
    """Inputs of the defects issue 18 found: typo labels, unusable values, labels beyond the model, empty files."""
    y_3 = y.copy()
    y_3[8] = N_CLASSES  # model.py:factory outputs 3 classes: label 3 is beyond them
    np.savez(root / "train_label3.npz", x=x, y=y_3)
    y_typo = y.astype(str)
    y_typo[4] = "seven"
    np.savez(root / "test_typo.npz", x=x, y=y_typo)
    x_bad = x.copy()
    x_bad[3, 1], x_bad[7, 0], x_bad[11, 2] = np.inf, 1e38, np.nan
    x_bad[20, :] = -np.inf
    np.savez(root / "train_inf.npz", x=x_bad, y=y)
    header = "a,b,c,d,label\n"
    rows = [",".join(f"{v:.4f}" for v in row) for row in x]
    (root / "train.csv").write_text(header + "".join(f"{r},{c}\n" for r, c in zip(rows, y, strict=True)))
    typo = [str(c) if i != 4 else "seven" for i, c in enumerate(y)]
    (root / "train_typo.csv").write_text(header + "".join(f"{r},{c}\n" for r, c in zip(rows, typo, strict=True)))
    names = np.array(["cat", "cow", "dog"])[y]
    (root / "train_names.csv").write_text(header + "".join(f"{r},{c}\n" for r, c in zip(rows, names, strict=True)))
    test_names = names.copy()
    test_names[7] = "dgo"
    (root / "test_names.csv").write_text(header + "".join(f"{r},{c}\n" for r, c in zip(rows, test_names, strict=True)))
    qmark = [r if i != 2 else "?" + r[r.index(",") :] for i, r in enumerate(rows)]
    (root / "train_qmark.csv").write_text(header + "".join(f"{r},{c}\n" for r, c in zip(qmark, y, strict=True)))
    Reference.build(rng.normal(size=(N_ROWS, N_CLASSES)), y).save(root / "reference.npz")  # monitor's reference
    (root / "empty.safetensors").write_bytes(b"")
    (root / "short.safetensors").write_bytes(rng.bytes(4))


# Common tails of the argument lists: fast, quiet, one check, no cache.
FAST = ["--quiet", "--no-cache", "--epochs", "1"]
CHECK = ["--only", "data.quality", "--out", "out", *FAST]
DATA = ["--train", "train.npz", "--test", "test.npz"]
MODEL = ["--model", "model.py:factory"]


def _checkup(*args: str) -> list[str]:
    return ["checkup", *args, *CHECK]


# (id, argv, fragments the error line must contain, out folder to inspect)
CASES: list[tuple[str, list[str], tuple[str, ...], str]] = [
    # ----- options
    ("unknown-option", _checkup(*DATA, "--frobnicate"), ("No such option", "--frobnicate"), "out"),
    (
        "unknown-only-id",
        _checkup(*DATA, *MODEL, "--only", "data.nope"),
        ("unknown challenge id", "data.nope", "expected"),
        "out",
    ),
    ("bad-fail-on-value", _checkup(*DATA, *MODEL, "--fail-on", "sometimes"), ("sometimes",), "out"),
    (
        "epochs-zero",
        ["checkup", *DATA, *MODEL, "--out", "out", "--quiet", "--no-cache", "--epochs", "0"],
        ("--epochs",),
        "out",
    ),
    ("no-data", _checkup(*MODEL), ("no data given", "expected --train"), "out"),
    ("demo-and-train", _checkup("--demo", *DATA), ("exclusive", "expected"), "out"),
    ("weights-without-model", _checkup(*DATA, "--weights", "corrupt.safetensors"), ("--weights needs --model",), "out"),
    (
        "out-under-a-file",
        ["checkup", *DATA, *MODEL, "--only", "data.quality", "--out", "afile/sub", *FAST],
        ("--out", "expected a writable folder"),
        "afile/sub",
    ),
    # ----- data files
    ("train-missing", _checkup("--train", "nope.npz", *MODEL), ("not found", "nope.npz"), "out"),
    ("test-missing", _checkup("--train", "train.npz", "--test", "nope.npz", *MODEL), ("not found", "nope.npz"), "out"),
    (
        "train-corrupt-npz",
        _checkup("--train", "garbage.npz", *MODEL),
        ("expected a NumPy .npz archive", "garbage.npz"),
        "out",
    ),
    ("train-unknown-format", _checkup("--train", "train.txt", *MODEL), ("expected .npz", "train.txt"), "out"),
    ("train-no-x", _checkup("--train", "train_no_x.npz", *MODEL), ("expected an array 'x'", "features"), "out"),
    ("train-no-labels", _checkup("--train", "train_no_y.npz", *MODEL), ("expected labels",), "out"),
    ("train-empty", _checkup("--train", "train_empty.npz", *MODEL), ("expected at least one sample", "found 0"), "out"),
    ("train-object-array", _checkup("--train", "train_object.npz", *MODEL), ("pickled", "never unpickled"), "out"),
    (
        "test-wrong-feature-count",
        _checkup("--train", "train.npz", "--test", "test_5feat.npz", *MODEL),
        ("expected", "(4,)", "(5,)"),
        "out",
    ),
    (
        "test-1d-x",
        _checkup("--train", "train.npz", "--test", "test_1d.npz", *MODEL),
        ("expected N×features", "(60,)"),
        "out",
    ),
    (
        "train-nan-label",
        _checkup("--train", "train_nan.npz", "--test", "test.npz", *MODEL),
        ("expected a label on every row", "NaN", "row 5"),
        "out",
    ),
    (
        "test-nan-label",
        _checkup("--train", "train.npz", "--test", "test_nan.npz", *MODEL),
        ("split 'test'", "NaN"),
        "out",
    ),
    (
        "train-fractional-label",
        _checkup("--train", "train_frac.npz", *MODEL),
        ("expected integer class labels", "1.5"),
        "out",
    ),
    ("train-negative-label", _checkup("--train", "train_neg.npz", *MODEL), ("expected labels in 0..K-1", "-1"), "out"),
    (
        "train-one-class",
        _checkup("--train", "train_one_class.npz", *MODEL),
        ("expected at least 2 classes", "found 1"),
        "out",
    ),
    (
        "test-label-beyond-named-classes",
        _checkup("--train", "train_named.npz", "--test", "test_label7.npz", *MODEL),
        ("expected values in 0..2", "found 7"),
        "out",
    ),
    (
        "train-y-shorter-than-x",
        _checkup("--train", "train_short_y.npz", *MODEL),
        ("expected 'y' with one value per row", "(60)", "(59,)"),
        "out",
    ),
    (
        "test-y-shorter-than-x",
        _checkup("--train", "train.npz", "--test", "test_short_y.npz", *MODEL),
        ("split 'test'", "(57,)"),
        "out",
    ),
    # ----- models
    (
        "model-file-missing",
        _checkup(*DATA, "--model", "nonexistent.py:factory"),
        ("not found", "nonexistent.py"),
        "out",
    ),
    ("model-py-without-factory", _checkup(*DATA, "--model", "model.py"), ("expected path/to/file.py:factory",), "out"),
    (
        "model-no-such-function",
        _checkup(*DATA, "--model", "model.py:nope"),
        ("has no function 'nope'", "factory"),
        "out",
    ),
    (
        "model-not-callable",
        _checkup(*DATA, "--model", "model.py:not_callable"),
        ("'not_callable'", "expected a function"),
        "out",
    ),
    (
        "model-file-does-not-import",
        _checkup(*DATA, "--model", "broken_model.py:factory"),
        ("importing broken_model.py failed", "SyntaxError"),
        "out",
    ),
    (
        "factory-returns-dict",
        _checkup(*DATA, "--model", "model.py:bad_factory"),
        ("returned dict", "expected a torch.nn.Module"),
        "out",
    ),
    (
        "factory-raises",
        _checkup(*DATA, "--model", "model.py:raising_factory"),
        ("raised", "boom while building"),
        "out",
    ),
    (
        "model-whole-pickled-pt",
        _checkup(*DATA, "--model", "whole_model.pt"),
        ("pickled model", "whole_model.pt"),
        "out",
    ),
    ("model-safetensors-alone", _checkup(*DATA, "--model", "corrupt.safetensors"), ("holds weights only",), "out"),
    ("model-unknown-suffix", _checkup(*DATA, "--model", "model.bin"), ("expected", "'.bin'"), "out"),
    (
        "model-corrupt-onnx",
        _checkup(*DATA, "--model", "corrupt.onnx"),
        ("expected a valid ONNX model", "corrupt"),
        "out",
    ),
    (
        "model-corrupt-pt2",
        _checkup(*DATA, "--model", "corrupt.pt2"),
        ("expected a torch.export program", "corrupt"),
        "out",
    ),
    (
        "weights-corrupt-safetensors",
        _checkup(*DATA, *MODEL, "--weights", "corrupt.safetensors"),
        ("expected a valid .safetensors file", "corrupt"),
        "out",
    ),
    (
        "weights-corrupt-pt",
        _checkup(*DATA, *MODEL, "--weights", "corrupt.pt"),
        ("corrupt.pt", "expected a state_dict"),
        "out",
    ),
    (
        "weights-pickled-module",
        _checkup(*DATA, *MODEL, "--weights", "whole_model.pt"),
        ("refused", "never unpickles"),
        "out",
    ),
    (
        "weights-not-a-state-dict",
        _checkup(*DATA, *MODEL, "--weights", "list.pt"),
        ("expected a state_dict", "list"),
        "out",
    ),
    (
        "weights-wrong-architecture",
        _checkup(*DATA, *MODEL, "--weights", "wrong_arch.pt"),
        ("do not fit the model", "shape mismatches"),
        "out",
    ),
    (
        "weights-missing-file",
        _checkup(*DATA, *MODEL, "--weights", "nope.safetensors"),
        ("weights file not found",),
        "out",
    ),
    (
        "weights-with-onnx-model",
        _checkup(*DATA, "--model", "corrupt.onnx", "--weights", "corrupt.safetensors"),
        ("drop --weights",),
        "out",
    ),
    # detected only while computing evidence, inside the checkup
    (
        "model-output-width-mismatch",
        _checkup(*DATA, "--model", "model.py:wide_factory"),
        ("N×3 logits", "(60, 5)"),
        "out",
    ),
    (
        "model-input-width-mismatch",
        _checkup(*DATA, "--model", "model.py:narrow_input_factory"),
        ("the model failed on a batch", "(60, 4)"),
        "out",
    ),
    # ----- other commands
    (
        "treat-unknown-challenge",
        ["treat", "data.nope", *DATA, *MODEL, "--out", "out", *FAST],
        ("unknown challenge id", "data.nope"),
        "out",
    ),
    (
        "treat-option-without-equals",
        ["treat", "data.quality", *DATA, *MODEL, "--option", "mode", "--out", "out", *FAST],
        ("expected KEY=VALUE",),
        "out",
    ),
    (
        "treat-unknown-param",
        ["treat", "data.quality", *DATA, *MODEL, "--option", "colour=red", "--out", "out", *FAST],
        ("unknown option(s) 'colour'", "mode"),
        "out",
    ),
    (
        "treat-bad-param-value",
        ["treat", "data.labeling_cost", *DATA, *MODEL, "--option", "budget=many", "--out", "out", *FAST],
        ("budget='many'", "invalid literal"),
        "out",
    ),
    (
        "treat-pool-with-wrong-challenge",
        ["treat", "data.quality", *DATA, *MODEL, "--pool", "train.npz", "--out", "out", *FAST],
        ("--pool applies to data.labeling_cost",),
        "out",
    ),
    (
        "treat-pool-missing",
        ["treat", "data.labeling_cost", *DATA, *MODEL, "--pool", "nope.npz", "--out", "out", *FAST],
        ("--pool nope.npz: file not found",),
        "out",
    ),
    (
        "checkup-option-unscoped",
        _checkup(*DATA, *MODEL, "--option", "alpha=0.1"),
        ("expected CHALLENGE.ID.OPTION=VALUE",),
        "out",
    ),
    (
        "checkup-option-for-unknown-id",
        _checkup(*DATA, *MODEL, "--option", "data.nope.x=1"),
        ("--option for data.nope, which has no check",),
        "out",
    ),
    (
        "checkup-option-bad-float",
        _checkup(*DATA, *MODEL, "--option", "data.generalization.alpha=small"),
        ("alpha='small'",),
        "out",
    ),
    ("checkup-ood-missing", _checkup(*DATA, *MODEL, "--ood", "nope.npz"), ("--ood nope.npz: file not found",), "out"),
    (
        "treat-missing-train",
        ["treat", "data.quality", "--train", "nope.npz", *MODEL, "--out", "out", *FAST],
        ("not found", "nope.npz"),
        "out",
    ),
    (
        "treat-out-under-a-file",
        ["treat", "data.quality", *DATA, *MODEL, "--out", "afile/sub", *FAST],
        ("expected a writable folder",),
        "afile/sub",
    ),
    ("demo-export-under-a-file", ["demo", "export", "afile/sub"], ("expected a writable folder",), "afile/sub"),
    # ----- issue 18: selections, outputs and stores that name nothing or the wrong thing
    (
        "only-empty",
        _checkup(*DATA, *MODEL, "--only", ""),
        ("--only", "expected challenge ids", "empty selection"),
        "out",
    ),
    ("only-comma", _checkup(*DATA, *MODEL, "--only", ","), ("--only", "empty selection"), "out"),
    ("only-blank", _checkup(*DATA, *MODEL, "--only", " "), ("--only", "empty selection"), "out"),
    (
        "predict-out-existing-folder",
        ["predict", "test.npz", *MODEL, "--out", "outdir"],
        ("--out outdir", "expected a .csv or .parquet file name", "existing folder"),
        "outdir",
    ),
    (
        "monitor-store-missing",
        ["monitor", "--store", "typo.db", "--reference", "reference.npz", "--out", "out"],
        ("--store typo.db", "expected the prediction log", "no file"),
        "out",
    ),
    (
        "label-col-missing-in-npz",
        _checkup("--train", "train.npz", "--label-col", "label", *MODEL),
        ("expected an array 'label' (--label-col) in train.npz", "found keys"),
        "out",
    ),
    (
        "suspect-region-malformed",
        _checkup(*DATA, *MODEL, "--suspect-region", "0-4,0:4"),
        ("region '0-4,0:4'", "expected 'r0:r1,c0:c1'"),
        "out",
    ),
    (
        "suspect-region-on-table-data",
        _checkup(*DATA, *MODEL, "--suspect-region", "0:2,0:2", "--only", "model.interpretability"),
        ("region '0:2,0:2'", "expected an image input"),
        "out",
    ),
    ("scan-model-missing-file", ["scan-model", "nope.pt"], ("nope.pt", "expected a model file", "no such file"), "out"),
    (
        "csv-typo-label",
        _checkup("--train", "train_typo.csv", "--label-col", "label", *MODEL),
        ("expected integer class labels", "'seven' at row 4"),
        "out",
    ),
    (
        "npz-typo-label-in-test",
        _checkup("--train", "train.npz", "--test", "test_typo.npz", *MODEL),
        ("split 'test'", "'seven' at row 4"),
        "out",
    ),
    (
        "csv-class-unseen-in-train",
        _checkup("--train", "train_names.csv", "--test", "test_names.csv", "--label-col", "label"),
        ("split 'test'", "expected class names seen in train", "'dgo' at row 7"),
        "out",
    ),
    (
        "option-negative-count",
        _checkup(*DATA, *MODEL, "--option", "data.quality.max_examples=-1"),
        ("max_examples >= 0", "max_examples=-1"),
        "out",
    ),
    (
        "label-beyond-model-outputs",
        _checkup("--train", "train_label3.npz", "--test", "test.npz", *MODEL),
        ("split 'train' labels", "expected values in 0..2 (the model outputs 3 classes)", "found 3 at row 8"),
        "out",
    ),
]

# a folder no process may write to: root ignores permission bits, but not /proc
UNWRITABLE = "/proc/dlclinic-out" if os.geteuid() == 0 else "ro/out"
CASES.append(
    (
        "out-unwritable",
        ["checkup", *DATA, *MODEL, "--only", "data.quality", "--out", UNWRITABLE, *FAST],
        ("--out", "expected a writable folder", "not writable"),
        UNWRITABLE,
    )
)


CONTROL_ARGV = [
    "checkup",
    "--train",
    "train.npz",
    "--test",
    "test.npz",
    "--model",
    "model.py:factory",
    "--only",
    "data.quality",
    "--out",
    "out",
    "--quiet",
    "--no-cache",
]

if NO_REMEDY is not None:
    CASES.append(
        (
            "treat-no-remedy",
            ["treat", NO_REMEDY, *DATA, *MODEL, "--out", "out", *FAST],
            (f"no remedy for {NO_REMEDY!r}", "expected one of"),
            "out",
        )
    )
CASES.append(
    (
        "test-label-beyond-train-classes",
        _checkup("--train", "train.npz", "--test", "test_label7.npz"),
        ("expected values in 0..2", "found 7"),
        "out",
    )
)


def _run(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DLCLINIC_CACHE": str(cwd / "cache"),
        "COLUMNS": "200",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "dlclinic.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


class Runs:
    """Runs the selected cases concurrently (each imports torch: ~2 s of CPU), each in its own folder."""

    def __init__(self, factory: pytest.TempPathFactory, wanted: dict[str, list[str]]) -> None:
        self.folders: dict[str, Path] = {}
        for case_id in wanted:
            folder = factory.mktemp(case_id)
            _write_inputs(folder)
            self.folders[case_id] = folder
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))
        self._futures: dict[str, Future[subprocess.CompletedProcess[str]]] = {
            cid: self._pool.submit(_run, self.folders[cid], argv) for cid, argv in wanted.items()
        }

    def get(self, case_id: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        return self._futures[case_id].result(), self.folders[case_id]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# inputs that must not stop the command (exit 0 or the command's own verdict), by id
CONTRACTS: dict[str, list[str]] = {
    "unusable-values-reported": [
        "checkup",
        "--train",
        "train_inf.npz",
        "--test",
        "test.npz",
        "--only",
        "data",
        "--out",
        "out",
        *FAST,
    ],
    "csv-warnings-one-line": ["checkup", "--train", "train_qmark.csv", "--label-col", "label", *CHECK],
    "scan-model-empty-safetensors": ["scan-model", "empty.safetensors", "short.safetensors"],
}

ALL_ARGV: dict[str, list[str]] = {case_id: argv for case_id, argv, *_ in CASES}
ALL_ARGV["valid-control"] = CONTROL_ARGV
ALL_ARGV.update(CONTRACTS)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Start every case selected in this session at once; each test then waits for its own."""
    selected: dict[str, list[str]] = {}
    for item in request.session.items:
        if "runs" not in getattr(item, "fixturenames", ()):
            continue
        callspec = getattr(item, "callspec", None)
        case_id = callspec.id if callspec is not None else getattr(item.function, "case_id", "valid-control")
        if case_id in ALL_ARGV:
            selected[case_id] = ALL_ARGV[case_id]
    batch = Runs(tmp_path_factory, selected)
    yield batch
    batch.close()


def _leftovers(folder: Path) -> list[str]:
    """Report files and temporary files under ``folder`` (which need not exist)."""
    if not folder.is_dir():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name in ("report.json", "report.html")
        or p.name.endswith(".tmp")
        or p.name.startswith(".dlclinic-write-test-")
    )


def _check_one_line_exit_2(
    proc: subprocess.CompletedProcess[str], folder: Path, argv: list[str], fragments: tuple[str, ...], out: str
) -> None:
    detail = f"argv: {argv}\nexit: {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, detail
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, detail
    line = lines[0]
    assert line.startswith("error: "), detail
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, detail
    for fragment in fragments:
        assert fragment in line, f"missing {fragment!r} in {line!r}\n{detail}"
    assert _leftovers(folder / out) == [], detail
    assert _leftovers(folder) == [], detail  # nothing half-written anywhere in the working folder


@pytest.mark.parametrize(
    ("argv", "fragments", "out"),
    [pytest.param(argv, fragments, out, id=case_id) for case_id, argv, fragments, out in CASES],
)
def test_bad_input_is_one_line_exit_2_no_files(
    runs: Runs, request: pytest.FixtureRequest, argv: list[str], fragments: tuple[str, ...], out: str
) -> None:
    proc, folder = runs.get(request.node.callspec.id)
    _check_one_line_exit_2(proc, folder, argv, fragments, out)


def test_valid_tiny_case_exits_0_and_writes_both_reports(runs: Runs) -> None:
    proc, folder = runs.get("valid-control")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    out = folder / "out"
    assert (out / "report.json").is_file() and (out / "report.json").stat().st_size > 0
    assert (out / "report.html").is_file() and (out / "report.html").stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".dlclinic-write-test-")]


def _contract(case_id: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test as reading the run of ``CONTRACTS[case_id]``."""

    def mark(fn: Callable[..., None]) -> Callable[..., None]:
        fn.case_id = case_id  # type: ignore[attr-defined]
        return fn

    return mark


def _detail(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit: {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


@_contract("monitor-store-missing")
def test_a_missing_monitor_store_is_not_created(runs: Runs) -> None:
    proc, folder = runs.get("monitor-store-missing")
    assert proc.returncode == 2, _detail(proc)
    assert not (folder / "typo.db").exists()


@_contract("unusable-values-reported")
def test_inf_nan_and_huge_values_are_reported_by_data_quality_and_break_no_check(runs: Runs) -> None:
    proc, folder = runs.get("unusable-values-reported")
    assert proc.returncode == 0, _detail(proc)
    rows = {c["id"]: c for c in json.loads((folder / "out" / "report.json").read_text())["challenges"]}
    assert not {cid: r["summary"] for cid, r in rows.items() if r["status"] == "error"}
    quality = rows["data.quality"]
    assert quality["metrics"]["nonfinite_rows"] == 4  # Inf, 1e38, NaN and a row of -Inf
    nonfinite = next(f for f in quality["findings"] if f["code"] == "nonfinite")
    assert nonfinite["indices"] == [3, 7, 11, 20]


@_contract("csv-warnings-one-line")
def test_csv_parsing_warnings_are_one_line_each(runs: Runs) -> None:
    proc, _ = runs.get("csv-warnings-one-line")
    assert proc.returncode == 0, _detail(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "warning: split 'train' column 'a': 1 of 60 value(s) are not numbers (e.g. '?'); read as NaN" in lines
    assert all(line.startswith("warning: ") for line in lines), _detail(proc)  # no "file.py:123: UserWarning" + code


@_contract("scan-model-empty-safetensors")
def test_scan_model_calls_empty_or_headerless_safetensors_unreadable_not_safe(runs: Runs) -> None:
    proc, _ = runs.get("scan-model-empty-safetensors")
    assert proc.returncode == 1, _detail(proc)
    verdicts = {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert verdicts == {"empty.safetensors": "error", "short.safetensors": "error"}, _detail(proc)
    assert "0-byte" in proc.stdout and "Traceback" not in proc.stderr
