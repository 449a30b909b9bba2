# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Networks: :class:`FINE`, its presets, and its TorchScript / ONNX export."""

from monai_fine.networks.blocks.memory import ScanMemory, check_roi_box, intersecting_cells
from monai_fine.networks.export import FINEExportWrapper, export_onnx, trace_fine
from monai_fine.networks.nets.fine import FINE, PRESETS, Fine, create_fine, fine_bcv, fine_tiny

__all__ = [
    "FINE",
    "Fine",
    "fine_bcv",
    "fine_tiny",
    "PRESETS",
    "create_fine",
    "ScanMemory",
    "check_roi_box",
    "intersecting_cells",
    "FINEExportWrapper",
    "export_onnx",
    "trace_fine",
]
