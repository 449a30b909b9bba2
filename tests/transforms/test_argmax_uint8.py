# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""ArgmaxUint8 / ArgmaxUint8d: MONAI's ``AsDiscrete(argmax=True)`` into ``uint8``, slab by slab, metadata kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscrete, AsDiscreted, Flipd

from monai_fine.transforms import ArgmaxUint8, ArgmaxUint8d


@pytest.mark.parametrize("slab", [1, 4, 7, 8, 100])
def test_equals_monai_argmax_on_random_logits(slab):
    torch.manual_seed(slab)
    x = torch.randn(14, 9, 7, 19)
    out = ArgmaxUint8(slab)(x)
    ref = AsDiscrete(argmax=True)(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 9, 7, 19)
    assert torch.equal(out.long(), torch.as_tensor(ref).long())


def test_ties_go_to_the_lowest_channel_as_in_monai_and_numpy():
    """Integer logits in {0, 1, 2}: most voxels have a tie for the maximum."""
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(5, 6, 6, 11)).astype(np.float32)
    assert (np.sort(logits, axis=0)[-1] == np.sort(logits, axis=0)[-2]).mean() > 0.3  # the ties are there
    out = ArgmaxUint8(slab=3)(torch.from_numpy(logits))
    assert torch.equal(out.long(), torch.as_tensor(AsDiscrete(argmax=True)(torch.from_numpy(logits))).long())
    assert np.array_equal(out.numpy()[0], np.argmax(logits, axis=0))  # numpy: the first maximum


def test_dictionary_version_equals_asdiscreted_and_keeps_metadata():
    torch.manual_seed(1)
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    x = MetaTensor(torch.randn(14, 9, 7, 19).half(), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    x = Flipd("pred", spatial_axis=0)({"pred": x})["pred"]  # an applied operation that Invertd would undo
    out = ArgmaxUint8d("pred", slab=4)({"pred": x, "other": 1})
    ref = AsDiscreted("pred", argmax=True, dtype=torch.uint8)({"pred": x.float()})["pred"]
    pred = out["pred"]
    assert isinstance(pred, MetaTensor) and pred.dtype == torch.uint8 and pred.shape == (1, 9, 7, 19)
    assert torch.equal(pred.as_tensor(), ref.as_tensor().to(torch.uint8))
    assert torch.equal(pred.affine, x.affine) and pred.meta["filename_or_obj"] == "case.nii.gz"
    assert [op["class"] for op in pred.applied_operations] == ["Flip"]
    assert out["other"] == 1


def test_256_channels_fit_and_257_are_refused_naming_the_key():
    x = torch.zeros(256, 2, 2, 3)
    x[255] = 1.0
    assert torch.equal(ArgmaxUint8()(x), torch.full((1, 2, 2, 3), 255, dtype=torch.uint8))
    with pytest.raises(ValueError, match="257 channels do not fit uint8"):
        ArgmaxUint8()(torch.zeros(257, 2, 2, 2))
    with pytest.raises(ValueError, match=r"300 channels do not fit uint8 labels \(pred\)"):
        ArgmaxUint8d("pred")({"pred": torch.zeros(300, 2, 2, 2)})


def test_slab_below_one_counts_as_one():
    x = torch.randn(3, 4, 4, 5)
    assert ArgmaxUint8d("pred", slab=0).slab == 1
    assert torch.equal(ArgmaxUint8(slab=0)(x).long(), x.argmax(0, keepdim=True))
