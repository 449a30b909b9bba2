# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Boolean tunables that mean what they say when they come from a command line.

``python -m monai.bundle run --resume false`` passes the *string* ``'false'`` (Python Fire only turns ``False`` and
``True`` into booleans), and a non-empty string is truthy. The bundle configs therefore read every boolean tunable
through :func:`as_bool`, which accepts ``true/True/1/yes/on`` and ``false/False/0/no/off`` (and real booleans) and
refuses anything else with an error naming the tunable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["as_bool", "check_bools", "TRUE_WORDS", "FALSE_WORDS"]

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def as_bool(value: Any, name: str = "value") -> bool:
    """``value`` as a ``bool``: a bool, 0/1, or one of :data:`TRUE_WORDS` / :data:`FALSE_WORDS` (any case).

    Args:
        value: the tunable's value as parsed from the config or the command line.
        name: the tunable's id, for the error message.

    Raises:
        ValueError: naming ``name`` and the value when it is not a recognised boolean.
    """
    if isinstance(value, bool):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        value = value.item()
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(
        f"{name} must be a boolean (true/True/1 or false/False/0), got {value!r} ({type(value).__name__})."
    )


def check_bools(values: Mapping[str, Any]) -> dict[str, bool]:
    """Parse several boolean tunables at once (see :func:`as_bool`), reporting every bad one in one error.

    Raises:
        ValueError: one line per tunable whose value is not a recognised boolean.
    """
    out, problems = {}, []
    for name, value in values.items():
        try:
            out[name] = as_bool(value, name)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ValueError("\n".join(problems))
    return out
