"""The examples in the docstrings of ``dlclinic.functional`` and ``dlclinic.core`` run and give what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dlclinic.core
import dlclinic.functional

MODULES = [
    f"{pkg.__name__}.{info.name}"
    for pkg in (dlclinic.functional, dlclinic.core)
    for info in pkgutil.iter_modules(pkg.__path__)
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} failed (run: python -m doctest)"
    )
