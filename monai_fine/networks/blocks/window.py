# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""3D (shifted) window geometry: partition, relative-position index and attention masks.

Tensors are channels-last, ``(B, X, Y, Z, C)``. A window never exceeds the stage resolution: along an axis whose
resolution is at most ``window_size`` the window covers the whole axis and is not shifted (Swin convention). Other
axes are padded at the far end to a multiple of the window; padded positions are masked as keys.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "WindowGeometry",
    "window_geometry",
    "relative_position_index",
    "window_partition",
    "window_reverse",
    "window_attention_mask",
    "WindowLayout",
    "window_layout",
]


class WindowGeometry(NamedTuple):
    """Window layout of one stage."""

    window: tuple[int, int, int]  # effective window size per axis
    shift: tuple[int, int, int]  # cyclic shift per axis of shifted blocks
    pad: tuple[int, int, int]  # padding added at the far end per axis
    grid: tuple[int, int, int]  # number of windows per axis

    @property
    def num_windows(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def window_volume(self) -> int:
        return self.window[0] * self.window[1] * self.window[2]


def window_geometry(resolution: tuple[int, int, int], window_size: int) -> WindowGeometry:
    """Effective window, shift, padding and window grid for a stage of spatial size ``resolution``."""
    window = tuple(min(window_size, r) for r in resolution)
    shift = tuple(0 if r <= window_size else window_size // 2 for r in resolution)
    pad = tuple((-r) % w for r, w in zip(resolution, window))
    grid = tuple((r + p) // w for r, p, w in zip(resolution, pad, window))
    return WindowGeometry(window, shift, pad, grid)  # type: ignore[arg-type]


def relative_position_index(window: tuple[int, int, int], window_size: int) -> torch.Tensor:
    """Index into a ``((2w-1)^3, heads)`` bias table for every (query, key) pair of a window.

    Offsets ``d = p_query - p_key`` lie in ``[-(w-1), w-1]`` per axis and map to
    ``(dx + w-1) (2w-1)^2 + (dy + w-1) (2w-1) + (dz + w-1)``: one table row per distinct offset (nnFormer's index
    used strides ``3w-1`` and ``2w-1`` instead, so different offsets shared rows).

    Returns:
        ``(N, N)`` long tensor, ``N = prod(window)``.
    """
    side = 2 * window_size - 1
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (3, N, N)
    return rel[0] * side * side + rel[1] * side + rel[2]


def window_partition(
    x: torch.Tensor, geom: WindowGeometry, shifted: bool, lead: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, X, Y, Z, C)`` -> ``(B, nW, N, C)`` windows (padded at the far end, rolled by ``-shift`` if shifted).

    With ``lead`` ``(B, nW, T, C)`` (the window tokens): ``(B, nW, T + N, C)``, each window's ``lead`` tokens in front
    of its visual tokens, written in one copy (``torch.cat`` of the partitioned windows would copy them twice)."""
    B, _, _, _, C = x.shape
    if any(geom.pad):
        x = F.pad(x, (0, 0, 0, geom.pad[2], 0, geom.pad[1], 0, geom.pad[0]))
    if shifted and any(geom.shift):
        x = torch.roll(x, shifts=tuple(-s for s in geom.shift), dims=(1, 2, 3))
    (gx, gy, gz), (wx, wy, wz) = geom.grid, geom.window
    x = x.reshape(B, gx, wx, gy, wy, gz, wz, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
    if lead is None:
        return x.reshape(B, gx * gy * gz, wx * wy * wz, C)
    if torch.onnx.is_in_onnx_export():  # the TorchScript-based exporter gets the writes into slices wrong
        return torch.cat([lead, x.reshape(B, gx * gy * gz, wx * wy * wz, C)], dim=2)
    T = lead.shape[2]
    out = x.new_empty(B, gx * gy * gz, T + wx * wy * wz, C)
    out[:, :, :T] = lead
    out[:, :, T:].view(B, gx, gy, gz, wx, wy, wz, C).copy_(x)
    return out


def window_reverse(windows: torch.Tensor, geom: WindowGeometry, shifted: bool) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, nW, N, C)`` -> ``(B, X, Y, Z, C)``."""
    B, _, _, C = windows.shape
    (gx, gy, gz), (wx, wy, wz) = geom.grid, geom.window
    x = (
        windows.reshape(B, gx, gy, gz, wx, wy, wz, C)
        .permute(0, 1, 4, 2, 5, 3, 6, 7)
        .reshape(B, gx * wx, gy * wy, gz * wz, C)
    )
    if shifted and any(geom.shift):
        x = torch.roll(x, shifts=geom.shift, dims=(1, 2, 3))
    if any(geom.pad):
        x = x[:, : x.shape[1] - geom.pad[0], : x.shape[2] - geom.pad[1], : x.shape[3] - geom.pad[2]]
    return x


def _window_mask_numpy(geom: WindowGeometry, shifted: bool, num_tokens: int) -> np.ndarray | None:
    """The mask of :func:`window_attention_mask` built in numpy, so tracing and compiling see a constant."""
    do_shift = shifted and any(geom.shift)
    if not do_shift and not any(geom.pad):
        return None
    padded = tuple(g * w for g, w in zip(geom.grid, geom.window))
    region = np.zeros(padded, dtype=np.int64)
    if do_shift:
        label = 0
        axes = []
        for n, w, s in zip(padded, geom.window, geom.shift):
            axes.append((slice(0, n - w), slice(n - w, n - s), slice(n - s, n)) if s else (slice(0, n),))
        for sx in axes[0]:
            for sy in axes[1]:
                for sz in axes[2]:
                    region[sx, sy, sz] = label
                    label += 1
    valid = np.zeros(padded, dtype=bool)
    valid[: padded[0] - geom.pad[0], : padded[1] - geom.pad[1], : padded[2] - geom.pad[2]] = True
    if do_shift:
        valid = np.roll(valid, shift=tuple(-s for s in geom.shift), axis=(0, 1, 2))

    def partition(a: np.ndarray) -> np.ndarray:  # (X, Y, Z) -> (nW, N), as window_partition
        (gx, gy, gz), (wx, wy, wz) = geom.grid, geom.window
        return a.reshape(gx, wx, gy, wy, gz, wz).transpose(0, 2, 4, 1, 3, 5).reshape(gx * gy * gz, wx * wy * wz)

    region_w, valid_w = partition(region), partition(valid)
    n = geom.window_volume
    allowed = ((region_w[:, :, None] == region_w[:, None, :]) & valid_w[:, None, :]) | np.eye(n, dtype=bool)
    if num_tokens:
        full = np.ones((geom.num_windows, num_tokens + n, num_tokens + n), dtype=bool)
        full[:, num_tokens:, num_tokens:] = allowed
        full[:, :num_tokens, num_tokens:] = valid_w[:, None, :]
        allowed = full
    return np.ascontiguousarray(allowed[:, None])  # (nW, 1, L, L)


class WindowLayout(NamedTuple):
    """Everything a stage's blocks need about its windows, built once per (resolution, device) and cached.

    Attributes:
        geom: the :class:`WindowGeometry`.
        rel_index: ``(N, N)`` long relative-position index on the device.
        masks: ``(regular, shifted)`` bool masks ``(nW, 1, T + N, T + N)`` or None, see
            :func:`window_attention_mask`.
    """

    geom: WindowGeometry
    rel_index: torch.Tensor
    masks: tuple[torch.Tensor | None, torch.Tensor | None]


_LAYOUTS: dict[tuple, WindowLayout] = {}
_MAX_LAYOUTS = 256


def _build_layout(resolution: tuple[int, int, int], window_size: int, num_tokens: int, device) -> WindowLayout:
    geom = window_geometry(resolution, window_size)
    rel_index = relative_position_index(geom.window, window_size).to(device)
    masks = []
    for shifted in (False, True):
        m = _window_mask_numpy(geom, shifted, num_tokens)
        masks.append(None if m is None else torch.from_numpy(m).to(device))
    return WindowLayout(geom, rel_index, (masks[0], masks[1]))


def window_layout(
    resolution: tuple[int, int, int], window_size: int, num_tokens: int, device: torch.device
) -> WindowLayout:
    """The :class:`WindowLayout` of a stage of spatial size ``resolution``, cached per device.

    In eager mode the tensors are built once per ``(resolution, window_size, num_tokens, device)`` and reused by
    every later forward (no mask building or host-to-device copy per forward). ``torch.compile`` reads cached
    tensors as graph inputs; a layout first built while compiling is traced into that graph once (numpy ops that
    ``torch.jit.trace`` records as constants).
    """
    key = (tuple(resolution), window_size, num_tokens, torch.device(device))
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        # built outside any torch.jit.trace, so that a trace reads the layout as constants whether or not it was
        # cached before (the trace checker of ``monai.bundle ckpt_export --use_trace`` retraces and compares graphs)
        tracing_state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            layout = _LAYOUTS[key] = _build_layout(resolution, window_size, num_tokens, device)
        finally:
            torch._C._set_tracing_state(tracing_state)
    return layout


def window_attention_mask(
    geom: WindowGeometry, shifted: bool, num_tokens: int, device: torch.device
) -> torch.Tensor | None:
    """Bool mask ``(nW, 1, T + N, T + N)`` (True = may attend) of window attention, or None when nothing is masked.

    Visual tokens attend to tokens of their own shift region that are not padding, and always to themselves;
    the ``T`` window tokens in front are visible to every token of their window and see its non-padded tokens.
    """
    mask = _window_mask_numpy(geom, shifted, num_tokens)
    return None if mask is None else torch.from_numpy(mask).to(device)
