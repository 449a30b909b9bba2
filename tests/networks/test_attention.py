# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch

from monai_fine.networks.blocks.attention import Attention, resolve_attn_mask


def _pair(**kw):
    fused = Attention(32, 4, use_flash_attention=True, **kw)
    manual = Attention(32, 4, use_flash_attention=False, **kw)
    manual.load_state_dict(fused.state_dict())
    return fused, manual


@pytest.mark.parametrize("kind", ["none", "bias", "mask", "bias+mask"], ids=str)
def test_fused_matches_manual(kind):
    fused, manual = _pair()
    x = torch.randn(3, 10, 32, requires_grad=True)
    bias = torch.randn(1, 4, 10, 10) if "bias" in kind else None
    mask = None
    if "mask" in kind:
        mask = torch.rand(3, 1, 10, 10) > 0.5
        mask |= torch.eye(10, dtype=torch.bool)
    m = resolve_attn_mask(bias, mask)
    out_f = fused(x, m)
    (g_f,) = torch.autograd.grad(out_f.sum(), x)
    out_m = manual(x, m)
    (g_m,) = torch.autograd.grad(out_m.sum(), x)
    torch.testing.assert_close(out_f, out_m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_f, g_m, rtol=1e-4, atol=1e-5)


def test_masked_keys_are_ignored_and_get_no_gradient():
    attn = Attention(16, 2)
    x = torch.randn(1, 6, 16, requires_grad=True)
    mask = torch.tensor([True, True, True, False, False, True]).view(1, 1, 1, 6)
    out = attn(x, mask)
    x2 = x.detach().clone()
    x2[:, 3:5] += 5.0
    out2 = attn(x2, mask)
    keep = [0, 1, 2, 5]
    torch.testing.assert_close(out[:, keep], out2[:, keep])  # masked tokens do not reach the others
    (g,) = torch.autograd.grad(out[:, keep].sum(), x)
    assert g[:, 3:5].abs().max() == 0


def test_dropout_only_in_training_and_bool_masks_required():
    attn = Attention(16, 2, attn_drop=0.5).eval()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(attn(x), attn(x))
    with pytest.raises(TypeError, match="bool"):
        resolve_attn_mask(torch.zeros(1), torch.zeros(1, dtype=torch.float32))
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3)


def _sdpa_reference(attn: Attention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The module's function written with torch's SDPA directly (on the CPU its math path, for a mask with grad)."""
    B, L, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, L, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.proj(out.transpose(1, 2).reshape(B, L, C))


def _aten_ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def test_a_learned_bias_on_the_cpu_skips_the_sdpa_math_fallback_with_the_same_function():
    attn = Attention(32, 4, use_flash_attention=True)
    x = torch.randn(3, 10, 32, requires_grad=True)
    bias = torch.randn(1, 4, 10, 10, requires_grad=True)  # a learned bias: the mask takes a gradient
    mask = (torch.rand(3, 1, 10, 10) > 0.5) | torch.eye(10, dtype=torch.bool)
    out = attn(x, resolve_attn_mask(bias, mask))
    grads = torch.autograd.grad(out.square().sum(), (x, bias))
    ref = _sdpa_reference(attn, x, resolve_attn_mask(bias, mask))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, bias))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)

    def step(b):
        attn(x, resolve_attn_mask(b, mask)).sum().backward()

    with_grad = _aten_ops(lambda: step(bias))
    assert "aten::_scaled_dot_product_attention_math" not in with_grad and "aten::_safe_softmax" not in with_grad
    assert "aten::_scaled_dot_product_attention_math" in _aten_ops(lambda: _sdpa_reference(attn, x, bias).sum())
    # a mask without a gradient (the memory's bool keys, a frozen bias) keeps SDPA's fused kernel
    without = _aten_ops(lambda: step(bias.detach()))
    assert any(n.startswith("aten::_scaled_dot_product_flash_attention") for n in without), sorted(without)
