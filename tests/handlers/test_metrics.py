# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Tests of per-organ Dice / HD95 (mm) functions, metrics and Ignite handlers against hand-made and scipy answers."""

from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import MetricsSaver, from_engine
from scipy import ndimage

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


# ---------------------------------------------------------------- constants and protocols


def test_label_constants():
    assert BTCV_LABELS[0] == "background" and BTCV_LABELS[6] == "liver" and BTCV_LABELS[13] == "left adrenal gland"
    assert sorted(BTCV_LABELS) == list(range(14))
    assert BTCV13_ORGANS == tuple(range(1, 14))
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


@pytest.mark.parametrize(
    "axis, expected", [(0, 0.8), (1, 0.8), (2, 3.0)], ids=["shift-x", "shift-y", "shift-z"]
)
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


# ---------------------------------------------------------------- Ignite handlers and MetricsSaver


def _case(rng: np.random.Generator, index: int, spacing) -> dict:
    organs = (1, 2, 6, 11) if index % 2 == 0 else (1, 3, 5, 6)
    true_lm = random_label_map(rng, organs)
    pred_lm = perturb(rng, true_lm)
    if index == 1:
        pred_lm[pred_lm == 3] = 0  # an organ missed by the prediction
    meta = {"filename_or_obj": f"case_{index:02d}.nii.gz"}
    return {
        "pred": MetaTensor(one_hot(pred_lm), affine=affine_for(spacing), meta=dict(meta)),
        "label": MetaTensor(one_hot(true_lm), affine=affine_for(spacing), meta=dict(meta)),
        "pred_lm": pred_lm,
        "true_lm": true_lm,
        "spacing": spacing,
    }


def _read_raw_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")  # MetricsSaver's summary of all-NaN organs
def test_handlers_on_engine_with_metrics_saver(tmp_path):
    rng = np.random.default_rng(42)
    spacings = [(0.8, 0.8, 3.0), (0.7, 0.7, 2.5), (0.9, 0.6, 1.5)]
    # 3 iterations of 2 decollated cases each, as a SupervisedEvaluator output (list of dicts)
    batches = [[_case(rng, 2 * i + j, spacings[(2 * i + j) % 3]) for j in range(2)] for i in range(3)]
    cases = [c for b in batches for c in b]

    engine = Engine(lambda engine, batch: batch)
    handlers = {
        "dice": OrganDice(output_transform=from_engine(["pred", "label"])),
        "hd95": HausdorffDistance95(output_transform=from_engine(["pred", "label"])),
        "dice8": OrganDice(protocol="synapse8", empty="synapse", output_transform=from_engine(["pred", "label"])),
        "hd95_8": HausdorffDistance95(
            protocol="synapse8", empty="synapse", output_transform=from_engine(["pred", "label"])
        ),
    }
    for name, handler in handlers.items():
        handler.attach(engine, name)
    MetricsSaver(
        save_dir=str(tmp_path),
        metrics="*",
        metric_details="*",
        batch_transform=lambda batch: [c["label"].meta for c in batch],
        summary_ops=["mean"],
    ).attach(engine)
    engine.run(batches, max_epochs=1)

    for name, protocol, empty, which in [
        ("dice", "btcv13", "nan", 0),
        ("hd95", "btcv13", "nan", 1),
        ("dice8", "synapse8", "synapse", 0),
        ("hd95_8", "synapse8", "synapse", 1),
    ]:
        labels = PROTOCOLS[protocol]
        ref = np.stack(
            [ref_table(c["pred_lm"], c["true_lm"], labels, c["spacing"], empty)[which] for c in cases]
        )
        details = engine.state.metric_details[name]
        assert tuple(details.shape) == (len(cases), len(labels))
        np.testing.assert_allclose(details.numpy(), ref, rtol=1e-4, atol=1e-6)
        assert engine.state.metrics[name] == pytest.approx(nanmean_of_organs(ref), rel=1e-4)
        assert handlers[name].class_names == [BTCV_LABELS[i] for i in labels]

        header, filenames, values = _read_raw_csv(tmp_path / f"{name}_raw.csv")
        assert header == ["filename"] + [f"class{j}" for j in range(len(labels))] + ["mean"]
        assert filenames == [f"case_{i:02d}.nii.gz" for i in range(len(cases))]
        np.testing.assert_allclose(values[:, :-1], ref, rtol=1e-4, atol=1e-4)
        with np.errstate(all="ignore"):
            np.testing.assert_allclose(values[:, -1], np.nanmean(ref, axis=1), rtol=1e-4, atol=1e-4)
        assert (tmp_path / f"{name}_summary.csv").exists()

    # the nan rule really produced NaNs (absent organs) and the synapse rule produced none
    assert torch.isnan(engine.state.metric_details["hd95"]).any()
    assert not torch.isnan(engine.state.metric_details["hd95_8"]).any()
    saved = dict(line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines())
    assert set(saved) == set(handlers)
    assert float(saved["hd95"]) == pytest.approx(engine.state.metrics["hd95"], rel=1e-6)


def test_handler_accepts_dict_of_lists_and_batch_first_metatensors():
    rng = np.random.default_rng(3)
    cases = [_case(rng, i, SPACING) for i in range(2)]
    ref = np.stack([ref_table(c["pred_lm"], c["true_lm"], (1, 6), SPACING, "nan")[1] for c in cases])
    for output in (
        {"pred": [c["pred"] for c in cases], "label": [c["label"] for c in cases]},
        {
            "pred": torch.stack([c["pred"] for c in cases]),
            "label": MetaTensor(torch.stack([c["label"].as_tensor() for c in cases]), affine=affine_for(SPACING)),
        },
    ):
        engine = Engine(lambda engine, batch, output=output: output)
        HausdorffDistance95(labels=[1, 6], output_transform=from_engine(["pred", "label"])).attach(engine, "hd")
        engine.run([0], max_epochs=1)
        np.testing.assert_allclose(engine.state.metric_details["hd"].numpy(), ref, rtol=1e-4)


# ---------------------------------------------------------------- spacing from metadata


def test_spacing_from_meta_uses_affine_column_norms_then_pixdim():
    assert spacing_from_meta(MetaTensor(torch.zeros(1, 2, 2, 2), affine=affine_for(SPACING))) == pytest.approx(
        SPACING
    )
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


def test_hd95_handler_reads_spacing_per_case_from_affine():
    y = torch.zeros(2, 4, 4, 6)
    y[1, 1, 1, 1] = 1
    y_pred = torch.roll(y, shifts=1, dims=3)  # one voxel along z
    handler = HausdorffDistance95(labels=[1])
    handler.reset()
    affines = [affine_for((0.8, 0.8, 3.0)), affine_for((1.0, 1.0, 2.0))]
    handler.update(([MetaTensor(y_pred, affine=a) for a in affines], [MetaTensor(y, affine=a) for a in affines]))
    torch.testing.assert_close(handler.metric_fn.get_buffer(), torch.tensor([[3.0], [2.0]]))


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
        "dice-protocol", "hd-protocol", "labels-and-protocol", "empty", "reduction", "spacing", "label-range",
        "spacing-len",
    ],
)
def test_invalid_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()
