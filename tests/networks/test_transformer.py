# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""FineBlock / FineStage: modes resolved at construction, the public BlockContext, the V-MSA gate, cached layouts."""

from __future__ import annotations

import pytest
import torch

from monai_fine.networks.blocks import BlockContext, FineBlock, FineStage, MemoryContext, memory_mode, window_layout

FLAGS = {  # mode: (window tokens, volume_attention, global_attention, released_global_attention)
    "none": (False, False, False, False),
    "window": (True, False, True, False),
    "released": (True, False, False, True),
    "full": (True, True, True, False),
}


@pytest.mark.parametrize("mode", sorted(FLAGS))
def test_blocks_and_stages_read_the_resolved_mode(mode):
    resolved = memory_mode(mode)
    blk = FineBlock(8, 2, 4, shifted=False, mode=resolved)
    assert (resolved.window_tokens, blk.volume_attention, blk.global_attention, blk.released_global_attention) == FLAGS[
        mode
    ]
    last = FineBlock(8, 2, 4, shifted=True, mode=resolved, last_in_stage=True)
    assert not last.released_global_attention  # the official code's G-MSA output would never be read there
    stage = FineStage(8, 2, 2, 4, resolved, num_window_tokens=1, memory_size=6, drop_path=[0.0, 0.0])
    assert stage.has_volume_tokens == (mode in ("released", "full"))
    assert stage.memory_size == (6 if stage.has_volume_tokens else 0)
    assert stage.blocks[1].released_global_attention is False and stage.blocks[0].released_global_attention == (
        mode == "released"
    )


def _block_inputs(V=6):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 4, 4, 8)
    layout = window_layout((4, 4, 4), 4, 1, torch.device("cpu"))
    win = torch.randn(2, layout.geom.num_windows, 1, 8)
    vol = torch.randn(2, V, 8, requires_grad=True)
    return x, win, vol, layout


@pytest.mark.parametrize("any_seen", [False, True])
def test_volume_attention_gate(any_seen):
    """With no cell seen, V-MSA leaves the volume tokens exactly as they are and gives them no gradient."""
    blk = FineBlock(8, 2, 4, shifted=False, mode=memory_mode("full"))
    x, win, vol, layout = _block_inputs()
    keys = torch.ones(1, 1, 1, 6, dtype=torch.bool)
    mem = MemoryContext(
        visible=torch.zeros(2, 6, dtype=torch.bool),
        write=torch.zeros(2, 6, 1),
        volume_keys=keys,
        volume_gate=torch.tensor(float(any_seen)),
    )
    global_keys = torch.cat([torch.ones(2, 1, dtype=torch.bool), mem.visible], 1).view(2, 1, 1, -1)
    ctx = BlockContext(layout.geom, layout.rel_index, layout.masks[0], global_keys, mem)
    _, _, out_vol = blk(x, win, vol, ctx)
    (grad,) = torch.autograd.grad(out_vol.sum(), vol)
    if any_seen:
        assert (out_vol - vol).abs().max() > 0
    else:
        assert torch.equal(out_vol, vol)  # nothing written (write mask 0), nothing mixed in (gate 0)
        assert torch.equal(grad, torch.ones_like(grad))  # only the identity path


def test_window_layout_is_cached_per_size_and_device():
    a = window_layout((6, 8, 4), 4, 2, torch.device("cpu"))
    assert window_layout((6, 8, 4), 4, 2, torch.device("cpu")) is a
    assert window_layout((8, 8, 4), 4, 2, torch.device("cpu")) is not a
    assert a.geom.window == (4, 4, 4) and a.geom.pad == (2, 0, 0)
    regular, shifted = a.masks
    assert regular.shape == shifted.shape == (a.geom.num_windows, 1, 2 + 64, 2 + 64)
    assert regular.dtype == torch.bool and a.rel_index.shape == (64, 64)


@pytest.mark.parametrize("mode", ["none", "window", "released", "full"])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("dim", [8, 32])  # 192 visual tokens: >= 8 * dim (two MLP calls), < 8 * dim (one call)
def test_window_attention_and_mlp_equal_their_definition_token_set_by_token_set(mode, shifted, dim):
    """The block writes window and visual tokens into the attention sequence in one copy, divides attention outputs
    with ``split``, and at deep stages runs one LayerNorm and one MLP over the visual and window tokens together;
    that must equal the definition: attend per (padded) window, an MLP per token set."""
    from monai_fine.networks.blocks import resolve_attn_mask
    from monai_fine.networks.blocks.window import window_partition, window_reverse

    torch.manual_seed(0)
    blk = FineBlock(dim, 2, 4, shifted=shifted, mode=memory_mode(mode)).eval()
    x = torch.randn(2, 6, 8, 4, dim)  # padded to 8 x 8 x 4 along the first axis: padded keys are masked
    T = 0 if mode == "none" else 1
    layout = window_layout((6, 8, 4), 4, T, torch.device("cpu"))
    win = torch.randn(2, layout.geom.num_windows, 1, dim) if T else None
    ctx = BlockContext(layout.geom, layout.rel_index, layout.masks[int(shifted)])
    with torch.no_grad():
        got_x, got_win = blk._feed_forward(*blk.window_attention(x, win, ctx))
        # the definition, one token set at a time
        seq = window_partition(blk.norm1(x), layout.geom, shifted)
        if T:
            seq = torch.cat([blk.norm1(win) if mode != "released" else win, seq], 2)
        B, nW, L, C = seq.shape
        mask = resolve_attn_mask(blk._window_bias(layout.rel_index, T), ctx.window_mask)
        mask = mask.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(B * nW, *mask.shape[1:])
        att = blk.attn(seq.reshape(B * nW, L, C), mask).reshape(B, nW, L, C)
        ref_x = x + window_reverse(att[:, :, T:], layout.geom, shifted)
        ref_x = ref_x + blk.mlp(blk.norm2(ref_x))
    torch.testing.assert_close(got_x, ref_x, rtol=1e-5, atol=1e-5)
    if T:
        ref_win = win + att[:, :, :T]
        torch.testing.assert_close(got_win, ref_win + blk.mlp(blk.norm2(ref_win)), rtol=1e-5, atol=1e-5)
    else:
        assert got_win is None
