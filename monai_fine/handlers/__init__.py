# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Ignite handlers of monai_fine: per-organ Dice and HD95 (mm) metrics; atomic, exactly resumable checkpoints;
preemption-safe stops; a guard against non-finite losses; failures that name the case."""

from __future__ import annotations

from monai_fine.handlers.case_errors import CaseErrorReporter, batch_case_names
from monai_fine.handlers.checkpoint import BestModelSaver, ResumableCheckpointSaver, checkpoint_files, checkpoint_name
from monai_fine.handlers.metrics import HausdorffDistance95, OrganDice
from monai_fine.handlers.nonfinite import NonFiniteLossGuard
from monai_fine.handlers.preemption import PreemptionHandler

__all__ = [
    "OrganDice",
    "HausdorffDistance95",
    "BestModelSaver",
    "CaseErrorReporter",
    "NonFiniteLossGuard",
    "PreemptionHandler",
    "ResumableCheckpointSaver",
    "batch_case_names",
    "checkpoint_files",
    "checkpoint_name",
]
