"""Every named CLI flag maps onto an option that really exists (no silently ignored flag)."""

from __future__ import annotations

import dataclasses

from dlclinic.challenges import CHECKS, get_remedy
from dlclinic.cli.flags import CHECKUP_FLAGS, TREAT_FLAGS


def test_checkup_flags_target_existing_check_options() -> None:
    for flag in CHECKUP_FLAGS:
        assert flag.targets, flag.flag
        for cid, name in flag.split_targets():
            assert cid in CHECKS, (flag.flag, cid)
            assert name in {f.name for f in dataclasses.fields(CHECKS[cid].options)}, (flag.flag, cid, name)


def test_treat_flags_target_existing_remedy_params() -> None:
    for flag in TREAT_FLAGS:
        assert flag.targets, flag.flag
        for cid, name in flag.split_targets():
            assert name in {f.name for f in dataclasses.fields(get_remedy(cid).params)}, (flag.flag, cid, name)


def test_each_flag_is_declared_once() -> None:
    for table in (CHECKUP_FLAGS, TREAT_FLAGS):
        assert len({f.param for f in table}) == len(table)
        assert len({f.flag for f in table}) == len(table)
