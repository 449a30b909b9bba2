# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import copy

import pytest
import torch

from monai_fine.networks import FINE, create_fine

MODES = ["none", "window", "released", "full"]


def tiny(**kw) -> FINE:
    return create_fine("test", 1, 4, **kw)


def boxes(*rows) -> torch.Tensor:
    return torch.tensor([[r[:3], r[3:]] for r in rows], dtype=torch.float32)


LEFT = (0.0, 0.0, 0.0, 0.25, 0.25, 1.0)  # cell (0, 0) of a 4x4x1 grid
RIGHT = (0.75, 0.75, 0.0, 1.0, 1.0, 1.0)  # cell (3, 3)
MIDDLE = (0.25, 0.25, 0.0, 0.5, 0.5, 1.0)  # cell (1, 1)


def cell(i, j, grid=(4, 4, 1)) -> int:
    return i * grid[1] * grid[2] + j * grid[2]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(32, 32, 16), (64, 32, 48), (16, 16, 16)], ids=str)
def test_output_shapes(mode, size):
    net = tiny(memory=mode, deep_supervision=True)
    x = torch.randn(2, 1, *size)
    out = net(x, boxes(LEFT, RIGHT))
    assert [tuple(o.shape) for o in out] == [
        (2, 4, *size),
        (2, 4, *(s // 2 for s in size)),
        (2, 4, *(s // 4 for s in size)),
    ]
    net.eval()
    assert net(x).shape == (2, 4, *size)


def test_bad_sizes_raise():
    net = tiny()
    with pytest.raises(ValueError, match=r"\(40, 32, 16\).*stride \(16, 16, 16\)"):
        net(torch.randn(1, 1, 40, 32, 16))
    with pytest.raises(ValueError, match="channels"):
        net(torch.randn(1, 2, 32, 32, 16))
    with pytest.raises(ValueError, match=r"\(B, C, X, Y, Z\)"):
        net(torch.randn(32, 32, 16))
    with pytest.raises(ValueError, match="roi_box must have shape"):
        net(torch.randn(1, 1, 32, 32, 16), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="memory must be one of"):
        tiny(memory="intended")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        tiny(feature_size=10, num_heads=(3, 3, 3, 3))
    with pytest.raises(ValueError, match="scan_memory=True needs memory='full'"):
        tiny(memory="window", scan_memory=True)
    with pytest.raises(ValueError, match=r"\(100, 128, 64\)"):
        create_fine("tiny", roi_size=(100, 128, 64))


@pytest.mark.parametrize("mode", MODES)
def test_every_parameter_gets_a_gradient(mode):
    net = tiny(memory=mode, deep_supervision=True)
    out = net(torch.randn(2, 1, 32, 32, 16), boxes(LEFT, MIDDLE))
    sum(o.square().mean() for o in out).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    zero = [n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert not missing and not zero, (missing, zero)
    assert all(torch.isfinite(o).all() for o in out)


def test_token_parameters_are_named():
    names = [n for n, _ in tiny(memory="full").named_parameters()]
    assert sum("volume_tokens" in n for n in names) == 7  # one per stage: 4 encoder + 3 decoder
    assert sum("window_tokens" in n for n in names) == 7
    none_names = [n for n, _ in tiny(memory="none").named_parameters()]
    assert not any("tokens" in n for n in none_names)


def _visit(net: FINE, *rows) -> None:
    """Training-mode forwards mark the cells of the given crops as visited."""
    net.train()
    with torch.no_grad():
        for r in rows:
            net(torch.randn(1, 1, 32, 32, 16), boxes(r))
    net.eval()


def _perturb_cell(net: FINE, c: int, scale: float = 1.0) -> FINE:
    other = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name.endswith("volume_tokens"):
                p[c] += scale * torch.randn_like(p[c])
    return other


@pytest.mark.parametrize("mode,changes", [("full", True), ("released", False)])
def test_seen_non_intersecting_volume_token_reaches_the_output(mode, changes):
    net = tiny(memory=mode)
    _visit(net, LEFT, RIGHT)
    x = torch.randn(1, 1, 32, 32, 16)
    ref = net(x, boxes(LEFT))
    out = _perturb_cell(net, cell(3, 3))(x, boxes(LEFT))  # cell of RIGHT, not intersecting LEFT
    diff = (out - ref).abs().max().item()
    assert (diff > 0) == changes, diff  # unreached parameters leave the computation bit-identical
    # the intersecting cell changes the output in both modes
    assert (_perturb_cell(net, cell(0, 0))(x, boxes(LEFT)) - ref).abs().max() > 0


def test_unseen_cells_have_no_effect_and_no_gradient():
    net = tiny(memory="full")
    net.train()
    x = torch.randn(2, 1, 32, 32, 16)
    out = net(x, boxes(LEFT, MIDDLE))
    out.square().mean().backward()
    visited = {cell(0, 0), cell(1, 1)}
    for name, p in net.named_parameters():
        if name.endswith("volume_tokens"):
            rows = p.grad.abs().sum(1)
            assert all(rows[c] > 0 for c in visited), name
            assert all(rows[c] == 0 for c in range(16) if c not in visited), name
    net.eval()
    # a crop that intersects an unseen cell: that cell's token changes nothing, in eval or in a new training pass
    ref = net(x[:1], boxes(RIGHT))
    assert torch.equal(_perturb_cell(net, cell(3, 3), 10.0)(x[:1], boxes(RIGHT)), ref)
    assert torch.equal(_perturb_cell(net, cell(2, 2), 10.0)(x[:1], boxes(LEFT)), net(x[:1], boxes(LEFT)))


def test_eval_does_not_mark_visits_and_visits_are_saved():
    net = tiny(memory="full").eval()
    with torch.no_grad():
        net(torch.randn(1, 1, 32, 32, 16), boxes(LEFT))
    assert net.memory_visits.sum() == 0
    _visit(net, LEFT, LEFT, RIGHT)
    assert net.memory_visits[cell(0, 0)] == 2 and net.memory_visits[cell(3, 3)] == 1
    state = net.state_dict()
    assert "memory_visits" in state
    fresh = tiny(memory="full")
    fresh.load_state_dict(state)
    fresh.eval()
    x = torch.randn(1, 1, 32, 32, 16)
    torch.testing.assert_close(fresh(x, boxes(MIDDLE)), net(x, boxes(MIDDLE)))


@pytest.mark.parametrize("mode", MODES)
def test_batch_of_three_equals_three_batches_of_one(mode):
    net = tiny(memory=mode)
    _visit(net, LEFT, RIGHT, MIDDLE)
    x = torch.randn(3, 1, 32, 32, 16)
    b = boxes(LEFT, RIGHT, MIDDLE)
    batched = net(x, b)
    single = torch.cat([net(x[i : i + 1], b[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_eval_is_deterministic_with_dropout():
    net = tiny(memory="full", drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    torch.testing.assert_close(net(x, boxes(LEFT)), net(x, boxes(LEFT)), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["none", "full"])
def test_gradient_checkpointing_parity(mode):
    net = tiny(memory=mode, deep_supervision=True)
    ckpt = copy.deepcopy(net)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 1, 32, 32, 16)
    for m in (net, ckpt):
        out = m(x, boxes(LEFT, MIDDLE))
        sum(o.square().mean() for o in out).backward()
    for (n, p), (_, q) in zip(net.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_manual_networks_agree(fused):
    a = tiny(memory="full", use_flash_attention=True)
    b = tiny(memory="full", use_flash_attention=False)
    b.load_state_dict(a.state_dict())
    _visit(a, LEFT)
    _visit(b, LEFT)
    x = torch.randn(1, 1, 48, 32, 16)  # 48 -> stage windows padded, masked
    torch.testing.assert_close(a(x, boxes(MIDDLE)), b(x, boxes(MIDDLE)), rtol=1e-4, atol=1e-5)


def test_trace_without_roi_box():
    net = tiny(memory="full")
    _visit(net, LEFT, RIGHT)
    x = torch.randn(1, 1, 32, 32, 16)
    traced = torch.jit.trace(net, x, check_trace=False)
    torch.testing.assert_close(traced(x), net(x), rtol=1e-5, atol=1e-5)
    x2 = torch.randn(1, 1, 32, 32, 16)
    torch.testing.assert_close(traced(x2), net(x2), rtol=1e-5, atol=1e-5)


def _scaled(net: FINE, factor: float = 10.0) -> FINE:
    """Weights well above init scale (std 0.02 leaves the memory path's effect near float noise)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(factor)
    return net


def test_scan_view_memory_shares_content_within_a_scan_only():
    net = _scaled(tiny(memory="full", scan_memory=True))
    _visit(net, LEFT, RIGHT)
    net.eval()
    x = torch.randn(2, 1, 32, 32, 16)
    b = boxes(LEFT, RIGHT)
    views = torch.randn(2, 1, 32, 32, 16)  # scan 0 and scan 1, each its whole volume at the crop size
    changed = views.clone()
    changed[1] += 3.0 * torch.randn_like(changed[1])  # change only scan 1's content
    one_scan, two_scans = torch.tensor([0, 0]), torch.tensor([0, 1])
    out = net(x, b, scan_index=one_scan, scan_view=views)
    assert (
        net(x, b, scan_index=two_scans, scan_view=changed)[1] - net(x, b, scan_index=two_scans, scan_view=views)[1]
    ).abs().max() > 1e-4
    assert torch.equal(net(x, b, scan_index=one_scan, scan_view=changed), out)  # nobody reads scan 1
    assert (out - net(x, b)).abs().max() > 1e-4  # the memory changes the output
    with pytest.raises(ValueError, match="scan_index is needed"):
        net(torch.randn(3, 1, 32, 32, 16), boxes(LEFT, RIGHT, MIDDLE), scan_view=views)
    with pytest.raises(ValueError, match="memory='full'"):
        tiny(memory="released")(x, b, scan_view=views)


def test_training_forward_equals_explicit_write_then_read():
    """The one-call training form (scan_view) computes exactly what the inferer's explicit two steps compute."""
    net = _scaled(tiny(memory="full", scan_memory=True))
    _visit(net, LEFT, RIGHT)
    net.eval()
    x = torch.randn(3, 1, 32, 32, 16)
    b = boxes(LEFT, RIGHT, MIDDLE)
    views = torch.randn(2, 1, 32, 32, 16)
    view_boxes = boxes((0.0, 0.0, 0.0, 1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.5, 1.0, 1.0))
    ids = torch.tensor([1, 0, 1])
    one_call = net(x, b, scan_index=ids, scan_view=views, scan_view_box=view_boxes)
    summary = net.write_scan_memory(views, view_boxes)
    torch.testing.assert_close(net(x, b, scan_index=ids, scan_summary=summary), one_call, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        net(x, b, scan_index=ids, scan_summary=summary, scan_view=views)
    with pytest.raises(ValueError, match=r"out of range \[0, 2\)"):
        net(x, b, scan_index=torch.tensor([0, 2, 1]), scan_summary=summary)


def test_an_encoder_written_memory_costs_about_half_the_write_pass_and_feeds_the_decoder():
    """``scan_write="encoder"``: the write pass runs the encoder only (FLOPs counted by torch: at most 60 % of the
    every-stage pass), writes no decoder slot, and a decoder stage reads its level's encoder slot: changing only
    what the bottleneck's level wrote still changes the output."""
    from torch.utils.flop_counter import FlopCounterMode

    view = torch.randn(1, 1, 32, 32, 16)
    flops = {}
    for write in ("all", "encoder"):
        net = _scaled(tiny(memory="full", scan_memory=True, scan_write=write)).eval()
        with FlopCounterMode(display=False) as counter:
            summary = net.write_scan_memory(view)
        flops[write] = counter.get_total_flops()
    assert flops["encoder"] <= 0.7 * flops["all"]
    assert [bool(c.any()) for c in summary.counts] == [True] * 4 + [False] * 3
    assert [net.scan_slot(k) for k in range(7)] == [0, 1, 2, 3, 2, 1, 0]
    x, b = torch.randn(1, 1, 32, 32, 16), boxes(LEFT)
    with torch.no_grad():
        out = net(x, b, scan_summary=summary)
        summary.sums[0] = summary.sums[0] + 3.0 * torch.randn_like(summary.sums[0])  # level 0: stages 0 and 6 read it
        assert (net(x, b, scan_summary=summary) - out).abs().max() > 1e-4
    with pytest.raises(ValueError, match="scan_write must be one of"):
        tiny(memory="full", scan_memory=True, scan_write="decoder")
    with pytest.raises(ValueError, match="scan_read must be one of"):
        tiny(memory="full", scan_memory=True, scan_read="polar")


def test_scan_view_training_step_gives_gradients_through_the_write_pass():
    net = tiny(memory="full", scan_memory=True)
    x = torch.randn(2, 1, 32, 32, 16)
    views = torch.randn(1, 1, 32, 32, 16, requires_grad=True)
    out = net(x, boxes(LEFT, RIGHT), scan_index=torch.tensor([0, 0]), scan_view=views)
    out[0].square().mean().backward()  # crop 0's loss reaches the scan view through the memory
    assert views.grad.abs().sum() > 0
    assert net.memory_visits.min() >= 1  # the view covers every cell


def test_presets_and_parameter_counts():
    assert create_fine("tiny").roi_size == (32, 32, 16)
    with torch.device("meta"):
        none = create_fine("bcv", memory="none")
        full = create_fine("bcv", memory="full")
        separate = create_fine("bcv", memory="full", share_memory_attention=False)
    assert none.roi_size == (128, 128, 64)
    n_none = sum(p.numel() for p in none.parameters())
    n_full = sum(p.numel() for p in full.parameters())
    n_sep = sum(p.numel() for p in separate.parameters())
    # full adds tokens, LayerNorms and nothing else when sharing projections
    assert 0 < n_full - n_none < 0.01 * n_none
    # separate memory attention adds 2 x 4C^2 (+ biases) per block
    dims = [192, 384, 768, 1536, 768, 384, 192]
    extra = sum(2 * 2 * (4 * c * c + 4 * c) for c in dims)
    assert n_sep - n_full == extra
    assert 100e6 < n_none < 160e6


def test_metatensor_input_runs_as_a_plain_tensor_with_gradients():
    """MONAI hands crops over as MetaTensors; the network computes on a plain view of them (no per-operation
    ``__torch_function__``): the same logits, a plain tensor out, and the gradient still reaches the input."""
    from monai.data import MetaTensor

    net = tiny(memory="full", scan_memory=True)
    _visit(net, LEFT)
    net.train()
    x = torch.randn(1, 1, 32, 32, 16)
    meta = MetaTensor(x.clone(), affine=torch.eye(4) * 2).requires_grad_(True)
    view = MetaTensor(torch.randn(1, 1, 32, 32, 16))
    torch.manual_seed(0)
    out_meta = net(meta, MetaTensor(boxes(LEFT)), scan_view=view)
    torch.manual_seed(0)
    out_plain = net(x, boxes(LEFT), scan_view=view.as_tensor())
    assert type(out_meta) is torch.Tensor
    torch.testing.assert_close(out_meta, out_plain, rtol=0, atol=0)
    out_meta.sum().backward()
    assert meta.grad is not None and meta.grad.abs().sum() > 0
