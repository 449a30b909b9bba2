# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Patch embedding, merging and expanding: shapes and the channel LayerNorm against torch's functional one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_fine.networks.blocks.patch import ChannelLayerNorm3d, PatchEmbed3d, PatchExpand3d, PatchMerging3d


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
