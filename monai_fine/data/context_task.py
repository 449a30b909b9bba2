# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""A context-only segmentation task: twins whose labels only content outside every crop can decide.

Each volume (default 160 x 32 x 16 voxels of 3 mm, x the long axis) holds two locally identical *twins*, bright
ellipsoids near the two x ends, and a *marker*, a brighter block in the middle of the x axis that lies either in the
lower or in the upper half of the y axis (the case's ``side``). The labels, by ``rule``:

- ``"side"`` (default): both twins are ``1`` (``twin_a``) when the marker is low (side 0), ``2`` (``twin_b``) when it
  is high (side 1);
- ``"xor"``: the left twin (small x) is ``twin_a`` and the right one ``twin_b`` when the marker is low, the other way
  round when it is high (the label is ``side XOR end``, like the kidneys of situs inversus: harder to learn, since
  neither bit alone correlates with the label);
- ``3`` (``marker``) in both.

Position alone says nothing (both labels are equally likely at each end), and the marker lies at least
``context_gap`` voxels (along x) from every twin voxel. With the default
layout no 32-voxel-wide crop or sliding window that holds a twin voxel reaches the marker, so the crops containing a
twin are *identical* under both labellings (every random draw is shared; only the marker's y position differs):
a model that sees one crop at a time, through any learned prior, cannot beat chance on the twins. Only a model that
carries content from outside the window (the per-scan memory) can. :func:`context_gap` measures the property and
``tests/data/test_context_task.py`` checks it on every crop position.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["LABELS", "RULES", "make_context_case", "make_context_dataset", "context_gap"]

LABELS = {0: "background", 1: "twin_a", 2: "twin_b", 3: "marker"}
_HU = {"body": 40.0, "twin": 130.0, "marker": 230.0, "noise": 20.0}


RULES = ("side", "xor")


def make_context_case(
    seed: int,
    side: int,
    shape: Sequence[int] = (160, 32, 16),
    rule: str = "side",
) -> tuple[np.ndarray, np.ndarray]:
    """One case: ``image`` (int16 HU) and ``label`` (uint8), arrays of ``shape``.

    Every random number is drawn from ``seed`` whatever ``side`` is, so the two sides of one seed differ only in the
    marker's y position (image) and in which twin is ``twin_a`` (label).

    Args:
        seed: the case's random seed.
        side: 0 (marker in the lower y half) or 1 (upper half).
        shape: ``(X, Y, Z)``, X >= 96 and Y >= 16.
        rule: ``"side"`` or ``"xor"`` (module docstring).

    Raises:
        ValueError: for another ``side`` or ``rule``, or a too small ``shape``.
    """
    if side not in (0, 1):
        raise ValueError(f"side must be 0 or 1, got {side!r}.")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    X, Y, Z = (int(s) for s in shape)
    if X < 96 or Y < 16 or Z < 4:
        raise ValueError(f"shape must be at least (96, 16, 4), got {tuple(shape)}.")
    rng = np.random.default_rng(seed)
    image = rng.normal(_HU["body"], _HU["noise"], size=(X, Y, Z))
    label = np.zeros((X, Y, Z), dtype=np.uint8)
    grid = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    twins = []
    for end in (0, 1):  # the twins: one kind of object (same intensity, shape distribution), one at each x end
        centre = np.array([X * 0.1 if end == 0 else X * 0.9, Y / 2, Z / 2]) + rng.uniform(-2.0, 2.0, 3)
        radii = np.array([rng.uniform(5.0, 7.0), rng.uniform(5.0, 7.0), min(rng.uniform(4.0, 6.0), Z / 2 - 1)])
        twins.append(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0)
    marker_x = X / 2 + rng.uniform(-4.0, 4.0)
    marker_y = (Y * 0.25, Y * 0.75)[side] + rng.uniform(-1.0, 1.0)
    marker = (
        (np.abs(grid[0] - marker_x) <= 8) & (np.abs(grid[1] - marker_y) <= Y * 0.2) & (grid[2] >= 1) & (grid[2] < Z - 1)
    )
    texture = rng.normal(0.0, _HU["noise"], size=(X, Y, Z))
    for mask in twins:
        image[mask] = _HU["twin"] + texture[mask]
    image[marker] = _HU["marker"] + texture[marker]
    left, right = twins
    a, b = (1, 2) if side == 0 else (2, 1)
    label[left] = a
    label[right] = b if rule == "xor" else a
    label[marker] = 3
    return np.round(image).astype(np.int16), label


def context_gap(label: np.ndarray) -> int:
    """Smallest x distance (voxels) between a twin voxel and a marker voxel: a crop narrower than this along x
    never holds both."""
    xs = {k: np.nonzero(np.isin(label, k).any(axis=(1, 2)))[0] for k in ((1, 2), 3)}
    twin_x, marker_x = xs[(1, 2)], xs[3]
    return int(np.min(np.abs(twin_x[:, None] - marker_x[None, :])))


def make_context_dataset(
    out_dir: str | Path,
    num_train: int = 12,
    num_val: int = 8,
    seed: int = 0,
    shape: Sequence[int] = (160, 32, 16),
    spacing: Sequence[float] = (3.0, 3.0, 3.0),
    rule: str = "side",
) -> Path:
    """Write NIfTI cases (``imagesTr``/``labelsTr``) and ``dataset_0.json`` (``training``, ``validation``), half of
    each split with the marker low, half high. Returns the datalist path."""
    import nibabel as nib

    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*map(float, spacing), 1.0])  # RAS
    splits: dict[str, list] = {"training": [], "validation": []}
    sides: dict[str, int] = {}
    for i in range(num_train + num_val):
        split = "training" if i < num_train else "validation"
        side = i % 2
        image, label = make_context_case(seed * 100_003 + i, side, shape, rule)
        name = f"ctx_{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(out / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, affine), str(out / "labelsTr" / name))
        splits[split].append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
        sides[name] = side
    datalist = {
        "name": "context-only twins",
        "rule": rule,
        "labels": {str(k): v for k, v in LABELS.items()},
        **splits,
        "sides": sides,
    }
    path = out / "dataset_0.json"
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path
