"""Every named CLI flag maps onto an option that really exists (no silently ignored flag)."""

from __future__ import annotations

import dataclasses

from dlclinic.challenges import CHECKS, get_remedy
from dlclinic.cli import _CHECK_FLAGS, _TREAT_FLAGS


def test_checkup_flags_target_existing_check_options() -> None:
    for flag, targets in _CHECK_FLAGS.values():
        assert targets, flag
        for cid, name in targets:
            assert cid in CHECKS, (flag, cid)
            assert name in {f.name for f in dataclasses.fields(CHECKS[cid].options)}, (flag, cid, name)


def test_treat_flags_target_existing_remedy_params() -> None:
    for key, (flag, cids) in _TREAT_FLAGS.items():
        for cid in cids:
            assert key in {f.name for f in dataclasses.fields(get_remedy(cid).params)}, (flag, cid)
