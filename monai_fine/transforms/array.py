# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Array transforms of monai_fine: the location of a training crop in its full volume; a channel argmax straight
into ``uint8`` labels."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from monai_fine.transforms.location import crop_box_from_meta

__all__ = ["CropLocation", "ArgmaxUint8"]


class CropLocation(Transform):
    """Return where a crop lies in its reference volume, as the ``roi_box`` the FINE network takes.

    The box is the float32 ``(2, S)`` ``roi_box`` in the frame defined in :py:mod:`monai_fine.transforms.location`
    (fractions of the reference volume: after ``Orientation``/``Spacing``, before any crop or pad), read from
    ``MetaTensor.applied_operations``; that module lists the supported MONAI transforms.

    The image itself is not changed.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: MetaTensor) -> torch.Tensor:
        """
        Args:
            img: channel-first MetaTensor ``(C, *spatial)`` of one crop.

        Returns:
            ``(2, S)`` float32 ``roi_box`` (:py:mod:`monai_fine.transforms.location`).

        Raises:
            TypeError: when ``img`` is not a MetaTensor.
            ValueError: when a transform the box cannot represent (e.g. ``RandAffine``, ``Zoom``, ``Resize``)
                was applied after the crop, or the record is inconsistent with the image.
        """
        return crop_box_from_meta(img)


class ArgmaxUint8(Transform):
    """Channel argmax straight into a ``uint8`` label map, slab by slab along the last axis.

    Equal to ``AsDiscrete(argmax=True, dtype=torch.uint8)`` (ties go to the lowest channel, as ``torch.argmax``)
    but without the full-size ``int64`` index volume that ``torch.argmax`` returns (0.4 GB for 512 x 512 x 200).
    Metadata and applied operations of a ``MetaTensor`` are kept, so ``Invertd`` can follow.

    Args:
        slab: slices along the last axis per step (values below 1 count as 1).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, slab: int = 8) -> None:
        self.slab = max(int(slab), 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """
        Args:
            img: ``(C, *spatial)`` scores, ``C <= 256`` (a MetaTensor or any tensor-like).

        Returns:
            ``(1, *spatial)`` ``uint8`` labels on ``img``'s device (a MetaTensor with ``img``'s metadata and applied
            operations when ``img`` is one).

        Raises:
            ValueError: more than 256 channels (labels beyond 255 do not fit ``uint8``).
        """
        if img.shape[0] > 256:
            raise ValueError(f"ArgmaxUint8: {img.shape[0]} channels do not fit uint8 labels (at most 256).")
        raw = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        out = torch.empty((1, *raw.shape[1:]), dtype=torch.uint8, device=raw.device)
        for z in range(0, raw.shape[-1], self.slab):
            out[..., z : z + self.slab] = raw[..., z : z + self.slab].argmax(0, keepdim=True)
        if isinstance(img, MetaTensor):
            out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
        return out
