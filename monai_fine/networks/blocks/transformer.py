# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""FINE transformer block and stage: window attention with window tokens, plus the volume-token memory.

Token sets of a stage (B samples, channels C):

- visual tokens ``x``: ``(B, X, Y, Z, C)``, attended in (shifted) windows of ``N`` tokens (W-MSA);
- window tokens ``win``: ``(B, nW, T, C)``, ``T`` per window, joined to their window's sequence in W-MSA and all
  attending to each other in G-MSA;
- volume tokens ``vol``: ``(B, V, C)``, ``V = cells x tokens per cell`` over the whole volume; those of the cells the
  crop intersects join G-MSA, and all seen ones attend to each other in V-MSA.

Order of one ``"full"`` block (read memory, then write it): V-MSA -> G-MSA -> W-MSA -> MLP, every attention pre-norm
with a residual. V-MSA mixes the whole volume's memory into the intersecting cells, G-MSA hands it to the window
tokens, W-MSA hands it to the visual tokens; so a volume token anywhere in the volume reaches the crop's pixels
inside one block. ``docs/design.md`` explains the choice.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from monai_fine.networks.blocks.attention import Attention, resolve_attn_mask
from monai_fine.networks.blocks.mlp import Mlp
from monai_fine.networks.blocks.window import (
    WindowGeometry,
    relative_position_index,
    window_attention_mask,
    window_geometry,
    window_partition,
    window_reverse,
)

__all__ = ["MEMORY_MODES", "MemoryContext", "FineBlock", "FineStage"]

MEMORY_MODES = ("none", "window", "released", "full")


class MemoryContext(NamedTuple):
    """What one forward pass knows about the memory, shared by all stages.

    Attributes:
        intersect: ``(B, V)`` bool, volume tokens of the cells each crop intersects.
        seen: ``(V,)`` bool, volume tokens of cells visited in training (unseen ones are masked).
        scan_memory: a :class:`~monai_fine.networks.blocks.memory.ScanMemory` or None.
        scan_index: ``(B,)`` long, each sample's slot in ``scan_memory``.
    """

    intersect: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    scan_memory: object | None = None
    scan_index: torch.Tensor | None = None


class _BlockMasks(NamedTuple):
    window: torch.Tensor | None  # (nW, 1, L, L) bool or None
    volume_keys: torch.Tensor | None  # (1, 1, 1, V) bool, or None when every token may be attended
    run_volume_attention: bool
    global_keys: torch.Tensor | None  # (B, 1, 1, nW*T + V) bool or None
    write: torch.Tensor | None  # (B, V, 1) float 0/1: volume tokens G-MSA may update


class FineBlock(nn.Module):
    """One FINE block: [V-MSA] -> [G-MSA] -> (S)W-MSA -> MLP, by memory mode (see module docstring)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shifted: bool,
        memory: str = "full",
        global_attention: bool = True,
        share_memory_attention: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        use_flash_attention: bool | None = None,
    ) -> None:
        """
        Args:
            dim: channels.
            num_heads: attention heads.
            window_size: nominal window edge ``w`` (bias table ``(2w-1)^3``).
            shifted: shifted-window block (cyclic shift ``w // 2``).
            memory: ``"none"``, ``"window"``, ``"released"`` or ``"full"``.
            global_attention: build the G-MSA (``"released"`` drops it in the last block of a stage, where its
                output would never be read).
            share_memory_attention: G-MSA and V-MSA reuse the W-MSA projections (own LayerNorms); otherwise each
                gets its own :class:`Attention`.
            mlp_ratio, qkv_bias, drop, attn_drop, drop_path: as in timm.
            use_flash_attention: see :class:`Attention`.
        """
        super().__init__()
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}.")
        self.memory = memory
        self.shifted = shifted
        self.window_size = window_size
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, use_flash_attention)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 3, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

        def memory_attention() -> Attention | None:
            return None if share_memory_attention else Attention(dim, num_heads, qkv_bias, attn_drop, drop, use_flash_attention)

        self.has_global = memory in ("window", "full") or (memory == "released" and global_attention)
        # "released" runs G-MSA without pre-norm or residual, as the official code does.
        self.norm_global = nn.LayerNorm(dim) if memory in ("window", "full") else None
        self.attn_global = memory_attention() if self.has_global else None
        self.norm_volume = nn.LayerNorm(dim) if memory == "full" else None
        self.attn_volume = memory_attention() if memory == "full" else None

    def _window_bias(self, rel_index: torch.Tensor, num_tokens: int) -> torch.Tensor:
        n = rel_index.shape[0]
        bias = self.relative_position_bias_table[rel_index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        if num_tokens:
            bias = F.pad(bias, (num_tokens, 0, num_tokens, 0))  # window tokens get no positional bias
        return bias.unsqueeze(0)  # (1, H, L, L)

    def window_attention(
        self, x: torch.Tensor, win: torch.Tensor | None, geom: WindowGeometry, rel_index: torch.Tensor, mask
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(S)W-MSA over each window's ``[window tokens; visual tokens]``.

        Args:
            x: ``(B, X, Y, Z, C)`` visual tokens.
            win: ``(B, nW, T, C)`` window tokens or None.
        """
        B, _, _, _, C = x.shape
        xw = window_partition(self.norm1(x), geom, self.shifted)  # (B, nW, N, C)
        T = 0 if win is None else win.shape[2]
        if T:
            tokens = win if self.memory == "released" else self.norm1(win)
            xw = torch.cat([tokens, xw], dim=2)
        nW, L = xw.shape[1], xw.shape[2]
        attn_mask = resolve_attn_mask(self._window_bias(rel_index, T), mask)  # (1|nW, H, L, L)
        if attn_mask.shape[0] > 1:
            attn_mask = attn_mask.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(B * nW, *attn_mask.shape[1:])
        out = self.attn(xw.reshape(B * nW, L, C), attn_mask).reshape(B, nW, L, C)
        x = x + self.drop_path(window_reverse(out[:, :, T:], geom, self.shifted))
        if T:
            win = win + out[:, :, :T]
        return x, win

    def forward(
        self,
        x: torch.Tensor,
        win: torch.Tensor | None,
        vol: torch.Tensor | None,
        geom: WindowGeometry,
        rel_index: torch.Tensor,
        masks: _BlockMasks,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """
        Args:
            x: ``(B, X, Y, Z, C)`` visual tokens.
            win: ``(B, nW, T, C)`` window tokens, or None (``"none"``).
            vol: ``(B, V, C)`` volume tokens, or None (``"none"``, ``"window"``).
            geom, rel_index, masks: prepared once per stage by :class:`FineStage`.

        Returns:
            updated ``x``, ``win``, ``vol`` with the same shapes.
        """
        if self.memory == "full" and masks.run_volume_attention:  # V-MSA: all seen volume tokens
            attn = self.attn_volume or self.attn
            vol = vol + attn(self.norm_volume(vol), masks.volume_keys)
        if self.has_global and self.memory != "released":  # G-MSA: window tokens + intersecting volume tokens
            win, vol = self._global_attention(win, vol, masks)
        x, win = self.window_attention(x, win, geom, rel_index, masks.window)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if win is not None:
            win = win + self.mlp(self.norm2(win))
        if self.has_global and self.memory == "released":
            win, vol = self._global_attention(win, vol, masks)
        return x, win, vol

    def _global_attention(self, win, vol, masks: _BlockMasks):
        B, nW, T, C = win.shape
        seq = win.reshape(B, nW * T, C)
        if vol is not None:
            seq = torch.cat([seq, vol], dim=1)
        attn = self.attn_global or self.attn
        if self.memory == "released":  # no norm, no residual: the output replaces the window tokens
            out = attn(seq, masks.global_keys)
            return out[:, : nW * T].reshape(B, nW, T, C), vol
        out = attn(self.norm_global(seq), masks.global_keys)
        win = win + out[:, : nW * T].reshape(B, nW, T, C)
        if vol is not None:
            vol = vol + out[:, nW * T :] * masks.write
        return win, vol


class FineStage(nn.Module):
    """A stage of ``depth`` FINE blocks (regular and shifted windows alternating) with its memory tokens.

    Parameters ``window_tokens`` ``(T, C)`` (shared by every window, as in the paper) and ``volume_tokens``
    ``(V, C)`` (one row per cell and token, learned prior of that body region).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        memory: str,
        num_window_tokens: int,
        num_volume_tokens: int,
        drop_path: list[float],
        use_checkpoint: bool = False,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.memory = memory
        self.window_size = window_size
        self.use_checkpoint = use_checkpoint
        self.num_window_tokens = num_window_tokens if memory != "none" else 0
        uses_volume = memory in ("released", "full")
        self.window_tokens = nn.Parameter(torch.zeros(self.num_window_tokens, dim)) if self.num_window_tokens else None
        self.volume_tokens = nn.Parameter(torch.zeros(num_volume_tokens, dim)) if uses_volume else None
        for p in (self.window_tokens, self.volume_tokens):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.blocks = nn.ModuleList(
            FineBlock(
                dim,
                num_heads,
                window_size,
                shifted=i % 2 == 1,
                memory=memory,
                global_attention=not (memory == "released" and i == depth - 1),
                drop_path=drop_path[i],
                **block_kwargs,
            )
            for i in range(depth)
        )
        self.register_buffer(
            "relative_position_index", relative_position_index((window_size,) * 3, window_size), persistent=False
        )

    def _memory_masks(self, B: int, geom: WindowGeometry, ctx: MemoryContext, device) -> _BlockMasks:
        """The memory part of the masks (the same for regular and shifted blocks); ``window`` is left None."""
        T = self.num_window_tokens
        if self.volume_tokens is None:
            return _BlockMasks(None, None, False, None, None)
        intersect = ctx.intersect.to(device)
        if self.memory == "released":
            visible = intersect
            volume_keys, run_volume, write = None, False, None
        else:
            seen = ctx.seen.to(device)
            visible = intersect & seen
            run_volume = bool(seen.any())
            volume_keys = None if bool(seen.all()) else seen.view(1, 1, 1, -1)
            write = visible.to(self.volume_tokens.dtype).unsqueeze(-1)
        global_keys = torch.cat([torch.ones(B, geom.num_windows * T, dtype=torch.bool, device=device), visible], 1)
        return _BlockMasks(None, volume_keys, run_volume, global_keys.view(B, 1, 1, -1), write)

    def forward(self, x: torch.Tensor, ctx: MemoryContext, stage_index: int) -> torch.Tensor:
        """
        Args:
            x: ``(B, X, Y, Z, C)`` visual tokens.
            ctx: the forward's :class:`MemoryContext`.
            stage_index: this stage's slot in ``ctx.scan_memory``.

        Returns:
            ``(B, X, Y, Z, C)``.
        """
        B, X, Y, Z, C = x.shape
        geom = window_geometry((X, Y, Z), self.window_size)
        if geom.window == (self.window_size,) * 3:
            rel_index = self.relative_position_index
        else:
            rel_index = relative_position_index(geom.window, self.window_size).to(x.device)
        win = None
        if self.window_tokens is not None:
            win = self.window_tokens.expand(B, geom.num_windows, -1, -1)
        vol = vol_start = None
        if self.volume_tokens is not None:
            vol = vol_start = self.volume_tokens.expand(B, -1, -1)
            memory = ctx.scan_memory
            if memory is not None and memory.mode == "read":
                vol = vol_start = vol + memory.read(stage_index, ctx.scan_index)
        memory_masks = self._memory_masks(B, geom, ctx, x.device)
        masks = [
            memory_masks._replace(window=window_attention_mask(geom, s, self.num_window_tokens, x.device))
            for s in (False, True)
        ]
        for blk in self.blocks:
            args = (x, win, vol, geom, rel_index, masks[int(blk.shifted)])
            if self.use_checkpoint and self.training:
                x, win, vol = checkpoint(blk, *args, use_reentrant=False)
            else:
                x, win, vol = blk(*args)
        memory = ctx.scan_memory
        if vol is not None and memory is not None and memory.mode == "write":
            memory.write(stage_index, ctx.scan_index, vol - vol_start, masks[0].write[..., 0] > 0)
        return x
