# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from monai_fine.networks.blocks.attention import Attention, resolve_attn_mask
from monai_fine.networks.blocks.memory import ScanMemory, intersecting_cells
from monai_fine.networks.blocks.mlp import Mlp
from monai_fine.networks.blocks.patch import PatchEmbed3d, PatchExpand3d, PatchMerging3d
from monai_fine.networks.blocks.transformer import MEMORY_MODES, FineBlock, FineStage, MemoryContext

__all__ = [
    "Attention",
    "resolve_attn_mask",
    "ScanMemory",
    "intersecting_cells",
    "Mlp",
    "PatchEmbed3d",
    "PatchExpand3d",
    "PatchMerging3d",
    "MEMORY_MODES",
    "FineBlock",
    "FineStage",
    "MemoryContext",
]
