# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Building blocks of :class:`~monai_fine.networks.FINE`: attention, windows, memory, transformer stages."""

from monai_fine.networks.blocks.attention import Attention, AttentionRecorder, resolve_attn_mask
from monai_fine.networks.blocks.memory import ScanSummary, check_roi_box, intersecting_cells
from monai_fine.networks.blocks.memory_mode import MEMORY_CONFIGS, MEMORY_MODES, MemoryMode, memory_mode
from monai_fine.networks.blocks.mlp import Mlp
from monai_fine.networks.blocks.patch import PatchEmbed3d, PatchExpand3d, PatchMerging3d
from monai_fine.networks.blocks.transformer import BlockContext, FineBlock, FineStage, MemoryContext
from monai_fine.networks.blocks.window import WindowGeometry, WindowLayout, window_layout

__all__ = [
    "Attention",
    "AttentionRecorder",
    "resolve_attn_mask",
    "ScanSummary",
    "MemoryMode",
    "MEMORY_CONFIGS",
    "memory_mode",
    "check_roi_box",
    "intersecting_cells",
    "Mlp",
    "PatchEmbed3d",
    "PatchExpand3d",
    "PatchMerging3d",
    "MEMORY_MODES",
    "FineBlock",
    "FineStage",
    "MemoryContext",
    "BlockContext",
    "WindowGeometry",
    "WindowLayout",
    "window_layout",
]
