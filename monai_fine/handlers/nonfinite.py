# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""A non-finite training loss stops the run before it reaches the weights: :class:`NonFiniteLossGuard`."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from monai_fine.handlers.case_errors import batch_case_names

__all__ = ["NonFiniteLossGuard"]


class NonFiniteLossGuard:
    """Stop training before the optimizer step when a batch's loss is NaN/inf, naming the case files of the batch.

    Attached at MONAI's ``IterationEvents.LOSS_COMPLETED`` (after the loss, before backward), so non-finite values
    never reach the weights; the checkpoints already written stay the last good state.

    Args:
        image_key: batch key whose metadata holds the source file names.
    """

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        loss = engine.state.output[Keys.LOSS]
        if bool(torch.isfinite(loss.detach()).all()):
            return
        names = batch_case_names(engine.state.batch, self.image_key) or ["<unknown: no file metadata in the batch>"]
        raise FloatingPointError(
            f"non-finite training loss ({loss.detach().flatten()[0].item()}) at epoch {engine.state.epoch}, iteration "
            f"{engine.state.iteration}; stopped before the optimizer step (weights unchanged). The batch came from: "
            + ", ".join(names)
            + ". Check them with `python -m monai_fine check` (NaN/inf intensities?) or lower the learning rate."
        )
