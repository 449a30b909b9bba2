# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The scan view: the whole scan at the network's input size, which writes the per-scan memory.

With ``scan_memory`` a FINE network reads, in every crop or window, what a *write pass* stored in its volume tokens.
That write pass runs on the scan view: the whole preprocessed volume resized to the crop size (``roi_size``) by area
averaging (:func:`scan_view`), with the box of the whole volume in the ``roi_box`` frame of
:py:mod:`monai_fine.transforms.location` (``[0, 1]^3`` unless a ``CropForegroundd`` or pad came first). Training and
inference build it with the same function from the same preprocessed volume:

- training: :py:class:`monai_fine.transforms.ScanViewd` after the deterministic preprocessing, before the random
  crops (which copy it into every crop's dictionary); :py:class:`monai_fine.engines.PrepareScanBatch` keeps one view
  per scan of the batch;
- inference: :py:class:`monai_fine.inferers.FINEInferer` with ``scan_memory=True`` builds it from its input.

One write pass is one extra network forward of a crop's size per scan, so a training iteration with 2 crops per scan
costs about 1.5 crop passes, and whole-scan inference one extra window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from monai_fine.transforms.location import trace_crop

__all__ = ["scan_view", "scan_view_and_box", "whole_box"]


def scan_view(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The scan view of ``volume``: resized to ``size`` by area averaging (``F.interpolate(mode="area")``), float32.

    Args:
        volume: ``(C, X, Y, Z)`` or ``(B, C, X, Y, Z)``; a MetaTensor is used as a plain tensor.
        size: spatial output size ``(x, y, z)`` (the network's crop size).

    Returns:
        a plain float32 tensor ``(C, *size)`` or ``(B, C, *size)``, on the input's device.

    Raises:
        ValueError: for a volume that is not 4D or 5D, or a ``size`` that is not 3 positive ints.
    """
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"scan view size must be 3 positive ints, got {size}.")
    if volume.ndim not in (4, 5):
        raise ValueError(
            f"scan view expects a (C, X, Y, Z) or (B, C, X, Y, Z) volume, got shape {tuple(volume.shape)}."
        )
    x = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
    out = F.interpolate(x.float() if x.ndim == 5 else x.float()[None], size=size, mode="area")
    return out if x.ndim == 5 else out[0]


def whole_box(start: torch.Tensor, reference_size: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(2, S)`` float32 ``roi_box`` of a whole volume of spatial ``shape`` whose index 0 is voxel ``start`` of a
    reference volume of size ``reference_size`` (:py:mod:`monai_fine.transforms.location`)."""
    start = torch.as_tensor(start, dtype=torch.float64)
    ref = torch.as_tensor(reference_size, dtype=torch.float64)
    stop = start + torch.as_tensor([float(s) for s in shape], dtype=torch.float64)
    return torch.stack([start / ref, stop / ref]).to(torch.float32)


def scan_view_and_box(img: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan view of one channel-first item and its ``roi_box`` (traced from a MetaTensor's history; a plain
    tensor is its own reference, box ``[0, 1]^3``)."""
    shape = [int(s) for s in img.shape[1:]]
    if isinstance(img, MetaTensor):
        trace = trace_crop(img)
        box = whole_box(trace.start, trace.reference_size, shape)
    else:
        box = whole_box(torch.zeros(len(shape)), torch.tensor(shape), shape)
    return scan_view(img, size), box
