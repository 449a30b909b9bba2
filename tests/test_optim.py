# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import copy

import pytest
import torch

from monai_fine.networks import create_fine
from monai_fine.optim import create_optimizer


def test_paper_sgd_and_adamw():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = create_optimizer("sgd", params, 0.01)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.99, True, 3e-5)
    assert isinstance(create_optimizer("adamw", params, 2e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match=r"optimizer_name must be one of.*'adam'"):
        create_optimizer("adam", params, 1e-3)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_network_memory_tokens_get_no_weight_decay(name):
    net = create_fine("test", 1, 3, memory="full")
    opt = create_optimizer(name, net, 0.01)
    decayed, kept = opt.param_groups
    expected = net.no_weight_decay()
    names = {id(p): n for n, p in net.named_parameters()}
    assert {names[id(p)] for p in kept["params"]} == expected and kept["weight_decay"] == 0.0
    assert not {names[id(p)] for p in decayed["params"]} & expected and decayed["weight_decay"] > 0
    assert len(decayed["params"]) + len(kept["params"]) == len(list(net.parameters()))
    assert sum("volume_tokens" in n for n in expected) == 7 and sum("window_tokens" in n for n in expected) == 7
    # a real step: with zero gradients, decayed weights shrink and memory tokens stay exactly as they were
    tokens = {n: p.detach().clone() for n, p in net.named_parameters() if n in expected}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    weight = net.head.weight.detach().clone()
    opt.step()
    assert all(torch.equal(p, tokens[n]) for n, p in net.named_parameters() if n in expected)
    assert not torch.equal(net.head.weight, weight)


def test_module_without_no_weight_decay_is_one_group():
    opt = create_optimizer("adamw", torch.nn.Linear(2, 2), 1e-3)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_fast_kernels_make_the_update_of_the_per_tensor_loop(name):
    """The bundle's optimiser (one fused or multi-tensor kernel) steps as torch's per-tensor reference loop does."""
    torch.manual_seed(0)
    net = create_fine("test", 1, 3, memory="full")
    ref_net = copy.deepcopy(net)
    opt = create_optimizer(name, net, 0.01)
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")
    by_name = dict(ref_net.named_parameters())
    groups = [  # each group's lr, momentum, betas and weight decay, not its kernel choice
        {
            **{k: v for k, v in g.items() if k not in ("fused", "foreach")},
            "params": [by_name[n] for n in _names(net, g["params"])],
        }
        for g in opt.param_groups
    ]
    ref = type(opt)(groups, foreach=False)
    assert all(not g["foreach"] and not g.get("fused") for g in ref.param_groups)
    for step in range(3):
        for model, optimizer in ((net, opt), (ref_net, ref)):
            torch.manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            optimizer.step()
    for (n, p), (_, q) in zip(net.named_parameters(), ref_net.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), create_fine("test", 1, 3).parameters()))


def _names(net: torch.nn.Module, params: list) -> list[str]:
    ids = {id(p): n for n, p in net.named_parameters()}
    return [ids[id(p)] for p in params]
