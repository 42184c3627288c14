from __future__ import annotations

import re
from pathlib import Path

import pytest

from dlclinic.core.errors import ConfigError, UnknownChallengeError
from dlclinic.taxonomy import CATEGORIES, CHALLENGES, get_challenge, resolve_ids


def test_31_challenges_in_7_categories() -> None:
    assert len(CHALLENGES) == 31
    assert len({c.id for c in CHALLENGES}) == 31
    assert [c.category for c in CHALLENGES] == sorted((c.category for c in CHALLENGES), key=list(CATEGORIES).index)
    assert all(c.description for c in CHALLENGES)


def test_ids_match_challenges_md() -> None:
    doc = Path(__file__).resolve().parents[1].parent / "shared" / "CHALLENGES.md"
    if not doc.exists():
        pytest.skip("shared/CHALLENGES.md not beside the checkout")
    ids = re.findall(
        r"^\| ((?:data|compute|model|optimization|ethics|research|deployment)\.[a-z_]+) \|", doc.read_text(), flags=re.M
    )
    assert ids == [c.id for c in CHALLENGES]


def test_resolve_ids_expands_categories_and_keeps_order() -> None:
    assert resolve_ids(["model.overfitting", "data"])[:5] == [
        "data.quantity",
        "data.quality",
        "data.labeling_cost",
        "data.privacy",
        "data.generalization",
    ]
    assert resolve_ids(["model.overfitting,data.quality"]) == ["data.quality", "model.overfitting"]
    assert resolve_ids(None) == [c.id for c in CHALLENGES]


def test_unknown_id_is_a_clear_error() -> None:
    with pytest.raises(UnknownChallengeError, match="unknown challenge id 'data.qualty'"):
        get_challenge("data.qualty")
    with pytest.raises(UnknownChallengeError):
        resolve_ids(["nonsense"])


@pytest.mark.parametrize("selection", [[""], [","], [" "], ["data.quality", " , "]])
def test_a_selection_that_names_nothing_is_an_error_not_everything(selection: list[str]) -> None:
    with pytest.raises(ConfigError, match="expected challenge ids or categories.*found an empty selection"):
        resolve_ids(selection)


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, dlclinic, dlclinic.taxonomy; print(sorted(m for m in ('torch','sklearn','cleanlab','matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_public_api_is_sorted_and_resolvable() -> None:
    import dlclinic

    assert dlclinic.__all__ == sorted(dlclinic.__all__)
    for name in dlclinic.__all__:
        assert getattr(dlclinic, name) is not None
