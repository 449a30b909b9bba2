# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""What the bundle tests share: the config paths, the CPU-test-scale overrides and a ConfigWorkflow builder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigWorkflow

from monai_fine.data import make_phantom_dataset

__all__ = [
    "BUNDLE", "CONFIGS", "META", "LOGGING", "SMALL", "assert_largest_components_of", "max_abs_diff", "small_phantom",
    "workflow",
]  # fmt: skip

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


def assert_largest_components_of(kept: np.ndarray, raw: np.ndarray) -> int:
    """Assert that the label map ``kept`` is ``raw`` with each label cut to one of its largest 26-connected
    components and everything else set to background, by an independent labelling (``scipy.ndimage.label``; MONAI's
    ``KeepLargestConnectedComponent`` uses scikit-image). Returns how many components were removed."""
    from scipy import ndimage

    full = np.ones((3, 3, 3), dtype=bool)
    assert kept.shape == raw.shape and ((kept == raw) | (kept == 0)).all(), "voxels changed to another organ"
    removed = 0
    for label in np.unique(raw[raw > 0]):
        components, n = ndimage.label(raw == label, structure=full)
        sizes = np.bincount(components.ravel())[1:]
        mask = kept == label
        ids = np.unique(components[mask])
        assert len(ids) == 1 and sizes[ids[0] - 1] == sizes.max() == mask.sum(), f"label {label}"
        removed += n - 1
    return removed
