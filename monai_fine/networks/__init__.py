# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Networks: :class:`FINE` and its presets."""

from monai_fine.networks.blocks.memory import ScanMemory, intersecting_cells
from monai_fine.networks.nets.fine import FINE, PRESETS, Fine, create_fine, fine_bcv, fine_tiny

__all__ = ["FINE", "Fine", "fine_bcv", "fine_tiny", "PRESETS", "create_fine", "ScanMemory", "intersecting_cells"]
