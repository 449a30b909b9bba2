# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""PathSafeSpacingd: MONAI's ``Spacingd``, safe for the ``image_path`` string MONAI Label adds to the data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged, Orientationd, Spacingd

from monai_fine.transforms import PathSafeSpacingd


def _image() -> MetaTensor:
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    data = torch.arange(12 * 10 * 8, dtype=torch.float32).reshape(1, 12, 10, 8)
    return MetaTensor(data, affine=affine, meta={"filename_or_obj": "/data/case_0001.nii.gz"})


def test_string_entries_are_kept_and_the_image_is_monai_spacingd():
    data = {"image": _image(), "image_path": "/data/case_0001.nii.gz", "label_path": 3}
    with pytest.raises(AttributeError, match="update"):
        Spacingd("image", pixdim=(4.0, 4.0, 4.0))(dict(data))  # the MONAI 1.6 bug this class works around
    out = PathSafeSpacingd("image", pixdim=(4.0, 4.0, 4.0))(dict(data))
    ref = Spacingd("image", pixdim=(4.0, 4.0, 4.0))({"image": data["image"]})
    assert out["image_path"] == data["image_path"] and out["label_path"] == 3
    assert torch.equal(out["image"].as_tensor(), ref["image"].as_tensor())
    assert np.allclose(out["image"].affine, ref["image"].affine)


def test_dictionary_entries_are_still_updated_as_spacingd_does():
    data = {"image": _image(), "image_meta": {"note": "kept"}, "image_path": "p.nii.gz"}
    out = PathSafeSpacingd("image", pixdim=(4.0, 4.0, 4.0))(
        {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    )
    ref = Spacingd("image", pixdim=(4.0, 4.0, 4.0))({"image": data["image"], "image_meta": dict(data["image_meta"])})
    assert out["image_meta"]["note"] == "kept"
    assert out["image_meta"].keys() == ref["image_meta"].keys() and "affine" in out["image_meta"]
    assert np.allclose(out["image_meta"]["affine"], ref["image_meta"]["affine"])


def test_spacingd_with_image_path_string_on_a_real_ct(totalseg_dir):
    """MONAI 1.6 ``Spacingd`` calls ``.update`` on every ``image_*`` entry; MONAI Label adds the string image_path."""
    data = LoadImaged("image", ensure_channel_first=True)({"image": str(totalseg_dir / "example_ct_sm.nii.gz")})
    data = Orientationd("image", axcodes="RAS")(data)
    data["image_path"] = str(totalseg_dir / "example_ct_sm.nii.gz")
    with pytest.raises(AttributeError, match="update"):
        Spacingd("image", pixdim=(6.0, 6.0, 6.0))(dict(data))  # the bug, as MONAI 1.6.1 has it
    out = PathSafeSpacingd("image", pixdim=(6.0, 6.0, 6.0))(dict(data))
    ref = Spacingd("image", pixdim=(6.0, 6.0, 6.0))({"image": data["image"]})
    assert out["image_path"] == data["image_path"]
    assert torch.equal(out["image"].as_tensor(), ref["image"].as_tensor())
    assert np.allclose(out["image"].affine, ref["image"].affine)
