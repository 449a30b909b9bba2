# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Transforms of monai_fine: MONAI-style array and dictionary transforms."""

from __future__ import annotations

from monai_fine.transforms.array import CropLocation
from monai_fine.transforms.dictionary import CropLocationD, CropLocationd, CropLocationDict
from monai_fine.transforms.location import CropTrace, crop_box_from_meta, scan_id_from_meta, trace_crop

__all__ = [
    "CropLocation",
    "CropLocationd",
    "CropLocationD",
    "CropLocationDict",
    "CropTrace",
    "crop_box_from_meta",
    "scan_id_from_meta",
    "trace_crop",
]
