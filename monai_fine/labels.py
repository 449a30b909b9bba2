# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""BTCV label table and the evaluation protocols (label sets) defined on it.

The 14-class BTCV label map (0 = background) is :data:`BTCV_LABELS`. Two protocols select the organs to score:

- ``"btcv13"``: the 13 organs 1..13 (FINE / nnU-Net evaluation);
- ``"synapse8"``: the 8 organs (1, 2, 3, 4, 6, 7, 8, 11) of the Synapse protocol (TransUNet, nnFormer, UNETR++).

Used by :py:mod:`monai_fine.metrics` (the columns of the per-organ metrics), :py:mod:`monai_fine.data.phantom`
(the phantom's label map) and the CLI (tables).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BTCV_LABELS", "BTCV13_ORGANS", "SYNAPSE8_ORGANS", "PROTOCOLS", "resolve_labels", "organ_names"]

BTCV_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
BTCV13_ORGANS: tuple[int, ...] = tuple(range(1, 14))
SYNAPSE8_ORGANS: tuple[int, ...] = (1, 2, 3, 4, 6, 7, 8, 11)
PROTOCOLS: dict[str, tuple[int, ...]] = {"btcv13": BTCV13_ORGANS, "synapse8": SYNAPSE8_ORGANS}


def resolve_labels(labels: Sequence[int] | None = None, protocol: str | None = None) -> tuple[int, ...]:
    """Return the label (channel) indices to score, from explicit ``labels`` or a named ``protocol``.

    Args:
        labels: explicit label (one-hot channel) indices; mutually exclusive with ``protocol``.
        protocol: a key of :data:`PROTOCOLS`: ``"btcv13"`` (labels 1..13) or ``"synapse8"`` (labels 1, 2, 3, 4, 6,
            7, 8, 11). When both arguments are None, ``"btcv13"`` is used.

    Raises:
        ValueError: when both arguments are given, the protocol is unknown, or ``labels`` is empty, has duplicates
            or negative values.
    """
    if labels is not None and protocol is not None:
        raise ValueError(f"give either labels ({labels}) or protocol ({protocol!r}), not both.")
    if labels is None:
        protocol = "btcv13" if protocol is None else protocol
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}.")
        return PROTOCOLS[protocol]
    out = tuple(int(i) for i in labels)
    if len(out) == 0 or len(set(out)) != len(out) or min(out) < 0:
        raise ValueError(f"labels must be a non-empty sequence of distinct non-negative integers, got {labels}.")
    return out


def organ_names(labels: Sequence[int]) -> list[str]:
    """Return the BTCV organ name of each label (``"label_<i>"`` for ids outside :data:`BTCV_LABELS`)."""
    return [BTCV_LABELS.get(int(i), f"label_{int(i)}") for i in labels]
