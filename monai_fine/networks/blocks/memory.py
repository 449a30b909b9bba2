# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Volume-token memory: which grid cells a crop intersects, and what the per-scan memory holds (:class:`ScanSummary`).

The volume is divided into a grid of ``memory_grid = (gx, gy, gz)`` cells over the preprocessed full volume, cell
``(i, j, k)`` covering ``[i/gx, (i+1)/gx) x [j/gy, (j+1)/gy) x [k/gz, (k+1)/gz)`` in volume fractions. Cells are
flattened x-major: ``index = (i * gy + j) * gz + k``. A crop's location is its ``roi_box``, a ``(2, 3)`` array of
``[start, stop)`` fractions per axis (see ``monai_fine.transforms.CropLocationd``).

Everything here that runs inside the network's forward works on the tensors' own device with no host
synchronisation; the value checks (:func:`check_roi_box`, :meth:`ScanSummary.check_index`) read values on the host and
are called where boxes and scan indices are produced or received, not in the compiled or exported graph.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "check_roi_box",
    "intersecting_cells",
    "cell_pool",
    "cell_position_encoding",
    "SCAN_READS",
    "CentredMemoryRead",
    "ScanSummary",
]

#: How a crop reads its scan's memory besides its volume tokens: ``"mean"`` (the mean encoded cell, the scan's context
#: vector) or ``"centred"`` (that, plus :class:`CentredMemoryRead`: the memory seen from the crop).
SCAN_READS = ("mean", "centred")

_EPS = 1e-6  # overlaps shorter than this (in cell widths) do not count


def _check_roi_box_shape(roi_box: torch.Tensor) -> None:
    if roi_box.ndim != 3 or tuple(roi_box.shape[1:]) != (2, 3):
        raise ValueError(
            f"roi_box must have shape (B, 2, 3) ([start, stop) per spatial axis), got {tuple(roi_box.shape)}."
        )


def check_roi_box(roi_box: torch.Tensor) -> torch.Tensor:
    """Validate ``roi_box`` values on the host: shape ``(B, 2, 3)``, finite, ``stop > start`` along every axis.

    This reads the values (a device-to-host copy for a GPU tensor), so the network's forward calls it only in eager
    mode for boxes that are on the CPU (where it costs no synchronisation); call it yourself where GPU boxes are made.

    Returns:
        ``roi_box`` as a tensor, unchanged.

    Raises:
        ValueError: wrong shape, non-finite values, or ``stop <= start``, naming the values.
    """
    roi_box = torch.as_tensor(roi_box)
    _check_roi_box_shape(roi_box)
    if not torch.isfinite(roi_box).all():
        raise ValueError(f"roi_box has non-finite values: {roi_box.tolist()}.")
    if (roi_box[:, 1] <= roi_box[:, 0]).any():
        raise ValueError(f"roi_box needs stop > start along every axis, got {roi_box.tolist()}.")
    return roi_box


def intersecting_cells(
    roi_box: torch.Tensor | None,
    grid: Sequence[int],
    batch_size: int = 1,
    validate: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``(B, gx * gy * gz)`` mask of the memory cells each crop intersects, on the box's device.

    A cell intersects a crop when their overlap is longer than ``1e-6`` cell widths along every axis (so a box that
    ends exactly on a cell border, up to float rounding, does not reach into the next cell). The box is clamped to
    the volume, so parts covering padding (outside ``[0, 1]``) add no cells; a box lying entirely outside the volume
    along an axis maps to the nearest border cell of that axis (clamping, not wrapping around). The arithmetic runs
    in float64 on the box's device (float32 on devices without float64, such as MPS), without host synchronisation
    when ``validate=False``.

    Args:
        roi_box: ``(B, 2, 3)`` ``[start, stop)`` fractions, or None for "the whole volume" (every cell).
        grid: cells per axis ``(gx, gy, gz)``.
        batch_size: B, used when ``roi_box`` is None.
        validate: check the values with :func:`check_roi_box` first (reads them on the host).
        device: where to build the all-cells mask when ``roi_box`` is None (default CPU).

    Raises:
        ValueError: wrong shape; with ``validate``, non-finite values or ``stop <= start``.
    """
    gx, gy, gz = (int(g) for g in grid)
    if roi_box is None:
        return torch.ones(batch_size, gx * gy * gz, dtype=torch.bool, device=device)
    roi_box = torch.as_tensor(roi_box)
    if validate:
        check_roi_box(roi_box)
    else:
        _check_roi_box_shape(roi_box)
    dtype = torch.float32 if roi_box.device.type == "mps" else torch.float64
    box = roi_box.detach().to(dtype)
    per_axis = []
    for axis, g in enumerate((gx, gy, gz)):
        start, stop = box[:, 0, axis] * g, box[:, 1, axis] * g
        lo = torch.floor(start + _EPS).clamp(0, g - 1)
        hi = (torch.ceil(stop - _EPS) - 1).clamp(0, g - 1)
        hi = torch.maximum(hi, lo)
        cells = torch.arange(g, dtype=dtype, device=box.device)
        per_axis.append((cells[None] >= lo[:, None]) & (cells[None] <= hi[:, None]))  # (B, g)
    mask = per_axis[0][:, :, None, None] & per_axis[1][:, None, :, None] & per_axis[2][:, None, None, :]
    return mask.reshape(box.shape[0], gx * gy * gz)


def _axis_weights(lo: torch.Tensor, hi: torch.Tensor, n: int, g: int) -> torch.Tensor:
    """``(B, g, n)``: the fraction of token ``t`` (of ``n`` spanning ``[lo, hi)``) that lies in cell ``c`` (of ``g``
    spanning ``[0, 1)``)."""
    edges = torch.arange(n + 1, dtype=lo.dtype, device=lo.device) / n
    t_lo = lo[:, None] + edges[None, :-1] * (hi - lo)[:, None]  # (B, n)
    t_hi = lo[:, None] + edges[None, 1:] * (hi - lo)[:, None]
    cells = torch.arange(g + 1, dtype=lo.dtype, device=lo.device) / g
    c_lo, c_hi = cells[:-1], cells[1:]  # (g,)
    overlap = torch.minimum(t_hi[:, None, :], c_hi[None, :, None]) - torch.maximum(
        t_lo[:, None, :], c_lo[None, :, None]
    )
    return overlap.clamp(min=0) / (t_hi - t_lo)[:, None, :]


def cell_pool(
    x: torch.Tensor, roi_box: torch.Tensor | None, grid: Sequence[int], tokens_per_cell: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the visual tokens that lie in each memory cell, and their number (coverage-weighted).

    Token ``(i, j, k)`` of an ``(X, Y, Z)`` stage covers ``1 / X`` etc. of the input's ``roi_box``; a token split by a
    cell border counts in both cells by its overlap, and parts outside ``[0, 1]`` (padding) in none. Runs on the
    tokens' device without host synchronisation.

    Args:
        x: ``(B, X, Y, Z, C)`` visual tokens.
        roi_box: ``(B, 2, 3)`` the input's box, or None (the whole volume).
        grid: cells per axis ``(gx, gy, gz)``.
        tokens_per_cell: volume tokens per cell; each of a cell's tokens gets the cell's values.

    Returns:
        ``sums (B, V, C)`` and ``counts (B, V, 1)``, ``V = cells x tokens_per_cell``, cells flattened x-major.
    """
    B, X, Y, Z, C = x.shape
    if roi_box is None:
        roi_box = torch.tensor([[0.0] * 3, [1.0] * 3], device=x.device).expand(B, 2, 3)
    box = roi_box.to(device=x.device, dtype=torch.float32)
    wx, wy, wz = (_axis_weights(box[:, 0, a], box[:, 1, a], n, int(g)) for a, (n, g) in enumerate(zip((X, Y, Z), grid)))
    sums = torch.einsum("bix,bjy,bkz,bxyzc->bijkc", wx.to(x.dtype), wy.to(x.dtype), wz.to(x.dtype), x)
    counts = wx.sum(-1)[:, :, None, None] * wy.sum(-1)[:, None, :, None] * wz.sum(-1)[:, None, None, :]
    sums = sums.reshape(B, -1, C).repeat_interleave(tokens_per_cell, dim=1)
    counts = counts.reshape(B, -1, 1).repeat_interleave(tokens_per_cell, dim=1)
    return sums, counts.to(x.dtype)


@functools.lru_cache(maxsize=64)
def _position_code(grid: tuple[int, int, int], tokens_per_cell: int, dim: int) -> torch.Tensor:
    """Cached CPU code (never modified in place): a scan memory is made in every training forward. Built outside
    inference mode, so a first call under ``torch.inference_mode`` does not cache an inference tensor."""
    with torch.inference_mode(False):
        return cell_position_encoding(grid, tokens_per_cell, dim)


def cell_position_encoding(grid: Sequence[int], tokens_per_cell: int, dim: int) -> torch.Tensor:
    """``(cells x tokens_per_cell, dim)`` sinusoidal encoding of each memory cell's centre (fractions of the volume),
    unit mean square, the channels split between the three axes; every token of a cell gets its cell's code."""
    centres = torch.cartesian_prod(*[(torch.arange(int(g), dtype=torch.float64) + 0.5) / int(g) for g in grid])
    centres = centres.reshape(-1, 3)
    per_axis = max(dim // 6, 1)  # sin and cos per axis
    freqs = torch.pi * 2.0 ** torch.arange(per_axis, dtype=torch.float64)  # wavelengths 2, 1, 1/2, ... volumes
    angles = centres[:, :, None] * freqs[None, None, :]  # (cells, 3, per_axis)
    code = torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(len(centres), -1)
    code = torch.nn.functional.pad(code, (0, max(dim - code.shape[1], 0)))[:, :dim] * 2**0.5
    return code.repeat_interleave(int(tokens_per_cell), dim=0).float()


def _tent(pos: torch.Tensor, g: int) -> torch.Tensor:
    """``(B, 2g - 1, g)`` linear-interpolation weights of cell ``c`` (of ``g``) at the points ``pos + d`` for the
    offsets ``d = -(g-1), ..., g-1`` (``pos (B,)`` in cell units, cell ``c``'s centre at ``c``); 0 outside the grid."""
    d = torch.arange(-(g - 1), g, dtype=pos.dtype, device=pos.device)
    cells = torch.arange(g, dtype=pos.dtype, device=pos.device)
    return (1.0 - (cells[None, None, :] - (pos[:, None, None] + d[None, :, None])).abs()).clamp(min=0.0)


class CentredMemoryRead(nn.Module):
    """The scan memory seen from the crop: the encoded cells resampled on a grid of fixed offsets centred on the crop
    (``-(g-1) ... g-1`` cells along each axis of a ``g``-cell grid, linear interpolation between cells, nothing
    outside the volume), so that slot ``d`` always holds "what lies ``d`` cells from me"; each cell reduced to
    ``rank`` channels, all slots concatenated, one linear map to the stage's channels, added to every visual token.

    Why: the mean of the encoded cells (the context vector) is the same for every crop of a scan, so a label that
    depends on the scan *and* on where the crop lies (the kidney on the liver's side; ``side XOR end`` in the context
    task) would be a product of two features that are useless alone, which training by gradient does not find
    (``docs/results.md``). Seen from the crop, such a label is a linear function of the slots: "the liver lies next to
    me" is one slot's content at either end of the body.

    Args:
        dim: channels of the stage.
        grid: memory cells per axis ``(gx, gy, gz)``.
        rank: channels each cell is reduced to before the slots are concatenated.
    """

    def __init__(self, dim: int, grid: Sequence[int], rank: int = 16) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        slots = 1
        for g in self.grid:
            slots *= 2 * g - 1
        self.reduce = nn.Linear(dim, rank)
        self.proj = nn.Linear(rank * slots, dim)
        self.register_buffer("grid_size", torch.tensor(self.grid, dtype=torch.float32), persistent=False)

    def forward(self, cells: torch.Tensor, written: torch.Tensor, roi_box: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            cells: ``(B, V, C)`` the encoded memory cells (``V = cells x tokens per cell``, a cell's tokens adjacent).
            written: ``(B, V, 1)`` 1.0 where the scan wrote something.
            roi_box: ``(B, 2, 3)`` the reading crops' boxes; None: the whole volume.

        Returns:
            ``(B, C)``.
        """
        B = cells.shape[0]
        return self.proj(self.slots(self.reduce(cells) * written, roi_box).reshape(B, -1))

    def slots(self, cells: torch.Tensor, roi_box: torch.Tensor | None) -> torch.Tensor:
        """``(B, V, R)`` per-cell values -> ``(B, 2gx-1, 2gy-1, 2gz-1, R)``: slot ``d`` holds the value at ``d`` cells
        from each crop's centre (linear interpolation between cell centres; 0 outside the volume; a cell's tokens
        averaged)."""
        B, V, R = cells.shape
        gx, gy, gz = self.grid
        per_cell = cells.view(B, gx, gy, gz, V // (gx * gy * gz), R).mean(4)
        centre = torch.full((B, 3), 0.5, device=cells.device) if roi_box is None else roi_box.detach().mean(1)
        pos = centre.to(cells.dtype) * self.grid_size.to(cells.dtype) - 0.5
        wx, wy, wz = (_tent(pos[:, a], g) for a, g in enumerate(self.grid))
        return torch.einsum("bai,bcj,bdk,bijkr->bacdr", wx, wy, wz, per_cell)


class ScanSummary:
    """What the scan memory holds for a batch of scans: per stage and memory cell, the sum of the visual tokens the
    scan-view pass put there and their coverage. Written by :py:meth:`monai_fine.networks.FINE.write_scan_memory` (the
    only writer), read by the forward passes that segment the scans' crops (``scan_summary=``).

    In the write pass every view adds, for every stage, its visual tokens (the stage's output) into the cells they
    lie in (:func:`cell_pool`), in its scan's slot. In a read pass the volume tokens of a stage start from the
    learned tokens plus the mean visual token of their cell and, for written cells, a fixed sinusoidal code of the
    cell's position (:func:`cell_position_encoding`, unit scale like the summaries, where the learned tokens start at
    0.02): a summary of what the scan holds *there*, so a crop can read both what lies elsewhere and where. In
    training and in :py:class:`monai_fine.inferers.FINEInferer` the writer is the scan view (the whole scan at the
    crop size, :py:mod:`monai_fine.transforms.scan_view`), whose box covers every cell, so every crop reads what the
    whole scan wrote. Whether a forward writes or reads is a field of its
    :py:class:`~monai_fine.networks.blocks.transformer.MemoryContext` (``scan_write``, ``scan_read``), not a state of
    this object.

    :meth:`add` and :meth:`read` do not check the slot indices (that would read them on the host in every stage);
    :meth:`check_index` does, and the network calls it in eager mode for indices on the CPU.

    Args:
        num_scans: slots (scans) held.
        grid: memory cells per axis ``(gx, gy, gz)``.
        tokens_per_cell: volume tokens per cell (a stage holds ``cells x tokens_per_cell``).
        dims: channels of each stage.
        device, dtype: of the stored sums.
    """

    def __init__(
        self, num_scans: int, grid: Sequence[int], tokens_per_cell: int, dims: Sequence[int], device=None, dtype=None
    ) -> None:
        self.num_scans = int(num_scans)
        self.grid = tuple(int(g) for g in grid)
        self.tokens_per_cell = int(tokens_per_cell)
        self.memory_size = self.grid[0] * self.grid[1] * self.grid[2] * self.tokens_per_cell
        self.sums = [torch.zeros(num_scans, self.memory_size, d, device=device, dtype=dtype) for d in dims]
        self.counts = [torch.zeros(num_scans, self.memory_size, 1, device=device, dtype=dtype) for _ in dims]
        self.positions = [
            _position_code(self.grid, self.tokens_per_cell, int(d)).to(device=device, dtype=dtype) for d in dims
        ]

    def check_index(self, scan_index: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the indices when one is outside ``[0, num_scans)`` (reads them on the host)."""
        scan_index = torch.as_tensor(scan_index)
        if scan_index.numel() and (int(scan_index.min()) < 0 or int(scan_index.max()) >= self.num_scans):
            raise ValueError(f"scan index out of range [0, {self.num_scans}): {scan_index.tolist()}.")

    def add(self, stage: int, scan_index: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Add ``sums (B, V, C)`` and ``counts (B, V, 1)`` (from :func:`cell_pool`) into the slots ``scan_index (B,)``
        (differentiable)."""
        dtype = self.sums[stage].dtype  # (autocast may give half-precision tokens)
        self.sums[stage] = self.sums[stage].index_add(0, scan_index, sums.to(dtype))
        self.counts[stage] = self.counts[stage].index_add(0, scan_index, counts.to(dtype))

    def read(self, stage: int, scan_index: torch.Tensor) -> torch.Tensor:
        """``(B, V, C)`` mean visual token written per cell plus the cell's position code (zero where nothing was
        written)."""
        counts = self.counts[stage]
        written = (counts > 0).to(counts.dtype)
        mean = self.sums[stage] / torch.where(counts > 0, counts, torch.ones_like(counts))
        return (mean + self.positions[stage] * written)[scan_index]

    def written(self, stage: int, scan_index: torch.Tensor) -> torch.Tensor:
        """``(B, V, 1)`` 1.0 where something was written, else 0.0."""
        return (self.counts[stage] > 0).to(self.counts[stage].dtype)[scan_index]
