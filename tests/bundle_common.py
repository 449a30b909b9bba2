# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""What the bundle tests share: the config paths, the CPU-test-scale overrides and a ConfigWorkflow builder."""

from __future__ import annotations

from pathlib import Path

from monai.bundle import ConfigWorkflow

__all__ = ["BUNDLE", "CONFIGS", "META", "LOGGING", "SMALL", "workflow"]

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
