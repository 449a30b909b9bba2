# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOTALSEG = SHARED / "data" / "totalseg_ct"
ZOO_SCHEMA = SHARED / "reference" / "model_zoo" / "meta_schema_20240725.json"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    if not (TOTALSEG / "example_ct.nii.gz").exists():
        pytest.skip(f"real CT fixtures not found at {TOTALSEG}")
    return TOTALSEG


@pytest.fixture(scope="session")
def zoo_schema() -> Path:
    """The Model Zoo's metadata schema (a copy of the public file that ``metadata.json`` names), for offline checks."""
    if not ZOO_SCHEMA.is_file():
        pytest.skip(f"Model Zoo metadata schema not found at {ZOO_SCHEMA}")
    return ZOO_SCHEMA
