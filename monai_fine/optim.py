# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Optimisers the bundle can be switched between with its ``optimizer_name`` tunable."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["OPTIMIZERS", "create_optimizer"]

OPTIMIZERS = ("sgd", "adamw")


def create_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``"sgd"``: the paper's recipe (SGD, momentum 0.99, Nesterov, weight decay 3e-5; lr 0.01 in the paper).
    ``"adamw"``: AdamW with weight decay 0.01, which learns far faster in short CPU budgets (the demo and the phantom
    ablation use it with lr 2e-3)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=3e-5)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    raise ValueError(f"optimizer_name must be one of {OPTIMIZERS}, got {name!r}.")
