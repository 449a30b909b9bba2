# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Patch embedding, merging (down) and expanding (up) for channels-last 3D token grids (nnFormer style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from monai_fine.config import is_eager

__all__ = [
    "ChannelLayerNorm3d", "Conv3d", "PatchEmbed3d", "PatchMerging3d", "PatchExpand3d", "expand_2x2x2", "merge_2x2x2",
]  # fmt: skip


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose eager CPU float32 forward of a single sample runs oneDNN's kernel, as a batch of two does.

    PyTorch's CPU backend choice (``ConvParams::use_mkldnn``) sends an input of batch 1 with fewer than 20480 values
    in its first four dimensions (a rule made for 2D images) to its native ``slow_conv3d``: at the demo's size that
    is every convolution of the scan view's write pass (one view, batch 1), whose 12-channel convolutions then take
    1.6 to 1.8 x the time of oneDNN's, forward and backward (2 threads). The same arithmetic; the parameters, the
    state dict and every other path (other devices and dtypes, autocast, tracing, scripting, ``torch.compile`` and
    ``torch.export``, a dispatch mode such as ``FlopCounterMode``, larger batches) are ``nn.Conv3d``'s own.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            input.device.type == "cpu" and _onednn_eager()  # first: a tracer never sees the shape test
            and input.dim() == 5 and input.shape[0] == 1 and input.dtype == torch.float32
            and weight.dtype == torch.float32 and self.padding_mode == "zeros" and not isinstance(self.padding, str)
        ):  # fmt: skip
            return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)


def _onednn_eager() -> bool:
    """oneDNN is there and enabled, and this is a plain eager call: no tracer, scripting, compiler, CPU autocast or
    dispatch mode (``FlopCounterMode`` and other op counters see the ``aten.convolution`` they know)."""
    return (  # is_eager first: a compiler or tracer reads no further
        is_eager()
        and _get_current_dispatch_mode() is None
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


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
            Conv3d(in_channels, mid, 3, stride=s1, padding=1),
            nn.GELU(),
            ChannelLayerNorm3d(mid),
            Conv3d(mid, mid, 3, padding=1),
            nn.GELU(),
            ChannelLayerNorm3d(mid),
        )
        self.unit2 = nn.Sequential(
            Conv3d(mid, embed_dim, 3, stride=s2, padding=1),
            nn.GELU(),
            ChannelLayerNorm3d(embed_dim),
            Conv3d(embed_dim, embed_dim, 3, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.unit2(self.unit1(x)).permute(0, 2, 3, 4, 1))


class PatchMerging3d(nn.Module):
    """GELU -> LayerNorm -> Conv(k2, s2): ``(B, X, Y, Z, C)`` -> ``(B, X/2, Y/2, Z/2, 2C)``.

    The convolution is computed as what it is on channels-last tokens, one matmul of each 2x2x2 block's ``8C``
    values (:func:`merge_2x2x2`), with the parameters of ``reduction`` (a ``Conv3d``: the state dict is a
    convolution's). Its kernel equals its stride, so no block overlaps another.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim)
        self.reduction = Conv3d(dim, 2 * dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return merge_2x2x2(self.norm(self.act(x)), self.reduction.weight, self.reduction.bias)


class PatchExpand3d(nn.Module):
    """LayerNorm -> ConvTranspose(k2, s2): ``(B, X, Y, Z, 2C)`` -> ``(B, 2X, 2Y, 2Z, C)``.

    The transposed convolution as one matmul per token into its 2x2x2 block of outputs (:func:`expand_2x2x2`),
    with the parameters of ``expand`` (a ``ConvTranspose3d``: the state dict is a convolution's).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.expand = nn.ConvTranspose3d(2 * dim, dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return expand_2x2x2(self.norm(x), self.expand.weight, self.expand.bias)


def merge_2x2x2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv3d(kernel 2, stride 2)`` of channels-last ``x`` ``(B, X, Y, Z, C)`` with a ``(O, C, 2, 2, 2)`` weight,
    as a matmul of the 2x2x2 blocks: ``(B, X // 2, Y // 2, Z // 2, O)``, channels-last.

    The same sums as the convolution (an odd trailing slice is dropped, as the convolution drops it), without its
    two layout changes and on the matmul's kernel instead of the convolution's (``docs/benchmarks.md``, "How near the
    machine", for what it saves).
    """
    nx, ny, nz = (s // 2 for s in x.shape[1:4])
    c, o = x.shape[-1], weight.shape[0]
    blocks = x[:, : 2 * nx, : 2 * ny, : 2 * nz].reshape(-1, nx, 2, ny, 2, nz, 2, c)
    blocks = blocks.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, nx, ny, nz, 8 * c)
    return F.linear(blocks, weight.permute(0, 2, 3, 4, 1).reshape(o, 8 * c), bias)


def expand_2x2x2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv_transpose3d(kernel 2, stride 2)`` of channels-last ``x`` ``(B, X, Y, Z, C)`` with a ``(C, O, 2, 2, 2)``
    weight, as one matmul per token into its 2x2x2 block of outputs: ``(B, 2X, 2Y, 2Z, O)``, channels-last."""
    nx, ny, nz = x.shape[1:4]
    c, o = weight.shape[:2]
    out = F.linear(x, weight.permute(2, 3, 4, 1, 0).reshape(8 * o, c), None if bias is None else bias.repeat(8))
    out = out.reshape(-1, nx, ny, nz, 2, 2, 2, o).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return out.reshape(-1, 2 * nx, 2 * ny, 2 * nz, o)
