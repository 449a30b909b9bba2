# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Networks: :class:`FINE`, its presets, and its TorchScript / ONNX export."""

from monai_fine.networks.blocks.memory import ScanSummary, check_roi_box, intersecting_cells
from monai_fine.networks.blocks.memory_mode import MEMORY_CONFIGS, MEMORY_MODES, MemoryMode, memory_mode
from monai_fine.networks.export import FINEExportWrapper, export_onnx, trace_fine
from monai_fine.networks.nets.fine import FINE, PRESETS, create_fine

__all__ = [
    "FINE",
    "PRESETS",
    "create_fine",
    "ScanSummary",
    "MemoryMode",
    "MEMORY_CONFIGS",
    "MEMORY_MODES",
    "memory_mode",
    "check_roi_box",
    "intersecting_cells",
    "FINEExportWrapper",
    "export_onnx",
    "trace_fine",
]
