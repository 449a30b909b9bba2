# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.networks.nets import UNet
from torch import nn

from monai_fine.inferers import CastStitchInferer, FINEInferer
from monai_fine.networks import create_fine

ROI = (32, 32, 16)


def tiny_net(**kw):
    net = create_fine("test", 1, 3, roi_size=ROI, **kw)
    net.train()
    with torch.no_grad():
        net(torch.randn(1, 1, *ROI))  # roi_box None = the whole volume: every memory cell visited
    return net.eval()


def starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts of MONAI's scan rule, written out: a step of roi*(1-overlap), the last window flush."""
    if size <= roi:
        return [0]
    step = int(roi * (1 - overlap))
    return sorted({min(i * step, size - roi) for i in range(math.ceil(size / step))})


def test_equals_a_hand_written_loop():
    net = tiny_net(memory="full")
    x = torch.randn(1, 1, 80, 40, 24)
    size = x.shape[2:]
    weight = compute_importance_map(ROI, mode="gaussian", sigma_scale=0.125)
    out = torch.zeros(1, 3, *size)
    count = torch.zeros(1, 1, *size)
    with torch.no_grad():
        for sx in starts(size[0], ROI[0], 0.5):
            for sy in starts(size[1], ROI[1], 0.5):
                for sz in starts(size[2], ROI[2], 0.5):
                    sl = (
                        slice(None),
                        slice(None),
                        slice(sx, sx + ROI[0]),
                        slice(sy, sy + ROI[1]),
                        slice(sz, sz + ROI[2]),
                    )
                    box = torch.tensor([[[sx, sy, sz], [sx + ROI[0], sy + ROI[1], sz + ROI[2]]]]) / torch.tensor(size)
                    out[sl] += net(x[sl], roi_box=box.float()) * weight
                    count[sl] += weight
        ref = out / count
        got = FINEInferer(ROI, sw_batch_size=3, overlap=0.5, mode="gaussian")(x, net)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


class BoxRecorder(nn.Module):
    """Records the roi_box of every call and returns the box as 6 output channels."""

    def __init__(self):
        super().__init__()
        self.boxes: list[torch.Tensor] = []

    def forward(self, x, roi_box=None):
        self.boxes.append(roi_box)
        return roi_box.reshape(x.shape[0], 6, 1, 1, 1).expand(-1, -1, *x.shape[2:]).clone()


def test_small_volume_is_padded_and_boxes_leave_unit_range():
    rec = BoxRecorder()
    x = MetaTensor(torch.randn(1, 1, 40, 32, 10))  # 10 slices, roi 16 along z: MONAI pads 3 before, 3 after
    out = FINEInferer(ROI, overlap=0.5, mode="constant")(x, rec)
    assert out.shape == (1, 6, 40, 32, 10)
    boxes = torch.cat(rec.boxes)
    assert torch.allclose(boxes[:, 0, 2], torch.tensor(-3 / 10)) and torch.allclose(
        boxes[:, 1, 2], torch.tensor(13 / 10)
    )
    assert sorted({round(float(b), 4) for b in boxes[:, 0, 0]}) == [0.0, 0.2]  # x starts 0 and 8 of 40
    assert torch.allclose(boxes[:, 1, 1], torch.ones(len(boxes)))


def test_network_without_roi_box_runs_like_plain_sliding_window():
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    x = torch.randn(1, 1, 40, 36, 20)
    with torch.no_grad():
        got = FINEInferer(ROI, overlap=0.25, mode="constant", pass_roi_box=False)(x, net)
        ref = sliding_window_inference(x, ROI, 1, net, overlap=0.25, mode="constant")
    torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="scan_memory=True needs a network"):
        FINEInferer(ROI, scan_memory=True)(x, net)


@pytest.mark.parametrize("scan_memory", [False, True])
def test_content_outside_the_probe_windows_matters_only_with_scan_memory(scan_memory):
    net = tiny_net(memory="full", scan_memory=True)
    with torch.no_grad():  # weights well above init scale (std 0.02 leaves the memory path's effect near 1e-7)
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(10.0)
    x = torch.randn(1, 1, 96, 32, 16)  # windows start at x = 0, 16, 32, 48, 64
    probe = (slice(None), slice(None), 5, 10, 8)  # only the first window [0, 32) contains x = 5
    changed = x.clone()
    changed[:, :, 48:] = 3.0 * torch.randn_like(changed[:, :, 48:])  # outside every window holding the probe
    inferer = FINEInferer(ROI, sw_batch_size=2, overlap=0.5, scan_memory=scan_memory)
    with torch.no_grad():
        a, b = inferer(x, net)[probe], inferer(changed, net)[probe]
    if scan_memory:
        assert (a - b).abs().max() > 1e-4
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("scan_write, scan_read", [("all", "centred"), ("all", "mean"), ("encoder", "centred")])
def test_scan_memory_inference_is_the_training_forward_on_every_window(scan_write, scan_read):
    """Same semantics in training and inference: each window's logits equal the training-form forward of that
    window with the scan view of the whole input (the view ScanViewd would make of the same volume), for every
    way of reading (the memory re-centred on the window, or its mean alone) and writing (every stage or the encoder
    only) it."""
    from monai_fine.transforms import scan_view

    net = tiny_net(memory="full", scan_memory=True, scan_write=scan_write, scan_read=scan_read)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(10.0)
    x = torch.randn(1, 1, 64, 32, 16)  # overlap 0: windows [0, 32) and [32, 64) along x
    with torch.no_grad():
        got = FINEInferer(ROI, overlap=0.0, mode="constant", scan_memory=True)(x, net)
        view = scan_view(x, ROI)
        for sx in (0, 32):
            box = torch.tensor([[[sx / 64, 0.0, 0.0], [(sx + 32) / 64, 1.0, 1.0]]])
            ref = net(x[:, :, sx : sx + 32], box, scan_view=view, scan_view_box=torch.tensor([[[0.0] * 3, [1.0] * 3]]))
            torch.testing.assert_close(got[:, :, sx : sx + 32], ref, rtol=1e-4, atol=1e-5)
            assert (ref - net(x[:, :, sx : sx + 32], box)).abs().max() > 1e-4  # and the memory matters


def test_scan_memory_keeps_scans_of_a_batch_apart():
    net = tiny_net(memory="full", scan_memory=True)
    x = torch.randn(2, 1, 64, 32, 16)
    changed = x.clone()
    changed[1] = torch.randn_like(changed[1])
    inferer = FINEInferer(ROI, sw_batch_size=4, scan_memory=True)
    with torch.no_grad():
        assert torch.equal(inferer(x, net)[0], inferer(changed, net)[0])
        single = inferer(x[:1], net)
    torch.testing.assert_close(inferer(x, net)[:1], single, rtol=1e-4, atol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(B, C, X, Y, Z\).*\(1, 40, 40\)"):
        FINEInferer(ROI)(torch.randn(1, 40, 40), tiny_net())
    with pytest.raises(ValueError, match="write_scan_memory"):
        FINEInferer(ROI, scan_memory=True)(torch.randn(1, 1, 32, 32, 16), BoxRecorder())


def test_training_and_inference_boxes_agree_with_crop_foreground(tmp_path):
    """CropForegroundd in the preprocessing: CropLocationd (training) and FINEInferer (inference) give the same box.

    A NIfTI volume of 60 x 50 x 30 voxels whose foreground is the box [10, 50) x [5, 45) x [4, 26): CropForegroundd
    leaves a 40 x 40 x 22 volume placed at (10, 5, 4) in the scan. The training crop [8, 24) x [16, 32) x [4, 12) of
    that volume and the inference window at the same place must both get the box (10 + 8, 5 + 16, 4 + 4) / size.
    """
    import nibabel as nib
    import numpy as np
    from monai.data import list_data_collate
    from monai.transforms import Compose, CropForegroundd, EnsureTyped, LoadImaged, Orientationd, SpatialCropd

    from monai_fine.transforms import CropLocationd

    vol = np.zeros((60, 50, 30), dtype=np.float32)
    vol[10:50, 5:45, 4:26] = 1.0 + np.random.default_rng(0).random((40, 40, 22), dtype=np.float32)
    path = str(tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1.0])), path)
    roi = (16, 16, 8)
    preprocessing = [
        LoadImaged("image", ensure_channel_first=True),
        Orientationd("image", axcodes="RAS"),
        CropForegroundd("image", source_key="image"),
        EnsureTyped("image"),
    ]
    train = Compose(
        [*preprocessing, SpatialCropd("image", roi_start=(8, 16, 4), roi_end=(24, 32, 12)), CropLocationd("image")]
    )
    expected = torch.tensor([[18 / 60, 21 / 50, 8 / 30], [34 / 60, 37 / 50, 16 / 30]])  # by hand, in the scan
    torch.testing.assert_close(train({"image": path})["roi_box"], expected)

    batch = list_data_collate([Compose(preprocessing)({"image": path})])
    assert batch["image"].shape[2:] == (40, 40, 22)
    rec = BoxRecorder()
    out = FINEInferer(roi, overlap=0.5, mode="constant")(batch["image"], rec)
    boxes = torch.cat(rec.boxes)
    same = [b for b in boxes if torch.allclose(b, expected)]
    assert len(same) == 1  # the window [8, 24) x [16, 32) x [4, 12) of the cropped volume
    # the frame is the uncropped scan, not the tensor the inferer got: every box lies inside the foreground's place
    assert torch.all(boxes[:, 0] >= torch.tensor([10 / 60, 5 / 50, 4 / 30]) - 1e-6)
    assert torch.all(boxes[:, 1] <= torch.tensor([50 / 60, 45 / 50, 26 / 30]) + 1e-6)
    assert isinstance(out, MetaTensor) and out.shape == (1, 6, 40, 40, 22)


def test_small_volume_keeps_metadata_and_matches_monai_padding():
    """The inferer pads volumes smaller than roi_size itself, like MONAI (same output as MONAI padding would give)."""
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.randn(1, 1, 40, 20, 10), affine=affine)
    with torch.no_grad():
        got = FINEInferer(ROI, overlap=0.5, mode="gaussian")(x, lambda w, roi_box: net(w))
        ref = sliding_window_inference(x, ROI, 1, net, overlap=0.5, mode="gaussian")
    assert isinstance(got, MetaTensor) and got.shape == (1, 2, 40, 20, 10)
    torch.testing.assert_close(got.affine, affine)
    torch.testing.assert_close(got.as_tensor(), ref.as_tensor())


def test_network_without_roi_box_raises_unless_switched_off():
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    with pytest.raises(TypeError, match="pass_roi_box=False"):
        FINEInferer(ROI)(x, net)
    with pytest.raises(ValueError, match="pass_roi_box=True"):
        FINEInferer(ROI, pass_roi_box=False, scan_memory=True)
    assert FINEInferer(ROI, 2, 0.25, "constant", progress=True).progress  # MONAI's positional order and progress


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_a_bad_sw_batch_size_is_refused_when_the_inferer_is_built(bad):
    """MONAI's sliding window would take it and fail at its first call (a bundle's first validation)."""
    for build in (lambda: FINEInferer(ROI, sw_batch_size=bad), lambda: FINEInferer(ROI, bad)):  # keyword, positional
        with pytest.raises(ValueError, match=f"sw_batch_size must be a positive integer.*got {bad!r}"):
            build()


def test_untraceable_input_is_refused_naming_the_transform():
    """A grid change after a crop has no roi_box frame: the inferer refuses it, as CropLocationd does."""
    from monai.transforms import CropForeground, Spacing

    img = MetaTensor(torch.zeros(1, 40, 40, 20))
    img[:, 5:35, 5:35, 2:18] = 1.0
    img = Spacing(pixdim=(2.0, 2.0, 2.0))(CropForeground()(img))
    with pytest.raises(ValueError, match=r"batch item 0.*`SpatialResample`.*applied after `CropForeground`"):
        FINEInferer(ROI)(img[None], BoxRecorder())


@pytest.mark.parametrize("pass_roi_box", [True, False], ids=["roi_box", "plain"])
def test_output_keeps_the_input_dtype_and_metadata(pass_roi_box):
    """MONAI's sliding window turns a MetaTensor's output into float32 (a full-size copy next to a float16 stitching
    buffer); FINEInferer keeps the input's dtype, equal to the same stitching on the plain tensor."""
    torch.manual_seed(0)
    net = create_fine("test", 1, 3).eval()
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    x = MetaTensor(torch.rand(1, 1, 48, 40, 24), affine=affine).half()

    def half_net(w, *args, **kwargs):
        return net(w.float(), *args, **kwargs).half()

    if not pass_roi_box:
        half_net = (lambda f: lambda w: f(w))(half_net)
    inferer = FINEInferer(roi_size=(32, 32, 16), overlap=0.25, pass_roi_box=pass_roi_box)
    with torch.no_grad():
        out = inferer(x, half_net)
        ref = inferer(x.as_tensor(), half_net)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float16, (type(out), out.dtype)
    assert torch.equal(out.affine, x.affine)
    assert torch.equal(out.as_tensor(), ref)


def test_scan_memory_on_a_network_built_without_it_warns():
    net = tiny_net(memory="full")  # scan_memory=False: no memory encoder, never trained to read a scan memory
    with pytest.warns(UserWarning, match="built without scan_memory"), torch.no_grad():
        out = FINEInferer(ROI, scan_memory=True)(torch.randn(1, 1, 32, 32, 16), net)
    assert out.shape == (1, 3, 32, 32, 16)


# CastStitchInferer: the sliding window stitched in half precision equals the float32 stitching up to rounding


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


def test_scan_memory_is_written_in_the_network_dtype_under_the_cast():
    """With scan memory the inner FINEInferer writes the scan memory from views in the network's dtype (float32), not
    the half-precision volume's, and stitches in half precision."""
    torch.manual_seed(0)
    net = create_fine("test", 1, 4, memory="full", scan_memory=True).eval()
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
    with pytest.raises(
        ValueError, match=rf"stitch_dtype must be one of \['bfloat16', 'float16', 'float32'\], got {bad!r}"
    ):
        CastStitchInferer(inner, bad)


def test_half_precision_stitching_matches_float32():
    """The float16 stitching buffer (half the host memory) gives the float32 labels up to logit-rounding ties."""
    torch.manual_seed(0)
    net = create_fine("test", 1, 14).eval()
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
