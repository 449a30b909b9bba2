# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Patch embedding, merging and expanding: shapes, the channel LayerNorm against torch's functional one, and the
convolution that keeps a single CPU sample on oneDNN against ``F.conv3d``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from monai_fine.networks.blocks.patch import (
    ChannelLayerNorm3d,
    Conv3d,
    PatchEmbed3d,
    PatchExpand3d,
    PatchMerging3d,
    expand_2x2x2,
    merge_2x2x2,
)


def test_channel_layer_norm_normalises_channels():
    norm = ChannelLayerNorm3d(5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 5, 3, 4, 6)
    ref = F.layer_norm(x.movedim(1, -1), (5,), norm.weight, norm.bias, norm.eps).movedim(-1, 1)
    torch.testing.assert_close(norm(x), ref)


@pytest.mark.parametrize("patch", [(2, 2, 2), (4, 4, 2), (1, 2, 4)], ids=str)
def test_patch_embed_is_channels_last_and_strided(patch):
    embed = PatchEmbed3d(2, 12, patch)
    out = embed(torch.randn(3, 2, 16, 16, 16))
    assert out.shape == (3, *(16 // p for p in patch), 12)
    with pytest.raises(ValueError, match=r"1, 2 or 4, got \(3, 2, 2\)"):
        PatchEmbed3d(1, 12, (3, 2, 2))


def test_merging_and_expanding_halve_and_double():
    x = torch.randn(2, 8, 6, 4, 10)
    down = PatchMerging3d(10)(x)
    assert down.shape == (2, 4, 3, 2, 20)
    up = PatchExpand3d(10)(down)
    assert up.shape == x.shape
    # each output token of the merging depends only on its own 2x2x2 input block
    x2 = x.clone()
    x2[:, :2, :2, :2] += 1.0
    merge = PatchMerging3d(10)
    changed = (merge(x2) - merge(x)).abs().sum(-1) > 0
    assert changed[:, 0, 0, 0].all() and changed.sum() == 2


def _kernels(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if "conv" in e.key}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs a torch with oneDNN")
@pytest.mark.parametrize("stride, channels_last", [(1, False), (2, True)], ids=["s1", "s2-permuted"])
def test_a_single_sample_runs_onednn_with_the_gradients_of_the_native_kernel(stride, channels_last):
    torch.manual_seed(0)
    conv = Conv3d(6, 12, 3, stride=stride, padding=1)
    ref = torch.nn.Conv3d(6, 12, 3, stride=stride, padding=1)
    ref.load_state_dict(conv.state_dict())  # the same parameter names: checkpoints load either way
    x = torch.randn(1, 8, 8, 4, 6).permute(0, 4, 1, 2, 3) if channels_last else torch.randn(1, 6, 8, 8, 4)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert "aten::slow_conv3d_forward" in _kernels(lambda: ref(xb))  # torch's own choice for this input
    kernels = _kernels(lambda: conv(xa))
    assert "aten::mkldnn_convolution" in kernels and "aten::slow_conv3d_forward" not in kernels
    out, expect = conv(xa), ref(xb)
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    expect.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_batches_tracing_and_autocast_keep_torchs_own_convolution():
    torch.manual_seed(0)
    conv = Conv3d(2, 4, 3, padding=1)
    ref = torch.nn.Conv3d(2, 4, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 2, 6, 6, 4)
    assert torch.equal(conv(x), ref(x))  # a batch of two: the same call, the same kernel
    graph = str(torch.jit.trace(conv, x[:1]).graph)
    assert "aten::_convolution" in graph and "mkldnn" not in graph  # an export sees a plain convolution
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x[:1]).dtype == torch.bfloat16  # autocast's own cast, not the float32 oneDNN call
    with FlopCounterMode(display=False) as flops:  # a FLOP count sees the convolution it knows
        conv(x[:1])
    assert flops.get_total_flops() == 2 * 4 * 2 * 27 * 6 * 6 * 4


@pytest.mark.parametrize("grid", [(8, 6, 4), (5, 7, 3)], ids=["even", "odd"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_merging_by_matmul_is_the_strided_convolution_with_its_gradients(grid, with_bias):
    torch.manual_seed(0)
    x = torch.randn(2, *grid, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 6, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, dtype=torch.float64, requires_grad=True) if with_bias else None
    out = merge_2x2x2(x, w, b)
    ref = F.conv3d(x.permute(0, 4, 1, 2, 3), w, b, stride=2).permute(0, 2, 3, 4, 1)  # an odd slice dropped too
    assert out.shape == ref.shape == (2, *(g // 2 for g in grid), 10)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(ref)
    params = (x, w) if b is None else (x, w, b)
    for got, want in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_expanding_by_matmul_is_the_transposed_convolution_with_its_gradients(with_bias):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 6, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True) if with_bias else None
    out = expand_2x2x2(x, w, b)
    ref = F.conv_transpose3d(x.permute(0, 4, 1, 2, 3), w, b, stride=2).permute(0, 2, 3, 4, 1)
    assert out.shape == ref.shape == (2, 6, 8, 10, 6)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(ref)
    params = (x, w) if b is None else (x, w, b)
    for got, want in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(got, want)


def test_merging_and_expanding_keep_the_convolutions_parameters_and_their_function():
    torch.manual_seed(0)
    merge, expand = PatchMerging3d(6), PatchExpand3d(6)
    assert set(merge.state_dict()) == {"norm.weight", "norm.bias", "reduction.weight", "reduction.bias"}
    assert set(expand.state_dict()) == {"norm.weight", "norm.bias", "expand.weight", "expand.bias"}
    x = torch.randn(1, 4, 4, 2, 6)  # one sample: the scan view's write pass
    as_conv = merge.reduction(merge.norm(merge.act(x)).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(merge(x), as_conv, rtol=1e-5, atol=1e-6)
    y = torch.randn(1, 2, 2, 1, 12)
    torch.testing.assert_close(
        expand(y), expand.expand(expand.norm(y).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1), rtol=1e-5, atol=1e-6
    )
