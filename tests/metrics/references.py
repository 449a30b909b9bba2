# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Independent references (numpy / scipy only) and data builders shared by the metric and handler tests."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "SPACING",
    "NUM_CLASSES",
    "SHAPE",
    "ref_dice",
    "ref_hd95",
    "ref_table",
    "nanmean_of_organs",
    "affine_for",
    "one_hot",
    "random_label_map",
    "perturb",
]

SPACING = (0.8, 0.8, 3.0)
NUM_CLASSES = 14
SHAPE = (24, 24, 24)


# ---------------------------------------------------------------- independent references (numpy / scipy only)


def ref_dice(pred: np.ndarray, true: np.ndarray, empty: str) -> float:
    """2|P&T| / (|P|+|T|); both empty -> NaN ("nan") or 1 ("synapse")."""
    denom = int(pred.sum()) + int(true.sum())
    if denom == 0:
        return math.nan if empty == "nan" else 1.0
    return 2.0 * int((pred & true).sum()) / denom


def ref_hd95(pred: np.ndarray, true: np.ndarray, spacing: tuple[float, ...], empty: str) -> float:
    """max of the two directed 95th percentiles of surface-to-surface distances in mm (medpy hd95 definition).

    Surface = mask XOR binary_erosion(mask) (face connectivity, outside of the image is background). Each distance
    goes from a surface voxel of one mask to the nearest *surface* voxel of the other mask (as MONAI and medpy do;
    measuring to the nearest voxel of the other *mask* would give 0 for surface voxels inside it).
    """
    if not pred.any() or not true.any():
        return math.nan if empty == "nan" else 0.0
    surf_p = pred ^ ndimage.binary_erosion(pred)
    surf_t = true ^ ndimage.binary_erosion(true)
    d_pt = ndimage.distance_transform_edt(~surf_t, sampling=spacing)[surf_p]
    d_tp = ndimage.distance_transform_edt(~surf_p, sampling=spacing)[surf_t]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def ref_table(pred_lm: np.ndarray, true_lm: np.ndarray, labels, spacing, empty: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference (Dice, HD95) rows of one case from integer label maps."""
    dice = [ref_dice(pred_lm == i, true_lm == i, empty) for i in labels]
    hd = [ref_hd95(pred_lm == i, true_lm == i, spacing, empty) for i in labels]
    return np.array(dice), np.array(hd)


def nanmean_of_organs(table: np.ndarray) -> float:
    """Mean over organs of the per-organ nanmean over cases."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.nanmean(table, axis=0)))


# ---------------------------------------------------------------- data builders


def affine_for(spacing: tuple[float, float, float]) -> torch.Tensor:
    """LPS-style affine (flipped x, y) with the given spacing and a non-zero origin."""
    a = torch.diag(torch.tensor([-spacing[0], -spacing[1], spacing[2], 1.0], dtype=torch.float64))
    a[:3, 3] = torch.tensor([120.0, 95.0, -310.0], dtype=torch.float64)
    return a


def one_hot(label_map: np.ndarray, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(X, Y, Z) integer map -> (C, X, Y, Z) float one-hot."""
    return torch.nn.functional.one_hot(torch.as_tensor(label_map).long(), num_classes).permute(3, 0, 1, 2).float()


def random_label_map(rng: np.random.Generator, organs, shape=SHAPE) -> np.ndarray:
    """Label map with smooth random blobs for the given organ ids (later organs overwrite earlier ones)."""
    out = np.zeros(shape, dtype=np.int64)
    for organ in organs:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.5)
        out[field > np.quantile(field, 0.9)] = organ
    return out


def perturb(rng: np.random.Generator, label_map: np.ndarray) -> np.ndarray:
    """A 'prediction': shift the map by one voxel along a random axis and relabel a random blob."""
    pred = np.roll(label_map, shift=int(rng.choice([-1, 1])), axis=int(rng.integers(0, 3)))
    field = ndimage.gaussian_filter(rng.standard_normal(label_map.shape), sigma=2.0)
    pred[field > np.quantile(field, 0.97)] = int(rng.choice(np.unique(label_map)))
    return pred
