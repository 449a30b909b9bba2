# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Transforms of monai_fine: MONAI-style array and dictionary transforms."""

from __future__ import annotations

from monai_fine.transforms.array import ArgmaxUint8, CropLocation
from monai_fine.transforms.dictionary import (
    ArgmaxUint8D,
    ArgmaxUint8d,
    ArgmaxUint8Dict,
    CropLocationD,
    CropLocationd,
    CropLocationDict,
    PathSafeSpacingD,
    PathSafeSpacingd,
    PathSafeSpacingDict,
    PlainTensorD,
    PlainTensord,
    PlainTensorDict,
    ScanViewD,
    ScanViewd,
    ScanViewDict,
)
from monai_fine.transforms.location import CropTrace, crop_box_from_meta, scan_id_from_meta, trace_crop
from monai_fine.transforms.scan_view import scan_view, scan_view_and_box, whole_box

__all__ = [
    "ArgmaxUint8",
    "ArgmaxUint8d",
    "ArgmaxUint8D",
    "ArgmaxUint8Dict",
    "CropLocation",
    "CropLocationd",
    "CropLocationD",
    "CropLocationDict",
    "CropTrace",
    "PathSafeSpacingd",
    "PathSafeSpacingD",
    "PathSafeSpacingDict",
    "PlainTensord",
    "PlainTensorD",
    "PlainTensorDict",
    "ScanViewd",
    "ScanViewD",
    "ScanViewDict",
    "scan_view",
    "scan_view_and_box",
    "whole_box",
    "crop_box_from_meta",
    "scan_id_from_meta",
    "trace_crop",
]
