# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Boolean tunables from a command line (monai_fine.bools)."""

from __future__ import annotations

import pytest

from monai_fine.bools import as_bool, check_bools


@pytest.mark.parametrize(
    "word,value",
    [
        (True, True),
        ("true", True),
        ("True", True),
        ("1", True),
        (1, True),
        (False, False),
        ("false", False),
        ("False", False),
        ("0", False),
        (0, False),
    ],
)
def test_as_bool_accepts(word, value):
    assert as_bool(word, "resume") is value


@pytest.mark.parametrize("word", ["maybe", "", "2", 2, None, "fals"])
def test_as_bool_refuses_naming_the_id(word):
    with pytest.raises(ValueError, match=r"scan_memory must be a boolean .*got"):
        as_bool(word, "scan_memory")


def test_check_bools_lists_every_bad_tunable():
    with pytest.raises(ValueError) as err:
        check_bools({"resume": "false", "amp": "yes please", "check_data": "nope"})
    assert "amp" in str(err.value) and "check_data" in str(err.value) and "resume" not in str(err.value)
    assert check_bools({"resume": "false", "amp": "True"}) == {"resume": False, "amp": True}
