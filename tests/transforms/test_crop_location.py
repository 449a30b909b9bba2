# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Tests of CropLocation / CropLocationd: the recorded box must match where the crop really came from.

The volumes encode their own voxel coordinates (channel c holds ``index along axis c + 1``, 0 is padding), so the
true position of every crop is read off its content, independently of ``applied_operations``.
"""

from __future__ import annotations

import zlib

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, PersistentDataset, list_data_collate
from monai.transforms import (
    BorderPadd,
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    DivisiblePadd,
    EnsureChannelFirstd,
    Flipd,
    Lambdad,
    LoadImaged,
    Orientationd,
    Rand3DElasticd,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleCropd,
    RandSpatialCropd,
    RandSpatialCropSamplesd,
    RandWeightedCropd,
    RandZoomd,
    Resized,
    ResizeWithPadOrCropd,
    Rotate90d,
    Spacingd,
    SpatialCropd,
    SpatialPadd,
)

from monai_fine.transforms import CropLocation, CropLocationD, CropLocationd, crop_box_from_meta, scan_id_from_meta

KEYS = ["image", "label"]
SHAPE = (20, 18, 16)
PAD = 16  # margin of the padded reference used to slice boxes that leave [0, 1]


def coord_volume(shape=SHAPE, affine=None) -> MetaTensor:
    """(3, *shape) float32: channel c holds the voxel index along axis c, plus 1 (0 is left for padding)."""
    grids = torch.meshgrid(*[torch.arange(1, s + 1, dtype=torch.float32) for s in shape], indexing="ij")
    return MetaTensor(torch.stack(grids), affine=affine)


def make_item(shape=SHAPE, affine=None, foreground=None) -> dict:
    """An image that encodes its coordinates and a label (a block of ones unless ``foreground`` slices are given)."""
    image = coord_volume(shape, affine)
    label = torch.zeros((1, *shape))
    label[(slice(None), *(foreground or (slice(5, 12), slice(4, 10), slice(6, 11))))] = 1
    return {"image": image, "label": MetaTensor(label, affine=image.affine.clone())}


def true_start(crop: torch.Tensor) -> torch.Tensor:
    """(3,) start of an un-flipped, un-rotated crop in the source volume, read from the encoded coordinates.

    Every content voxel ``p`` with coordinate ``c(p)`` gives ``start = c(p) - p``; the test fails if they disagree.
    """
    crop = torch.as_tensor(crop)
    content = (crop > 0).all(0)
    assert content.any(), "the crop holds no content voxel"
    index = torch.stack(torch.meshgrid(*[torch.arange(s) for s in crop.shape[1:]], indexing="ij"))
    starts = (crop - 1 - index)[:, content]  # (3, n) one candidate start per content voxel
    assert (starts == starts[:, :1]).all(), "the crop is not a translated block of the source"
    return starts[:, 0].long()


def expected_box(crop: torch.Tensor, size) -> torch.Tensor:
    start = true_start(crop)
    stop = start + torch.tensor(crop.shape[1:])
    return torch.stack([start, stop]).double() / torch.tensor(size, dtype=torch.float64)


def assert_box(box: torch.Tensor, expected: torch.Tensor, size) -> None:
    assert box.dtype == torch.float32 and box.shape == (2, len(size))
    size_t = torch.tensor(size, dtype=torch.float64)
    voxels = box.double() * size_t
    assert torch.equal(voxels.round(), (expected.double() * size_t).round()), f"{box} != {expected}"
    assert torch.allclose(voxels, voxels.round(), atol=1e-4), f"box {box} is not on voxel borders of {size}"


def slice_reference(reference: torch.Tensor, box: torch.Tensor, ops=()) -> torch.Tensor:
    """The reference volume transformed by ``ops`` (torch.flip / torch.rot90 on the whole volume), sliced at box."""
    ref = torch.nn.functional.pad(torch.as_tensor(reference), [PAD, PAD] * (reference.ndim - 1))
    for op in ops:
        if op[0] == "flip":
            ref = torch.flip(ref, [a + 1 for a in op[1]])
        else:
            ref = torch.rot90(ref, op[1], [a + 1 for a in op[2]])
    size = torch.tensor(ref.shape[1:]) - 2 * PAD
    voxels = box.double() * size
    assert torch.allclose(voxels, voxels.round(), atol=1e-4)
    lo, hi = (voxels.round().long() + PAD).tolist()
    return ref[(slice(None), *[slice(a, b) for a, b in zip(lo, hi)])]


def fired_ops(img: MetaTensor) -> list:
    """Flips and rot90s recorded after the crop, to rebuild the reference they imply with torch."""
    ops = []
    for entry in img.applied_operations:
        if not entry["do_transforms"]:
            continue
        while "class" in entry["extra_info"]:  # RandFlipd -> Flip, RandRotate90d -> Rotate90
            entry = entry["extra_info"]
        if entry["class"] == "Flip":
            axes = entry["extra_info"]["axes"]
            axes = [0, 1, 2] if axes is None else np.atleast_1d(axes).tolist()
            ops.append(("flip", [a % 3 for a in axes]))
        elif entry["class"] == "Rotate90":
            ops.append(("rot90", entry["extra_info"]["k"], entry["extra_info"]["axes"]))
    return ops


@pytest.mark.parametrize(
    "cropper",
    [
        RandCropByPosNegLabeld(KEYS, "label", (8, 7, 6), pos=1, neg=1, num_samples=4),
        RandCropByLabelClassesd(KEYS, "label", (8, 8, 8), num_classes=2, num_samples=3),
        RandWeightedCropd(KEYS, "label", (6, 8, 5), num_samples=2),
        RandSpatialCropSamplesd(KEYS, (9, 5, 7), num_samples=3, random_size=False),
        RandSpatialCropd(KEYS, (9, 5, 7), random_size=True),
        RandScaleCropd(KEYS, 0.6),
        CenterSpatialCropd(KEYS, (9, 9, 9)),
        SpatialCropd(KEYS, roi_start=(0, 3, 1), roi_end=(20, 18, 5)),
        CropForegroundd(KEYS, "label", margin=2),
        ResizeWithPadOrCropd(KEYS, (12, 24, 10)),
    ],
    ids=lambda c: type(c).__name__,
)
def test_each_sample_has_its_own_box(cropper):
    transform = Compose([SpatialPadd(KEYS, (10, 10, 10)), cropper, CropLocationd("image")]).set_random_state(3)
    out = transform(make_item())
    samples = out if isinstance(out, list) else [out]
    for sample in samples:
        assert_box(sample["roi_box"], expected_box(sample["image"], SHAPE), SHAPE)
        assert torch.equal(slice_reference(coord_volume(), sample["roi_box"]), sample["image"].as_tensor())
        assert torch.equal(slice_reference(make_item()["label"], sample["roi_box"]), sample["label"].as_tensor())
    if len(samples) > 1:
        assert len({tuple(s["roi_box"].flatten().tolist()) for s in samples}) > 1


@pytest.mark.parametrize(
    "foreground, touches",
    [
        ((slice(0, 1), slice(0, 1), slice(0, 1)), "start"),
        ((slice(19, 20), slice(17, 18), slice(15, 16)), "stop"),
    ],
    ids=["low-corner", "high-corner"],
)
def test_crops_touching_the_border(foreground, touches):
    item = make_item(foreground=foreground)
    transform = Compose(
        [RandCropByPosNegLabeld(KEYS, "label", (8, 6, 4), pos=1, neg=0, num_samples=2), CropLocationd("image")]
    )
    for sample in transform.set_random_state(0)(item):
        assert_box(sample["roi_box"], expected_box(sample["image"], SHAPE), SHAPE)
        row = 0 if touches == "start" else 1
        assert torch.equal(sample["roi_box"][row], torch.tensor([0.0, 0.0, 0.0] if row == 0 else [1.0, 1.0, 1.0]))


def test_whole_volume_crop_is_unit_box():
    out = Compose([SpatialCropd(KEYS, roi_start=(0, 0, 0), roi_end=SHAPE), CropLocationd("image")])(make_item())
    assert torch.equal(out["roi_box"], torch.tensor([[0.0] * 3, [1.0] * 3]))
    assert torch.equal(CropLocation()(coord_volume()), torch.tensor([[0.0] * 3, [1.0] * 3]))


def test_padding_gives_box_outside_unit_range():
    roi = (24, 25, 16)  # larger than SHAPE along x and y: SpatialPadd pads (2, 2) and (3, 4)
    transform = Compose(
        [
            SpatialPadd(KEYS, roi),
            RandCropByPosNegLabeld(KEYS, "label", roi, num_samples=2),
            CropLocationd("image"),
        ]
    )
    for sample in transform(make_item()):
        expected = torch.tensor([[-2 / 20, -3 / 18, 0.0], [22 / 20, 22 / 18, 1.0]], dtype=torch.float64)
        assert_box(sample["roi_box"], expected, SHAPE)
        assert_box(sample["roi_box"], expected_box(sample["image"], SHAPE), SHAPE)
        assert torch.equal(slice_reference(coord_volume(), sample["roi_box"]), sample["image"].as_tensor())


def test_crop_foreground_that_pads():
    """CropForegroundd with a margin past the border pads after cropping (its record nests "pad_info")."""
    item = make_item(foreground=(slice(0, 3), slice(15, 18), slice(4, 8)))
    out = Compose([CropForegroundd(KEYS, "label", margin=3, allow_smaller=False), CropLocationd("image")])(item)
    assert tuple(out["image"].shape[1:]) == (9, 9, 10)
    expected = torch.tensor([[-3 / 20, 12 / 18, 1 / 16], [6 / 20, 21 / 18, 11 / 16]], dtype=torch.float64)
    assert_box(out["roi_box"], expected, SHAPE)
    assert_box(out["roi_box"], expected_box(out["image"], SHAPE), SHAPE)


def test_pads_and_borders_before_the_crop():
    transform = Compose(
        [
            BorderPadd(KEYS, (1, 2, 3, 4, 0, 5)),
            DivisiblePadd(KEYS, 8),
            RandSpatialCropd(KEYS, (11, 13, 9), random_size=False),
            CropLocationd("image"),
        ]
    ).set_random_state(5)
    for _ in range(5):
        out = transform(make_item())
        assert_box(out["roi_box"], expected_box(out["image"], SHAPE), SHAPE)
        assert torch.equal(slice_reference(coord_volume(), out["roi_box"]), out["image"].as_tensor())


@pytest.mark.parametrize(
    "spatial_axis, axes", [(0, [0]), (1, [1]), (2, [2]), ((-1, 0), [0, 2]), (None, [0, 1, 2])], ids=str
)
def test_flip_mirrors_the_box(spatial_axis, axes):
    crop = [SpatialPadd(KEYS, (22, 10, 10)), RandCropByPosNegLabeld(KEYS, "label", (13, 7, 5), num_samples=2)]
    plain = Compose([*crop, CropLocationd("image")]).set_random_state(11)(make_item())
    flipped = Compose([*crop, RandFlipd(KEYS, prob=1.0, spatial_axis=spatial_axis), CropLocationd("image")])
    flipped = flipped.set_random_state(11)(make_item())
    for p, f in zip(plain, flipped):
        assert torch.equal(f["image"], torch.flip(p["image"], [a + 1 for a in axes]))  # same crop, mirrored
        expected = p["roi_box"].clone()
        expected[:, axes] = 1.0 - p["roi_box"][:, axes].flip(0)
        assert not torch.allclose(expected, p["roi_box"])  # the test can tell a mirrored box from the plain one
        assert torch.allclose(f["roi_box"], expected, atol=1e-6)
        assert torch.equal(slice_reference(coord_volume(), f["roi_box"], [("flip", axes)]), f["image"].as_tensor())


@pytest.mark.parametrize("k, axes", [(1, (0, 1)), (2, (0, 2)), (3, (1, 2)), (1, (2, 0))], ids=str)
def test_rotate90_rotates_the_box(k, axes):
    crop = [SpatialPadd(KEYS, (22, 20, 10)), RandCropByPosNegLabeld(KEYS, "label", (9, 7, 5), num_samples=2)]
    plain = Compose([*crop, CropLocationd("image")]).set_random_state(2)(make_item())
    rotated = Compose([*crop, Rotate90d(KEYS, k=k, spatial_axes=axes), CropLocationd("image")])
    rotated = rotated.set_random_state(2)(make_item())
    for p, r in zip(plain, rotated):
        assert torch.equal(r["image"], torch.rot90(p["image"], k, [a + 1 for a in axes]))
        ops = [("rot90", k, axes)]
        assert torch.equal(slice_reference(coord_volume(), r["roi_box"], ops), r["image"].as_tensor())
        if k == 1:  # explicit: along a the mirrored extent of b, along b the extent of a
            a, b = axes
            assert torch.allclose(r["roi_box"][:, a], 1.0 - p["roi_box"][:, b].flip(0), atol=1e-6)
            assert torch.allclose(r["roi_box"][:, b], p["roi_box"][:, a], atol=1e-6)


def test_random_flips_and_rotations_with_padding():
    transform = Compose(
        [
            SpatialPadd(KEYS, (22, 22, 22)),
            RandCropByPosNegLabeld(KEYS, "label", (12, 10, 22), num_samples=4),
            RandFlipd(KEYS, prob=0.5, spatial_axis=0),
            RandFlipd(KEYS, prob=0.5, spatial_axis=(1, 2)),
            RandRotate90d(KEYS, prob=0.7, max_k=3, spatial_axes=(0, 1)),
            RandSpatialCropd(KEYS, (8, 8, 8), random_size=False),
            RandRotate90d(KEYS, prob=0.7, max_k=3, spatial_axes=(1, 2)),
            CropLocationd("image"),
        ]
    ).set_random_state(4)
    seen = set()
    for _ in range(4):
        for sample in transform(make_item()):
            ops = fired_ops(sample["image"])
            seen.update(op[0] for op in ops)
            assert torch.equal(slice_reference(coord_volume(), sample["roi_box"], ops), sample["image"].as_tensor())
    assert seen == {"flip", "rot90"}


def test_set_random_state_is_deterministic():
    def boxes(seed):
        transform = Compose(
            [
                RandCropByPosNegLabeld(KEYS, "label", (8, 8, 8), num_samples=4),
                RandFlipd(KEYS, prob=0.5, spatial_axis=0),
                CropLocationd("image"),
            ]
        ).set_random_state(seed)
        return torch.stack([s["roi_box"] for s in transform(make_item())])

    assert torch.equal(boxes(0), boxes(0))
    assert not torch.equal(boxes(0), boxes(1))


def test_reference_is_the_resampled_volume():
    """Orientationd + Spacingd before the crop: the box is in the post-Spacing grid."""
    affine = torch.diag(torch.tensor([-2.0, 2.0, 3.0, 1.0]))  # L along x, 2 x 2 x 3 mm
    prefix = [Orientationd(KEYS, "RAS"), Spacingd(KEYS, (1.0, 1.5, 3.0), mode=("bilinear", "nearest"))]
    reference = Compose(prefix)(make_item(affine=affine))["image"]
    assert tuple(reference.shape[1:]) == (39, 24, 16)
    crop = RandCropByPosNegLabeld(KEYS, "label", (10, 9, 8), num_samples=3)
    transform = Compose([*prefix, crop, CropLocationd("image")])
    for sample in transform.set_random_state(1)(make_item(affine=affine)):
        assert torch.equal(slice_reference(reference, sample["roi_box"]), sample["image"].as_tensor())
        assert torch.equal(sample["roi_box"], CropLocation()(sample["image"]))


def test_lazy_compose():
    transform = Compose(
        [
            SpatialPadd(KEYS, (24, 18, 16)),
            RandSpatialCropd(KEYS, (9, 8, 7), random_size=False),
            Flipd(KEYS, spatial_axis=1),
            Rotate90d(KEYS, k=1, spatial_axes=(0, 2)),
            CropLocationd("image"),
        ],
        lazy=True,
    ).set_random_state(8)
    out = transform(make_item())
    ops = [("flip", [1]), ("rot90", 1, (0, 2))]
    assert torch.equal(slice_reference(coord_volume(), out["roi_box"], ops), torch.as_tensor(out["image"]).round())


def test_dataloader_batches_and_scan_ids(tmp_path):
    files = []
    for i, shape in enumerate([(20, 18, 16), (17, 21, 12)]):
        item = make_item(shape)
        paths = {k: str(tmp_path / f"case{i}_{k}.nii.gz") for k in KEYS}
        # one channel on disk: the coordinates folded into one value, x * 10000 + y * 100 + z (1-based)
        code = item["image"][0] * 10000 + item["image"][1] * 100 + item["image"][2]
        nib.save(nib.Nifti1Image(code.numpy().astype(np.float32), np.eye(4)), paths["image"])
        nib.save(nib.Nifti1Image(item["label"][0].numpy().astype(np.uint8), np.eye(4)), paths["label"])
        files.append((paths, shape))
    transform = Compose(
        [
            LoadImaged(KEYS, image_only=True),
            EnsureChannelFirstd(KEYS),
            RandCropByPosNegLabeld(KEYS, "label", (8, 8, 8), num_samples=3),
            CropLocationd("image"),
        ]
    ).set_random_state(0)
    loader = DataLoader(Dataset([f[0] for f in files], transform), batch_size=2, collate_fn=list_data_collate)
    batch = next(iter(loader))
    assert batch["roi_box"].shape == (6, 2, 3) and batch["roi_box"].dtype == torch.float32
    assert batch["scan_id"].shape == (6,) and batch["scan_id"].dtype == torch.int64
    ids = batch["scan_id"].tolist()
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5]
    for i, (paths, _shape) in enumerate(files):
        assert ids[3 * i] == zlib.crc32(paths["image"].encode()) & 0x7FFFFFFF
    for b in range(6):
        code = batch["image"][b, 0].as_tensor().long()
        coords = torch.stack([code // 10000, code // 100 % 100, code % 100])
        shape = files[b // 3][1]
        assert_box(batch["roi_box"][b], expected_box(coords, shape), shape)


def test_persistent_dataset_keeps_the_history(tmp_path):
    transform = Compose(
        [SpatialPadd(KEYS, (24, 18, 16)), RandCropByPosNegLabeld(KEYS, "label", (8, 8, 8)), CropLocationd("image")]
    )
    dataset = PersistentDataset([make_item()], transform, cache_dir=tmp_path, track_meta=True)
    for _ in range(2):  # the second read comes from the cache on disk
        sample = dataset[0][0]
        assert_box(sample["roi_box"], expected_box(sample["image"], SHAPE), SHAPE)


def test_scan_id_without_filename_is_shared_by_crops_of_one_volume():
    affine = torch.tensor([[0.0, -1.5, 0, 10.0], [2.0, 0, 0, -3.25], [0, 0, 3.0, 7.0], [0, 0, 0, 1.0]])
    transform = Compose(
        [
            SpatialPadd(KEYS, (24, 24, 24)),
            RandCropByPosNegLabeld(KEYS, "label", (8, 9, 10), num_samples=4),
            RandFlipd(KEYS, prob=0.5, spatial_axis=(0, 2)),
            RandRotate90d(KEYS, prob=0.8, max_k=3),
            CropLocationd("image"),
        ]
    ).set_random_state(9)
    whole = scan_id_from_meta(coord_volume(affine=affine))
    samples = transform(make_item(affine=affine))
    assert all(int(s["scan_id"]) == int(whole) for s in samples)
    other = transform(make_item(affine=affine * torch.tensor([[1.0], [1.0], [2.0], [1.0]])))
    assert all(int(s["scan_id"]) != int(whole) for s in other)
    assert CropLocationd("image", scan_id_key=None)(make_item()).keys() == {"image", "label", "roi_box"}


def test_keys():
    item = make_item()
    with pytest.raises(KeyError, match="roi_box already exists"):
        CropLocationd("image")({**item, "roi_box": torch.zeros(2, 3)})
    with pytest.raises(KeyError, match="scan_id already exists"):
        CropLocationd("image")({**item, "scan_id": 1})
    with pytest.raises(KeyError, match="missing"):
        CropLocationD("img")(item)
    assert CropLocationd("img", allow_missing_keys=True)(item).keys() == item.keys()
    out = CropLocationd(["img", "label"], roi_box_key="box", allow_missing_keys=True)(item)
    assert torch.equal(out["box"], torch.tensor([[0.0] * 3, [1.0] * 3]))


@pytest.mark.parametrize(
    "after, name, placed",
    [
        (RandAffined(KEYS, prob=1.0, rotate_range=0.2), "RandAffine", "RandAffined"),
        (RandZoomd(KEYS, prob=1.0, min_zoom=1.2, max_zoom=1.3), "Zoom", "RandZoomd"),
        (Resized(KEYS, (6, 6, 6)), "Resize", "Resize"),
        (Spacingd(KEYS, (2.0, 2.0, 2.0)), "SpatialResample", "SpatialResample"),
    ],
    ids=["RandAffined", "RandZoomd", "Resized", "Spacingd"],
)
def test_unsupported_op_after_crop_raises(after, name, placed):
    item = Compose([RandSpatialCropd(KEYS, (9, 9, 9), random_size=False), after])(make_item())
    with pytest.raises(ValueError, match=rf"through `{name}`.*after `RandSpatialCrop`.*before `{placed}`"):
        CropLocationd("image")(item)  # (in a Compose, MONAI re-raises it as the cause of a RuntimeError)


def test_ops_that_did_not_fire_or_keep_voxels_are_accepted():
    transform = Compose(
        [
            RandSpatialCropd(KEYS, (9, 9, 9), random_size=False),
            RandAffined(KEYS, prob=0.0, rotate_range=0.2),
            RandZoomd(KEYS, prob=0.0),
            RandRotate90d(KEYS, prob=0.0),
            Lambdad("image", lambda x: x * 1),
            CropLocationd("image"),
        ]
    )
    out = transform(make_item())
    assert_box(out["roi_box"], expected_box(out["image"], SHAPE), SHAPE)


def test_unrecorded_shape_change_and_bad_inputs_raise():
    elastic = Rand3DElasticd(KEYS, sigma_range=(5, 6), magnitude_range=(1, 2), prob=1.0, spatial_size=(7, 7, 7))
    crop = RandSpatialCropd(KEYS, (9, 9, 9), random_size=False)
    with pytest.raises(ValueError, match="does not record itself"):
        CropLocationd("image")(Compose([crop, elastic])(make_item()))
    pending = SpatialPadd(KEYS, (24, 18, 16), lazy=True)(make_item())
    with pytest.raises(ValueError, match="pending lazy operations"):
        crop_box_from_meta(pending["image"])
    with pytest.raises(TypeError, match="MetaTensor"):
        CropLocation()(torch.zeros(1, 4, 4, 4))


def test_real_ct(totalseg_dir):
    """The real CT: the crop equals the reference volume (after Spacingd, before padding) sliced at the box."""
    data = {
        "image": str(totalseg_dir / "example_ct_sm.nii.gz"),
        "label": str(totalseg_dir / "example_ct_sm_label_btcv13.nii.gz"),
    }
    prefix = [
        LoadImaged(KEYS, image_only=True),
        EnsureChannelFirstd(KEYS),
        Orientationd(KEYS, "RAS"),
        Spacingd(KEYS, (3.0, 3.0, 3.0), mode=("bilinear", "nearest")),
    ]
    reference = Compose(prefix)(data)["image"]
    size = tuple(reference.shape[1:])
    assert size == (122, 101, 30)
    roi = (64, 64, 32)
    crop = [SpatialPadd(KEYS, roi), RandCropByPosNegLabeld(KEYS, "label", roi, num_samples=2)]
    samples = Compose([*prefix, *crop, CropLocationd("image")]).set_random_state(0)(data)
    pad = np.array([0, 0, 1])  # SpatialPadd: z 30 -> 32, (1, 1)
    padded = torch.nn.functional.pad(reference.as_tensor(), (1, 1))
    for sample in samples:
        box = sample["roi_box"]
        assert box[0, 2] == pytest.approx(-1 / 30) and box[1, 2] == pytest.approx(31 / 30)
        voxels = box.double() * torch.tensor(size, dtype=torch.float64)
        assert torch.allclose(voxels, voxels.round(), atol=1e-4)
        lo, hi = (voxels.round().long().numpy() + pad).tolist()
        expected = padded[(slice(None), *[slice(a, b) for a, b in zip(lo, hi)])]
        assert torch.equal(sample["image"].as_tensor(), expected)
        assert int(sample["scan_id"]) == zlib.crc32(data["image"].encode()) & 0x7FFFFFFF
    # rot90 and a flip on real data: the box follows the content
    augment = [RandRotate90d(KEYS, prob=1.0, max_k=1, spatial_axes=(0, 1)), RandFlipd(KEYS, prob=1.0, spatial_axis=2)]
    samples = Compose([*prefix, *crop, *augment, CropLocationd("image")]).set_random_state(0)(data)
    for sample in samples:
        ops = [("rot90", 1, (0, 1)), ("flip", [2])]
        assert torch.equal(slice_reference(reference, sample["roi_box"], ops), sample["image"].as_tensor())
