"""The text demo: real quotes from the Debian package ``fortunes``, token ids for an LSTM, planted defects.

The corpus is the ``fortunes`` package's quote files (``apt-get install fortunes``; Debian main,
about 15,000 quotes in category files under ``/usr/share/games/fortunes``, one quote per
block, blocks separated by a line holding ``%``). Nothing is downloaded: the files are read
where the package put them, and without them the demo stops with a one-line error that names
the package.

Four categories: ``computers``, ``definitions``, ``politics`` and ``songs-poems``. Each has a
vocabulary and a form of its own (jargon; ``Word, n.: ...`` glossary entries; public life;
rhymed lines), and with quotes of at most 64 tokens they keep 437-1,111 quotes each (3,000 in
all). A bag-of-words logistic regression separates them at 80 % (5-fold; 37 % is the majority
class): learnable by a small LSTM, far from trivial. Other sets were weaker (computers,
politics, science, songs-poems: 66 %) or leaned on one odd category (``zippy``'s catchphrases).

Tokens: the ``tokenizers`` library's word-level model (lower case, words and runs of
punctuation), trained on the train split with ``min_frequency=2``; id 0 is padding, 1 unknown.
Its words, indexed by id, are ``case.metadata["vocabulary"]``. Each row's raw text is kept
(``texts``) for the report. The model is :class:`TextLSTM` (embedding, bidirectional LSTM,
masked mean, linear head), left untrained: dlclinic trains it with its recipe, as it trains
the image demo's baseline.

Planted (all seeded, recorded in :class:`DemoTruth`): 8 % label flips in train; 40
duplicates in train (20 exact, 20 with two words replaced); 25 test rows that copy train
rows (13 of them with two words replaced); a ``deploy`` split with another class mixture
(half songs-poems, a third politics) and typos (a fifth of the words lose or swap letters).
Group attribute ``attribution``: "cited" when the quote ends with a ``-- Author`` line.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.case import Case
from dlclinic.core.errors import InputError, MissingDependencyError
from dlclinic.demo._plant import DemoTruth, no_defects, plant_defects, truth_of

__all__ = ["CATEGORIES", "FORTUNES_DIR", "TextLSTM", "build_text_demo"]

FORTUNES_DIR = Path("/usr/share/games/fortunes")
CATEGORIES = ("computers", "definitions", "politics", "songs-poems")
MAX_TOKENS = 64
_PIECES = re.compile(r"\w+|[^\w\s]+")  # what the Whitespace pre-tokenizer of `tokenizers` splits on
_CITED = re.compile(r"^\s*--\s*\S", re.MULTILINE)
DEPLOY_MIX = (0.1, 0.1, 0.3, 0.5)  # the deploy split's class mixture (train: about 27/37/21/15 %)


class TextLSTM(nn.Module):
    """Embedding → bidirectional LSTM → mean over the real tokens (id 0 is padding) → linear head.

    The text classifier a user would write; the demo leaves it untrained for dlclinic's recipe.

    Example:
        >>> TextLSTM(100, 4)(torch.tensor([[5, 7, 0, 0]])).shape
        torch.Size([1, 4])
    """

    def __init__(self, vocab_size: int, n_classes: int, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embedding(x))
        mask = (x != 0).unsqueeze(-1).to(h.dtype)
        return self.head((h * mask).sum(1) / mask.sum(1).clamp(min=1))


def read_quotes(path: Path) -> list[str]:
    """The quotes of one fortunes file (blocks between ``%`` lines), stripped, without empty or over-long ones."""
    text = path.read_text(encoding="utf-8", errors="replace")
    quotes = (q.strip() for q in re.split(r"^%$", text, flags=re.MULTILINE))
    return [q for q in quotes if q and len(_PIECES.findall(q)) <= MAX_TOKENS]


def _corpus(directory: Path) -> tuple[list[str], np.ndarray]:
    """All quotes of :data:`CATEGORIES` and their class; a one-line error naming the package when missing."""
    missing = [c for c in CATEGORIES if not (directory / c).is_file()]
    if missing:
        raise InputError(
            f"--demo text reads the quotes of the Debian package 'fortunes': expected {directory}/{missing[0]}, "
            "found no such file; install it with `apt-get install fortunes` (Debian/Ubuntu)"
        )
    texts: list[str] = []
    labels: list[int] = []
    for k, cat in enumerate(CATEGORIES):
        quotes = read_quotes(directory / cat)
        texts += quotes
        labels += [k] * len(quotes)
    return texts, np.asarray(labels, dtype=np.int64)


def _replace_words(rows: np.ndarray, rng: np.random.Generator, *, pool: np.ndarray, k: int = 2) -> np.ndarray:
    """A near copy of each text: ``k`` of its words replaced by words drawn from ``pool``."""
    out = np.empty(len(rows), dtype=object)
    for i, text in enumerate(rows):
        words = str(text).split(" ")
        for j in rng.choice(len(words), size=min(k, len(words)), replace=False):
            words[j] = str(rng.choice(pool))
        out[i] = " ".join(words)
    return out


def _typos(text: str, rng: np.random.Generator, rate: float = 0.2) -> str:
    """Drop a letter from, or swap two adjacent letters of, a ``rate`` share of the words."""
    words = text.split(" ")
    for j, w in enumerate(words):
        if len(w) > 3 and rng.random() < rate:
            i = int(rng.integers(1, len(w) - 1))
            words[j] = w[:i] + w[i + 1 :] if rng.random() < 0.5 else w[: i - 1] + w[i] + w[i - 1] + w[i + 1 :]
    return " ".join(words)


def _tokenizer(train_texts: np.ndarray) -> Any:
    """A word-level ``tokenizers.Tokenizer`` trained on train (ids: 0 padding, 1 unknown, then by frequency)."""
    try:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    except ImportError:  # pragma: no cover - the text extra is part of `all`
        raise MissingDependencyError("tokenizers", "text") from None
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(min_frequency=2, special_tokens=["[PAD]", "[UNK]"], show_progress=False)
    tok.train_from_iterator([str(t) for t in train_texts], trainer=trainer)
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=MAX_TOKENS)
    return tok


def _encode(tok: Any, texts: np.ndarray) -> np.ndarray:
    return np.asarray([e.ids for e in tok.encode_batch([str(t) for t in texts])], dtype=np.int64)


def _attribution(texts: np.ndarray) -> np.ndarray:
    """The group attribute: "cited" when a quote has a ``-- Author`` line, else "uncited"."""
    return np.array(["cited" if _CITED.search(str(t)) else "uncited" for t in texts])


def _partition(
    y: np.ndarray, n_test: int, n_deploy: int, mix: tuple[float, ...] | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, test and deploy rows; deploy drawn with the class mixture ``mix`` (None: at random)."""
    order = rng.permutation(len(y))
    if mix is None:
        deploy = order[:n_deploy]
    else:
        counts = np.round(np.asarray(mix) * n_deploy).astype(int)
        deploy = np.concatenate([order[y[order] == k][:c] for k, c in enumerate(counts)])
    rest = order[~np.isin(order, deploy)]
    return rest[n_test:], rest[:n_test], deploy


def build_text_demo(
    *,
    clean: bool = False,
    seed: int = 0,
    n_test: int = 700,
    n_deploy: int = 450,
    flip_rate: float = 0.08,
    corpus_dir: Path | None = None,
) -> tuple[Case, DemoTruth]:
    """Build the text demo case (fortunes quotes as token ids, an untrained LSTM) and its ground truth.

    Args:
        clean: no planted defects (true labels, no copies, a deploy split like train).
        seed: seed of every random choice.
        corpus_dir: where the fortunes files are (default :data:`FORTUNES_DIR`).

    Raises:
        InputError: the ``fortunes`` package is not installed (one line, with the apt-get command).

    Example:
        >>> case, truth = build_text_demo()  # doctest: +SKIP
        >>> case.modality, case.class_names[0]  # doctest: +SKIP
        ('tokens', 'computers')
    """
    rng = np.random.default_rng(seed)
    texts, labels = _corpus(corpus_dir or FORTUNES_DIR)
    x_all = np.empty(len(texts), dtype=object)
    x_all[:] = texts
    tr, te, de = _partition(labels, n_test, n_deploy, None if clean else DEPLOY_MIX, rng)
    x_tr, y_tr, x_te, y_te = x_all[tr], labels[tr], x_all[te], labels[te]
    x_de, y_de = x_all[de], labels[de]
    shift = "none"
    if clean:
        truth = no_defects(y_tr, None)
    else:
        pool = np.array(sorted({w for t in x_tr for w in str(t).split() if w.isalpha()}))
        near = functools.partial(_replace_words, pool=pool)
        planted = plant_defects(
            x_tr, y_tr, x_te, y_te, n_classes=len(CATEGORIES), flip_rate=flip_rate, near_copy=near, rng=rng
        )
        x_tr, y_tr, x_te, y_te = planted.x_train, planted.y_train, planted.x_test, planted.y_test
        x_de = np.array([_typos(str(t), rng) for t in x_de], dtype=object)
        shift = f"class mixture {dict(zip(CATEGORIES, DEPLOY_MIX))} and typos in 20 % of the words"
        truth = truth_of(planted, None, shift)
    tok = _tokenizer(x_tr)
    vocab = tok.get_vocab()
    words = [""] * len(vocab)
    for word, i in vocab.items():
        words[i] = word
    case = Case.from_arrays(
        (_encode(tok, x_tr), y_tr, _attribution(x_tr)),
        (_encode(tok, x_te), y_te, _attribution(x_te)),
        (_encode(tok, x_de), y_de, _attribution(x_de)),
        texts={"train": x_tr, "test": x_te, "deploy": x_de},
        class_names=list(CATEGORIES),
        name="demo-fortunes" + ("-clean" if clean else ""),
        modality="tokens",
        model_factory=functools.partial(TextLSTM, len(words), len(CATEGORIES)),
        metadata={
            "source": f"Debian package fortunes ({', '.join(CATEGORIES)})",
            "planted_defects": not clean,
            "vocabulary": words,
            "deploy_shift": shift,
        },
    )
    return case, truth
