# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Up-front checks of a segmentation datalist, so that bad data fails in seconds rather than hours into training.

:func:`check_datalist` reads every NIfTI header (shape, affine) and, by default, the voxel data (NaN/inf intensities,
label values) and raises one ``ValueError`` that lists every problem found, one line each, naming the file. An image
given as a folder is a DICOM series: its headers are checked by :func:`monai_fine.data.dicom.check_series` (one CT
series, consistent geometry) and, with ``check_values``, every slice's pixel data is decoded.
In a bundle it runs in the ``initialize`` list::

    "$monai_fine.data.check_datalist(@train#dataset#data + @validate#dataset#data)"
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import load_decathlon_datalist

from monai_fine.data.dicom import check_series, pixel_problems

__all__ = [
    "check_datalist",
    "check_datalist_file",
    "check",
    "check_images",
    "check_file_exists",
    "check_option",
    "check_nonempty",
    "load_datalist",
    "DEFAULT_MAX_IMAGE_VOXELS",
]

_MAX_LISTED = 10
DEFAULT_MAX_IMAGE_VOXELS = 512 * 512 * 1024
"""Default size limit of one image (voxels): 512 x 512 x 1024, 1 GiB as float32."""


def _spatial_shape(shape: Sequence[int]) -> tuple[int, ...] | None:
    """The 3D spatial shape of a NIfTI array shape, allowing trailing singleton dims; ``None`` if it is not 3D."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    return tuple(int(d) for d in dims) if len(dims) == 3 else None


def _list_values(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:_MAX_LISTED])
    return shown + (f", ... ({values.size} distinct)" if values.size > _MAX_LISTED else "")


class _SeriesImage:
    """A DICOM series folder in the checker's terms: the shape and affine its reader will produce."""

    def __init__(self, shape: tuple[int, ...], affine: np.ndarray) -> None:
        self.shape, self.affine = shape, affine


class _Checker:
    """Collects problems of one datalist; ``load`` returns ``None`` (after recording why) for unusable files."""

    def __init__(self, num_classes: int, check_values: bool, affine_atol: float, max_voxels: int | None = None) -> None:
        self.num_classes, self.check_values, self.affine_atol = num_classes, check_values, affine_atol
        self.max_voxels = max_voxels
        self.problems: list[str] = []

    def fail(self, path: str | os.PathLike, problem: str) -> None:
        self.problems.append(f"{path}: {problem}")

    def load(self, path: Any, role: str) -> Any:
        if not isinstance(path, (str, os.PathLike)):
            self.fail(repr(path), f"{role} path must be a file name, got {type(path).__name__}")
            return None
        if Path(path).is_dir():
            return self.load_series(path, role)
        if not Path(path).is_file():
            self.fail(path, f"missing file ({role} does not exist)")
            return None
        try:
            img = nib.load(str(path))
            if not hasattr(img, "affine") or img.affine is None:
                raise ValueError("no affine in the header")
        except Exception as e:  # nibabel raises many types for unreadable files
            self.fail(path, f"unreadable {role}, not a valid NIfTI file ({type(e).__name__}: {e})")
            return None
        shape = _spatial_shape(img.shape)
        if shape is None:
            self.fail(path, f"{role} is not 3D: shape {tuple(img.shape)} (expected (X, Y, Z) or (X, Y, Z, 1))")
            return None
        if not self.size_ok(path, role, shape):
            return None
        if abs(np.linalg.det(img.affine[:3, :3])) < 1e-8:
            self.fail(path, f"{role} affine is singular (zero voxel size): {img.affine[:3, :3].tolist()}")
        return img

    def load_series(self, path: str | os.PathLike, role: str) -> _SeriesImage | None:
        """A folder: a DICOM series (images only), checked from its headers; pixel data decoded with check_values."""
        if role != "image":
            self.fail(path, f"{role} is a folder; only images may be DICOM series folders, a {role} must be NIfTI")
            return None
        if str(path).endswith(("/", os.sep)):
            self.fail(path, "remove the trailing path separator: the output file is named after the folder's name")
            return None
        try:
            series = check_series(path)
        except ImportError as e:
            self.fail(path, str(e))
            return None
        for problem in series.problems or []:
            self.fail(path, f"DICOM series: {problem}")
        if series.problems or series.shape is None or not self.size_ok(path, role, series.shape):
            return None
        if self.check_values:  # after the size check: a series above the limit is not read
            for problem in pixel_problems(series.files):
                self.fail(path, f"DICOM series: {problem}")
        return _SeriesImage(series.shape, series.affine)

    def size_ok(self, path: str | os.PathLike, role: str, shape: Sequence[int]) -> bool:
        voxels = int(np.prod(shape, dtype=np.int64))
        if self.max_voxels is not None and voxels > self.max_voxels:
            self.fail(
                path,
                f"{role} declares {' x '.join(map(str, shape))} = {voxels} voxels, above the limit max_image_voxels="
                f"{self.max_voxels} (refused from the header; nothing was read)",
            )
            return False
        return True

    def read(self, img: Any, path: Any, role: str) -> np.ndarray | None:
        try:
            return np.asanyarray(img.dataobj)
        except Exception as e:  # truncated or corrupt voxel data
            self.fail(path, f"unreadable {role} voxel data, file truncated or corrupt ({type(e).__name__}: {e})")
            return None

    def image_values(self, img: Any, path: Any) -> None:
        if isinstance(img, _SeriesImage):  # integer pixel data, decoded by check_series
            return
        data = self.read(img, path, "image")
        if data is not None and np.issubdtype(data.dtype, np.floating):
            bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            if bad:
                nans = int(np.count_nonzero(np.isnan(data)))
                self.fail(path, f"image has {bad} non-finite intensities ({nans} NaN, {bad - nans} inf)")

    def label_values(self, img: Any, path: Any) -> None:
        data = self.read(img, path, "label")
        if data is None:
            return
        if np.issubdtype(data.dtype, np.floating):
            non_integer = data[~(np.isfinite(data) & (np.mod(data, 1) == 0))]
            if non_integer.size:
                values = _list_values(np.unique(non_integer))
                self.fail(path, f"label has {non_integer.size} non-integer values: {values}")
                return
        lo, hi = data.min(), data.max()
        if lo < 0 or hi > self.num_classes - 1:
            outside = np.unique(data[(data < 0) | (data > self.num_classes - 1)])
            allowed = f"0..{self.num_classes - 1} (num_classes={self.num_classes})"
            self.fail(path, f"label values outside {allowed}: {_list_values(outside)}")

    def item(self, item: Mapping[str, Any], index: int, image_key: str, label_key: str) -> None:
        if image_key not in item:
            self.problems.append(f"item {index}: no '{image_key}' key (keys: {sorted(item)})")
            return
        image_path = item[image_key]
        image = self.load(image_path, "image")
        label_path = item.get(label_key)
        label = self.load(label_path, "label") if label_path is not None else None
        if image is not None and label is not None:
            image_shape, label_shape = _spatial_shape(image.shape), _spatial_shape(label.shape)
            if image_shape != label_shape:
                self.fail(
                    label_path, f"label shape {label_shape} does not match image shape {image_shape} ({image_path})"
                )
            diff = float(np.abs(np.asarray(image.affine) - np.asarray(label.affine)).max())
            if diff > self.affine_atol:
                self.fail(
                    label_path,
                    f"label affine differs from the image affine by up to {diff:.4g} (tolerance {self.affine_atol:g}; "
                    f"{image_path})",
                )
        if self.check_values:
            if image is not None:
                self.image_values(image, image_path)
            if label is not None:
                self.label_values(label, label_path)


def check_datalist(
    items: Sequence[Mapping[str, Any]],
    num_classes: int = 14,
    image_key: str = "image",
    label_key: str = "label",
    check_values: bool = True,
    max_cases: int | None = None,
    affine_atol: float = 1e-2,
    max_image_voxels: int | None = DEFAULT_MAX_IMAGE_VOXELS,
) -> bool:
    """Check that every image/label pair of a datalist can be trained on.

    Per item: the files exist and are readable NIfTI; the image and the label are 3D (a trailing channel of size 1 is
    allowed); image and label have the same shape and the same affine (within ``affine_atol``). With
    ``check_values``, the voxel data is also read: the image has no NaN/inf intensities, the label has integer values
    in ``0..num_classes-1``. Items without ``label_key`` (test images) are checked as images only.

    Args:
        items: datalist items with absolute (or working-directory relative) paths, e.g. from
            :func:`monai.data.load_decathlon_datalist`.
        num_classes: number of classes including background.
        image_key: key of the image path in each item.
        label_key: key of the label path in each item.
        check_values: also read the voxel data (slower: one full read per file; truncated files are only detected
            this way).
        max_cases: check only the first ``max_cases`` items; ``None`` checks all.
        affine_atol: largest accepted absolute difference between the image and label affines (mm).
        max_image_voxels: largest accepted number of voxels of one file, checked from the header before any voxel
            is read (a 2048^3 header is refused, not read into memory); ``None`` for no limit.

    Returns:
        True when every item passes, so the call can sit in a bundle's ``initialize`` expression list.

    Raises:
        ValueError: listing every problem found, one line each, as ``<file>: <problem and offending values>``.
    """
    checker = _Checker(num_classes, check_values, affine_atol, max_image_voxels)
    selected = list(items)[:max_cases] if max_cases is not None else list(items)
    for index, item in enumerate(selected):
        if not isinstance(item, Mapping):
            checker.problems.append(f"item {index}: expected a dict of paths, got {type(item).__name__}")
            continue
        checker.item(item, index, image_key, label_key)
    if checker.problems:
        raise ValueError(
            f"Datalist check found {len(checker.problems)} problem(s) in {len(selected)} item(s):\n"
            + "\n".join(checker.problems)
        )
    return True


def check_datalist_file(
    datalist_json: str | Path,
    base_dir: str | Path | None = None,
    keys: Sequence[str] = ("training", "validation"),
    **kwargs: Any,
) -> int:
    """Load a Decathlon-style datalist with :func:`monai.data.load_decathlon_datalist` and check it.

    Args:
        datalist_json: path of the JSON file.
        base_dir: folder the JSON paths are relative to; ``None`` uses the folder of the JSON file.
        keys: datalist sections to check; a missing section is an error.
        kwargs: further arguments of :func:`check_datalist` (``num_classes``, ``check_values``, ``max_cases``, ...).

    Returns:
        The number of items checked.

    Raises:
        ValueError: if a section is missing or any item fails :func:`check_datalist`.
    """
    items: list[dict[str, Any]] = []
    for key in keys:
        items += load_datalist(datalist_json, key, base_dir=base_dir)
    max_cases = kwargs.get("max_cases")
    check_datalist(items, **kwargs)
    return len(items) if max_cases is None else min(len(items), max_cases)


def check(
    datalist: str,
    base_dir: str | None = None,
    keys: str | Sequence[str] = ("training", "validation"),
    num_classes: int = 14,
    check_values: bool = True,
) -> str:
    """Check the data of a datalist before training (missing or corrupt files, shapes, affines, values).

    .. code-block:: bash

        python -m monai_fine check --datalist /data/btcv/dataset_0.json

    Args:
        datalist: Decathlon-style JSON file.
        base_dir: folder its paths are relative to; default the JSON's folder.
        keys: sections to check, e.g. ``training,validation,test``.
        num_classes: number of classes including background.
        check_values: also read the voxel data (NaN/inf intensities, label values).

    Returns:
        A one-line summary; problems raise ``ValueError``.
    """
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    n = check_datalist_file(datalist, base_dir, keys=keys, num_classes=num_classes, check_values=check_values)
    return f"{n} item(s) of {datalist} ({', '.join(keys)}) passed the checks."


def check_images(
    images: Sequence[str | Path],
    image_key: str = "image",
    check_values: bool = True,
    max_image_voxels: int | None = DEFAULT_MAX_IMAGE_VOXELS,
) -> bool:
    """Check images to segment (no labels): at least one, each an existing, readable 3D NIfTI without NaN/inf, or a
    folder holding one DICOM CT series that reads as one volume (:func:`monai_fine.data.dicom.check_series`).

    Args:
        images: image paths (or datalist items with ``image_key``): NIfTI files or DICOM series folders.
        image_key: key of the image path in datalist items.
        check_values: also read the voxel data (NaN/inf intensities).
        max_image_voxels: size limit of one image from its header (see :func:`check_datalist`).

    Raises:
        ValueError: no images, or the problems found (see :func:`check_datalist`).
    """
    images = list(images)
    if not images:
        raise ValueError("No images to segment: the datalist is empty (is dataset_dir/imagesTs empty or mistyped?).")
    items = [img if isinstance(img, Mapping) else {image_key: str(img)} for img in images]
    return check_datalist(
        items,
        image_key=image_key,
        label_key="__no_label__",
        check_values=check_values,
        max_image_voxels=max_image_voxels,
    )


def check_file_exists(path: str | Path, what: str = "file") -> bool:
    """Raise ``FileNotFoundError`` naming ``what`` and ``path`` unless ``path`` is an existing file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return True


def check_option(name: str, value: Any, choices: Sequence[Any]) -> bool:
    """Raise ``ValueError`` naming the tunable ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
    return True


def check_nonempty(items: Sequence[Any], section: str, datalist: str | Path | None = None) -> bool:
    """Raise ``ValueError`` naming ``section`` and the datalist file when ``items`` is empty.

    Training without validation cases would never write ``model.pt`` (the best model), so it is refused up front.
    """
    if len(items) == 0:
        where = f" of {datalist}" if datalist is not None else ""
        raise ValueError(
            f"The '{section}' list{where} is empty: training needs at least one {section} case to select and save "
            "model.pt (the best model)."
        )
    return True


def load_datalist(
    datalist: str | Path, data_list_key: str = "training", base_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """:func:`monai.data.load_decathlon_datalist` (segmentation) with errors that name the file.

    Raises:
        FileNotFoundError: the datalist file does not exist.
        ValueError: a JSON syntax error (with line and column) or a missing section, naming the file.
    """
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    try:
        return load_decathlon_datalist(str(path), True, data_list_key, base_dir=base_dir)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
