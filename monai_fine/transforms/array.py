# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Array transforms of monai_fine: the location of a training crop in its full volume."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

from monai_fine.transforms.location import crop_box_from_meta

__all__ = ["CropLocation"]


class CropLocation(Transform):
    """Return where a crop lies in its reference volume, as the ``roi_box`` the FINE network takes.

    ``roi_box`` is a float32 ``(2, S)`` tensor (``(2, 3)`` for CT): row 0 the start, row 1 the stop of the
    half-open ``[start, stop)`` extent of the crop along each spatial axis (MONAI array order, x, y, z after
    ``Orientationd("RAS")``), in the coordinates of the reference volume (after ``Orientation``/``Spacing``,
    before any pad or crop), as fractions of that volume's size. Values leave ``[0, 1]`` where the crop covers
    padding. A flip or ``Rotate90`` applied after the crop moves the box with the content. The box is read from
    ``MetaTensor.applied_operations``, see :py:func:`monai_fine.transforms.location.crop_box_from_meta` for the
    supported MONAI transforms.

    The image itself is not changed.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: MetaTensor) -> torch.Tensor:
        """
        Args:
            img: channel-first MetaTensor ``(C, *spatial)`` of one crop.

        Returns:
            ``(2, S)`` float32 ``[start, stop)`` box, fractions of the reference volume's size.

        Raises:
            TypeError: when ``img`` is not a MetaTensor.
            ValueError: when a transform the box cannot represent (e.g. ``RandAffine``, ``Zoom``, ``Resize``)
                was applied after the crop, or the record is inconsistent with the image.
        """
        return crop_box_from_meta(img)
