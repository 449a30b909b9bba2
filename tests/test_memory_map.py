# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The memory map (attention rollout onto the memory cells) and ``python -m monai_fine memory_map``."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_fine.bundle_tools import create_network
from monai_fine.data.phantom import make_phantom_case
from monai_fine.memory_map import attention_rollout, crop_memory_map, memory_map_png, record_attention
from monai_fine.networks import FINE
from monai_fine.networks.blocks.window import window_geometry

CORNER = torch.tensor([[[0.0, 0.0, 0.0], [0.25, 0.25, 1.0]]])  # intersects cell (0, 0, 0) of the 4 x 4 x 1 grid only


def small(roi=(16, 16, 8), **kw) -> FINE:
    torch.manual_seed(0)
    net = FINE(1, 3, feature_size=8, depths=(2, 2), num_heads=(1, 2), roi_size=roi, **kw).eval()
    net.memory_visits.fill_(1.0)  # every cell seen in "training": V-MSA over all of them
    return net


def _force_volume_attention_onto(net: FINE, cell: int, beta: float = 10.0) -> None:
    """Make every V-MSA put (nearly) all its weight on volume token ``cell`` and leave the token contents unchanged.

    Queries are the constant ``beta * d`` (``d`` = +1, -1, ... per channel, zero mean in every head), keys the
    normalised tokens; token ``cell`` is ``d`` itself after the LayerNorm, every other token is made orthogonal to
    ``d`` within each head, so its logit is 0 against ``beta * head_dim * scale`` for ``cell``. The V-MSA and G-MSA
    output projections are zeroed, so no attention changes a volume token and the construction holds in every block.
    """
    with torch.no_grad():
        for stage in (*net.encoder_stages, *net.decoder_stages):
            tokens = stage.volume_tokens
            C = tokens.shape[1]
            heads = stage.blocks[0].num_heads
            d = torch.tensor([1.0, -1.0]).repeat(C // 2)
            for h in range(heads):  # the other tokens orthogonal to d on every head's channels
                sl = slice(h * C // heads, (h + 1) * C // heads)
                dh = d[sl]
                tokens[:, sl] -= (tokens[:, sl] @ dh)[:, None] * dh[None] / (dh @ dh)
            tokens[cell] = 3.0 * d
            for blk in stage.blocks:
                qkv = blk.attn_volume.qkv
                qkv.weight[:C] = 0.0
                qkv.weight[C : 2 * C] = torch.eye(C)
                qkv.bias[:C] = beta * d
                qkv.bias[C : 2 * C] = 0.0
                for proj in (blk.attn_volume.proj, blk.attn_global.proj):
                    proj.weight.zero_()
                    proj.bias.zero_()


def test_all_volume_attention_forced_onto_one_cell_lights_that_cell_and_no_other():
    net = small(share_memory_attention=False)
    target = 10  # cell (2, 2, 0): not one the crop intersects
    _force_volume_attention_onto(net, target)
    x = torch.randn(1, 1, 16, 16, 8)
    bare = crop_memory_map(net, x, CORNER, residual=0.0)
    assert bare.memory_share > 1e-3
    assert np.unravel_index(int(bare.cells.argmax()), bare.cells.shape) == (2, 2, 0)
    others = np.delete(bare.cells.ravel(), target)
    assert bare.cells.ravel()[target] == pytest.approx(1.0, abs=1e-9) and others.max() < 1e-9
    # with the residual, the intersected cell keeps its own share; no third cell gets any
    rolled = crop_memory_map(net, x, CORNER, residual=0.5)
    lit = rolled.cells.ravel()
    assert lit[target] > 0.1 and lit[0] > 0.1 and np.delete(lit, [0, target]).max() < 1e-9
    # the same network without the forcing spreads its memory attention over the cells
    spread = crop_memory_map(small(share_memory_attention=False), x, CORNER, residual=0.0)
    assert spread.cells.max() < 0.5


def _dense_rollout(net: FINE, records: list, x_shape, write: torch.Tensor, r: float) -> np.ndarray:
    """The rollout as one product of explicit (all tokens x all tokens) matrices per attention, built by hand from
    the recorded weights: window membership from the roll/pad arithmetic, not from the network's partition code."""
    records = [w.mean(1).double() for _, w in records]
    S = 1 + net.memory_size

    def stage(stg, ex: np.ndarray, res) -> np.ndarray:
        X, Y, Z = res
        n = X * Y * Z
        geom = window_geometry(res, stg.window_size)
        T, nW, V = stg.num_window_tokens, geom.num_windows, stg.memory_size
        N = n + nW * T + V
        W0, V0 = n, n + nW * T  # first window token, first volume token
        E = np.zeros((N, S))
        E[:n] = ex
        E[W0:V0, 0] = 1.0
        E[V0:, 1:] = np.eye(V)
        coords = np.stack(np.meshgrid(*[np.arange(s) for s in res], indexing="ij"), -1).reshape(n, 3)
        for blk in stg.blocks:
            a = records.pop(0)[0].numpy()  # V-MSA
            M = np.eye(N)
            M[V0:, V0:] = r * np.eye(V) + (1 - r) * a
            E = M @ E
            a = records.pop(0)[0].numpy()  # G-MSA over [window tokens; volume tokens]
            M = np.eye(N)
            rows = list(range(W0, V0)) + [V0 + j for j in range(V) if write[j]]
            for row in rows:
                M[row] = 0.0
                M[row, W0:] = (1 - r) * a[row - W0]
                M[row, row] += r
            E = M @ E
            a = records.pop(0).numpy()  # W-MSA, (nW, T + N_w, T + N_w)
            shift = np.array(geom.shift) * (1 if blk.shifted else 0)
            padded = np.array(res) + np.array(geom.pad)
            pos = (coords - shift) % padded  # where cyclic shift puts each token in the padded grid
            win = pos // np.array(geom.window)
            slot = pos % np.array(geom.window)
            w_index = (win[:, 0] * geom.grid[1] + win[:, 1]) * geom.grid[2] + win[:, 2]
            s_index = T + (slot[:, 0] * geom.window[1] + slot[:, 1]) * geom.window[2] + slot[:, 2]
            M = np.eye(N)
            members = {w: [(W0 + w * T + t, t) for t in range(T)] for w in range(nW)}
            for tok in range(n):
                members[int(w_index[tok])].append((tok, int(s_index[tok])))
            for w, toks in members.items():
                for q, qs in toks:
                    M[q] = 0.0
                    M[q, q] = r
                    for k, ks in toks:
                        M[q, k] += (1 - r) * a[w, qs, ks]
            E = M @ E
        return E[:n]

    res = tuple(int(s) // p for s, p in zip(x_shape[2:], net.patch_size))
    ex = np.zeros((int(np.prod(res)), S))
    ex[:, 0] = 1.0
    skips = []
    for i, stg in enumerate(net.encoder_stages):
        ex = stage(stg, ex, res)
        skips.append((ex, res))
        if i < net.num_stages - 1:
            coarse = tuple(s // 2 for s in res)
            fine = np.stack(np.meshgrid(*[np.arange(s) for s in res], indexing="ij"), -1).reshape(-1, 3)
            parent = np.ravel_multi_index((fine // 2).T, coarse)
            P = np.zeros((int(np.prod(coarse)), len(fine)))
            P[parent, np.arange(len(fine))] = 1 / 8
            ex, res = P @ ex, coarse
    for j, stg in enumerate(net.decoder_stages):
        skip, fine_res = skips[net.num_stages - 2 - j]
        fine = np.stack(np.meshgrid(*[np.arange(s) for s in fine_res], indexing="ij"), -1).reshape(-1, 3)
        up = ex[np.ravel_multi_index((fine // 2).T, res)]
        ex, res = stage(stg, 0.5 * (up + skip), fine_res), fine_res
    assert not records
    return ex.mean(0)


@pytest.mark.parametrize("residual,scan", [(0.5, False), (0.0, False), (0.5, True)], ids=["r0.5", "r0", "scan-memory"])
def test_rollout_equals_the_product_of_explicit_attention_matrices(residual, scan):
    net = small(roi=(24, 24, 8), scan_memory=scan)  # the second stage (6 x 6 x 2 tokens) pads and shifts its windows
    x = torch.randn(1, 1, 24, 24, 8)
    box = torch.tensor([[[0.3, 0.3, 0.0], [0.7, 0.7, 1.0]]])  # intersects the middle 2 x 2 cells
    # with the scan memory, its write pass (the scan view) runs before and outside the recording
    memory = net.write_scan_memory(torch.randn(1, 1, 24, 24, 8)) if scan else None
    _, records = record_attention(net, x, box, memory)
    got = attention_rollout(net, records, x.shape, box, residual)
    write = net.memory_context(box, 1, torch.device("cpu")).write[0, :, 0].bool().numpy()
    assert write.sum() == 4
    want = _dense_rollout(net, records, x.shape, write, residual)
    np.testing.assert_allclose(got.sources, want, atol=1e-12)
    assert want.sum() == pytest.approx(1.0, abs=1e-6) and got.memory_share == pytest.approx(want[1:].sum())
    assert got.cells.sum() == pytest.approx(1.0, abs=1e-12) and got.cells.min() >= 0
    np.testing.assert_allclose(got.cells.ravel(), want[1:] / want[1:].sum(), atol=1e-12)


def test_recording_leaves_the_logits_unchanged_and_fused_and_manual_attention_give_one_map():
    fused = small(use_flash_attention=True)
    manual = small(use_flash_attention=False)
    manual.load_state_dict(fused.state_dict())
    x = torch.randn(1, 1, 16, 16, 8)
    with torch.no_grad():
        plain = fused(x, CORNER)
    logits, records = record_attention(fused, x, CORNER)
    assert torch.equal(plain, logits) and len(records) == 3 * 2 * 3  # 3 stages x 2 blocks x (V, G, W)-MSA
    a = crop_memory_map(fused, x, CORNER)
    b = crop_memory_map(manual, x, CORNER)
    np.testing.assert_allclose(a.sources, b.sources, atol=1e-6)


def test_recorder_stores_the_softmax_each_attention_path_used_and_only_while_active():
    from monai_fine.networks.blocks.attention import Attention, AttentionRecorder

    torch.manual_seed(0)
    fused, manual = Attention(16, 2, use_flash_attention=True), Attention(16, 2, use_flash_attention=False)
    manual.load_state_dict(fused.state_dict())
    x = torch.randn(3, 6, 16)
    mask = torch.tensor([True, True, False, True, False, True]).view(1, 1, 1, 6)
    fused(x, mask)  # no recorder: nothing kept anywhere
    with AttentionRecorder() as rec:
        fused(x, mask)
        manual(x, mask)
    (m1, w1), (m2, w2) = rec.records
    assert m1 is fused and m2 is manual and w1.shape == (3, 2, 6, 6)
    torch.testing.assert_close(w1, w2, rtol=0, atol=1e-6)
    assert w1[..., [2, 4]].abs().max() == 0 and torch.allclose(w1.sum(-1), torch.ones(3, 2, 6))
    q, k, _ = fused.qkv(x).reshape(3, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)  # an independent softmax of the same logits
    want = ((q @ k.transpose(-2, -1)) / 8**0.5).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(w1, want.detach(), rtol=0, atol=1e-6)
    fused(x, mask)
    assert len(rec.records) == 2  # the recorder stopped at the end of the block


def test_rollout_refuses_a_network_without_all_volume_attention_or_in_training_mode():
    net = small(memory="released")
    with pytest.raises(ValueError, match=r"memory='full'.*'released'"):
        attention_rollout(net, [], (1, 1, 16, 16, 8), CORNER)
    net = small().train()
    visits = net.memory_visits.clone()
    with pytest.raises(ValueError, match="eval mode"):
        record_attention(net, torch.randn(1, 1, 16, 16, 8), CORNER)
    with pytest.raises(ValueError, match="eval mode"):
        attention_rollout(net, [], (1, 1, 16, 16, 8), CORNER)
    assert torch.equal(net.memory_visits, visits)  # no cell marked visited by the refused calls


# ---------------------------------------------------------------- the command


def _case(tmp_path, shape=(48, 40, 24), spacing=(4.0, 4.0, 4.0)):
    """A phantom CT stored LPS (x and y flipped against RAS) at 4 mm, so preprocessing reorients and resamples."""
    image, _, affine = make_phantom_case(shape, spacing, seed=3)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [(shape[0] - 1), (shape[1] - 1), 0]
    lps = affine @ flip  # voxel (i, j, k) of the flipped array is voxel (X-1-i, Y-1-j, k) of the RAS one
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image[::-1, ::-1].copy(), lps), str(path))
    return path


def _weights(tmp_path, name="model.pt", visited=True, **kw):
    net = create_network(preset="test", **kw)
    if visited:
        net.memory_visits.fill_(1.0)
    path = tmp_path / name
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_command_writes_the_png_from_a_nifti_and_a_model_pt(tmp_path):
    image, weights, out = _case(tmp_path), _weights(tmp_path), tmp_path / "map.png"
    res = subprocess.run(
        [sys.executable, "-m", "monai_fine", "memory_map", "--image", str(image), "--weights", str(weights),
         "--center", "10,30,12", "--out", str(out), "--pixdim", "[3,3,3]"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # input voxel (10, 30, 12) of the LPS file is RAS voxel (37, 9, 12) at 4 mm, i.e. about (49.3, 12, 16) at 3 mm
    assert "crop centre (49, 12, 16) (preprocessed grid" in res.stdout and "memory share" in res.stdout


def test_a_centre_outside_the_image_is_refused_before_the_weights_are_read(tmp_path):
    image = _case(tmp_path)
    junk = tmp_path / "not_a_model.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(
        ValueError, match=r"\(48, 10, 5\) is outside the input image's grid.*\[0, 47\] x \[0, 39\] x \[0, 23\]"
    ):
        memory_map_png(str(image), str(junk), "48,10,5", out=str(tmp_path / "m.png"))
    with pytest.raises(ValueError, match="three integer voxel indices x,y,z, got '1,2'"):
        memory_map_png(str(image), str(junk), "1,2")
    with pytest.raises(ValueError, match=r"outside the input image's grid"):
        memory_map_png(str(image), str(junk), (3, -1, 2))
    assert not (tmp_path / "m.png").exists()


def test_a_network_without_full_memory_or_with_no_visited_cell_is_refused(tmp_path):
    image = tmp_path / "junk.nii.gz"  # never read: the refusals come first
    image.write_bytes(b"not an image")
    window = _weights(tmp_path, "window.pt", memory="window")
    with pytest.raises(ValueError, match=r"memory='full'; .*window.pt has memory='window'"):
        memory_map_png(str(image), str(window), "1,1,1", grid="preprocessed")
    unvisited = _weights(tmp_path, "fresh.pt", visited=False)
    with pytest.raises(ValueError, match="seen no memory cell in training"):
        memory_map_png(str(image), str(unvisited), "1,1,1", grid="preprocessed")


def test_a_centre_outside_the_preprocessed_grid_names_that_grid_and_its_range(tmp_path):
    image, weights = _case(tmp_path), _weights(tmp_path)  # 48 x 40 x 24 at 4 mm -> 64 x 53 x 32 at 3 mm
    with pytest.raises(ValueError, match=r"\(64, 0, 0\) is outside the preprocessed image's grid.*\[0, 63\] x \[0, 5"):
        memory_map_png(str(image), str(weights), "64,0,0", out=str(tmp_path / "m.png"), grid="preprocessed",
                       pixdim=[3, 3, 3])  # fmt: skip
    with pytest.raises(ValueError, match="'input' or 'preprocessed', got 'world'"):
        memory_map_png(str(image), str(weights), "1,1,1", grid="world")
    assert not (tmp_path / "m.png").exists()
