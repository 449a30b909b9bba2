# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from monai_fine.networks.blocks.memory import (
    CentredMemoryRead,
    ScanSummary,
    cell_pool,
    cell_position_encoding,
    intersecting_cells,
)


def _reference(box: np.ndarray, grid) -> np.ndarray:
    """Brute force: a cell intersects the box clamped to [0, 1] where the overlap is longer than 1e-6 cell widths;
    an axis on which the box lies entirely outside the volume falls back to the nearest border cell."""
    per_axis = []
    for a, g in enumerate(grid):
        s, e = float(box[0, a]), float(box[1, a])
        hits = []
        for i in range(g):
            lo, hi = i / g, (i + 1) / g
            overlap = min(e, hi, 1.0) - max(s, lo, 0.0)
            if overlap * g > 1e-6:
                hits.append(i)
        if not hits:  # the box lies outside [0, 1] (or touches the volume for less than the tolerance)
            hits = [0] if e <= 0.5 else [g - 1]
        per_axis.append(hits)
    out = np.zeros(grid, dtype=bool)
    for i, j, k in itertools.product(*per_axis):
        out[i, j, k] = True
    return out.reshape(-1)


@pytest.mark.parametrize("grid", [(4, 4, 1), (3, 5, 2), (1, 1, 1), (6, 6, 3)], ids=str)
def test_random_boxes_match_brute_force(grid):
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(300):
        start = rng.uniform(-0.4, 1.2, size=3)
        size = rng.uniform(0.02, 0.9, size=3)
        boxes.append(np.stack([start, start + size]))
    # exact cell borders, the full volume, boxes entirely outside, crops covering padding on both sides
    g = np.array(grid, dtype=float)
    boxes += [
        np.stack([np.zeros(3), np.ones(3)]),
        np.stack([1 / g, 2 / g]),
        np.stack([np.full(3, -0.5), np.full(3, -0.1)]),
        np.stack([np.full(3, 1.1), np.full(3, 1.5)]),
        np.stack([np.full(3, -0.2), np.full(3, 1.3)]),
        np.stack([np.full(3, 0.999), np.full(3, 1.4)]),
    ]
    boxes = np.stack(boxes)
    got = intersecting_cells(torch.tensor(boxes), grid).numpy()
    ref = np.stack([_reference(b, grid) for b in boxes])
    bad = np.nonzero((got != ref).any(1))[0]
    assert bad.size == 0, f"mismatch for boxes {boxes[bad[:3]].tolist()}"


def test_voxel_aligned_boxes_on_cell_borders():
    # a 96-voxel axis, 4 cells of 24 voxels: the crop [24, 48) is exactly cell 1, despite float rounding
    grid = (4, 3, 1)
    box = torch.tensor([[24 / 96, 0, 0], [48 / 96, 101 / 101, 30 / 30]], dtype=torch.float32)[None]
    cells = intersecting_cells(box, grid).reshape(grid)
    assert cells[1].all() and cells.sum() == 3


def test_none_means_all_cells_and_errors():
    assert intersecting_cells(None, (2, 3, 1), batch_size=2).all()
    with pytest.raises(ValueError, match=r"\(B, 2, 3\)"):
        intersecting_cells(torch.zeros(2, 3), (4, 4, 1))
    with pytest.raises(ValueError, match="stop > start"):
        intersecting_cells(torch.tensor([[[0.5, 0, 0], [0.2, 1, 1]]]), (4, 4, 1))
    with pytest.raises(ValueError, match="non-finite"):
        intersecting_cells(torch.tensor([[[float("nan"), 0, 0], [0.2, 1, 1]]]), (4, 4, 1))


def test_scan_summary_means_and_slots():
    mem = ScanSummary(2, (3, 1, 1), 1, [4])
    sums = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    counts = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.0, 0.0]])[..., None]
    mem.add(0, torch.tensor([1, 1]), sums, counts)
    read = mem.read(0, torch.tensor([1, 0]))
    pos = cell_position_encoding((3, 1, 1), 1, 4)
    assert torch.equal(mem.positions[0], pos) and pos.shape == (3, 4) and not torch.equal(pos[0], pos[1])
    read = read - torch.stack([pos, torch.zeros_like(pos)])  # written cells carry their position code
    torch.testing.assert_close(read[0, 0], (sums[0, 0] + sums[1, 0]) / 2.5)
    torch.testing.assert_close(read[0, 1], sums[0, 1] + sums[1, 1])  # a zero count adds its (zero) sum
    torch.testing.assert_close(read[0, 2], sums[0, 2] + sums[1, 2])
    assert read[1].abs().sum() == 0  # slot 0 untouched
    assert (mem.counts[0][1, :, 0] > 0).tolist() == [True, True, True]  # every cell of slot 1 was written
    assert mem.counts[0][0].sum() == 0
    with pytest.raises(ValueError, match=r"out of range \[0, 2\): \[2\]"):
        mem.check_index(torch.tensor([2]))
    mem.check_index(torch.tensor([0, 1]))


def test_the_centred_read_puts_what_lies_d_cells_away_in_slot_d():
    """Hand-made case, grid 4 x 1 x 1, cell c holding the value c + 1 (two tokens per cell): a crop centred on cell 1
    finds cell 1 + d in slot d and nothing beyond the volume, a crop centred on cell 3 finds cell 3 + d, one centred
    between cells 1 and 2 the mean of the two cells around each point."""
    read = CentredMemoryRead(8, (4, 1, 1), rank=1)
    values = torch.arange(1.0, 5.0).repeat_interleave(2)[None, :, None].expand(3, 8, 1)  # (B, V, R): cells 1..4
    boxes = torch.tensor(
        [
            [[0.25, 0.0, 0.0], [0.5, 1.0, 1.0]],  # centre on cell 1
            [[0.25, 0.0, 0.0], [0.75, 1.0, 1.0]],  # centre between cells 1 and 2
            [[0.75, 0.0, 0.0], [1.0, 1.0, 1.0]],  # centre on cell 3
        ]
    )
    slots = read.slots(values, boxes)[..., 0, 0, 0]  # (B, 7): offsets -3 ... 3
    assert slots.shape == (3, 7)
    torch.testing.assert_close(slots[0], torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0]))
    torch.testing.assert_close(slots[1], torch.tensor([0.0, 0.5, 1.5, 2.5, 3.5, 2.0, 0.0]))
    torch.testing.assert_close(slots[2], torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0]))
    out = read(torch.randn(3, 8, 8), torch.ones(3, 8, 1), boxes)
    assert out.shape == (3, 8)
    whole = read.slots(values[:1], None)[0, :, 0, 0, 0]  # no box: seen from the volume's centre (between 1 and 2)
    torch.testing.assert_close(whole, slots[1])


def test_cell_pool_matches_a_brute_force_supersampling():
    """Each cell gets the coverage-weighted sum of the tokens inside it; padding (outside [0, 1]) counts nowhere.
    Reference: every token split into 14^3 equal parts, each assigned to the cell holding its centre (the boxes are
    chosen so that cell borders fall on part borders, which makes the reference exact)."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, 2, 3)
    box = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [[-0.25, 0.1, 0.0], [0.5, 0.8, 1.0]]])  # 0.5 splits a token
    grid = (4, 2, 1)
    sums, counts = cell_pool(x, box, grid, tokens_per_cell=2)
    assert sums.shape == (2, 16, 3) and counts.shape == (2, 16, 1)
    n = 14
    for b in range(2):
        fine = x[b]
        for a in range(3):
            fine = fine.repeat_interleave(n, dim=a)
        axes = []
        for a in range(3):
            m = fine.shape[a]
            centre = box[b, 0, a] + (torch.arange(m, dtype=torch.float64) + 0.5) / m * (box[b, 1, a] - box[b, 0, a])
            axes.append(centre)
        cx, cy, cz = torch.meshgrid(*axes, indexing="ij")
        inside = (cx >= 0) & (cx < 1) & (cy >= 0) & (cy < 1) & (cz >= 0) & (cz < 1)
        cell = ((cx * grid[0]).floor() * grid[1] + (cy * grid[1]).floor()) * grid[2] + (cz * grid[2]).floor()
        ref_s = torch.zeros(8, 3, dtype=torch.float64).index_add_(0, cell[inside].long(), fine[inside].double()) / n**3
        ref_c = (
            torch.zeros(8, dtype=torch.float64).index_add_(
                0, cell[inside].long(), torch.ones(int(inside.sum()), dtype=torch.float64)
            )
            / n**3
        )
        torch.testing.assert_close(sums[b, ::2].double(), ref_s, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sums[b, 1::2].double(), ref_s, rtol=1e-4, atol=1e-4)  # every token of a cell
        torch.testing.assert_close(counts[b, ::2, 0].double(), ref_c, rtol=1e-4, atol=1e-4)
    assert counts[1, ::2, 0].sum() < counts[0, ::2, 0].sum()  # a third of sample 1 lies in padding
