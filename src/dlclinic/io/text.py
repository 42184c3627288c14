"""Text columns into token ids, with the user's own tokenizer.

A CSV / Parquet split with a text column (``--text-col``) becomes modality ``tokens``: each
text is encoded by the user's tokenizer, padded with id 0 (or cut) to one length, and kept
beside the ids (``Split.texts``) so the report shows the text of flagged rows.

Tokenizers (``--tokenizer``):
    * ``file.py:function`` (or ``module:function``) — called on one text, returns its ids: a
      sequence of ints, a dict with ``"input_ids"`` (a Hugging Face ``transformers``
      tokenizer called on one text) or an object with ``.ids`` (a ``tokenizers`` Encoding).
    * ``tokenizer.json`` — a Hugging Face ``tokenizers`` file, loaded with
      ``tokenizers.Tokenizer.from_file`` (extra ``text``); nothing is downloaded.

dlclinic pads with id 0 and reads id 0 as padding everywhere (corruptions, the token
profile, attributions), so a tokenizer whose id 0 is a real token is refused with the fix,
not silently misread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlclinic.core.errors import InputError, MissingDependencyError, brief
from dlclinic.io.models import load_function

__all__ = ["DEFAULT_MAX_LENGTH", "encode_texts", "load_tokenizer"]

#: The length rows are padded / cut to when ``max_length`` is not given and train's longest
#: row is longer: longer rows are cut (the token profile reports rows at full length).
DEFAULT_MAX_LENGTH = 256

#: Names a tokenizer gives its padding token; its id must be 0 (dlclinic's padding).
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>", "[pad]", "<|pad|>")

Tokenize = Callable[[list[str]], list[list[int]]]


def load_tokenizer(spec: str) -> tuple[Tokenize, str, list[str] | None]:
    """``(encode, description, vocabulary)`` for ``--tokenizer``: a ``tokenizers`` JSON file or ``file.py:function``.

    ``vocabulary`` (each id's token, from a ``tokenizers`` file; ``None`` for a function) lets
    the report show per-token attributions as words.

    Example:
        >>> encode, what, vocabulary = load_tokenizer("my_tok.py:encode")  # doctest: +SKIP
    """
    spec = str(spec).strip()
    if spec.lower().endswith(".json") and ":" not in Path(spec).name:
        return _hf_tokenizer(Path(spec))
    if ":" not in spec:
        raise InputError(
            f"tokenizer {spec!r}: expected a tokenizers JSON file (tokenizer.json) or file.py:function, found neither"
        )
    fn = load_function(spec, "tokenizer")

    def encode(texts: list[str]) -> list[list[int]]:
        return [_ids_of(fn(t), spec) for t in texts]

    return encode, f"function {spec}", None


def _hf_tokenizer(path: Path) -> tuple[Tokenize, str, list[str] | None]:
    """A Hugging Face ``tokenizers`` file as an encoder (no special tokens added, no padding)."""
    if not path.is_file():
        raise InputError(f"tokenizer file not found: {path}; expected a tokenizers JSON file")
    try:
        import tokenizers
    except ImportError:
        raise MissingDependencyError("tokenizers", "text") from None
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:
        raise InputError(f"tokenizer {path.name}: not a tokenizers JSON file ({brief(exc)})") from None
    pads = {name: tok.token_to_id(name) for name in PAD_TOKENS if tok.token_to_id(name) is not None}
    wrong = {name: i for name, i in pads.items() if i != 0}
    if wrong and not any(i == 0 for i in pads.values()):
        name, i = next(iter(wrong.items()))
        raise InputError(
            f"tokenizer {path.name}: expected its padding token at id 0 (dlclinic pads with 0), found {name} at id {i}"
        )
    tok.no_padding()
    tok.no_truncation()

    def encode(texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

    size = tok.get_vocab_size()
    vocabulary = [tok.id_to_token(i) or f"#{i}" for i in range(size)]
    return encode, f"tokenizers file {path.name} (vocabulary {size})", vocabulary


def _ids_of(out: Any, spec: str) -> list[int]:
    """A tokenizer function's output as a list of ids: ints, ``{"input_ids": ...}`` or ``.ids``."""
    if isinstance(out, Mapping) and "input_ids" in out:
        out = out["input_ids"]
    elif hasattr(out, "ids") and not isinstance(out, np.ndarray):
        out = out.ids
    arr = np.asarray(out)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(
            f"tokenizer {spec}: expected a sequence of integer ids per text, found {type(out).__name__} of shape {arr.shape}"
        )
    return [int(v) for v in arr]


def encode_texts(
    texts: Sequence[str], encode: Tokenize, *, name: str, max_length: int | None
) -> tuple[np.ndarray, int]:
    """``(ids, n_cut)``: texts as an int64 N × ``max_length`` matrix padded with 0, and how many rows were cut.

    ``max_length=None`` takes the longest row, up to :data:`DEFAULT_MAX_LENGTH`.

    Example:
        >>> encode_texts(["a b", "c"], lambda ts: [[5, 6], [7]], name="train", max_length=None)[0].tolist()
        [[5, 6], [7, 0]]
    """
    try:
        seqs = encode(list(texts))
    except (InputError, MissingDependencyError):
        raise
    except Exception as exc:
        raise InputError(f"split {name!r}: the tokenizer failed ({brief(exc)})") from None
    if len(seqs) != len(texts):
        raise InputError(f"split {name!r}: expected one id sequence per text, found {len(seqs)} for {len(texts)} texts")
    longest = max((len(s) for s in seqs), default=0)
    length = max_length if max_length is not None else max(1, min(longest, DEFAULT_MAX_LENGTH))
    if length < 1:
        raise InputError(f"max_length: expected a positive length, found {length}")
    ids = np.zeros((len(seqs), length), dtype=np.int64)
    for r, seq in enumerate(seqs):
        row = np.asarray(seq[:length], dtype=np.int64)
        if row.size and int(row.min()) <= 0:
            bad = int(row[row <= 0][0])
            raise InputError(
                f"split {name!r} row {r}: expected token ids ≥ 1 (id 0 is padding in dlclinic), found {bad};"
                " reserve id 0 for padding, e.g. add 1 to every id"
            )
        ids[r, : row.size] = row
    return ids, sum(len(s) > length for s in seqs)
