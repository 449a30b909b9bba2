# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the up-front datalist checks, each bad input written for real as NIfTI."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_fine.data import check, check_datalist, check_datalist_file

SHAPE = (16, 16, 10)


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


def good_pair(tmp_path: Path, name: str) -> dict[str, str]:
    rng = np.random.default_rng(0)
    image = rng.normal(40, 20, SHAPE).astype(np.int16)
    label = rng.integers(0, 14, SHAPE).astype(np.uint8)
    return {
        "image": save(tmp_path / f"{name}_img.nii.gz", image),
        "label": save(tmp_path / f"{name}_lbl.nii.gz", label),
    }


def test_good_items_pass(tmp_path):
    items = [good_pair(tmp_path, "a"), good_pair(tmp_path, "b")]
    items.append({"image": save(tmp_path / "c_img.nii.gz", np.zeros((*SHAPE, 1), np.float32))})  # channel 1, no label
    assert check_datalist(items) is True


def make_bad(tmp_path: Path, problem: str) -> tuple[dict[str, str], str]:
    """Write one bad image/label pair; return the item and the regex expected in the error."""
    item = good_pair(tmp_path, "case")
    img, lbl = Path(item["image"]), Path(item["label"])
    if problem == "missing":
        lbl.unlink()
        return item, rf"{re.escape(str(lbl))}: missing file"
    if problem == "garbage":
        with gzip.open(img, "wb") as f:
            f.write(b"this is not a nifti header" * 40)
        return item, rf"{re.escape(str(img))}: unreadable image"
    if problem == "truncated":
        data = img.read_bytes()
        img.write_bytes(data[: len(data) // 2])
        return item, rf"{re.escape(str(img))}: unreadable image .*(truncated|NIfTI)"
    if problem == "2d":
        save(img, np.zeros((16, 16), np.int16))
        return item, rf"{re.escape(str(img))}: image is not 3D: shape \(16, 16\)"
    if problem == "4d":
        save(img, np.zeros((*SHAPE, 2), np.int16))
        return item, rf"{re.escape(str(img))}: image is not 3D: shape \(16, 16, 10, 2\)"
    if problem == "shape":
        save(lbl, np.zeros((16, 16, 12), np.uint8))
        return item, rf"{re.escape(str(lbl))}: label shape \(16, 16, 12\) does not match image shape \(16, 16, 10\)"
    if problem == "affine":
        affine = np.diag([2.0, 2.0, 3.0, 1.0])
        affine[0, 3] = 1.5
        save(lbl, np.zeros(SHAPE, np.uint8), affine)
        return item, rf"{re.escape(str(lbl))}: label affine differs from the image affine by up to 1\.5"
    if problem == "label17":
        label = np.zeros(SHAPE, np.uint8)
        label[0, 0, 0] = 17
        save(lbl, label)
        return item, rf"{re.escape(str(lbl))}: label values outside 0\.\.13 .*: 17$"
    if problem == "noninteger":
        label = np.zeros(SHAPE, np.float32)
        label[1, 1, 1] = 1.5
        save(lbl, label)
        return item, rf"{re.escape(str(lbl))}: label has 1 non-integer values: 1\.5"
    if problem == "nan":
        image = np.zeros(SHAPE, np.float32)
        image[0, 0, :3] = np.nan
        image[1, 1, 1] = np.inf
        save(img, image)
        return item, rf"{re.escape(str(img))}: image has 4 non-finite intensities \(3 NaN, 1 inf\)"
    raise AssertionError(problem)


PROBLEMS = ["missing", "garbage", "truncated", "2d", "4d", "shape", "affine", "label17", "noninteger", "nan"]


@pytest.mark.parametrize("problem", PROBLEMS, ids=PROBLEMS)
def test_bad_input_is_named(tmp_path, problem):
    item, expected = make_bad(tmp_path, problem)
    with pytest.raises(ValueError, match=re.compile(expected, re.MULTILINE)):
        check_datalist([item])


def test_all_problems_are_collected(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    item_a, expected_a = make_bad(tmp_path / "a", "label17")
    item_b, expected_b = make_bad(tmp_path / "b", "nan")
    with pytest.raises(ValueError) as err:
        check_datalist([good_pair(tmp_path, "ok"), item_a, item_b])
    message = str(err.value)
    assert message.startswith("Datalist check found 2 problem(s) in 3 item(s):")
    assert re.search(expected_a, message, re.MULTILINE) and re.search(expected_b, message, re.MULTILINE)
    assert len(message.splitlines()) == 3


def test_value_checks_can_be_skipped_and_cases_limited(tmp_path):
    item, _ = make_bad(tmp_path, "label17")
    assert check_datalist([item], check_values=False)
    assert check_datalist([good_pair(tmp_path, "ok"), item], max_cases=1)
    assert check_datalist([item], num_classes=18)


def test_check_datalist_file(tmp_path):
    for name in ("a", "b"):
        good_pair(tmp_path, name)
    d = {
        "training": [{"image": "a_img.nii.gz", "label": "a_lbl.nii.gz"}],
        "validation": [{"image": "b_img.nii.gz", "label": "b_lbl.nii.gz"}],
        "test": [{"image": "b_img.nii.gz"}],
    }
    path = tmp_path / "dataset_0.json"
    path.write_text(json.dumps(d))
    assert check_datalist_file(path) == 2
    assert check_datalist_file(path, keys=("training", "validation", "test")) == 3
    assert "3 item(s)" in check(str(path), keys="training,validation,test")
    d["validation"].append({"image": "b_img.nii.gz", "label": "gone.nii.gz"})
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"gone\.nii\.gz: missing file"):
        check_datalist_file(path)


def test_real_ct_passes_and_mixed_pair_fails(totalseg_dir):
    ct, ct_label = str(totalseg_dir / "example_ct.nii.gz"), str(totalseg_dir / "example_ct_label_btcv13.nii.gz")
    sm_label = str(totalseg_dir / "example_ct_sm_label_btcv13.nii.gz")
    assert check_datalist([{"image": ct, "label": ct_label}])
    with pytest.raises(ValueError, match=r"label shape \(122, 101, 30\) does not match image shape \(122, 101, 112\)"):
        check_datalist([{"image": ct, "label": sm_label}], check_values=False)
