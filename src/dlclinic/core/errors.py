"""The one exception hierarchy of dlclinic.

::

    DlclinicError                 base: every error dlclinic raises on purpose
    ├── InputError                the user's data: files, shapes, labels, lengths, NaN
    ├── ModelError                the user's model: factory, weights, .pt2, .onnx, forward
    ├── ConfigError               options: unknown challenge ids, bad values, unwritable paths
    │   └── UnknownChallengeError
    └── MissingDependencyError    an optional extra is not installed

Every message says what was expected, what was found and, where possible, the fix.
The CLI prints ``str(error)`` on one line and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DlclinicError",
    "InputError",
    "MissingDependencyError",
    "ModelError",
    "UnknownChallengeError",
    "EXTRA_OF",
    "brief",
    "missing_extra",
]


class DlclinicError(Exception):
    """Base class of every error dlclinic raises on purpose."""


class InputError(DlclinicError, ValueError):
    """The data given to dlclinic is missing, malformed or inconsistent."""


class ModelError(DlclinicError, ValueError):
    """The model given to dlclinic cannot be built, loaded or run."""


class ConfigError(DlclinicError, ValueError):
    """An option or setting has a value dlclinic cannot use."""


class UnknownChallengeError(ConfigError, KeyError):
    """A challenge id that is not one of the 31."""

    def __init__(self, given: str, known: list[str]) -> None:
        self.given = given
        self.known = known
        super().__init__(
            f"unknown challenge id {given!r}: expected one of the 31 ids (e.g. 'data.quality') or a category ({', '.join(sorted({k.split('.')[0] for k in known}))}); run `dlclinic challenges` to list them"
        )

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


class MissingDependencyError(DlclinicError, ImportError):
    """An optional dependency needed for this feature is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"this feature needs the optional package {package!r}, which is not installed: run `pip install 'dlclinic[{extra}]'`"
        )


# the extra that brings each optional library (pyproject.toml's optional-dependencies)
EXTRA_OF: dict[str, str] = {
    "optuna": "tune",
    "captum": "explain",
    "tokenizers": "text",
    "datasketch": "text",
    "opacus": "privacy",
    "fairlearn": "fairness",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "fastapi": "serve",
    "starlette": "serve",
    "pydantic": "serve",
    "uvicorn": "serve",
    "sqlalchemy": "serve",
    "prometheus_client": "serve",
    "httpx": "serve",
    "ray": "ray",
    "jsonschema": "serve",
    "pyarrow": "parquet",
    "psycopg": "postgres",
    "lightning": "lightning",
    "pytorch_lightning": "lightning",
}


def missing_extra(exc: BaseException) -> str | None:
    """``pip install 'dlclinic[extra]'`` advice when ``exc`` is a missing optional library, else ``None``.

    Example:
        >>> missing_extra(ModuleNotFoundError("No module named 'optuna'", name="optuna"))
        "needs the optional package 'optuna': pip install 'dlclinic[tune]'"
    """
    if isinstance(exc, MissingDependencyError):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        extra = EXTRA_OF.get(exc.name.split(".")[0])
        if extra is not None:
            return f"needs the optional package {exc.name.split('.')[0]!r}: pip install 'dlclinic[{extra}]'"
    return None


def brief(exc: BaseException, limit: int = 200) -> str:
    """One line describing ``exc``: its type and its message with whitespace collapsed.

    Example:
        >>> brief(ValueError("bad\\n  value"))
        'ValueError: bad value'
    """
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
