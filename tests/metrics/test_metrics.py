# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Tests of per-organ Dice / HD95 (mm) functions and cumulative metrics against hand-made and scipy answers."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from metrics.references import (
    NUM_CLASSES,
    SPACING,
    affine_for,
    one_hot,
    perturb,
    random_label_map,
    ref_hd95,
    ref_table,
)
from monai_fine.handlers import HausdorffDistance95, OrganDice
from monai_fine.metrics import (
    BTCV13_ORGANS,
    BTCV_LABELS,
    PROTOCOLS,
    SYNAPSE8_ORGANS,
    HausdorffDistance95Metric,
    OrganDiceMetric,
    compute_organ_dice,
    compute_organ_hd95,
    reduce_organ_metric,
    resolve_labels,
    spacing_from_meta,
)

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- constants and protocols


def test_label_constants():
    assert BTCV_LABELS[0] == "background" and BTCV_LABELS[6] == "liver" and BTCV_LABELS[13] == "left adrenal gland"
    assert sorted(BTCV_LABELS) == list(range(14))
    assert tuple(range(1, 14)) == BTCV13_ORGANS
    assert SYNAPSE8_ORGANS == (1, 2, 3, 4, 6, 7, 8, 11)
    assert PROTOCOLS == {"btcv13": BTCV13_ORGANS, "synapse8": SYNAPSE8_ORGANS}
    assert resolve_labels() == BTCV13_ORGANS
    assert resolve_labels(protocol="synapse8") == SYNAPSE8_ORGANS
    assert resolve_labels(labels=[3, 1]) == (3, 1)


def test_synapse8_selects_channels_1_2_3_4_6_7_8_11():
    # channel c of the prediction is the truth box shifted by c voxels along x, so Dice = (8 - c) / 8 tells c apart
    y = torch.zeros(1, NUM_CLASSES, 24, 12, 12)
    y[:, :, 2:10, 2:10, 2:10] = 1
    y_pred = torch.zeros_like(y)
    for c in range(NUM_CLASSES):
        y_pred[0, c, 2 + c : 10 + c, 2:10, 2:10] = 1
    dice = compute_organ_dice(y_pred, y, PROTOCOLS["synapse8"])
    expected = torch.tensor([[(8 - c) / 8 if c < 8 else 0.0 for c in (1, 2, 3, 4, 6, 7, 8, 11)]])
    torch.testing.assert_close(dice, expected)
    metric = OrganDiceMetric(protocol="synapse8", reduction="none")
    metric(y_pred, y)
    torch.testing.assert_close(metric.aggregate(), expected)
    assert metric.class_names == [BTCV_LABELS[i] for i in SYNAPSE8_ORGANS]


# ---------------------------------------------------------------- hand-made masks with known answers


@pytest.mark.parametrize("k", [1, 2, 4], ids=["k1", "k2", "k4"])
def test_hd95_plates_offset_along_z(k):
    # one-voxel-thick plates (every voxel is surface), identical in x/y, k slices apart: every distance is 3k mm
    y = torch.zeros(1, 2, 12, 12, 12)
    y_pred = torch.zeros_like(y)
    y[0, 1, 2:10, 3:9, 3] = 1
    y_pred[0, 1, 2:10, 3:9, 3 + k] = 1
    hd = compute_organ_hd95(y_pred, y, [1], spacing=SPACING)
    assert hd.shape == (1, 1)
    assert hd.item() == pytest.approx(3.0 * k, rel=1e-6)
    # the same with voxel units and with a transposed spacing: the answer follows the z spacing only
    assert compute_organ_hd95(y_pred, y, [1], spacing=1.0).item() == pytest.approx(k, rel=1e-6)
    assert compute_organ_hd95(y_pred, y, [1], spacing=(3.0, 3.0, 0.5)).item() == pytest.approx(0.5 * k, rel=1e-6)


@pytest.mark.parametrize("axis, expected", [(0, 0.8), (1, 0.8), (2, 3.0)], ids=["shift-x", "shift-y", "shift-z"])
def test_hd95_single_voxel_shift(axis, expected):
    y = torch.zeros(1, 2, 8, 8, 8)
    y[0, 1, 3, 3, 3] = 1
    y_pred = torch.roll(y, shifts=1, dims=2 + axis)
    assert compute_organ_hd95(y_pred, y, [1], spacing=SPACING).item() == pytest.approx(expected, rel=1e-6)


def test_dice_two_overlapping_boxes():
    y_pred = torch.zeros(1, 3, 16, 16, 16)
    y = torch.zeros_like(y_pred)
    y_pred[0, 1, 2:10, 2:10, 2:6] = 1  # 8 * 8 * 4 = 256 voxels
    y[0, 1, 4:12, 2:10, 3:7] = 1  # 256 voxels; overlap 6 * 8 * 3 = 144
    y_pred[0, 2, 12:16, 12:16, 12:16] = 1  # 64 voxels, disjoint from the truth's 8 voxels and from label 1
    y[0, 2, 10:12, 10:12, 10:12] = 1
    dice = compute_organ_dice(y_pred, y, [1, 2])
    torch.testing.assert_close(dice, torch.tensor([[2 * 144 / (256 + 256), 0.0]]))
    # a 1-channel label map gives the same answer as the one-hot
    lm_pred = (y_pred * torch.arange(3).view(1, 3, 1, 1, 1)).sum(1, keepdim=True)
    lm = (y * torch.arange(3).view(1, 3, 1, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(compute_organ_dice(lm_pred, lm, [1, 2]), dice)


# ---------------------------------------------------------------- agreement with the scipy reference


@pytest.mark.parametrize("seed", [0, 1, 2, 3], ids=lambda s: f"seed{s}")
def test_random_blobs_match_scipy_reference(seed):
    rng = np.random.default_rng(seed)
    organs = (1, 2, 6, 11)
    true_lm = random_label_map(rng, organs)
    pred_lm = perturb(rng, true_lm)
    if seed == 0:  # an organ touching the image border on both masks (surface at the border)
        true_lm[:3, :5, :4] = 2
        pred_lm[:4, :5, :3] = 2
    spacing = (0.8, 0.8, 3.0) if seed % 2 == 0 else (0.7, 0.75, 2.5)
    y_pred, y = one_hot(pred_lm)[None], one_hot(true_lm)[None]
    ref_d, ref_h = ref_table(pred_lm, true_lm, organs, spacing, "nan")
    assert np.isfinite(ref_h).all() and (ref_h > 0).any()
    np.testing.assert_allclose(compute_organ_dice(y_pred, y, organs).numpy()[0], ref_d, rtol=1e-6)
    np.testing.assert_allclose(compute_organ_hd95(y_pred, y, organs, spacing).numpy()[0], ref_h, rtol=1e-4)


def test_hd95_measures_to_the_other_surface_not_the_other_mask():
    # prediction = truth with an inner cavity: the outer surfaces coincide, but the cavity walls lie inside the
    # truth mask, at 1.6 mm or more from the truth surface. Distances to the other *mask* would give HD95 = 0.
    true = np.zeros((16, 16, 10), dtype=bool)
    true[2:14, 2:14, 2:8] = True
    pred = true.copy()
    pred[5:11, 5:11, 4:6] = False
    hd = compute_organ_hd95(torch.as_tensor(pred)[None, None], torch.as_tensor(true)[None, None], [0], SPACING)
    ref = ref_hd95(pred, true, SPACING, "nan")
    assert ref >= 1.6
    assert hd.item() == pytest.approx(ref, rel=1e-4)


def test_per_item_spacing_in_a_batch():
    rng = np.random.default_rng(7)
    maps = [random_label_map(rng, (1, 3)) for _ in range(2)]
    preds = [perturb(rng, m) for m in maps]
    spacings = [(0.8, 0.8, 3.0), (1.5, 0.6, 2.0)]
    y = torch.stack([one_hot(m) for m in maps])
    y_pred = torch.stack([one_hot(p) for p in preds])
    hd = compute_organ_hd95(y_pred, y, [1, 3], spacing=spacings)
    ref = np.stack([ref_table(p, m, (1, 3), s, "nan")[1] for p, m, s in zip(preds, maps, spacings)])
    np.testing.assert_allclose(hd.numpy(), ref, rtol=1e-4)


# ---------------------------------------------------------------- empty-mask rules


@pytest.mark.parametrize(
    "pred_empty, true_empty, empty, dice, hd",
    [
        (True, True, "nan", math.nan, math.nan),
        (False, True, "nan", 0.0, math.nan),
        (True, False, "nan", 0.0, math.nan),
        (True, True, "synapse", 1.0, 0.0),
        (False, True, "synapse", 0.0, 0.0),
        (True, False, "synapse", 0.0, 0.0),
    ],
    ids=["nan-both", "nan-truth", "nan-pred", "synapse-both", "synapse-truth", "synapse-pred"],
)
def test_empty_mask_rules(pred_empty, true_empty, empty, dice, hd):
    y = torch.zeros(1, 3, 10, 10, 10)
    y_pred = torch.zeros_like(y)
    if not true_empty:
        y[0, 1, 2:5, 2:5, 2:5] = 1
    if not pred_empty:
        y_pred[0, 1, 3:6, 2:5, 2:5] = 1
    y[0, 2, 4:8, 4:8, 4:8] = 1  # a normal organ next to it is not affected by the rule
    y_pred[0, 2, 4:8, 4:8, 5:8] = 1
    d = compute_organ_dice(y_pred, y, [1, 2], empty=empty)[0]
    h = compute_organ_hd95(y_pred, y, [1, 2], SPACING, empty=empty)[0]
    np.testing.assert_equal(d[0].item(), dice)
    np.testing.assert_equal(h[0].item(), hd)
    assert d[1].item() == pytest.approx(2 * 48 / (64 + 48))
    assert h[1].item() == pytest.approx(3.0)


def test_mean_reduction_is_mean_over_organs_of_nanmean_over_cases():
    values = torch.tensor([[1.0, math.nan], [0.5, 0.2], [0.0, math.nan]])
    # organ means 0.5 and 0.2 -> 0.35 (MONAI's "mean" would average cases first: (1 + 0.35 + 0) / 3 = 0.45)
    assert reduce_organ_metric(values, "mean").item() == pytest.approx(0.35)
    torch.testing.assert_close(reduce_organ_metric(values, "mean_batch"), torch.tensor([0.5, 0.2]))
    assert reduce_organ_metric(values, "none") is values
    assert math.isnan(reduce_organ_metric(torch.full((2, 2), math.nan), "mean").item())


# ---------------------------------------------------------------- spacing from metadata


def test_spacing_from_meta_uses_affine_column_norms_then_pixdim():
    assert spacing_from_meta(MetaTensor(torch.zeros(1, 2, 2, 2), affine=affine_for(SPACING))) == pytest.approx(SPACING)
    # axes permuted and flipped: column j holds the step of array axis j, so (0.8, 0.7, 3.0), not row norms
    permuted = torch.tensor(
        [[0.0, 0.0, 3.0, 1.0], [-0.8, 0.0, 0.0, 2.0], [0.0, 0.7, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
    )
    assert spacing_from_meta(MetaTensor(torch.zeros(1, 2, 2, 2), affine=permuted)) == pytest.approx((0.8, 0.7, 3.0))
    assert spacing_from_meta({"pixdim": [1.0, 0.7, 0.7, 2.5, 0, 0, 0, 0]}) == pytest.approx((0.7, 0.7, 2.5))
    with pytest.raises(ValueError, match="neither 'affine' nor 'pixdim'"):
        spacing_from_meta({"filename_or_obj": "x.nii.gz"})
    with pytest.raises(ValueError, match="Tensor"):
        spacing_from_meta(torch.zeros(1, 2, 2, 2))


# ---------------------------------------------------------------- errors


def test_label_without_spacing_raises_unless_spacing_given():
    y = torch.zeros(2, 4, 4, 4)
    y[1, 1, 1, 1] = 1
    y_pred = torch.roll(y, shifts=1, dims=1)
    handler = HausdorffDistance95(labels=[1])
    with pytest.raises(ValueError, match="without metadata, so its voxel spacing is unknown"):
        handler.update(([y_pred], [y]))
    with pytest.raises(ValueError, match="without metadata"):
        HausdorffDistance95Metric(labels=[1])(y_pred[None], y[None])
    explicit = HausdorffDistance95(labels=[1], spacing=SPACING)
    explicit.update(([y_pred], [y]))
    assert explicit.metric_fn.get_buffer().item() == pytest.approx(0.8)


def test_identity_affine_warns():
    y = MetaTensor(torch.zeros(2, 4, 4, 4))
    y[1, 1, 1, 1] = 1
    with pytest.warns(UserWarning, match="identity affine"):
        HausdorffDistance95Metric(labels=[1])([y.clone()], [y])


def test_shape_mismatch_names_both_shapes():
    a, b = torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 3, 8, 8, 9)
    msg = re.escape("y_pred (1, 3, 8, 8, 8) and y (1, 3, 8, 8, 9)")
    with pytest.raises(ValueError, match=msg):
        compute_organ_dice(a, b, [1])
    with pytest.raises(ValueError, match=msg):
        compute_organ_hd95(a, b, [1], SPACING)
    with pytest.raises(ValueError, match=re.escape("y_pred (1, 3, 8, 8, 8) and y (1, 4, 8, 8, 8)")):
        compute_organ_dice(a, torch.zeros(1, 4, 8, 8, 8), [1])
    with pytest.raises(ValueError, match=re.escape("y_pred (1, 3, 8, 8, 8) and y (1, 3, 8, 8, 9)")):
        OrganDice(labels=[1]).update(([a[0]], [b[0]]))


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: OrganDice(protocol="btcv14"), "unknown protocol 'btcv14'"),
        (lambda: HausdorffDistance95(protocol="synapse9"), "unknown protocol 'synapse9'"),
        (lambda: OrganDice(labels=[1], protocol="btcv13"), "not both"),
        (lambda: OrganDice(empty="zero"), "unknown empty-mask rule 'zero'"),
        (lambda: HausdorffDistance95(reduction="sum"), "unknown reduction 'sum'"),
        (lambda: HausdorffDistance95(spacing=(0.8, -1.0, 3.0)), "positive finite"),
        (lambda: compute_organ_dice(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), [5]), "one-hot channels"),
        (lambda: compute_organ_hd95(torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 3, 4, 4, 4), [1], [1.0] * 2), "spacing"),
    ],
    ids=[
        "dice-protocol",
        "hd-protocol",
        "labels-and-protocol",
        "empty",
        "reduction",
        "spacing",
        "label-range",
        "spacing-len",
    ],
)
def test_invalid_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()
