# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""CastStitchInferer: the sliding window stitched in half precision equals the float32 stitching up to rounding."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from torch import nn

from monai_fine.inferers import CastStitchInferer, FINEInferer
from monai_fine.networks import create_fine


class _Recording(nn.Module):
    """A Conv3d that records the dtype of every window it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.dtype)
        return self.conv(x)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_equals_monai_float32_stitching_within_the_dtype_rounding(dtype):
    net = _Recording().eval()
    volume = torch.rand(1, 1, 40, 36, 20)
    inner = SlidingWindowInferer(roi_size=(16, 16, 8), sw_batch_size=3, overlap=0.5, mode="gaussian")
    with torch.no_grad():
        ref = sliding_window_inference(volume, (16, 16, 8), 3, net, overlap=0.5, mode="gaussian")
        net.seen.clear()
        out = CastStitchInferer(inner, dtype)(volume, net)
    assert out.dtype == getattr(torch, dtype) and out.shape == ref.shape
    assert set(net.seen) == {torch.float32}  # every window still runs in the input's dtype
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    # the input, every window's logits and the blended sums are rounded: a few units of the dtype's epsilon
    # (measured: 3 for float16, 3.3 for bfloat16)
    assert err < 8 * torch.finfo(out.dtype).eps, err


def test_float32_is_monai_behaviour_exactly_and_wrappers_are_unwrapped():
    net = _Recording().eval()
    volume = torch.rand(1, 1, 24, 20, 12)
    inner = SlidingWindowInferer(roi_size=(16, 16, 8), overlap=0.25)
    with torch.no_grad():
        ref = inner(volume, net)
        same = CastStitchInferer(inner, "float32")(volume, net)
        half = CastStitchInferer(inner, "float16")(volume, nn.DataParallel(net))  # the .module is called
    assert same.dtype == torch.float32 and torch.equal(same, ref)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), ref, atol=2e-3 * float(ref.abs().max()))


def test_scan_memory_write_pass_goes_through_the_cast():
    """With scan memory the inner FINEInferer first runs a write pass that returns None: passed through as is."""
    torch.manual_seed(0)
    net = create_fine("tiny", 1, 4, roi_size=(32, 32, 16), feature_size=12, num_heads=(1, 2, 2, 4),
                      memory="full", scan_memory=True).eval()
    volume = torch.rand(1, 1, 48, 40, 20)
    inner = FINEInferer(roi_size=(32, 32, 16), overlap=0.25, scan_memory=True)
    with torch.no_grad():
        ref = inner(volume, net)
        half = CastStitchInferer(inner, "float16")(volume, net)
    assert half.dtype == torch.float16 and half.shape == ref.shape == (1, 4, 48, 40, 20)
    err = float((half.float() - ref).abs().max() / ref.abs().max())
    assert err < 5e-3, err


@pytest.mark.parametrize("bad", ["float8", "fp16", "int8", None])
def test_another_dtype_is_refused_naming_it(bad):
    inner = SlidingWindowInferer(roi_size=(16, 16, 8))
    with pytest.raises(ValueError, match=rf"stitch_dtype must be one of \['bfloat16', 'float16', 'float32'\], got {bad!r}"):
        CastStitchInferer(inner, bad)


def test_half_precision_stitching_matches_float32():
    """The float16 stitching buffer (half the host memory) gives the float32 labels up to logit-rounding ties."""
    torch.manual_seed(0)
    net = create_fine("tiny", 1, 14, roi_size=(32, 32, 16), feature_size=12, num_heads=(1, 2, 2, 4)).eval()
    volume = torch.rand(1, 1, 56, 48, 28)
    inner = FINEInferer(roi_size=(32, 32, 16), sw_batch_size=2, overlap=0.5)
    with torch.no_grad():
        ref = inner(volume, net)
        half = CastStitchInferer(inner, "float16")(volume, net)
        same = CastStitchInferer(inner, "float32")(volume, net)
    assert ref.dtype == torch.float32 and half.dtype == torch.float16 and half.shape == ref.shape
    assert torch.equal(same, ref)
    err = (half.float() - ref).abs().max() / ref.abs().max()
    assert err < 5e-3, float(err)
    agree = (half.float().argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.99, float(agree)
    with pytest.raises(ValueError, match="stitch_dtype must be one of"):
        CastStitchInferer(inner, "float8")