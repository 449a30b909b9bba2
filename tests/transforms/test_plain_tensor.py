# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""PlainTensord: training crops leave as plain tensors of the same storage, with the file name kept where the
handlers that name a case read it; a collated batch of them carries no MetaTensor."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import SpatialCropd

from monai_fine.handlers import batch_case_names
from monai_fine.transforms import CropLocationd, PlainTensord

FILE = "/data/imagesTr/case_7.nii.gz"


def _crop(start):
    item = {
        "image": MetaTensor(torch.rand(1, 10, 8, 6), meta={"filename_or_obj": FILE}),
        "label": MetaTensor(torch.randint(0, 3, (1, 10, 8, 6), dtype=torch.uint8), meta={"filename_or_obj": FILE}),
    }
    item = SpatialCropd(["image", "label"], roi_start=start, roi_end=[s + 4 for s in start])(item)
    return CropLocationd("image")(item)


def test_crops_become_plain_tensors_of_the_same_storage_with_the_file_name_kept():
    item = _crop([1, 2, 0])
    image, label = item["image"], item["label"]
    out = PlainTensord(["image", "label"])(item)
    for key, before in (("image", image), ("label", label)):
        assert type(out[key]) is torch.Tensor and out[key].data_ptr() == before.data_ptr()
        assert torch.equal(out[key], before.as_tensor()) and out[key].dtype == before.dtype
        assert out[f"{key}_meta_dict"] == {"filename_or_obj": FILE}
    assert torch.equal(out["roi_box"], item["roi_box"])  # the box was read before; nothing else changes
    assert isinstance(item["image"], MetaTensor)  # the input dictionary is not changed


def test_a_collated_batch_is_plain_and_still_names_its_cases():
    batch = list_data_collate([PlainTensord(["image", "label"])(_crop(s)) for s in ([0, 0, 0], [6, 4, 2])])
    assert type(batch["image"]) is torch.Tensor and batch["image"].shape == (2, 1, 4, 4, 4)
    assert batch["image_meta_dict"]["filename_or_obj"] == [FILE, FILE]
    assert batch_case_names(batch) == [FILE]
    assert batch["roi_box"].shape == (2, 2, 3)


def test_plain_tensors_and_missing_names_pass_and_an_existing_meta_key_is_refused():
    plain = torch.zeros(1, 2, 2, 2)
    out = PlainTensord("image")({"image": plain})
    assert out["image"] is plain and "image_meta_dict" not in out
    out = PlainTensord("image")({"image": MetaTensor(plain)})  # no file name: no meta dict either
    assert type(out["image"]) is torch.Tensor and "image_meta_dict" not in out
    kept = PlainTensord("image", keep_meta=("filename_or_obj", "affine"))(_crop([0, 0, 0]))
    assert set(kept["image_meta_dict"]) == {"filename_or_obj", "affine"}
    with pytest.raises(KeyError, match="image_meta_dict already exists"):
        PlainTensord("image")({"image": MetaTensor(plain, meta={"filename_or_obj": FILE}), "image_meta_dict": {}})
