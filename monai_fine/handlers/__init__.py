# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Ignite handlers of monai_fine: per-organ Dice and HD95 (mm) metric handlers."""

from __future__ import annotations

from monai_fine.handlers.metrics import HausdorffDistance95, OrganDice

__all__ = ["OrganDice", "HausdorffDistance95"]
