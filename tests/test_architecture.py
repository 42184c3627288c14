"""The shape of the code, enforced: one module per challenge id, imports at the top, short functions.

The layer contracts themselves are checked by ``lint-imports`` (``.importlinter``) in CI.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import inspect
from pathlib import Path

import pytest

from dlclinic.taxonomy import CHALLENGES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dlclinic"
MAX_FUNCTION_LINES = 80
LONG_MARK = "# long:"


def _lazy_modules() -> set[str]:
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    parser.read(ROOT / ".importlinter")
    return {line.strip() for line in parser["dlclinic:lazy-imports"]["modules"].splitlines() if line.strip()}


@pytest.mark.parametrize("challenge_id", [c.id for c in CHALLENGES])
def test_check_and_remedy_live_in_the_module_named_by_the_id(challenge_id: str) -> None:
    name = f"dlclinic.challenges.{challenge_id}"
    module = importlib.import_module(name)
    assert Path(inspect.getfile(module)) == SRC / "challenges" / (challenge_id.replace(".", "/") + ".py")
    assert module.CHECK.id == challenge_id
    assert module.CHECK.run.__module__ == name, f"{challenge_id}'s check runs code from {module.CHECK.run.__module__}"
    assert hasattr(module, "REMEDY"), f"{name} must say REMEDY = None when there is no remedy"
    if module.REMEDY is not None:
        assert module.REMEDY.id == challenge_id
        assert module.REMEDY.run.__module__ == name, (
            f"{challenge_id}'s remedy runs code from {module.REMEDY.run.__module__}"
        )


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_imports_inside_functions_are_only_lazy_extras() -> None:
    allowed = _lazy_modules()
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for fn in _functions(tree):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [("." * node.level) + (node.module or "")]
                else:
                    continue
                for mod in names:
                    if not any(mod == a or mod.startswith(a + ".") for a in allowed):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mod} inside {fn.name}()")
    assert not offenders, f"{len(offenders)} imports inside functions:\n" + "\n".join(offenders)


def test_no_function_over_80_lines_without_a_reason() -> None:
    offenders = []
    for path in _sources():
        lines = path.read_text().splitlines()
        for fn in _functions(ast.parse("\n".join(lines), filename=str(path))):
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
            if length > MAX_FUNCTION_LINES and LONG_MARK not in lines[first - 2]:
                offenders.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}() has {length} lines")
    assert not offenders, f"{len(offenders)} functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)
