"""Per-sample evidence, computed once per split in one batched pass, shared and cached.

Kinds of evidence (``KINDS``):

* ``logits``, ``probs`` — model outputs (N×K);
* ``embeddings`` — penultimate-layer activations (N×D), taken with a forward hook on a
  configurable layer (default: the input of the last ``nn.Linear``). For models without
  accessible layers (ONNX) the embedding is a PCA of the raw inputs fitted on ``train``,
  and ``embedding_source`` says so;
* ``losses`` — per-sample cross-entropy (labelled splits only);
* ``oof_probs`` — out-of-fold predicted probabilities for ``train``: full K-fold
  retraining with the recipe (the default for the baseline dlclinic trains, an option
  otherwise: no row is ever scored by a model fitted on its own label; the first
  ``FOLD_PROBES`` fold models stop early, after ``FOLD_PATIENCE`` epochs without improvement
  when the recipe waits longer, and the others train as long on all their fit rows with the
  LR annealed to zero: :func:`train_folds`), or a
  cross-validated logistic head on the embeddings (cheap, the default for user models).
  The head is out-of-fold, but the network that produced the embeddings saw every label:
  a network that memorised its training labels carries them into its embeddings, so
  data.quality reports that case as inconclusive rather than clean. The K fold models also
  predict every other labelled split (:meth:`Evidence.fold_predictions`): data.quantity's
  learning curve uses them as its points at ``(K−1)/K`` of the data instead of retraining.

Everything is keyed by fingerprints of the model, the split's data and the parameters,
and stored as ``.npz`` under the cache directory, so a second checkup of the same case
recomputes nothing.

Under ``torchrun`` with several processes (:mod:`dlclinic.core.distributed`) the forward pass
is sharded: each rank scores its contiguous run of batches (the same batches as one process,
so the same numbers) and the arrays are gathered in row order on every rank; the K-fold
retraining's fold ``k`` trains on rank ``k mod N``, the first ``FOLD_PROBES`` folds before the
others. Whether to use a cache entry is decided by all ranks together, and only rank 0 writes
the cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
import typing
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from dlclinic.core import budget, distributed
from dlclinic.core.atomic import atomic_path
from dlclinic.core.case import Case, Split, unusable_rows, usable_inputs
from dlclinic.core.device import active_precision, autocast
from dlclinic.core.errors import ConfigError, InputError, ModelError
from dlclinic.core.fingerprint import fingerprint_array, fingerprint_model, fingerprint_params
from dlclinic.core.inference import conv_layout, eval_mode, first_output, input_tensor, model_input_spec, predict_logits
from dlclinic.core.progress import NullProgress, Progress
from dlclinic.core.recipe import annealed_within, epochs_recorded, patience_at_most
from dlclinic.core.sampling import stratified_rows
from dlclinic.core.version import __version__
from dlclinic.core.workers import run_tasks

__all__ = [
    "FOLD_PATIENCE",
    "FOLD_PROBES",
    "KINDS",
    "OOF_HEAD_ROWS",
    "Evidence",
    "EvidenceConfig",
    "default_cache_dir",
    "fit_head",
    "fold_result",
    "kfold_rows",
    "machine",
    "train_folds",
]

_T = TypeVar("_T")

KINDS = ("logits", "probs", "embeddings", "losses", "oof_probs")

Retrain = Callable[[np.ndarray, np.ndarray, int], Any]
"""``retrain(x, y, seed) -> trained nn.Module``: the recipe, for K-fold out-of-fold probabilities."""

FOLD_PATIENCE = 2
"""Early-stopping patience of the fold models that stop early (the first :data:`FOLD_PROBES`),
when the recipe's is longer.

They only score their held-out rows and keep their best checkpoint, so a longer wait buys
rare late improvements for about a quarter of the K-fold time. Measured (when every fold
model stopped early; fold assignment
and fold seeds 0-4, 15-epoch recipe): on the image demo (8 % planted flips) 143 fold
epochs instead of 200, label-issue F1 0.890 vs 0.893 with the recipe's patience 4 (the
seeds alone spread it over 0.876-0.909), fold models' test error 0.109 vs 0.107; on
5-class Gaussian blobs with 8 % flips F1 0.957 vs 0.952; on the sequence and text demos'
data (SmallConv1d, TokenBag) the folds still improve at their last epochs: same F1.
"""


FOLD_PROBES = 2
"""K-fold models that stop early (:data:`FOLD_PATIENCE`) to find how long this recipe trains on
this data; the other folds then train that long on all their fit rows, the LR annealed to zero
(:func:`train_folds`).

Two, so that one fold's early stop by chance does not set the length (the image demo's first
fold stopped after 5 to 11 epochs over fold seeds 0-4), and so that on two workers the two
phases take the two rounds that four early-stopping folds took. Measured against every fold
stopping early (fold seeds 0-4, two threads): label-issue F1 on the image demo (8 % planted
flips) 0.901 against 0.889, higher for every seed; one probe gave 0.903 but a third round on
two workers (evidence 13 s instead of 9). On the sequence and text demos' data the folds run
the recipe's 15 epochs or stop within 1-2 of each other: F1 within the seeds' spread.

The length is the longest probe's run, its wait after the best epoch included: the probes
saw a tenth fewer rows per epoch, and their best epoch + 1 gave 0.898. The cost: with as
many workers or ranks as folds, the K folds took one round and now take two. With two
folds (a class with fewer than four rows) one probe sets the length of the other.
"""


OOF_HEAD_ROWS = 50_000
"""Most rows each out-of-fold head on the embeddings is fitted on (``oof="embeddings"``).

A fold's head is fitted on a seeded, class-stratified sample of this many of the other folds'
rows, and scores every held-out row (scoring is cheap; the fit is the cost, linear in its
rows times L-BFGS iterations). A linear head on a fixed representation has long reached its
plateau at tens of thousands of rows, while uncapped the four fits grew with the data: at
600,000 Fashion-MNIST rows (32-d embeddings) they were part of an evidence phase 1.6× the
bare forward loop. At 60,000 rows (45,000 per fit) nothing changes.
"""


def fit_head(head: LogisticRegression, x: np.ndarray, y: np.ndarray) -> Any:
    """``head`` (a ``warm_start`` logistic regression) fitted on standardised ``(x, y)``, in a pipeline.

    Its L-BFGS starts at the coefficients of its previous fit (a neighbouring fold, a smaller
    subset of the same rows); when that fit had other classes, it starts cold. The objective is
    strictly convex, so the head is the same up to the solver's tolerance: the start only saves
    iterations. Measured on the issue-21 CNN's 32-d embeddings of 60,000 rows (4 out-of-fold
    heads): 114/59/43/50 iterations instead of 112-115 each, 6.2-6.9 s instead of 10.2-10.5 s,
    out-of-fold accuracy 0.8694 against 0.8695 and mean log-probability of the label within 2e-4.
    """
    try:
        return make_pipeline(StandardScaler(), head).fit(x, y)
    except ValueError:  # other classes than the previous fit's: start cold
        head.coef_ = head.intercept_ = None  # type: ignore[assignment]
        return make_pipeline(StandardScaler(), head).fit(x, y)


def _head_rows(fit_idx: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """``fit_idx``, or a seeded class-stratified sample of :data:`OOF_HEAD_ROWS` of them."""
    return fit_idx[stratified_rows(y[fit_idx], OOF_HEAD_ROWS, seed)]


def machine() -> dict[str, Any]:
    """What a timing depends on besides the model and data, for the cache keys of measured times."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def default_cache_dir() -> Path:
    """``$DLCLINIC_CACHE`` or ``$XDG_CACHE_HOME/dlclinic`` (``~/.cache/dlclinic``)."""
    env = os.environ.get("DLCLINIC_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlclinic"


@dataclass(frozen=True)
class EvidenceConfig:
    """How evidence is computed.

    Attributes:
        batch_size: rows per forward pass.
        embedding_layer: dotted module name whose output is the embedding; ``None``
            takes the input of the last ``nn.Linear``.
        oof: ``"auto"`` (K-fold retraining when a cheap recipe is available, else
            embeddings), ``"embeddings"`` or ``"kfold"``.
        folds: folds for out-of-fold probabilities.
        seed: seed of fold assignment and retraining.
        cache: read and write the on-disk cache.
    """

    batch_size: int = 256
    embedding_layer: str | None = None
    oof: str = "auto"
    folds: int = 4
    seed: int = 0
    cache: bool = True

    def __post_init__(self) -> None:
        if self.oof not in ("auto", "embeddings", "kfold"):
            raise ConfigError(f"oof must be 'auto', 'embeddings' or 'kfold', but got {self.oof!r}")
        if self.folds < 2:
            raise ConfigError(f"`folds >= 2` must hold, but got folds={self.folds}")
        if self.batch_size < 1:
            raise ConfigError(f"`batch_size >= 1` must hold, but got batch_size={self.batch_size}")


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or ``None`` when absent; a corrupt entry is deleted, never trusted."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception:
        path.unlink(missing_ok=True)
        return None


def _json_plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def kfold_rows(case: Case, config: EvidenceConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """The stratified folds of train for out-of-fold probabilities: ``(fit rows, held-out rows)`` per fold
    (``config.folds``, fewer when a class has fewer rows)."""
    y = case.train.y
    if y is None:
        raise InputError("split 'train': expected labels for out-of-fold probabilities, found none")
    counts = np.bincount(y, minlength=case.n_classes)
    folds = int(min(config.folds, max(2, counts[counts > 0].min())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on tiny classes in a fold
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed).split(case.train.x, y))


FoldTask = tuple[int, tuple[np.ndarray, np.ndarray]]
"""``(fold, (fit rows, held-out rows))``, from :func:`kfold_rows`."""


class FoldResult(NamedTuple):
    """What :func:`fold_result` returns for one fold."""

    held: np.ndarray
    """Probabilities on the fold's held-out train rows."""
    labels: dict[str, np.ndarray]
    """Predicted classes (``name``) and probabilities (``name.probs``) on every other labelled split."""
    epochs: int | None
    """Epochs the fold model trained; ``None`` when ``retrain`` does not use :func:`dlclinic.core.recipe.fit`."""
    annealed: bool
    """Trained for a given length on all its fit rows (:func:`train_folds`), not as the recipe trains."""


def fold_result(
    case: Case, retrain: Retrain | None, seed: int, task: FoldTask, horizon: int | None = None
) -> FoldResult:
    """One fold: the recipe retrained (seed ``seed + fold``) on the other folds; its probabilities on
    the held-out rows, its predicted classes (``name``) and probabilities (``name.probs``) on every
    other labelled split, and the epochs it trained (``None`` when ``retrain`` does not use
    :func:`dlclinic.core.recipe.fit`).

    Without ``horizon`` (the first :data:`FOLD_PROBES` folds) the model stops early on a held-out
    tenth of its fit rows, waiting at most :data:`FOLD_PATIENCE` epochs, and keeps its best epoch;
    with it (the others: :func:`train_folds`) it trains on all its fit rows for ``horizon``
    epochs with the LR annealed to zero (:func:`dlclinic.core.recipe.annealed_within`).
    """
    assert retrain is not None
    fold, (fit_idx, held_idx) = task
    s = case.train
    # the held-out rows stay out either way: only how long, and on which of its fit rows, a fold model trains changes
    plan = annealed_within(horizon) if horizon is not None else patience_at_most(FOLD_PATIENCE)
    with plan, epochs_recorded() as ran:
        model = retrain(s.x[fit_idx], s.y[fit_idx], seed + fold)  # type: ignore[index]
    held = _softmax(predict_logits(model, s.x[held_idx]).astype(np.float64)).astype(np.float32)
    labels: dict[str, np.ndarray] = {}
    for name, split in case.splits.items():
        if name != "train" and split.labelled:
            probs = _softmax(predict_logits(model, usable_inputs(split.x)).astype(np.float64)).astype(np.float32)
            labels[name], labels[f"{name}.probs"] = probs.argmax(1).astype(np.int64), probs
    return FoldResult(held, labels, ran[-1] if ran else None, horizon is not None)


def train_folds(
    case: Case,
    retrain: Retrain | None,
    seed: int,
    rows: list[tuple[np.ndarray, np.ndarray]],
    run: Callable[[list[FoldTask], Callable[[FoldTask], FoldResult], bool], list[FoldResult]],
) -> list[FoldResult]:
    """The :func:`fold_result` of every fold: the first :data:`FOLD_PROBES` find how long to train,
    then the others train that long.

    ``run(tasks, one, first)`` returns ``[one(t) for t in tasks]`` (on the caller's workers or
    ranks, alongside other work when ``first``). The first fold models stop early on a held-out
    tenth of their rows; the others then train as many epochs as the longest of them, on all
    their fit rows, with the LR annealed to zero, and keep their last weights. When ``retrain``
    does not say how long it trained (not dlclinic's ``fit``), every fold trains as it does.
    """
    tasks = list(enumerate(rows))
    probes = min(FOLD_PROBES, len(tasks) - 1)
    first = run(tasks[:probes], lambda task: fold_result(case, retrain, seed, task), True)
    ran = [r.epochs for r in first if r.epochs is not None]
    horizon = max(ran) if len(ran) == len(first) else None
    return first + run(tasks[probes:], lambda task: fold_result(case, retrain, seed, task, horizon), False)


_EMPTY = np.zeros((0,), dtype=np.float32)  # a rank without rows gathers nothing


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _find_module(model: Any, name: str) -> Any:
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n][:12]
        raise ConfigError(
            f"embedding layer {name!r} not found in the model; expected one of: {', '.join(names)}{' …' if len(modules) > 13 else ''}"
        )
    return modules[name]


def _last_linear(model: Any) -> Any:

    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


@dataclass
class _Stats:
    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Evidence:
    """Lazily computed, cached per-sample arrays for one case.

    Example:
        >>> ev = Evidence(case)                       # doctest: +SKIP
        >>> ev.get("probs", "test").shape             # doctest: +SKIP
        (1000, 10)
    """

    def __init__(
        self,
        case: Case,
        config: EvidenceConfig | None = None,
        *,
        retrain: Retrain | None = None,
        recipe: str = "",
        cheap_retrain: bool = False,
        cache_dir: Path | None = None,
        progress: Progress | None = None,
        fit_config: Any = None,
        workers: int = 1,
    ) -> None:
        if case.model is None:
            raise ModelError("evidence needs a model: pass one, or let dlclinic.checkup() train the baseline")
        self.case = case
        self.config = config or EvidenceConfig()
        self.retrain = retrain
        self.recipe = recipe  # identifies the retraining recipe (factory + fit config) in cache keys
        self.cheap_retrain = cheap_retrain
        self.fit_config = fit_config  # the case's training recipe (checks that train a fresh copy read it)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.progress = progress or NullProgress()
        self.workers = workers  # processes for independent retrainings (the K folds): dlclinic.core.workers
        self._mem: dict[tuple[str, str], np.ndarray] = {}
        self._memo: dict[str, Any] = {}
        self._folds: dict[str, np.ndarray] = {}  # fold models' predictions (kfold OOF): see fold_predictions
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self.nonfinite_rows: dict[str, int] = {}
        self.stats = _Stats()
        self.model_fingerprint = fingerprint_model(case.model)
        self._split_fp = {name: fingerprint_array(s.x, s.y) for name, s in case.splits.items()}
        self.embedding_source = (
            "input-pca" if not self._is_torch else (self.config.embedding_layer or "input of last nn.Linear")
        )

    # -- public -------------------------------------------------------------------------
    @property
    def _is_torch(self) -> bool:
        return hasattr(self.case.model, "state_dict") and callable(self.case.model)

    @property
    def oof_method(self) -> str:
        if self.config.oof != "auto":
            return self.config.oof
        return "kfold" if (self.retrain is not None and self.cheap_retrain) else "embeddings"

    def fingerprints(self) -> dict[str, str]:
        out = {"model": self.model_fingerprint}
        out.update({f"data.{k}": v for k, v in self._split_fp.items()})
        return out

    def available(self, kind: str, split: str) -> bool:
        """Whether this evidence can exist for this case (split present, labels when needed)."""
        s = self.case.get(split)
        if s is None:
            return False
        if kind in ("losses", "oof_probs") and not s.labelled:
            return False
        if kind == "oof_probs" and split != "train":
            return False
        return True

    def ensure(self, needs: Iterable[tuple[str, str]]) -> None:
        """Compute every (kind, split) in ``needs`` that is available, one pass per split."""
        needs = sorted(
            {n for n in needs if self.available(*n)}, key=lambda n: (n[1] != "train", n[1], KINDS.index(n[0]))
        )
        for kind, split in needs:
            self.get(kind, split)

    def get(self, kind: str, split: str) -> np.ndarray:
        """The (kind, split) array, from memory, the disk cache, or computed now."""
        if kind not in KINDS:
            raise ConfigError(f"unknown evidence kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not self.available(kind, split):
            raise InputError(f"evidence {kind!r} is not available for split {split!r} (missing split or labels)")
        key = (kind, split)
        # several processes: computing is collective, so a value only some ranks hold counts as missing
        if distributed.agree(key in self._mem):
            return self._mem[key]
        stored = _read_npz(self._path(kind, split)) if self.config.cache else None
        if distributed.agree(stored is not None and "value" in stored):
            assert stored is not None
            self._mem[key] = stored["value"]
            if kind == "oof_probs":
                self._folds = {k: v for k, v in stored.items() if k.startswith("fold.")}
            self.stats.cached.append(f"{kind}:{split}")
            return self._mem[key]
        start = time.perf_counter()
        if kind in ("logits", "probs", "embeddings", "losses"):
            self._forward(split)
        else:
            self._mem[key] = self._oof()
            self._store(kind, split, **self._folds)
        self.stats.seconds += time.perf_counter() - start
        return self._mem[key]

    def fold_predictions(
        self, split: str, *, as_the_recipe_trains: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(fit_rows, labels)`` of the K models of the K-fold out-of-fold probabilities on ``split``.

        ``fit_rows[k]`` is the number of train rows fold model ``k`` was given (a stratified
        ``(K−1)/K`` of train; seed ``seed + k``), ``labels[k]`` its predicted classes on
        ``split``. With ``as_the_recipe_trains``, only the fold models trained as the recipe
        trains (early stopping on a held-out tenth of those rows: the first
        :data:`FOLD_PROBES`, not those :func:`train_folds` trained for a given length on all
        of them), for comparisons with other trainings of the recipe (a learning curve).
        ``None`` when the out-of-fold method is not ``kfold``, the split is ``train`` or
        unlabelled. Computes the out-of-fold probabilities when needed.
        """
        if self.oof_method != "kfold" or split == "train" or not self.available("losses", split):
            return None
        self.get("oof_probs", "train")
        if f"fold.pred.{split}" not in self._folds:  # a cache entry written before fold predictions were kept
            return None
        fit_rows, labels = self._folds["fold.fit_rows"], self._folds[f"fold.pred.{split}"]
        if as_the_recipe_trains and "fold.annealed" in self._folds:
            keep = ~self._folds["fold.annealed"]
            return fit_rows[keep], labels[keep]
        return fit_rows, labels

    def fold_probabilities(self, split: str) -> np.ndarray | None:
        """``K × N × classes`` probabilities of the K fold models on ``split`` (unseen by every one
        of them, like the out-of-fold rows of train), or ``None`` as for :meth:`fold_predictions`."""
        if self.fold_predictions(split) is None:
            return None
        return self._folds.get(f"fold.pred.{split}.probs")

    def cached(
        self, name: str, params: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Derived arrays (e.g. a learning curve) cached like evidence, keyed by the model, every split and ``params``.

        ``compute`` returns a dict of arrays; it runs only when no valid cache entry exists.
        """

        key = fingerprint_params(
            {
                "derived": name,
                "model": self.model_fingerprint,
                "data": self._split_fp,
                "recipe": self.recipe,
                "params": params,
                "dlclinic": __version__,
                **({"precision": active_precision()} if active_precision() != "fp32" else {}),
            }
        )
        path = self.cache_dir / "derived" / key[:2] / f"{key}.npz"
        stored = _read_npz(path) if self.config.cache else None
        if distributed.agree(stored is not None):  # several processes: used only when every rank has it
            assert stored is not None
            self.stats.cached.append(name)
            return stored
        start, cuts = time.perf_counter(), budget.cuts_so_far()
        out = compute()
        self.stats.seconds += time.perf_counter() - start
        self.stats.computed.append(name)
        # a result a time budget cut short is this checkup's only: never cached for a later one
        if self.config.cache and distributed.is_main() and budget.cuts_so_far() == cuts:
            try:
                _atomic_savez(path, **out)
            except OSError:
                pass
        return out

    def cached_json(self, name: str, params: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """A JSON value (numbers, strings, lists, dicts; numpy arrays become lists) cached like :meth:`cached`.

        The value returned is always the one read back from JSON, so a first run and a cached
        run see the same types (lists, never tuples or arrays).
        """
        out = self.cached(name, params, lambda: {"json": np.asarray(json.dumps(compute(), default=_json_plain))})
        return json.loads(str(out["json"]))

    def memo(self, key: str, compute: Callable[[], _T]) -> _T:
        """An in-process result shared by the checks of one checkup (e.g. the monitored run).

        Unlike :meth:`cached`, the value is any Python object and lives as long as this
        ``Evidence``; it replaces module-level caches, so two checkups never share state.
        """
        if key not in self._memo:
            self._memo[key] = compute()
        return typing.cast(_T, self._memo[key])

    def forget_memos(self) -> int:
        """Drop every :meth:`memo` value (how many); the checkup calls it after each task.

        The checks that share a memo run in one task (``api._SHARED_WORK``: in several worker
        processes no other task could see it anyway), so after the task nothing reads it again,
        while it held the monitored run's arrays, the ONNX variants with their sessions and the
        compression sweep's models until the end of the checkup.

        Example:
            >>> ev = Evidence.__new__(Evidence); ev._memo = {"a": 1}
            >>> ev.forget_memos(), ev._memo
            (1, {})
        """
        n = len(self._memo)
        self._memo.clear()
        return n

    def mark(self) -> tuple[int, int]:
        """A bookmark in what this object computed and loaded, for :meth:`changes_since`."""
        return len(self.stats.computed), len(self.stats.cached)

    def changes_since(self, mark: tuple[int, int]) -> dict[str, Any]:
        """What was computed or loaded since ``mark``, and the non-finite rows found (plain, picklable)."""
        return {
            "computed": self.stats.computed[mark[0] :],
            "cached": self.stats.cached[mark[1] :],
            "nonfinite_rows": dict(self.nonfinite_rows),
        }

    def absorb(self, changes: dict[str, Any]) -> None:
        """Record the :meth:`changes_since` of a copy of this object in a worker process (the report lists them)."""
        self.stats.computed.extend(x for x in changes["computed"] if x not in self.stats.computed)
        self.stats.cached.extend(x for x in changes["cached"] if x not in self.stats.cached)
        self.nonfinite_rows.update(changes["nonfinite_rows"])

    def computed_here(self) -> dict[str, Any]:
        """The arrays this object holds and what it did to get them (plain, picklable): what a forked
        child that ran the evidence pass sends back for :meth:`adopt`."""
        return {
            "mem": dict(self._mem),
            "folds": dict(self._folds),
            "seconds": self.stats.seconds,
            **self.changes_since((0, 0)),
        }

    def adopt(self, computed: dict[str, Any]) -> None:
        """Take the :meth:`computed_here` of a copy of this object (the evidence pass ran in a forked child)."""
        self._mem.update(computed["mem"])
        self._folds.update(computed["folds"])
        self.stats.seconds = computed["seconds"]  # the copy started from this object's seconds
        self.absorb(computed)

    def workdir(self) -> Path:
        """A scratch directory for files the checks write (exported models); removed with this object."""
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="dlclinic-evidence-")
        return Path(self._workdir.name)

    def on_extra(self, x: np.ndarray, y: np.ndarray | None = None, *, name: str = "deploy") -> Evidence:
        """Evidence for inputs outside the case (an OOD set, an unlabelled pool).

        The new object shares the model, the train split (input-PCA embeddings of non-torch
        models are fitted on it), the configuration and the disk cache, so the extra
        inputs get the same kinds of evidence, computed once and cached by content.
        """

        extra = Split.build(name, x, y, like=self.case.train)
        if extra.x.shape[1:] != self.case.train.x.shape[1:]:
            raise InputError(
                f"extra data {name!r}: expected samples of shape {self.case.train.x.shape[1:]} like train, found {extra.x.shape[1:]}"
            )
        case = dataclasses.replace(self.case, splits={"train": self.case.train, name: extra})
        return Evidence(
            case,
            self.config,
            recipe=self.recipe,
            cache_dir=self.cache_dir,
            progress=self.progress,
            fit_config=self.fit_config,
        )

    # -- internals ----------------------------------------------------------------------
    def _params(self, kind: str) -> dict[str, Any]:

        p: dict[str, Any] = {"kind": kind, "embedding_layer": self.config.embedding_layer, "dlclinic": __version__}
        if active_precision() != "fp32":  # mixed precision gives other numbers (float32 keys are unchanged)
            p["precision"] = active_precision()
        if kind == "embeddings" and not self._is_torch:
            p["pca_fitted_on"] = self._split_fp["train"]  # input-PCA embeddings depend on train
        if kind == "oof_probs":
            p.update(method=self.oof_method, folds=self.config.folds, seed=self.config.seed)
            if self.oof_method == "embeddings" and len(self.case.train) * (1 - 1 / self.config.folds) > OOF_HEAD_ROWS:
                p["head_rows"] = OOF_HEAD_ROWS  # a capped entry is another entry (smaller sets keep their keys)
            if self.oof_method == "kfold":
                # entry format 2 also holds the fold models' probabilities on the other splits
                # (fold_probabilities): an older entry is a cache miss, not a silently weaker check;
                # so is one whose fold models waited with another patience or were planned otherwise
                p.update(recipe=self.recipe, fold_outputs=2, fold_patience=FOLD_PATIENCE, fold_probes=FOLD_PROBES)
        return p

    def _path(self, kind: str, split: str) -> Path:
        key = fingerprint_params({"model": self.model_fingerprint, "data": self._split_fp[split], **self._params(kind)})
        return self.cache_dir / "evidence" / key[:2] / f"{key}.npz"

    def _store(self, kind: str, split: str, **extra: np.ndarray) -> None:
        self.stats.computed.append(f"{kind}:{split}")
        if self.config.cache and distributed.is_main():
            try:
                _atomic_savez(self._path(kind, split), value=self._mem[(kind, split)], **extra)
            except OSError:  # a read-only cache only costs speed
                pass

    def _forward(self, split: str) -> None:
        """One batched pass over ``split``: logits, probabilities, embeddings and losses."""
        s = self.case.splits[split]
        n = len(s)
        x = s.x
        bad_rows = unusable_rows(x)
        if bad_rows.any():
            # rows with NaN/Inf (or values beyond ±MAX_ABS_INPUT) are scored with those values set to 0
            # so the checkup goes on; data.quality reports them (their evidence is unreliable by construction)
            x = usable_inputs(x)
            self.nonfinite_rows[split] = int(bad_rows.sum())
        with self.progress.step(f"forward pass on {split}", total=n) as advance:
            logits, embeddings = self._forward_shard(split, x, advance)
        if not np.isfinite(logits).all():
            bad = int((~np.isfinite(logits)).any(axis=1).sum())
            raise ModelError(
                f"the model produced NaN/Inf logits for {bad} of {n} rows of split {split!r}; expected finite outputs (check the inputs for NaN/Inf and the weights)"
            )
        self._mem[("logits", split)] = logits
        self._mem[("probs", split)] = _softmax(logits.astype(np.float64)).astype(np.float32)
        self._mem[("embeddings", split)] = embeddings
        for kind in ("logits", "probs", "embeddings"):
            self._store(kind, split)
        if s.labelled:
            p = self._mem[("probs", split)].astype(np.float64)
            self._mem[("losses", split)] = (-np.log(np.clip(p[np.arange(n), s.y], 1e-12, None))).astype(np.float32)
            self._store("losses", split)

    def _forward_shard(
        self, split: str, x: np.ndarray, advance: Callable[[int], None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings of every row of ``x``: this rank's run of whole batches, gathered in row order.

        One process scores every batch. Several split the batches (not the rows), so each batch
        holds the same rows as in one process and gives the same numbers.
        """
        if len(set(distributed.gather_objects(self.model_fingerprint))) > 1:
            raise ModelError(
                "the ranks hold different weights of the model; expected the same on every rank (a model trained by one rank alone must be broadcast: dlclinic.core.distributed.broadcast_weights)"
            )
        bs = self.config.batch_size
        first, last = distributed.shard_bounds(-(-len(x) // bs))
        mine = x[first * bs : min(last * bs, len(x))]
        if self._is_torch:
            logits, embeddings = self._forward_torch(split, mine, advance) if len(mine) else (_EMPTY, _EMPTY)
            return distributed.gather_rows(logits), distributed.gather_rows(embeddings)
        logits = self._forward_callable(mine, advance) if len(mine) else _EMPTY
        return distributed.gather_rows(logits), self._input_pca(split)

    def _embedding_hook(self, model: Any, captured: list[Any]) -> Any:
        """Hook the embedding layer (the named one, else the input of the last ``nn.Linear``); ``None`` if none."""
        if self.config.embedding_layer:
            target = _find_module(model, self.config.embedding_layer)
            return target.register_forward_hook(lambda _m, _i, out: captured.append(out))
        target = _last_linear(model)
        return target.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0])) if target is not None else None

    def _forward_torch(
        self, split: str, x: np.ndarray, advance: Callable[[int], None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings of a torch model, batch by batch in eval mode.

        Each batch's rows are copied into two arrays allocated once, after the first batch: a list
        of per-batch arrays left small live blocks between the large transient ones of the next
        batches, and glibc's heap grew with every batch (2.6 GB of heap halfway through a
        600,000-row split, for 100 MB of logits and embeddings).
        """
        model, n, bs = self.case.model, len(x), self.config.batch_size
        dtype, device = model_input_spec(model)
        captured: list[Any] = []
        logits: np.ndarray | None = None
        embeddings: np.ndarray | None = None
        handle = self._embedding_hook(model, captured)
        try:
            with (
                eval_mode(model),
                conv_layout(model),
                torch.inference_mode(),
                autocast(active_precision(), device.type),
            ):
                for i in range(0, n, bs):
                    xb = input_tensor(x[i : i + bs], dtype, device)
                    captured.clear()
                    try:
                        out = first_output(model(xb))
                    except Exception as exc:
                        raise ModelError(
                            f"the model failed on a batch of split {split!r} with input shape {tuple(xb.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        ) from None
                    if out.dim() != 2 or out.shape[1] != self.case.n_classes:
                        raise ModelError(
                            f"the model's output must be N×{self.case.n_classes} logits, found shape {tuple(out.shape)}"
                        )
                    emb = first_output(captured[-1]) if captured else out
                    emb = emb.float().flatten(1)
                    if logits is None or embeddings is None:
                        logits = np.empty((n, out.shape[1]), dtype=np.float32)
                        embeddings = np.empty((n, emb.shape[1]), dtype=np.float32)
                    logits[i : i + len(xb)] = out.float().cpu().numpy()
                    embeddings[i : i + len(xb)] = emb.cpu().numpy()
                    advance(len(xb))
        finally:
            if handle is not None:
                handle.remove()
        if logits is None or embeddings is None:
            raise ModelError(f"split {split!r} has no rows to score")
        return logits, embeddings

    def _forward_callable(self, x: np.ndarray, advance: Callable[[int], None]) -> np.ndarray:
        """Logits of a non-torch model (ONNX) through its ``predict_logits``."""
        predict = getattr(self.case.model, "predict_logits", None)
        if predict is None:
            raise ModelError(
                f"cannot run a model of type {type(self.case.model).__name__}: expected an nn.Module or an ONNX model"
            )
        n, bs = len(x), self.config.batch_size
        parts: list[np.ndarray] = []
        for i in range(0, n, bs):
            out = np.asarray(predict(x[i : i + bs]), dtype=np.float32)
            if out.ndim != 2 or out.shape[1] != self.case.n_classes:
                raise ModelError(f"the model's output must be N×{self.case.n_classes} logits, found shape {out.shape}")
            parts.append(out)
            advance(min(bs, n - i))
        return np.concatenate(parts)

    def _input_pca(self, split: str) -> np.ndarray:

        train = usable_inputs(self.case.train.x.reshape(len(self.case.train), -1))
        k = int(min(64, train.shape[1], max(2, len(train) - 1)))
        pca = PCA(n_components=k, random_state=0).fit(train)
        return pca.transform(usable_inputs(self.case.splits[split].x.reshape(len(self.case.splits[split]), -1))).astype(
            np.float32
        )

    def _oof(self) -> np.ndarray:
        method = self.oof_method
        if method == "kfold" and self.retrain is None:
            raise ConfigError(
                "oof='kfold' needs a training recipe (a model factory or the baseline); use oof='embeddings'"
            )
        rows = kfold_rows(self.case, self.config)
        with (
            self.progress.step(f"out-of-fold probabilities ({method}, {len(rows)} folds)", total=len(rows)) as advance,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # sklearn warns on tiny classes in a fold
            if method == "kfold":
                return self._assemble(rows, self._fold_results(rows, advance))
            y, k = np.asarray(self.case.train.y), self.case.n_classes
            emb = self.get("embeddings", "train")
            oof = np.zeros((len(y), k), dtype=np.float32)
            head = LogisticRegression(max_iter=500, warm_start=True)  # each fold's fit starts at the last one's
            for fold, (all_fit, held_idx) in enumerate(rows):
                fit_idx = _head_rows(all_fit, y, self.config.seed + fold)
                clf = fit_head(head, emb[fit_idx], y[fit_idx])
                proba = np.full((len(held_idx), k), 1e-6)
                proba[:, clf.classes_] = clf.predict_proba(emb[held_idx])
                oof[held_idx] = proba / proba.sum(1, keepdims=True)
                advance(1)
        return oof

    def _fold_results(self, rows: list[tuple[np.ndarray, np.ndarray]], advance: Callable[[int], None]) -> list[Any]:
        """:func:`train_folds` on this process's workers; with several processes fold ``k`` is trained
        (alone, without DDP) on rank ``k mod N``, phase after phase, and the results are gathered."""
        size, me = distributed.world_size(), distributed.rank()
        workers = distributed.per_rank(self.workers)

        def run(tasks: list[FoldTask], one: Callable[[FoldTask], FoldResult], _first: bool) -> list[FoldResult]:
            mine = [task for task in tasks if task[0] % size == me]  # fold k on rank k mod N, phase after phase
            with distributed.local():
                results = run_tasks(
                    mine, one, workers=workers, on_result=lambda _i, _r: advance(1), setup=self._quiet_worker
                )
            gathered = distributed.gather_objects([(k, r) for (k, _), r in zip(mine, results)])
            by_fold = dict(pair for part in gathered for pair in part)
            return [by_fold[k] for k, _ in tasks]

        return train_folds(self.case, self.retrain, self.config.seed, rows, run)

    def _assemble(self, rows: list[tuple[np.ndarray, np.ndarray]], results: list[Any]) -> np.ndarray:
        """The out-of-fold probabilities from the :func:`fold_result` of each fold; keeps the folds' predictions."""
        oof = np.zeros((len(self.case.train), self.case.n_classes), dtype=np.float32)
        for (_, held_idx), result in zip(rows, results):
            oof[held_idx] = result.held
        self._folds = {
            "fold.fit_rows": np.array([len(fit) for fit, _ in rows], dtype=np.int64),
            "fold.annealed": np.array([result.annealed for result in results], dtype=bool),
        }
        for name in results[0].labels:
            self._folds[f"fold.pred.{name}"] = np.stack([result.labels[name] for result in results])
        return oof

    def put_kfold(self, rows: list[tuple[np.ndarray, np.ndarray]], results: list[Any]) -> None:
        """K-fold out-of-fold probabilities trained outside this object (alongside the baseline, which they
        do not need): ``rows`` from :func:`kfold_rows`, ``results`` the :func:`fold_result` of each fold."""
        self._mem[("oof_probs", "train")] = self._assemble(rows, results)
        self._store("oof_probs", "train", **self._folds)

    def _quiet_worker(self) -> None:
        """In a forked worker: one torch thread, and no progress drawing (the parent draws)."""
        torch.set_num_threads(1)
        self.progress = NullProgress()

    def describe(self) -> dict[str, Any]:
        return {
            "embedding_source": self.embedding_source,
            "oof_method": self.oof_method,
            "computed": list(self.stats.computed),
            "from_cache": list(self.stats.cached),
            "config": asdict(self.config),
        }
