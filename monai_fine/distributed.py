# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Multi-GPU (``torchrun``) helpers used by ``bundle/configs/multi_gpu_train.json`` and ``multi_gpu_evaluate.json``.

``init_distributed`` joins the process group that ``torchrun`` describes in the environment (``nccl`` on CUDA, ``gloo``
on CPU) and returns this rank's device; ``ShardLogger`` logs which cases a rank's engine saw in each epoch, so that the
data split across ranks can be checked from the logs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from monai_fine.handlers.case_errors import batch_case_names

__all__ = ["init_distributed", "ShardLogger"]

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_distributed(backend: str | None = None) -> torch.device:
    """Initialise ``torch.distributed`` from ``torchrun``'s environment (once) and return this rank's device.

    Args:
        backend: ``"nccl"``, ``"gloo"`` or ``None`` for ``nccl`` when CUDA is available, else ``gloo``.

    Returns:
        ``cuda:<LOCAL_RANK>`` (also made the current CUDA device) when CUDA is available, else ``cpu``.

    Raises:
        RuntimeError: when a ``torchrun`` environment variable is missing (the config was run without ``torchrun``).
    """
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi-GPU configs must be started with torchrun (e.g. `torchrun --nproc_per_node=2 -m monai.bundle run "
            f"...`); missing environment variables: {missing}."
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
    return torch.device("cuda", local_rank) if cuda else torch.device("cpu")


class ShardLogger:
    """Log, at the end of every epoch, the cases this rank's engine has loaded in that epoch.

    The case name is the file name of the image's ``filename_or_obj`` (``batch_case_names``); the log line reads
    ``rank R/W <name> epoch E cases: [...]``.

    Args:
        name: label of the engine in the log line (``"train"``, ``"validate"``).
        image_key: batch key of the image whose ``filename_or_obj`` names the case (in its ``MetaTensor`` metadata or,
            for a plain tensor, in ``f"{image_key}_meta_dict"``; :func:`monai_fine.handlers.batch_case_names`).
        logger_name: logger to write to.
    """

    def __init__(self, name: str, image_key: str = "image", logger_name: str = "monai_fine.distributed") -> None:
        self.name = name
        self.image_key = image_key
        self.logger = logging.getLogger(logger_name)
        self.cases: set[str] = set()

    def attach(self, engine: Engine) -> None:
        """Record the cases of every iteration of ``engine`` and log them when each epoch completes."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log)

    def record(self, engine: Engine) -> None:
        """Add the cases of the current batch (collated, or decollated into a list of items by MONAI's engines)."""
        self.cases.update(Path(n).name for n in batch_case_names(engine.state.batch, self.image_key))

    def log(self, engine: Engine) -> None:
        """Log the epoch's cases with this rank's number."""
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.logger.info(f"rank {rank}/{world} {self.name} epoch {engine.state.epoch} cases: {sorted(self.cases)}")
