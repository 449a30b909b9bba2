# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Transformer feed-forward block."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout (timm vocabulary)."""

    def __init__(
        self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(..., C)``."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
