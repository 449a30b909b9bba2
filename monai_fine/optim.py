# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Optimisers the bundle can be switched between with its ``optimizer_name`` tunable."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["OPTIMIZERS", "create_optimizer", "param_groups"]

OPTIMIZERS = ("sgd", "adamw")
_WEIGHT_DECAY = {"sgd": 3e-5, "adamw": 0.01}
_FUSED_ON_CPU = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)


def param_groups(network: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups of ``network``: decayed, and not decayed (the names its ``no_weight_decay()`` returns,
    e.g. :meth:`monai_fine.networks.FINE.no_weight_decay`: memory tokens and relative-position tables).

    A group left empty is dropped. A module without ``no_weight_decay`` gets one decayed group.
    """
    skip = set(network.no_weight_decay()) if hasattr(network, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in network.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def create_optimizer(
    name: str, params: torch.nn.Module | Iterable[torch.nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """``"sgd"``: the paper's recipe (SGD, momentum 0.99, Nesterov, weight decay 3e-5; lr 0.01 in the paper).
    ``"adamw"``: AdamW with weight decay 0.01, which learns far faster in short CPU budgets (the demo and the phantom
    ablation use it, with lr 1e-3 and 2e-3).

    Args:
        name: ``"sgd"`` or ``"adamw"``.
        params: the network (a module: its ``no_weight_decay()`` parameters get no weight decay, see
            :func:`param_groups`) or an iterable of parameters / parameter groups (all decayed).
        lr: learning rate.

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer_name must be one of {OPTIMIZERS}, got {name!r}.")
    wd = _WEIGHT_DECAY[name]
    if isinstance(params, torch.nn.Module):
        params = param_groups(params, wd)
    # one kernel over all parameters instead of one Python loop over 300 tensors: at the demo's size the loop was
    # 17 % of a training step on CPU (AdamW: 195 -> 162 ms per step, tiny preset, 2 threads); same update up to
    # float rounding. Fused CPU kernels need torch >= 2.4; older torch takes the multi-tensor (foreach) kernels.
    fast = {"fused": True} if _FUSED_ON_CPU else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=wd, **fast)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fast)
