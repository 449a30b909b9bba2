# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Patch embedding, merging (down) and expanding (up) for channels-last 3D token grids (nnFormer style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ChannelLayerNorm3d", "PatchEmbed3d", "PatchMerging3d", "PatchExpand3d"]


class ChannelLayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, X, Y, Z)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class PatchEmbed3d(nn.Module):
    """Two conv units (stride ``s1`` then ``s2``, ``s1 * s2 = patch_size`` per axis) as in nnFormer's embedding.

    ``(B, C_in, X, Y, Z)`` -> ``(B, X/px, Y/py, Z/pz, C)`` channels-last tokens.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: Sequence[int]) -> None:
        super().__init__()
        if any(p not in (1, 2, 4) for p in patch_size):
            raise ValueError(f"patch_size entries must be 1, 2 or 4, got {tuple(patch_size)}.")
        s1 = tuple(min(2, p) for p in patch_size)
        s2 = tuple(p // s for p, s in zip(patch_size, s1))
        mid = embed_dim // 2
        self.unit1 = nn.Sequential(
            nn.Conv3d(in_channels, mid, 3, stride=s1, padding=1),
            nn.GELU(),
            ChannelLayerNorm3d(mid),
            nn.Conv3d(mid, mid, 3, padding=1),
            nn.GELU(),
            ChannelLayerNorm3d(mid),
        )
        self.unit2 = nn.Sequential(
            nn.Conv3d(mid, embed_dim, 3, stride=s2, padding=1),
            nn.GELU(),
            ChannelLayerNorm3d(embed_dim),
            nn.Conv3d(embed_dim, embed_dim, 3, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.unit2(self.unit1(x)).permute(0, 2, 3, 4, 1))


class PatchMerging3d(nn.Module):
    """GELU -> LayerNorm -> Conv(k2, s2): ``(B, X, Y, Z, C)`` -> ``(B, X/2, Y/2, Z/2, 2C)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim)
        self.reduction = nn.Conv3d(dim, 2 * dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(x)).permute(0, 4, 1, 2, 3)
        return self.reduction(x).permute(0, 2, 3, 4, 1)


class PatchExpand3d(nn.Module):
    """LayerNorm -> ConvTranspose(k2, s2): ``(B, X, Y, Z, 2C)`` -> ``(B, 2X, 2Y, 2Z, C)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.expand = nn.ConvTranspose3d(2 * dim, dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 4, 1, 2, 3)
        return self.expand(x).permute(0, 2, 3, 4, 1)
