# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Experiments users run on their own data or the phantom, reachable as ``python -m monai_fine <name>``.

- :py:mod:`monai_fine.experiments.context_ablation`: the paper's token ablation (``context_ablation``);
- :py:mod:`monai_fine.experiments.memory_probe`: is a trained memory used? (``memory_probe``).
"""

from __future__ import annotations

__all__ = ["context_ablation", "memory_probe"]
