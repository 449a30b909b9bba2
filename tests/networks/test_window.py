# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import itertools

import pytest
import torch

from monai_fine.networks.blocks.window import (
    relative_position_index,
    window_attention_mask,
    window_geometry,
    window_partition,
    window_reverse,
)


@pytest.mark.parametrize("w", [2, 3, 4, 7])
def test_relative_position_index_is_a_bijection_on_offsets(w):
    idx = relative_position_index((w, w, w), w)
    coords = list(itertools.product(range(w), repeat=3))
    offset_to_index: dict[tuple, int] = {}
    index_to_offset: dict[int, tuple] = {}
    for i, p in enumerate(coords):
        for j, q in enumerate(coords):
            off = tuple(a - b for a, b in zip(p, q))
            k = int(idx[i, j])
            assert offset_to_index.setdefault(off, k) == k, "one offset, two rows"
            assert index_to_offset.setdefault(k, off) == off, (
                f"row {k} shared by offsets {index_to_offset[k]} and {off}"
            )
    side = 2 * w - 1
    assert sorted(index_to_offset) == list(range(side**3))  # every table row used exactly by one offset


def test_nnformer_index_was_not_a_bijection():
    """The reference bug (strides 3w-1, 2w-1) shares rows; our formula differs from it."""
    w = 4
    coords = torch.stack(torch.meshgrid(*[torch.arange(w)] * 3, indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (w - 1)
    buggy = rel[0] * (3 * w - 1) + rel[1] * (2 * w - 1) + rel[2]
    assert len(torch.unique(buggy)) < (2 * w - 1) ** 3
    assert len(torch.unique(relative_position_index((w,) * 3, w))) == (2 * w - 1) ** 3


@pytest.mark.parametrize("res", [(8, 8, 8), (6, 8, 4), (3, 12, 5), (4, 4, 4)])
@pytest.mark.parametrize("shifted", [False, True])
def test_partition_reverse_roundtrip(res, shifted):
    geom = window_geometry(res, 4)
    x = torch.randn(2, *res, 3)
    w = window_partition(x, geom, shifted)
    assert w.shape == (2, geom.num_windows, geom.window_volume, 3)
    torch.testing.assert_close(window_reverse(w, geom, shifted), x, rtol=0, atol=0)


@pytest.mark.parametrize("res", [(8, 8, 8), (6, 8, 4), (3, 12, 5)])
@pytest.mark.parametrize("shifted", [False, True])
def test_partition_with_lead_tokens_is_the_concatenation_with_its_gradients(res, shifted):
    """``lead`` written in front of every window in one copy: the values and both inputs' gradients of
    ``torch.cat([lead, windows], 2)``."""
    geom = window_geometry(res, 4)
    x = torch.randn(2, *res, 3, requires_grad=True)
    lead = torch.randn(2, geom.num_windows, 2, 3, requires_grad=True)
    got = window_partition(x, geom, shifted, lead)
    ref = torch.cat([lead, window_partition(x, geom, shifted)], 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    weight = torch.randn_like(ref)
    grads_got = torch.autograd.grad((got * weight).sum(), (x, lead))
    grads_ref = torch.autograd.grad((ref * weight).sum(), (x, lead))
    for g, r in zip(grads_got, grads_ref):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.parametrize("res", [(8, 8, 8), (6, 8, 4), (10, 12, 3)])
def test_shifted_mask_matches_brute_force(res):
    """Tokens of a shifted window may attend to each other iff they are neighbours in the unrolled volume."""
    wsize = 4
    geom = window_geometry(res, wsize)
    padded = [g * w for g, w in zip(geom.grid, geom.window)]
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in padded], indexing="ij"), -1)  # (X,Y,Z,3)
    rolled = torch.roll(coords, shifts=tuple(-s for s in geom.shift), dims=(0, 1, 2))
    pos = window_partition(rolled[None].float(), geom._replace(pad=(0, 0, 0)), shifted=False)[0].long()  # (nW,N,3)
    valid = (pos < torch.tensor(res)).all(-1)  # (nW, N) not padding
    near = ((pos[:, :, None] - pos[:, None, :]).abs() < torch.tensor(geom.window)).all(-1)
    ref = (near & valid[:, None, :]) | torch.eye(pos.shape[1], dtype=torch.bool)
    mask = window_attention_mask(geom, True, 0, torch.device("cpu"))
    if mask is None:
        assert ref.all()
    else:
        assert torch.equal(mask[:, 0], ref)
    # with window tokens: tokens see only non-padded visual tokens, and are seen by all
    mask_t = window_attention_mask(geom, True, 2, torch.device("cpu"))
    if mask_t is not None:
        assert torch.equal(mask_t[:, 0, 2:, 2:], ref)
        assert mask_t[:, 0, :, :2].all()
        assert torch.equal(mask_t[:, 0, 0, 2:], valid)


def test_geometry_clamps_window_and_pads():
    geom = window_geometry((6, 3, 8), 4)
    assert geom.window == (4, 3, 4)
    assert geom.shift == (2, 0, 2)
    assert geom.pad == (2, 0, 0)
    assert geom.grid == (2, 1, 2)


def _rolled_partition(x: torch.Tensor, geom, shift) -> torch.Tensor:
    """The definition: pad at the far end, roll by ``-shift``, cut into windows (channels last)."""
    B, C = x.shape[0], x.shape[-1]
    x = torch.nn.functional.pad(x, (0, 0, 0, geom.pad[2], 0, geom.pad[1], 0, geom.pad[0]))
    x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    (gx, gy, gz), (wx, wy, wz) = geom.grid, geom.window
    x = x.reshape(B, gx, wx, gy, wy, gz, wz, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(B, gx * gy * gz, wx * wy * wz, C)


@pytest.mark.parametrize("res", [(8, 8, 8), (6, 8, 4), (12, 10, 5), (16, 16, 8)])
def test_shifted_windows_are_the_rolled_partition_exactly_with_its_gradients(res):
    """The shifted partition and its reverse are the roll and the cut of their definition, bit for bit, forward and
    backward, with padding; a trace records the same roll."""
    geom = window_geometry(res, 4)
    assert any(geom.shift)
    x = torch.randn(2, *res, 5, requires_grad=True)
    got = window_partition(x, geom, True)
    ref = _rolled_partition(x, geom, geom.shift)
    assert torch.equal(got, ref)
    weight = torch.randn_like(ref)
    assert torch.equal(*(torch.autograd.grad((t * weight).sum(), x)[0] for t in (got, ref)))
    windows = torch.randn_like(ref, requires_grad=True)
    back = window_reverse(windows, geom, True)
    # the reverse puts every window value back where the definition took it from (padding is cropped)
    valid = _rolled_partition(torch.ones(1, *res, 1), geom, geom.shift)[0, ..., 0] > 0  # not padding
    assert torch.equal(_rolled_partition(back, geom, geom.shift)[:, valid], windows[:, valid])
    g_back = torch.randn_like(back)
    (g,) = torch.autograd.grad((back * g_back).sum(), windows)
    assert torch.equal(g, _rolled_partition(g_back, geom, geom.shift) * valid[None, :, :, None])
    traced = torch.jit.trace(lambda t: window_partition(t, geom, True), x.detach())
    assert "aten::roll" in str(traced.graph) and torch.equal(traced(x.detach()), ref)
