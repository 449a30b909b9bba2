# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The scan view (monai_fine.transforms.scan_view): the whole scan at the crop size, and its box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import CropForegroundd, SpatialPadd

from monai_fine.transforms import ScanViewd, scan_view
from monai_fine.transforms.scan_view import scan_view_and_box, whole_box


def _block_means(volume: np.ndarray, size) -> np.ndarray:
    """Brute force: the mean of every block of an integer down-sampling, voxel by voxel."""
    c = volume.shape[0]
    fx, fy, fz = (s // n for s, n in zip(volume.shape[1:], size))
    out = np.zeros((c, *size))
    for ch in range(c):
        for i in range(size[0]):
            for j in range(size[1]):
                for k in range(size[2]):
                    block = volume[ch, i * fx : (i + 1) * fx, j * fy : (j + 1) * fy, k * fz : (k + 1) * fz]
                    out[ch, i, j, k] = block.mean()
    return out


def test_the_view_is_the_block_mean_of_the_volume():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(2, 8, 12, 4)).astype(np.float32)
    view = scan_view(torch.from_numpy(volume), (4, 3, 2))
    assert view.shape == (2, 4, 3, 2) and view.dtype == torch.float32
    np.testing.assert_allclose(view.numpy(), _block_means(volume, (4, 3, 2)), rtol=1e-6, atol=1e-6)
    batched = scan_view(torch.from_numpy(volume)[None].double(), (4, 3, 2))  # a batch, any float dtype
    assert batched.shape == (1, 2, 4, 3, 2) and batched.dtype == torch.float32
    torch.testing.assert_close(batched[0], view)


def test_a_metatensor_gives_a_plain_tensor():
    view = scan_view(MetaTensor(torch.ones(1, 8, 8, 8)), (4, 4, 4))
    assert type(view) is torch.Tensor and torch.equal(view, torch.ones(1, 4, 4, 4))


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match=r"3 positive ints, got \(4, 0, 4\)"):
        scan_view(torch.zeros(1, 8, 8, 8), (4, 0, 4))
    with pytest.raises(ValueError, match=r"got shape \(8, 8, 8\)"):
        scan_view(torch.zeros(8, 8, 8), (4, 4, 4))


def test_the_box_of_a_foreground_crop_is_its_place_in_the_volume():
    """After ``CropForegroundd`` the whole (cropped) volume lies inside its reference volume: its box says where,
    computed by hand from the foreground's bounding box."""
    image = torch.zeros(1, 20, 10, 8)
    image[:, 5:15, 2:10, 0:4] = 1.0
    out = CropForegroundd("image", source_key="image")({"image": MetaTensor(image)})
    view, box = scan_view_and_box(out["image"], (4, 4, 2))
    assert view.shape == (1, 4, 4, 2)
    torch.testing.assert_close(box, torch.tensor([[5 / 20, 2 / 10, 0 / 8], [15 / 20, 10 / 10, 4 / 8]]))
    _, plain_box = scan_view_and_box(image, (4, 4, 2))  # a plain tensor is its own reference
    torch.testing.assert_close(plain_box, torch.tensor([[0.0] * 3, [1.0] * 3]))


def test_whole_box_reaches_outside_the_unit_cube_over_padding():
    box = whole_box(torch.tensor([-2.0, 0.0, 0.0]), torch.tensor([8.0, 8.0, 8.0]), (12, 8, 8))
    torch.testing.assert_close(box, torch.tensor([[-0.25, 0.0, 0.0], [1.25, 1.0, 1.0]]))


def test_scanviewd_writes_the_view_and_box_and_refuses_to_overwrite():
    data = SpatialPadd("image", (16, 16, 16))({"image": MetaTensor(torch.rand(1, 8, 16, 16))})
    out = ScanViewd("image", (4, 4, 4))(data)
    torch.testing.assert_close(out["scan_view"], scan_view(data["image"], (4, 4, 4)))
    # padded by 4 voxels on each side along x: the reference (the unpadded volume) starts at voxel 4 of the view's input
    torch.testing.assert_close(out["scan_view_box"], torch.tensor([[-0.5, 0.0, 0.0], [1.5, 1.0, 1.0]]))
    with pytest.raises(KeyError, match="scan_view"):
        ScanViewd("image", (4, 4, 4))(out)
