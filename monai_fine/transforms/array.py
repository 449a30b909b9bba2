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
