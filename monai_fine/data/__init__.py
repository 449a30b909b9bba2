# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Data utilities: the synthetic abdominal CT phantom, BTCV datalists, up-front datalist checks, DICOM series input,
atomic writes and safe checkpoint loads."""

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
from monai_fine.data.datalist import (
    BTCV_TEST_IDS,
    BTCV_TRAIN_IDS,
    BTCV_VAL_IDS,
    btcv_18_12_datalist,
    build_datalist,
    datalist,
)
from monai_fine.data.dicom import NiftiOrDicomReader, check_series, list_images, series_name_formatter
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
from monai_fine.data.phantom import (
    BTCV_LABELS,
    PHANTOM,
    PhantomProtocol,
    make_phantom_case,
    make_phantom_dataset,
    phantom,
)

__all__ = [
    "BTCV_LABELS",
    "BTCV_TEST_IDS",
    "BTCV_TRAIN_IDS",
    "BTCV_VAL_IDS",
    "AtomicNibabelWriter",
    "NiftiOrDicomReader",
    "UnsafeCheckpointError",
    "WriteFailedError",
    "atomic_write",
    "btcv_18_12_datalist",
    "build_datalist",
    "check",
    "check_datalist",
    "check_datalist_file",
    "check_file_exists",
    "check_images",
    "check_nonempty",
    "check_option",
    "check_output_names",
    "check_series",
    "check_writable_dir",
    "datalist",
    "list_images",
    "load_datalist",
    "PHANTOM",
    "PhantomProtocol",
    "make_phantom_case",
    "make_phantom_dataset",
    "phantom",
    "series_name_formatter",
    "torch_load",
    "torch_save",
]
