# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Tests of datalist building and of the shipped BTCV 18/12 paper split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from monai_fine.data import btcv_18_12_datalist, build_datalist, datalist

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "bundle" / "configs" / "datalist_btcv_18_12.json"
PAPER_TRAIN = {5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40}
PAPER_TEST = {1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38}


def case_id(path: str, kind: str) -> int:
    match = re.fullmatch(rf"{kind}sTr/{'img' if kind == 'image' else 'label'}(\d{{4}})\.nii\.gz", path)
    assert match, path
    return int(match.group(1))


def test_btcv_split_has_the_paper_ids():
    d = btcv_18_12_datalist()
    ids = {}
    for key in ("training", "validation", "test"):
        ids[key] = [case_id(i["image"], "image") for i in d[key]]
        assert ids[key] == [case_id(i["label"], "label") for i in d[key]]  # image and label of the same case
    assert set(ids["training"]) | set(ids["validation"]) == PAPER_TRAIN
    assert set(ids["test"]) == PAPER_TEST
    assert set(ids["validation"]) == {39, 40}
    all_ids = ids["training"] + ids["validation"] + ids["test"]
    assert len(all_ids) == len(set(all_ids)) == 30  # no overlap, no duplicates
    assert set(all_ids) == set(range(1, 11)) | set(range(21, 41))  # the 30 labelled BTCV cases
    assert (d["numTraining"], d["numValidation"], d["numTest"]) == (16, 2, 12)


def test_shipped_json_equals_function():
    assert json.loads(SHIPPED.read_text()) == btcv_18_12_datalist()


def test_shipped_json_loads_with_monai(tmp_path):
    items = load_decathlon_datalist(str(SHIPPED), data_list_key="test", base_dir=str(tmp_path))
    assert len(items) == 12 and items[0]["label"] == str(tmp_path / "labelsTr" / "label0001.nii.gz")


def write_nifti(path: Path, shape=(8, 8, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(path))


@pytest.fixture
def btcv_folder(tmp_path) -> Path:
    for i in (1, 2, 3, 39):
        write_nifti(tmp_path / "imagesTr" / f"img{i:04d}.nii.gz")
        write_nifti(tmp_path / "labelsTr" / f"label{i:04d}.nii.gz")
    write_nifti(tmp_path / "imagesTs" / "img0061.nii.gz")
    (tmp_path / "imagesTr" / "._img0001.nii.gz").write_bytes(b"macOS resource fork")  # ignored
    return tmp_path


def test_build_datalist_pairs_btcv_names(btcv_folder):
    d = build_datalist(btcv_folder, val_cases=[39])
    assert d["training"] == [
        {"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"} for i in (1, 2, 3)
    ]
    assert d["validation"] == [{"image": "imagesTr/img0039.nii.gz", "label": "labelsTr/label0039.nii.gz"}]
    assert d["test"] == [{"image": "imagesTs/img0061.nii.gz"}]
    assert json.loads((btcv_folder / "dataset_0.json").read_text()) == d
    items = load_decathlon_datalist(str(btcv_folder / "dataset_0.json"), data_list_key="validation")
    assert Path(items[0]["image"]) == btcv_folder / "imagesTr" / "img0039.nii.gz"


def test_build_datalist_identical_names_and_int_val_cases(tmp_path):
    for name in ("case_0000", "case_0001", "case_0002"):
        write_nifti(tmp_path / "imagesTr" / f"{name}.nii.gz")
        write_nifti(tmp_path / "labelsTr" / f"{name}.nii.gz")
    out = tmp_path / "lists" / "my.json"
    d = build_datalist(tmp_path, val_cases=1, output=out)
    assert [i["label"] for i in d["training"]] == ["labelsTr/case_0000.nii.gz", "labelsTr/case_0001.nii.gz"]
    assert [i["image"] for i in d["validation"]] == ["imagesTr/case_0002.nii.gz"]
    assert d["test"] == [] and json.loads(out.read_text()) == d


def test_build_datalist_nnunet_channel_suffix(tmp_path):
    write_nifti(tmp_path / "imagesTr" / "abd_001_0000.nii.gz")
    write_nifti(tmp_path / "labelsTr" / "abd_001.nii.gz")
    d = build_datalist(tmp_path)
    assert d["training"] == [{"image": "imagesTr/abd_001_0000.nii.gz", "label": "labelsTr/abd_001.nii.gz"}]


def test_image_without_label_is_named(btcv_folder):
    (btcv_folder / "labelsTr" / "label0002.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"image .*img0002\.nii\.gz has no label"):
        build_datalist(btcv_folder)


def test_label_without_image_is_named(btcv_folder):
    write_nifti(btcv_folder / "labelsTr" / "label0007.nii.gz")
    with pytest.raises(ValueError, match=r"label .*label0007\.nii\.gz has no image"):
        build_datalist(btcv_folder)


def test_unknown_validation_case_and_missing_folder(btcv_folder):
    with pytest.raises(ValueError, match="Validation case 40"):
        build_datalist(btcv_folder, val_cases=[40])
    with pytest.raises(FileNotFoundError, match="labels_missing"):
        build_datalist(btcv_folder, labels="labels_missing")


def test_datalist_command(btcv_folder):
    path = datalist(str(btcv_folder), output=str(btcv_folder / "out.json"), val_cases="2,3", check=True)
    d = json.loads(Path(path).read_text())
    assert [i["image"] for i in d["validation"]] == ["imagesTr/img0002.nii.gz", "imagesTr/img0003.nii.gz"]
    assert datalist(str(btcv_folder)) == str(btcv_folder / "dataset_0.json")
