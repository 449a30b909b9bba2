# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""What the bundle tests share: the config paths, the CPU-test-scale overrides and a ConfigWorkflow builder."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from monai_fine.data import make_phantom_dataset

__all__ = ["BUNDLE", "CONFIGS", "META", "LOGGING", "SMALL", "max_abs_diff", "small_phantom", "workflow"]

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CONFIGS = BUNDLE / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")

# a tiny network and small crops keep the whole chain at CPU-test scale
SMALL = {
    "preset": "test",
    "roi_size": [32, 32, 16],
    "pixdim": [4.0, 4.0, 4.0],
    "num_samples": 2,
    "num_workers": 0,
    "cache_rate": 0.0,
    "device": "$torch.device('cpu')",
}


def workflow(configs: list[str], workflow_type: str, run_id: str = "run", **override) -> ConfigWorkflow:
    """An initialised ``ConfigWorkflow`` of the bundle ``configs`` with :data:`SMALL` and ``override``."""
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        run_id=run_id,
        meta_file=META,
        logging_file=LOGGING,
        workflow_type=workflow_type,
        **{**SMALL, **override},
    )
    wf.initialize()
    return wf


def small_phantom(out: Path) -> Path:
    """4 phantom cases of 48x48x32 at 4 mm in BTCV layout (3 training, 1 validation) under ``out``."""
    make_phantom_dataset(
        out, num_cases=4, seed=5, shape=(48, 48, 32), spacing=(4.0, 4.0, 4.0), num_test=0, val_fraction=0.25
    )
    return out


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
