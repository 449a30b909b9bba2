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

The memory mode is resolved once, in the network's constructor, into a frozen
:class:`~monai_fine.networks.blocks.memory_mode.MemoryMode` that stages and blocks receive; the forward never compares
mode strings, reads no tensor value
on the host and builds no mask: the memory masks are built once per network forward (:class:`MemoryContext`), the
window masks once per stage geometry and device (:func:`~monai_fine.networks.blocks.window.window_layout`), and a
stage hands its blocks a :class:`BlockContext`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from monai_fine.networks.blocks.attention import Attention, resolve_attn_mask
from monai_fine.networks.blocks.memory import SCAN_READS, CentredMemoryRead, cell_pool
from monai_fine.networks.blocks.memory_mode import MEMORY_CONFIGS, MemoryMode
from monai_fine.networks.blocks.mlp import Mlp
from monai_fine.networks.blocks.window import (
    WindowGeometry,
    relative_position_index,
    window_layout,
    window_partition,
    window_reverse,
)

__all__ = ["MemoryContext", "BlockContext", "FineBlock", "FineStage"]


class MemoryContext(NamedTuple):
    """What one network forward knows about the memory, built once and shared by all stages.

    ``V`` below is the memory size: cells x volume tokens per cell. All fields are None for a network without
    volume tokens (``"none"``, ``"window"``).

    Attributes:
        visible: ``(B, V)`` bool, volume tokens each crop's G-MSA sees: those of the cells it intersects, and, in
            ``"full"``, only of cells visited in training.
        write: ``(B, V, 1)`` float 0/1, volume tokens G-MSA may update (``"full"``: ``visible``).
        volume_keys: ``(1, 1, 1, V)`` bool, keys of V-MSA: the seen volume tokens, or all of them when no cell has
            been seen (so the softmax never runs over an empty set; ``volume_gate`` then cancels the update).
        volume_gate: ``()`` float, 1 when any cell has been seen, else 0 (V-MSA then has no effect and gives no
            gradient).
        scan_read: the :class:`~monai_fine.networks.blocks.memory.ScanSummary` this forward reads, or None.
        scan_write: the :class:`~monai_fine.networks.blocks.memory.ScanSummary` this forward writes (a scan-view
            pass of :py:meth:`~monai_fine.networks.FINE.write_scan_memory`), or None.
        scan_index: ``(B,)`` long, each sample's slot in the summary it reads or writes.
        roi_box: ``(B, 2, 3)`` the inputs' boxes on their device (None: the whole volume); a write pass pools the
            visual tokens into the cells by it.
    """

    visible: torch.Tensor | None = None
    write: torch.Tensor | None = None
    volume_keys: torch.Tensor | None = None
    volume_gate: torch.Tensor | None = None
    scan_read: object | None = None
    scan_write: object | None = None
    scan_index: torch.Tensor | None = None
    roi_box: torch.Tensor | None = None


class BlockContext(NamedTuple):
    """What a :class:`FineBlock` reads besides its tokens; prepared once per stage forward by :class:`FineStage`.

    Attributes:
        geom: the stage's :class:`~monai_fine.networks.blocks.window.WindowGeometry`.
        rel_index: ``(N, N)`` long index into the block's relative-position bias table.
        window_mask: ``(nW, 1, T + N, T + N)`` bool W-MSA mask of this block's (regular or shifted) windows, or None
            when nothing is masked.
        global_keys: ``(B, 1, 1, nW * T + V)`` bool G-MSA keys (all window tokens, the visible volume tokens), or
            None when every key is visible (no volume tokens).
        memory: the forward's :class:`MemoryContext` (V-MSA keys and gate, write mask).
    """

    geom: WindowGeometry
    rel_index: torch.Tensor
    window_mask: torch.Tensor | None = None
    global_keys: torch.Tensor | None = None
    memory: MemoryContext = MemoryContext()


class FineBlock(nn.Module):
    """One FINE block: [V-MSA] -> [G-MSA] -> (S)W-MSA -> MLP, by memory mode (see module docstring and
    :class:`~monai_fine.networks.blocks.memory_mode.MemoryMode`); the official code's G-MSA of ``"released"`` runs
    in all blocks of a stage but the last.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shifted: bool,
        mode: MemoryMode = MEMORY_CONFIGS["full"],
        last_in_stage: bool = False,
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
            mode: the memory configuration.
            last_in_stage: the last block of its stage (``"released"`` has no G-MSA there: its output would never
                be read).
            share_memory_attention: G-MSA and V-MSA reuse the W-MSA projections (own LayerNorms); otherwise each
                gets its own :class:`Attention`.
            mlp_ratio, qkv_bias, drop, attn_drop, drop_path: as in timm.
            use_flash_attention: see :class:`Attention`.
        """
        super().__init__()
        self.mode = mode
        self.shifted = shifted
        self.window_size = window_size
        self.num_heads = num_heads
        self.norm_window_tokens = mode.norm_window_tokens
        self.volume_attention = mode.volume_attention
        self.global_attention = mode.global_attention
        self.released_global_attention = mode.released_global_attention and not last_in_stage
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, use_flash_attention)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 3, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

        def memory_attention() -> Attention | None:
            return (
                None
                if share_memory_attention
                else Attention(dim, num_heads, qkv_bias, attn_drop, drop, use_flash_attention)
            )

        has_global = self.global_attention or self.released_global_attention
        self.norm_global = nn.LayerNorm(dim) if self.global_attention else None
        self.attn_global = memory_attention() if has_global else None
        self.norm_volume = nn.LayerNorm(dim) if self.volume_attention else None
        self.attn_volume = memory_attention() if self.volume_attention else None

    def _window_bias(self, rel_index: torch.Tensor, num_tokens: int) -> torch.Tensor:
        n = rel_index.shape[0]
        bias = self.relative_position_bias_table[rel_index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        if num_tokens:
            bias = F.pad(bias, (num_tokens, 0, num_tokens, 0))  # window tokens get no positional bias
        return bias.unsqueeze(0)  # (1, H, L, L)

    def window_attention(
        self, x: torch.Tensor, win: torch.Tensor | None, ctx: BlockContext
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(S)W-MSA over each window's ``[window tokens; visual tokens]``.

        Args:
            x: ``(B, X, Y, Z, C)`` visual tokens.
            win: ``(B, nW, T, C)`` window tokens or None.
            ctx: the stage's :class:`BlockContext`.
        """
        B, _, _, _, C = x.shape
        # normed before the partition: the norm's input is x itself, kept anyway for the residual (a norm of the
        # partitioned windows would keep one more x-sized tensor for its backward)
        T = 0 if win is None else win.shape[2]
        lead = None if win is None else (self.norm1(win) if self.norm_window_tokens else win)
        xw = window_partition(self.norm1(x), ctx.geom, self.shifted, lead)  # (B, nW, T + N, C)
        nW, L = xw.shape[1], xw.shape[2]
        attn_mask = resolve_attn_mask(self._window_bias(ctx.rel_index, T), ctx.window_mask)  # (1|nW, H, L, L)
        if attn_mask.shape[0] > 1:
            attn_mask = attn_mask.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(B * nW, *attn_mask.shape[1:])
        out = self.attn(xw.reshape(B * nW, L, C), attn_mask).reshape(B, nW, L, C)
        if win is None:
            return x + self.drop_path(window_reverse(out, ctx.geom, self.shifted)), None
        # split, not two slices: its backward is one concatenation (each slice's backward fills a zero tensor of
        # the whole output)
        win_out, x_out = out.split([T, L - T], dim=2)
        return x + self.drop_path(window_reverse(x_out, ctx.geom, self.shifted)), win + win_out

    def forward(
        self, x: torch.Tensor, win: torch.Tensor | None, vol: torch.Tensor | None, ctx: BlockContext
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """
        Args:
            x: ``(B, X, Y, Z, C)`` visual tokens.
            win: ``(B, nW, T, C)`` window tokens, or None (``"none"``).
            vol: ``(B, V, C)`` volume tokens, or None (``"none"``, ``"window"``).
            ctx: the :class:`BlockContext` its stage prepared.

        Returns:
            updated ``x``, ``win``, ``vol`` with the same shapes.
        """
        if self.volume_attention:  # V-MSA: all seen volume tokens (no effect while no cell has been seen)
            attn = self.attn_volume or self.attn
            mem = ctx.memory
            vol = vol + attn(self.norm_volume(vol), mem.volume_keys) * mem.volume_gate
        if self.global_attention:  # G-MSA: window tokens + intersecting volume tokens
            win, vol = self._global_attention(win, vol, ctx)
        x, win = self.window_attention(x, win, ctx)
        x, win = self._feed_forward(x, win)
        if self.released_global_attention:  # no norm, no residual: the output replaces the window tokens
            B, nW, T, C = win.shape
            seq = win.reshape(B, nW * T, C) if vol is None else torch.cat([win.reshape(B, nW * T, C), vol], dim=1)
            win = (self.attn_global or self.attn)(seq, ctx.global_keys)[:, : nW * T].reshape(B, nW, T, C)
        return x, win, vol

    def _feed_forward(self, x: torch.Tensor, win: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pre-norm residual MLP of the visual and the window tokens. Where the stage has fewer than ``8 C`` visual
        tokens (fewer values than the MLP has weights: the deep stages) both sets go through one call, so the weights
        are read, and their gradient made, once (there a second use of the weights costs more than its FLOPs); at the
        shallow stages two calls, which spare the copy of ``x`` that joining the sets would make."""
        if win is None:
            return x + self.drop_path(self.mlp(self.norm2(x))), None
        B, nW, T, C = win.shape
        n = x.shape[1] * x.shape[2] * x.shape[3]
        if int(n) >= 8 * int(C):  # many tokens, small weights (shallow stages): a copy of x would cost more
            return x + self.drop_path(self.mlp(self.norm2(x))), win + self.mlp(self.norm2(win))
        out = self.mlp(self.norm2(torch.cat([x.reshape(B, n, C), win.reshape(B, nW * T, C)], dim=1)))
        x_out, win_out = out.split([n, nW * T], dim=1)
        return x + self.drop_path(x_out.reshape(x.shape)), win + win_out.reshape(win.shape)

    def _global_attention(self, win, vol, ctx: BlockContext):
        B, nW, T, C = win.shape
        seq = win.reshape(B, nW * T, C)
        if vol is not None:
            seq = torch.cat([seq, vol], dim=1)
        out = (self.attn_global or self.attn)(self.norm_global(seq), ctx.global_keys)
        if vol is None:
            return win + out.reshape(B, nW, T, C), None
        win_out, vol_out = out.split([nW * T, vol.shape[1]], dim=1)
        return win + win_out.reshape(B, nW, T, C), vol + vol_out * ctx.memory.write


class FineStage(nn.Module):
    """A stage of ``depth`` FINE blocks (regular and shifted windows alternating) with its memory tokens.

    Parameters ``window_tokens`` ``(T, C)`` (shared by every window, as in the paper) and ``volume_tokens``
    ``(memory_size, C)`` (one row per cell and token, learned prior of that body region).

    Args:
        dim, depth, num_heads, window_size: stage channels, blocks, heads, window edge.
        mode: the memory configuration (:class:`~monai_fine.networks.blocks.memory_mode.MemoryMode`); with
            ``mode.scan_memory`` the stage has the memory encoder (LayerNorm, Linear, GELU, Linear) that turns what a
            scan memory holds for
            a cell (its mean visual token and position code) into that cell's volume-token offset, and whose mean
            over the cells is added to every visual token as the scan's context vector; without it the offset is
            what the memory holds and there is no context vector.
        scan_read: with ``mode.scan_memory``, how the crop reads the memory besides its volume tokens
            (:data:`~monai_fine.networks.blocks.memory.SCAN_READS`): ``"mean"``, the scan's context vector, or
            ``"centred"``, that plus the memory re-centred on the crop
            (:class:`~monai_fine.networks.blocks.memory.CentredMemoryRead`).
        memory_grid: memory cells per axis (the centred read's offsets).
        block_kwargs: passed to :class:`FineBlock`.

    Raises:
        ValueError: an unknown ``scan_read``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mode: MemoryMode,
        num_window_tokens: int,
        memory_size: int,
        drop_path: list[float],
        use_checkpoint: bool = False,
        scan_read: str = "mean",
        memory_grid: tuple[int, int, int] = (4, 4, 1),
        **block_kwargs,
    ) -> None:
        super().__init__()
        if scan_read not in SCAN_READS:
            raise ValueError(f"scan_read must be one of {SCAN_READS}, got {scan_read!r}.")
        self.mode = mode
        self.window_size = window_size
        self.use_checkpoint = use_checkpoint
        self.has_window_tokens = mode.window_tokens
        self.has_volume_tokens = mode.volume_tokens
        self.num_window_tokens = num_window_tokens if self.has_window_tokens else 0
        self.memory_size = memory_size if self.has_volume_tokens else 0
        self.window_tokens = nn.Parameter(torch.zeros(self.num_window_tokens, dim)) if self.num_window_tokens else None
        self.volume_tokens = nn.Parameter(torch.zeros(memory_size, dim)) if self.has_volume_tokens else None
        for p in (self.window_tokens, self.volume_tokens):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.memory_encoder = (
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            if mode.scan_memory and self.has_volume_tokens else None
        )  # fmt: skip
        self.scan_reader = (  # the memory seen from the crop
            CentredMemoryRead(dim, memory_grid) if self.memory_encoder is not None and scan_read == "centred" else None
        )
        self.blocks = nn.ModuleList(
            FineBlock(
                dim,
                num_heads,
                window_size,
                shifted=i % 2 == 1,
                mode=mode,
                last_in_stage=i == depth - 1,
                drop_path=drop_path[i],
                **block_kwargs,
            )
            for i in range(depth)
        )
        self.register_buffer(
            "relative_position_index", relative_position_index((window_size,) * 3, window_size), persistent=False
        )

    def read_scan_memory(
        self, summary, stage_index: int, scan_index: torch.Tensor, roi_box: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What this stage reads from a scan memory: the offset of its volume tokens, and the scan's context vector.

        Args:
            summary: the :class:`~monai_fine.networks.blocks.memory.ScanSummary` read.
            stage_index: this stage's slot in it.
            scan_index: ``(B,)`` each reading sample's slot.
            roi_box: ``(B, 2, 3)`` the reading crops' boxes (None: the whole volume), where ``scan_read="centred"``
                centres the memory.

        Returns:
            ``held (B, V, C)``, added to the volume tokens (the memory encoder's output for written cells; without an
            encoder, what the memory holds), and ``context (B, C)`` the mean encoded written cell, added to every
            visual token (None without an encoder), plus with ``scan_read="centred"`` the centred read.
        """
        held = summary.read(stage_index, scan_index)
        if self.memory_encoder is None:
            return held, None
        written = summary.written(stage_index, scan_index)
        held = self.memory_encoder(held) * written
        context = held.sum(1) / written.sum(1).clamp(min=1.0)
        if self.scan_reader is not None:
            context = context + self.scan_reader(held, written, roi_box)
        return held, context

    def forward(self, x: torch.Tensor, ctx: MemoryContext, stage_index: int) -> torch.Tensor:
        """
        Args:
            x: ``(B, X, Y, Z, C)`` visual tokens.
            ctx: the forward's :class:`MemoryContext`.
            stage_index: this stage's slot in the scan summary it reads or writes.

        Returns:
            ``(B, X, Y, Z, C)``.
        """
        B, X, Y, Z, _ = x.shape
        # static sizes (under torch.jit.trace the shape entries are traced values; the layout is per size anyway)
        layout = window_layout((int(X), int(Y), int(Z)), self.window_size, self.num_window_tokens, x.device)
        geom = layout.geom
        rel_index = self.relative_position_index if geom.window == (self.window_size,) * 3 else layout.rel_index
        win = vol = global_keys = None
        if self.window_tokens is not None:
            win = self.window_tokens.expand(B, geom.num_windows, -1, -1)
        if self.volume_tokens is not None:
            vol = self.volume_tokens.expand(B, -1, -1)
            if ctx.scan_read is not None:
                held, context = self.read_scan_memory(ctx.scan_read, stage_index, ctx.scan_index, ctx.roi_box)
                if context is not None:  # the scan's context vector reaches every visual token directly
                    x = x + context[:, None, None, None, :]
                vol = vol + held
            window_keys = torch.ones(B, geom.num_windows * self.num_window_tokens, dtype=torch.bool, device=x.device)
            global_keys = torch.cat([window_keys, ctx.visible], 1).view(B, 1, 1, -1)
        contexts = [BlockContext(geom, rel_index, mask, global_keys, ctx) for mask in layout.masks]
        for blk in self.blocks:
            block_ctx = contexts[1] if blk.shifted else contexts[0]
            if self.use_checkpoint and self.training:
                x, win, vol = checkpoint(blk, x, win, vol, block_ctx, use_reentrant=False)
            else:
                x, win, vol = blk(x, win, vol, block_ctx)
        if vol is not None and ctx.scan_write is not None:
            sums, counts = cell_pool(x, ctx.roi_box, ctx.scan_write.grid, ctx.scan_write.tokens_per_cell)
            ctx.scan_write.add(stage_index, ctx.scan_index, sums, counts)
        return x
