# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the synthetic abdominal CT phantom: geometry, anatomy, twins, situs inversus, files on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from scipy.ndimage import binary_dilation

from monai_fine.data import BTCV_LABELS, check_datalist_file, make_phantom_case, make_phantom_dataset, phantom

RIGHT_SIDE = (6, 4, 2, 12, 9)  # liver, gallbladder, right kidney, right adrenal, IVC
LEFT_SIDE = (1, 7, 3, 13, 8)  # spleen, stomach, left kidney, left adrenal, aorta
NOISELESS = {"noise_std": 0.0, "partial_volume": 0.0}


def body_mid2(image: np.ndarray) -> int:
    """Twice the voxel index of the body midline along x, from the body outline alone (independent of the generator).

    For every (y, z) row whose body outline lies inside the volume, the midline is halfway between the first and last
    body voxel; the most common value of ``first + last`` is returned.
    """
    body = image > -500
    nx = image.shape[0]
    rows = body.any(0)
    first = np.argmax(body, axis=0)[rows]
    last = (nx - 1 - np.argmax(body[::-1], axis=0))[rows]
    inside = (first > 0) & (last < nx - 1)
    assert inside.sum() > 100, "the body outline should be inside the volume on many rows"
    return int(np.bincount(first[inside] + last[inside]).argmax())


def mirror_x(mask: np.ndarray, mid2: int) -> np.ndarray:
    """Mirror a volume about the plane at voxel index ``mid2 / 2`` along x (voxels mapped outside are dropped)."""
    out = np.zeros_like(mask)
    src = mid2 - np.arange(mask.shape[0])
    ok = (src >= 0) & (src < mask.shape[0])
    out[ok] = mask[src[ok]]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def world_centroid(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(label == value).mean(0))


def test_case_geometry_and_types():
    image, label, affine = make_phantom_case(shape=(64, 56, 40), spacing=(3.0, 2.5, 4.0), seed=3)
    assert image.shape == label.shape == (64, 56, 40)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), (3.0, 2.5, 4.0))
    assert set(np.unique(label)) <= set(range(14))
    assert np.isfinite(image).all() and image.min() >= -1024 and image.max() <= 3071


def test_same_seed_same_case_different_seed_differs():
    a = make_phantom_case(shape=(48, 48, 32), seed=5)
    b = make_phantom_case(shape=(48, 48, 32), seed=5)
    c = make_phantom_case(shape=(48, 48, 32), seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_organ_present_in_a_centred_field_of_view(seed):
    _, label, _ = make_phantom_case(seed=seed, z_jitter_mm=0.0)
    counts = np.bincount(label.ravel(), minlength=14)
    missing = [BTCV_LABELS[k] for k in range(1, 14) if counts[k] == 0]
    assert not missing, f"organs missing: {missing}"
    # plausible relative sizes: liver largest organ, far larger than the spleen; adrenals smallest
    assert counts[6] == counts[1:].max() and counts[6] > 2.5 * counts[1]
    assert counts[12] < counts[2] / 10 and counts[13] < counts[3] / 10


def test_field_of_view_varies_along_z():
    z_starts = [make_phantom_case(shape=(32, 32, 24), seed=s)[2][2, 3] for s in range(6)]
    assert np.ptp(z_starts) > 20.0  # mm


@pytest.mark.parametrize("situs", [False, True], ids=["normal", "situs_inversus"])
def test_organs_on_the_correct_side(situs):
    image, label, affine = make_phantom_case(seed=11, situs_inversus=situs, z_jitter_mm=0.0, noise_std=0.0)
    midline_x = nib.affines.apply_affine(affine, [body_mid2(image) / 2.0, 0, 0])[0]
    sign = -1.0 if situs else 1.0  # RAS: world +x is the patient's right
    for organ in RIGHT_SIDE:
        assert sign * (world_centroid(label, affine, organ)[0] - midline_x) > 0, BTCV_LABELS[organ]
    for organ in LEFT_SIDE:
        assert sign * (world_centroid(label, affine, organ)[0] - midline_x) < 0, BTCV_LABELS[organ]
    liver, kidney, aorta, pancreas = (world_centroid(label, affine, k) for k in (6, 2, 8, 11))
    assert liver[2] > kidney[2]  # liver above the kidney (superior = +z)
    assert kidney[1] < pancreas[1] and aorta[1] < pancreas[1]  # kidney and aorta behind the pancreas (anterior = +y)


def test_liver_side_matches_real_ct(totalseg_dir):
    real = nib.load(totalseg_dir / "example_ct_label_btcv13.nii.gz")
    real_label = np.asarray(real.dataobj)
    _, label, affine = make_phantom_case(seed=0)
    real_dx = world_centroid(real_label, real.affine, 6)[0] - world_centroid(real_label, real.affine, 1)[0]
    ours_dx = world_centroid(label, affine, 6)[0] - world_centroid(label, affine, 1)[0]
    assert np.sign(real_dx) == np.sign(ours_dx) == 1.0  # liver towards world +x (patient's right) in both


@pytest.mark.parametrize("situs", [False, True], ids=["normal", "situs_inversus"])
def test_twins_are_mirror_images_with_equal_intensities(situs):
    image, label, _ = make_phantom_case(seed=4, situs_inversus=situs, z_jitter_mm=0.0, **NOISELESS)
    mid2 = body_mid2(image)
    for right, left in ((2, 3), (12, 13)):
        assert dice(mirror_x(label == right, mid2), label == left) > 0.9
        np.testing.assert_allclose(np.sort(image[label == right]), np.sort(image[label == left]), atol=1e-3)
        # the twin's immediate neighbourhood (a one-voxel shell in its fat capsule) is identical as well
        shells = [binary_dilation(label == k) & (label != k) for k in (right, left)]
        np.testing.assert_allclose(np.sort(image[shells[0]]), np.sort(image[shells[1]]), atol=1e-3)


def test_twin_intensity_statistics_match_with_noise():
    image, label, _ = make_phantom_case(seed=8, z_jitter_mm=0.0)
    for right, left in ((2, 3), (12, 13)):
        assert abs(image[label == right].mean() - image[label == left].mean()) < 4.0
        assert abs(image[label == right].std() - image[label == left].std()) < 4.0


def test_situs_inversus_mirrors_the_organ_arrangement():
    normal_img, normal, _ = make_phantom_case(seed=9, z_jitter_mm=0.0, **NOISELESS)
    _, inverted, _ = make_phantom_case(seed=9, z_jitter_mm=0.0, situs_inversus=True, **NOISELESS)
    mid2 = body_mid2(normal_img)
    for organ in (6, 1, 7, 4):  # liver, spleen, stomach, gallbladder keep their label and swap sides
        assert dice(mirror_x(normal == organ, mid2), inverted == organ) > 0.95, BTCV_LABELS[organ]
        assert dice(normal == organ, inverted == organ) < 0.5, BTCV_LABELS[organ]


def test_intensities_are_plausible_hounsfield_units():
    image, label, _ = make_phantom_case(seed=2, z_jitter_mm=0.0, **NOISELESS)
    median = {k: float(np.median(image[label == k])) for k in range(1, 14)}
    assert abs(median[6] - median[1]) < 3.0  # liver and spleen share the same intensity on purpose
    expected = {6: (70, 130), 2: (110, 190), 8: (140, 230), 9: (130, 220), 10: (140, 230), 4: (-15, 35), 11: (60, 120)}
    for organ, (lo, hi) in expected.items():
        assert lo < median[organ] < hi, (BTCV_LABELS[organ], median[organ])
    assert (image[label == 7] < -800).any()  # gas in the stomach
    background = image[label == 0]
    assert np.isclose(np.median(image[0, 0]), -1000.0)  # air in the corner
    assert ((background > -130) & (background < -70)).sum() > 1000  # fat
    assert (background > 600).sum() > 100  # bone


def test_noise_level():
    clean, label, _ = make_phantom_case(shape=(64, 64, 32), seed=1, noise_std=0.0)
    noisy, label2, _ = make_phantom_case(shape=(64, 64, 32), seed=1, noise_std=15.0)
    np.testing.assert_array_equal(label, label2)
    body = clean > -900  # away from the -1024 clip
    assert 14.0 < float((noisy - clean)[body].std()) < 16.0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="shape"):
        make_phantom_case(shape=(32, 32))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom_case(spacing=(3.0, 0.0, 3.0))
    with pytest.raises(ValueError, match="situs_inversus_fraction"):
        make_phantom_dataset("unused", situs_inversus_fraction=1.5)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    return make_phantom_dataset(
        out, num_cases=4, seed=7, shape=(48, 48, 32), num_test=2, val_fraction=0.25, situs_inversus_fraction=0.5
    )


def test_dataset_layout_and_json(small_dataset):
    root = small_dataset.parent
    d = json.loads(small_dataset.read_text())
    assert small_dataset.name == "dataset_0.json"
    assert d["labels"] == {str(k): v for k, v in BTCV_LABELS.items()}
    assert (d["numTraining"], d["numValidation"], d["numTest"]) == (3, 1, 2)
    train = {i["image"] for i in d["training"]}
    val = {i["image"] for i in d["validation"]}
    assert len(train) == 3 and len(val) == 1 and not train & val
    for item in d["training"] + d["validation"]:
        assert item["image"].startswith("imagesTr/") and item["label"].startswith("labelsTr/")
        assert not Path(item["image"]).is_absolute()
        assert (root / item["image"]).is_file() and (root / item["label"]).is_file()
    assert all(set(i) == {"image"} and i["image"].startswith("imagesTs/") for i in d["test"])
    assert all((root / i["image"]).is_file() for i in d["test"])
    names = {Path(i["image"]).name.split(".")[0] for i in d["training"] + d["validation"] + d["test"]}
    assert set(d["situs_inversus"]) <= names and 1 <= len(d["situs_inversus"]) <= 4
    assert check_datalist_file(small_dataset, keys=("training", "validation", "test")) == 6


def test_dataset_files_read_back_as_ras_hu(small_dataset):
    root = small_dataset.parent
    d = json.loads(small_dataset.read_text())
    item = d["training"][0]
    assert nib.load(root / item["image"]).get_data_dtype() == np.int16
    assert nib.load(root / item["label"]).get_data_dtype() == np.uint8
    image = LoadImage(image_only=True)(str(root / item["image"]))
    label = LoadImage(image_only=True)(str(root / item["label"]))
    assert tuple(image.shape) == (48, 48, 32)
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(image.affine.numpy()), (3.0, 3.0, 3.0))
    np.testing.assert_allclose(image.affine.numpy(), label.affine.numpy())
    assert float(image.min()) >= -1024 and float(image.max()) > 300  # HU, with bone and contrast
    assert set(np.unique(label.numpy()).astype(int)) <= set(range(14))
    assert float(np.median(image.numpy()[label.numpy() == 6])) > 50  # enhanced liver


def test_dataset_is_deterministic(small_dataset, tmp_path):
    again = make_phantom_dataset(
        tmp_path / "a",
        num_cases=4,
        seed=7,
        shape=(48, 48, 32),
        num_test=2,
        val_fraction=0.25,
        situs_inversus_fraction=0.5,
    )
    other = make_phantom_dataset(tmp_path / "b", num_cases=1, seed=8, shape=(48, 48, 32), num_test=0)
    assert json.loads(again.read_text()) == json.loads(small_dataset.read_text())
    name = "imagesTr/case_0000.nii.gz"
    first = np.asarray(nib.load(small_dataset.parent / name).dataobj)
    np.testing.assert_array_equal(first, np.asarray(nib.load(again.parent / name).dataobj))
    assert not np.array_equal(first, np.asarray(nib.load(other.parent / name).dataobj))


def test_twelve_case_dataset_is_fast(tmp_path):
    start = time.perf_counter()
    make_phantom_dataset(tmp_path, num_cases=12, seed=0, shape=(96, 96, 64), num_test=0)
    assert time.perf_counter() - start < 10.0


def test_phantom_command_returns_json_path(tmp_path):
    path = phantom(out=str(tmp_path / "ph"), num_cases=2, seed=1, num_test=1, shape=(32, 32, 16))
    assert isinstance(path, str) and Path(path).name == "dataset_0.json"
    d = json.loads(Path(path).read_text())
    assert (d["numTraining"], d["numValidation"], d["numTest"]) == (1, 1, 1)


def test_the_phantom_protocol_is_what_the_demo_and_the_tiny_preset_use():
    import inspect

    from monai_fine import demo
    from monai_fine.data import PHANTOM, make_phantom_dataset
    from monai_fine.networks import PRESETS

    defaults = {k: v.default for k, v in inspect.signature(demo.demo).parameters.items()}
    assert (defaults["shape"], defaults["roi_size"], defaults["preset"]) == (PHANTOM.shape, PHANTOM.roi_size, "tiny")
    assert tuple(PRESETS["tiny"]["roi_size"]) == PHANTOM.roi_size
    signature = inspect.signature(make_phantom_dataset).parameters
    assert (signature["shape"].default, signature["spacing"].default) == (PHANTOM.shape, PHANTOM.spacing)
