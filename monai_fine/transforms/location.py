# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The ``roi_box`` frame: where a crop or a sliding window lies in its scan (the one definition; others link here).

**The frame.** ``roi_box`` is a float32 ``(2, S)`` tensor (``S`` spatial dims, 3 for CT; ``(B, 2, S)`` once
batched). Row 0 is the start, row 1 the stop of the half-open ``[start, stop)`` extent along each spatial axis
(MONAI array order, i.e. x, y, z after ``Orientationd("RAS")``), in the coordinates of the *reference volume*, as
fractions of that volume's size: ``start = first voxel index / size``, ``stop = (last voxel index + 1) / size``.
The reference volume is the image after the last transform that changes the voxel grid (``Orientation``,
``Spacing``, ``Resize``, ...) and before any crop or pad (``CropForeground``, ``SpatialPad``, random crops, ...).
Values leave ``[0, 1]`` where the crop covers padding. Flips and 90-degree rotations applied to a crop move the box
with the content: the box is then expressed in the reference volume flipped/rotated the same way. Along a flipped
axis ``[s, e)`` becomes ``[1 - e, 1 - s)``; after ``torch.rot90(img, 1, dims=(a, b))`` the box along ``a`` is
``[1 - e_b, 1 - s_b)`` and along ``b`` is ``[s_a, e_a)``.

**Both producers derive it the same way**, by tracing the image's ``MetaTensor.applied_operations`` with
:py:func:`trace_operations`: :py:class:`monai_fine.transforms.CropLocationd` for training crops, and
:py:class:`monai_fine.inferers.FINEInferer` for the volume it receives (each window's box is the window's place in
that volume, shifted by the volume's own place in its reference). So a preprocessing with ``CropForegroundd`` gives
training and inference boxes in the same, uncropped, frame. A plain tensor (no history) is its own reference.

What MONAI (1.6.1) records, and what is read here (``extra_info`` of the innermost entry, wrappers such as
``RandCropByPosNegLabel``, ``RandSpatialCropSamples``, ``RandFlipd`` and ``RandZoomd`` nest the real entry in their
own ``extra_info``, possibly twice):

* crops (``SpatialCrop``, ``CenterSpatialCrop``, ``CenterScaleCrop``, ``RandSpatialCrop``, ``RandScaleCrop``,
  ``CropForeground``, and the nested ``SpatialCrop``/``RandSpatialCrop`` of ``RandCropByPosNegLabel``,
  ``RandCropByLabelClasses``, ``RandWeightedCrop``, ``RandSpatialCropSamples``): ``"cropped"`` =
  ``[lo0, hi0, lo1, hi1, ...]`` voxels removed per side; ``CropForeground`` adds a nested ``"pad_info"``
  entry applied after the crop;
* pads (``Pad``, ``SpatialPad``, ``BorderPad``, ``DivisiblePad``): ``"padded"`` = ``((0, 0), (lo0, hi0), ...)``,
  the channel first;
* ``ResizeWithPadOrCrop``: ``"crop_info"`` then ``"pad_info"``, two nested entries;
* ``Flip``: ``"axes"`` (``None`` = all spatial axes, an int or a sequence, negative allowed);
* ``Rotate90``: ``"axes"`` (two non-negative spatial axes) and ``"k"``, the image is ``torch.rot90(img, k, axes)``;
* random transforms that did not fire: ``"do_transforms": False``.

Everything else that records itself is a grid change: allowed while the image is still the whole reference
(it then defines a new reference), an error after a crop or pad. ``Lambda``, ``ToTensor`` and the ``OneOf`` /
``SomeOf`` / ``RandomOrder`` bookkeeping entries are taken as not moving voxels. Transforms that do not record
themselves (``Rand3DElasticd``, ``RandGridDistortiond``, ``RandSimulateLowResolutiond``) cannot be seen; if they
change the shape the size check raises, otherwise they go unnoticed.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.utils import TraceKeys

from monai_fine.networks.blocks.memory import check_roi_box

__all__ = ["CropTrace", "trace_operations", "trace_crop", "crop_box_from_meta", "scan_id_from_meta"]

#: Entries that do not move voxels (recorded by invertible but non-spatial transforms or by composers).
_PASS_THROUGH_CLASSES = frozenset(
    {
        "Lambda", "Lambdad", "RandLambda", "RandLambdad", "ToTensor", "ToTensord",
        "ToMetaTensord", "FromMetaTensord", "OneOf", "SomeOf", "RandomOrder", "Compose",
    }
)  # fmt: skip
_FLIP_CLASSES = frozenset({"Flip"})
_ROTATE90_CLASSES = frozenset({"Rotate90"})
_SCAN_ID_MASK = 0x7FFFFFFF


@dataclass
class CropTrace:
    """The crop's place in its reference volume, in voxels.

    Attributes:
        start: ``(S,)`` int64, first voxel of the crop in the (flipped/rotated) reference volume.
        stop: ``(S,)`` int64, one past the last voxel.
        reference_size: ``(S,)`` int64, size of the (flipped/rotated) reference volume.
        true_reference_size: ``(S,)`` int64, size of the reference volume before any flip or rotation.
        to_reference: ``(S + 1, S + 1)`` float64, maps a voxel index of the crop to the voxel index of the same
            voxel in the reference volume (before any flip or rotation), MONAI's convention for affine updates.
    """

    start: torch.Tensor
    stop: torch.Tensor
    reference_size: torch.Tensor
    true_reference_size: torch.Tensor
    to_reference: torch.Tensor

    @property
    def box(self) -> torch.Tensor:
        """``(2, S)`` float32 ``[start, stop)`` as fractions of ``reference_size``."""
        size = self.reference_size.to(torch.float64)
        return torch.stack([self.start / size, self.stop / size]).to(torch.float32)


class _Tracer:
    """Propagates a crop's box through a sequence of ``applied_operations`` entries."""

    def __init__(self, size: Sequence[int]) -> None:
        self.reset(size)
        self.last_box_op = ""

    def reset(self, size: Sequence[int]) -> None:
        self.ref = [int(s) for s in size]
        self.true_ref = list(self.ref)
        self.start = [0] * len(self.ref)
        self.stop = list(self.ref)
        self.frame = torch.eye(len(self.ref) + 1, dtype=torch.float64)  # flipped/rotated reference -> reference

    @property
    def ndim(self) -> int:
        return len(self.ref)

    @property
    def size(self) -> list[int]:
        return [e - s for s, e in zip(self.start, self.stop)]

    @property
    def is_whole(self) -> bool:
        return self.start == [0] * self.ndim and self.stop == self.ref

    def check_size(self, entry: Mapping, name: str) -> None:
        orig = entry.get(TraceKeys.ORIG_SIZE)
        if orig is None:
            return
        orig = [int(s) for s in orig]
        if orig != self.size:
            raise ValueError(
                f"`{name}` was applied to an image of spatial size {orig}, but the traced size at that point is "
                f"{self.size}: a transform that does not record itself in applied_operations changed the shape "
                "(e.g. Rand3DElasticd with spatial_size), so the crop location cannot be traced."
            )

    def crop(self, cropped: Sequence[int], name: str) -> None:
        cropped = [int(c) for c in np.asarray(cropped).reshape(-1).tolist()]
        if len(cropped) != 2 * self.ndim:
            raise ValueError(f"`{name}` recorded cropped={cropped}, expected {2 * self.ndim} values.")
        for a in range(self.ndim):
            self.start[a] += cropped[2 * a]
            self.stop[a] -= cropped[2 * a + 1]

    def pad(self, padded: Any, name: str) -> None:
        pairs = [tuple(int(v) for v in p) for p in np.asarray(padded).reshape(-1, 2).tolist()]
        spatial = pairs[1:]  # the first pair is the channel dim
        if len(spatial) > self.ndim:
            raise ValueError(f"`{name}` recorded padded={pairs}, more than {self.ndim} spatial dims.")
        for a, (lo, hi) in enumerate(spatial):
            self.start[a] -= lo
            self.stop[a] += hi

    def flip(self, axes: Any) -> None:
        if axes is None:
            axes = range(self.ndim)
        for a in sorted({int(a) % self.ndim for a in np.asarray(axes).reshape(-1).tolist()}):
            r = self.ref[a]
            self.start[a], self.stop[a] = r - self.stop[a], r - self.start[a]
            step = torch.eye(self.ndim + 1, dtype=torch.float64)  # new frame index -> old frame index
            step[a, a], step[a, -1] = -1.0, r - 1
            self.frame = self.frame @ step

    def rotate90(self, axes: Sequence[int], k: int) -> None:
        a, b = (int(x) % self.ndim for x in axes)
        if a == b:
            raise ValueError(f"Rotate90 recorded axes={list(axes)}, expected two different spatial axes.")
        for _ in range(int(k) % 4):
            # torch.rot90(x, 1, (a, b))[i_a, i_b] == x[i_b along a, n_b - 1 - i_a along b]
            r_a, r_b = self.ref[a], self.ref[b]
            s_a, e_a, s_b, e_b = self.start[a], self.stop[a], self.start[b], self.stop[b]
            self.start[a], self.stop[a] = r_b - e_b, r_b - s_b
            self.start[b], self.stop[b] = s_a, e_a
            self.ref[a], self.ref[b] = r_b, r_a
            step = torch.zeros(self.ndim + 1, self.ndim + 1, dtype=torch.float64)
            for c in range(self.ndim + 1):
                if c not in (a, b):
                    step[c, c] = 1.0
            step[a, b] = 1.0
            step[b, a], step[b, -1] = -1.0, r_b - 1
            self.frame = self.frame @ step

    def apply(self, entry: Mapping, out_size: Sequence[int] | None, wrappers: str = "") -> None:
        """Apply one entry; ``out_size`` is the spatial size after it (needed only for grid changes)."""
        name = str(entry.get(TraceKeys.CLASS_NAME, "<unnamed>"))
        if not entry.get(TraceKeys.DO_TRANSFORM, True):
            return
        extra = entry.get(TraceKeys.EXTRA_INFO)
        extra = extra if isinstance(extra, Mapping) else {}
        if TraceKeys.CLASS_NAME in extra:  # a wrapper (RandFlipd, RandCropByPosNegLabel, ...): the op is nested
            self.check_size(entry, name)
            self.apply(extra, out_size, f"{wrappers} > {name}" if wrappers else name)
            return
        if name in _PASS_THROUGH_CLASSES:
            return
        if name in _FLIP_CLASSES:
            self.check_size(entry, name)
            self.flip(extra.get("axes"))
        elif name in _ROTATE90_CLASSES:
            self.check_size(entry, name)
            self.rotate90(extra["axes"], extra["k"])
        elif "crop_info" in extra and "pad_info" in extra:  # ResizeWithPadOrCrop: crop, then pad
            self.check_size(entry, name)
            self.apply(extra["crop_info"], None)
            self.apply(extra["pad_info"], None)
        elif "cropped" in extra:
            self.check_size(entry, name)
            self.crop(extra["cropped"], name)
            if isinstance(extra.get("pad_info"), Mapping):  # CropForeground pads after cropping
                self.apply(extra["pad_info"], None)
        elif "padded" in extra:
            self.check_size(entry, name)
            self.pad(extra["padded"], name)
        else:
            self.change_grid(name, out_size, wrappers)
            return
        self.last_box_op = wrappers.split(" > ")[0] if wrappers else name  # the transform the user placed

    def change_grid(self, name: str, out_size: Sequence[int] | None, wrappers: str = "") -> None:
        if not self.is_whole:
            placed = wrappers.split(" > ")[0] if wrappers else name
            recorded_by = f" (recorded by {wrappers})" if wrappers else ""
            raise ValueError(
                f"The crop location cannot be traced through `{name}`{recorded_by}, applied after "
                f"`{self.last_box_op}`: it moves voxels in a way a [start, stop) box cannot represent. Place "
                f"CropLocationd before `{placed}`, or remove `{placed}` (only crops, pads, flips and 90-degree "
                "rotations may follow the crop); if it is preprocessing (Orientation, Spacing, ...), run it before "
                "any crop or pad."
            )
        if out_size is None:
            raise ValueError(f"`{name}` changes the voxel grid but the spatial size it produced is not recorded.")
        self.reset(out_size)


def trace_crop(img: MetaTensor) -> CropTrace:
    """Trace an image's crop back to its reference volume through ``img.applied_operations``.

    Args:
        img: channel-first MetaTensor ``(C, *spatial)`` of one item (not a batch), as produced by an eager or lazy
            MONAI transform chain with ``set_track_meta(True)`` (the default).

    Returns:
        the :py:class:`CropTrace` of the image.

    Raises:
        TypeError: when ``img`` is not a MetaTensor.
        ValueError: when ``img`` is a batch, has pending (lazy, not yet applied) operations, went through a
            transform the box cannot represent after a crop or pad, or its shape does not match the record.
    """
    if not isinstance(img, MetaTensor):
        raise TypeError(
            f"the crop location is read from MetaTensor.applied_operations, got {type(img).__name__}; "
            "keep set_track_meta(True) and do not convert the image to a plain tensor before this transform."
        )
    if img.is_batch:
        raise ValueError(
            f"expected one item, got a collated batch of shape {tuple(img.shape)}; trace before collation."
        )
    if img.pending_operations:
        pending = [op.get(TraceKeys.CLASS_NAME) for op in img.pending_operations]
        raise ValueError(
            f"the image has pending lazy operations {pending}; apply them first (e.g. run the transforms in a "
            "Compose, which executes pending operations) before tracing the crop location."
        )
    return trace_operations(img.applied_operations, img.shape[1:])


def trace_operations(operations: Sequence[Mapping], spatial_shape: Sequence[int]) -> CropTrace:
    """Trace an image's place in its reference volume from its ``applied_operations`` (see the module docstring).

    Args:
        operations: the ``applied_operations`` of one item (a list of MONAI trace entries, oldest first).
        spatial_shape: the item's current spatial shape.

    Returns:
        the :py:class:`CropTrace` of the image.

    Raises:
        ValueError: when a transform the box cannot represent follows a crop or pad (the message names it), or
            the record does not match ``spatial_shape``.
    """
    shape = [int(s) for s in spatial_shape]
    ops = list(operations)
    tracer = _Tracer(ops[0].get(TraceKeys.ORIG_SIZE, shape) if ops else shape)
    for i, entry in enumerate(ops):
        out_size = ops[i + 1].get(TraceKeys.ORIG_SIZE) if i + 1 < len(ops) else shape
        tracer.apply(entry, out_size)
    if tracer.size != shape:
        raise ValueError(
            f"the image has spatial size {shape}, but its applied_operations give {tracer.size}: a transform "
            "that does not record itself changed the shape, so the crop location cannot be traced."
        )
    translate = torch.eye(tracer.ndim + 1, dtype=torch.float64)
    translate[: tracer.ndim, -1] = torch.tensor(tracer.start, dtype=torch.float64)
    return CropTrace(
        start=torch.tensor(tracer.start, dtype=torch.int64),
        stop=torch.tensor(tracer.stop, dtype=torch.int64),
        reference_size=torch.tensor(tracer.ref, dtype=torch.int64),
        true_reference_size=torch.tensor(tracer.true_ref, dtype=torch.int64),
        to_reference=tracer.frame @ translate,
    )


def crop_box_from_meta(img: MetaTensor) -> torch.Tensor:
    """The ``roi_box`` of a crop: its ``[start, stop)`` in the reference volume (the frame of the module docstring).

    Args:
        img: channel-first MetaTensor ``(C, *spatial)`` of one crop, carrying MONAI's ``applied_operations``.

    Returns:
        ``(2, S)`` float32 tensor, row 0 the start and row 1 the stop.

    Raises:
        TypeError: when ``img`` is not a MetaTensor.
        ValueError: when the crop cannot be traced (see :py:func:`trace_crop`), or a 3D box is not finite with
            ``stop > start`` (:py:func:`~monai_fine.networks.blocks.memory.check_roi_box`).

    Example::

        >>> img = MetaTensor(torch.zeros(1, 10, 10, 4))
        >>> crop_box_from_meta(SpatialCrop(roi_start=(2, 0, 1), roi_end=(7, 10, 3))(img))
        tensor([[0.2000, 0.0000, 0.2500],
                [0.7000, 1.0000, 0.7500]])
    """
    box = trace_crop(img).box
    if box.shape[-1] == 3:  # checked where it is made, on the host (a box the network gets on a GPU is not re-read)
        check_roi_box(box[None])
    return box


def scan_id_from_meta(img: MetaTensor) -> torch.Tensor:
    """A stable id of the scan an image (or a crop of it) comes from.

    ``zlib.crc32`` of ``str(meta["filename_or_obj"])``, masked to 31 bits. Without a filename, the crc32 of the
    reference volume's size and affine (the crop's affine with the crop, flips and rotations undone, rounded to
    1e-3), so that all crops of one in-memory volume share the id.

    Args:
        img: channel-first MetaTensor ``(C, *spatial)`` of one item.

    Returns:
        int64 scalar tensor in ``[0, 2**31)``.

    Raises:
        TypeError: when ``img`` is not a MetaTensor.
        ValueError: when no filename is recorded and the crop cannot be traced (see :py:func:`trace_crop`).
    """
    if not isinstance(img, MetaTensor):
        raise TypeError(f"the scan id is read from MetaTensor.meta, got {type(img).__name__}.")
    filename = img.meta.get("filename_or_obj")
    if filename is not None and str(filename) != "":
        key = str(filename).encode("utf-8")
    else:
        trace = trace_crop(img)
        affine = torch.as_tensor(img.affine, dtype=torch.float64).cpu()
        to_reference = to_affine_nd(affine.shape[-1] - 1, trace.to_reference)
        reference_affine = affine @ torch.linalg.inv(to_reference)
        values = np.round(reference_affine.numpy(), 3) + 0.0  # + 0.0 turns -0.0 into 0.0
        key = repr((trace.true_reference_size.tolist(), values.tolist())).encode("utf-8")
    return torch.tensor(zlib.crc32(key) & _SCAN_ID_MASK, dtype=torch.int64)
