# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Data utilities: the synthetic abdominal CT phantom, BTCV datalists and up-front datalist checks."""

from __future__ import annotations

from monai_fine.data.checks import (
    check,
    check_datalist,
    check_datalist_file,
    check_file_exists,
    check_images,
    check_nonempty,
    check_option,
    load_datalist,
)
from monai_fine.data.io import (
    AtomicNibabelWriter,
    UnsafeCheckpointError,
    WriteFailedError,
    atomic_write,
    check_output_names,
    check_writable_dir,
    torch_load,
    torch_save,
)
from monai_fine.data.datalist import (
    BTCV_TEST_IDS,
    BTCV_TRAIN_IDS,
    BTCV_VAL_IDS,
    btcv_18_12_datalist,
    build_datalist,
    datalist,
)
from monai_fine.data.phantom import BTCV_LABELS, make_phantom_case, make_phantom_dataset, phantom

__all__ = [
    "AtomicNibabelWriter",
    "UnsafeCheckpointError",
    "WriteFailedError",
    "atomic_write",
    "torch_load",
    "torch_save",
    "check_nonempty",
    "check_output_names",
    "check_writable_dir",
    "load_datalist",
    "BTCV_LABELS",
    "BTCV_TEST_IDS",
    "BTCV_TRAIN_IDS",
    "BTCV_VAL_IDS",
    "btcv_18_12_datalist",
    "build_datalist",
    "check",
    "check_datalist",
    "check_datalist_file",
    "check_file_exists",
    "check_images",
    "check_option",
    "datalist",
    "make_phantom_case",
    "make_phantom_dataset",
    "phantom",
]
