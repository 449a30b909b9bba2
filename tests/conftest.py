# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOTALSEG = SHARED / "data" / "totalseg_ct"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    if not (TOTALSEG / "example_ct.nii.gz").exists():
        pytest.skip(f"real CT fixtures not found at {TOTALSEG}")
    return TOTALSEG
