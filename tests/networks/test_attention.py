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
