# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Decathlon-style datalists (``dataset_0.json``) for BTCV-layout data folders and the paper's BTCV 18/12 split.

A datalist is the JSON read by :func:`monai.data.load_decathlon_datalist`: ``training`` / ``validation`` lists of
``{"image": ..., "label": ...}`` and a ``test`` list, with paths relative to the data folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_fine.data.checks import check_datalist_file
from monai_fine.data.phantom import BTCV_LABELS

__all__ = [
    "BTCV_TRAIN_IDS",
    "BTCV_VAL_IDS",
    "BTCV_TEST_IDS",
    "build_datalist",
    "btcv_18_12_datalist",
    "datalist",
]

# Paper split (fold 0 of FINE and nnFormer, i.e. the TransUNet split) of the 30 labelled BTCV cases.
# The last two of the 18 training cases are held out for validation, so that no checkpoint is selected on the 12
# evaluation cases (the original code used the 12 test cases as nnU-Net's validation set).
BTCV_TRAIN_IDS: tuple[int, ...] = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37)
BTCV_VAL_IDS: tuple[int, ...] = (39, 40)
BTCV_TEST_IDS: tuple[int, ...] = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _stem(name: str) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _list_nifti(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(_NIFTI_SUFFIXES)
    )


def _label_candidates(image_name: str) -> list[str]:
    """Label file names that may belong to an image, most specific first.

    Identical name (Decathlon, the phantom), then BTCV ``img0001`` -> ``label0001``, then nnU-Net ``case_0000`` ->
    ``case`` (channel suffix dropped); each with ``.nii.gz`` and ``.nii``.
    """
    stem = _stem(image_name)
    stems = [stem]
    if re.fullmatch(r"img\d+", stem):
        stems.append("label" + stem[3:])
    if stem.endswith("_0000"):
        stems.append(stem[: -len("_0000")])
    return [s + suffix for s in stems for suffix in _NIFTI_SUFFIXES]


def _match_case(key: str, wanted: str | int) -> bool:
    """Whether the image stem ``key`` is the case ``wanted``: a case number (``39``), a stem or a file name."""
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdigit()):
        digits = re.findall(r"\d+", re.sub(r"_0000$", "", key))
        return bool(digits) and int(digits[-1]) == int(wanted)
    return key == _stem(str(wanted))


def build_datalist(
    data_dir: str | Path,
    images: str = "imagesTr",
    labels: str = "labelsTr",
    test_images: str | None = "imagesTs",
    val_cases: int | Sequence[int | str] | None = None,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Pair images and labels of a BTCV / Decathlon folder by file name and write ``dataset_0.json``.

    Accepted names: identical file names in both folders (Decathlon, the phantom), BTCV ``img0001.nii.gz`` with
    ``label0001.nii.gz``, and nnU-Net ``case_0000.nii.gz`` with ``case.nii.gz``. Hidden files (``._img0001.nii.gz``)
    are ignored.

    Args:
        data_dir: data folder; the written paths are relative to it.
        images: sub-folder of the labelled images.
        labels: sub-folder of the label maps.
        test_images: sub-folder of unlabelled test images, listed under ``test``; skipped if missing or ``None``.
        val_cases: ``None`` puts every labelled case in ``training``; an int ``n`` moves the last ``n`` cases (sorted
            by name) to ``validation``; a list names them by case number (``39``), key (``"0039"``) or file name.
        output: where to write the JSON; ``None`` writes ``<data_dir>/dataset_0.json``.

    Returns:
        The datalist dict that was written.

    Raises:
        FileNotFoundError: if ``data_dir`` or the image or label folder does not exist.
        ValueError: for images without a label or labels without an image (naming the files), for an empty image
            folder, or for a validation case that does not exist.
    """
    root = Path(data_dir)
    image_dir, label_dir = root / images, root / labels
    for folder in (root, image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"Data folder {folder} does not exist.")
    image_files = _list_nifti(image_dir)
    if not image_files:
        raise ValueError(f"No NIfTI images (*.nii.gz, *.nii) found in {image_dir}.")
    labels_by_name = {f.name: f for f in _list_nifti(label_dir)}
    image_index: dict[str, Path] = {}
    label_index: dict[str, Path] = {}
    problems = []
    for image_file in image_files:
        match = next((labels_by_name[n] for n in _label_candidates(image_file.name) if n in labels_by_name), None)
        if match is None:
            problems.append(f"image {image_file} has no label in {label_dir}")
        elif match in label_index.values():
            problems.append(f"label {match} matches more than one image, e.g. {image_file.name}")
        else:
            key = _stem(image_file.name)
            image_index[key], label_index[key] = image_file, match
    used = set(label_index.values())
    problems += [f"label {f} has no image in {image_dir}" for f in labels_by_name.values() if f not in used]
    if problems:
        raise ValueError("Unpaired files:\n" + "\n".join(problems))

    keys = sorted(image_index)
    if val_cases is None:
        val_keys: list[str] = []
    elif isinstance(val_cases, int):
        if not 0 <= val_cases < len(keys):
            raise ValueError(f"val_cases ({val_cases}) must be in [0, {len(keys) - 1}] for {len(keys)} labelled cases.")
        val_keys = keys[len(keys) - val_cases :]
    else:
        val_keys = []
        for wanted in val_cases:
            found = [k for k in keys if _match_case(k, wanted)]
            if len(found) != 1:
                raise ValueError(f"Validation case {wanted!r} matches {len(found)} labelled cases in {image_dir}.")
            val_keys.append(found[0])

    def item(key: str) -> dict[str, str]:
        image, label = image_index[key].relative_to(root), label_index[key].relative_to(root)
        return {"image": image.as_posix(), "label": label.as_posix()}

    test: list[dict[str, str]] = []
    if test_images is not None and (root / test_images).is_dir():
        test = [{"image": f.relative_to(root).as_posix()} for f in _list_nifti(root / test_images)]
    result: dict[str, Any] = {
        "name": root.resolve().name,
        "description": f"Datalist built by monai_fine.data.build_datalist from {images}/ and {labels}/",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": len(keys) - len(val_keys),
        "numValidation": len(val_keys),
        "numTest": len(test),
        "training": [item(k) for k in keys if k not in val_keys],
        "validation": [item(k) for k in keys if k in val_keys],
        "test": test,
    }
    out = Path(output) if output is not None else root / "dataset_0.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def btcv_18_12_datalist() -> dict[str, Any]:
    """The paper's BTCV split: 18 training cases (16 ``training`` + 2 ``validation``) and 12 labelled ``test`` cases.

    Paths are BTCV RawData names relative to a data folder holding ``imagesTr/img00XX.nii.gz`` (from
    ``RawData/Training/img``) and ``labelsTr/label00XX.nii.gz`` (from ``RawData/Training/label``); all 30 labelled
    cases come from BTCV's Training folder. Cases 39 and 40 are moved from training to ``validation`` so that no
    checkpoint selection happens on the 12 evaluation cases; the ``test`` items carry labels because they are the
    evaluation set.

    Returns:
        A Decathlon-style datalist dict (also shipped as ``bundle/configs/datalist_btcv_18_12.json``).
    """

    def item(i: int) -> dict[str, str]:
        return {"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"}

    return {
        "name": "BTCV",
        "description": (
            "Multi-Atlas Labeling Beyond the Cranial Vault (BTCV, Synapse), paper split of FINE / nnFormer "
            "(fold 0 = TransUNet split): 18 training cases, of which 39 and 40 are held out for validation, "
            "and 12 labelled test cases for evaluation."
        ),
        "reference": "https://www.synapse.org/#!Synapse:syn3193805",
        "licence": "see bundle/docs/data_license.txt",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": len(BTCV_TRAIN_IDS),
        "numValidation": len(BTCV_VAL_IDS),
        "numTest": len(BTCV_TEST_IDS),
        "training": [item(i) for i in BTCV_TRAIN_IDS],
        "validation": [item(i) for i in BTCV_VAL_IDS],
        "test": [item(i) for i in BTCV_TEST_IDS],
    }


def datalist(
    data_dir: str,
    output: str | None = None,
    images: str = "imagesTr",
    labels: str = "labelsTr",
    test_images: str = "imagesTs",
    val_cases: int | str | Sequence[int | str] | None = None,
    check: bool = False,
) -> str:
    """Build ``dataset_0.json`` for a BTCV / Decathlon data folder.

    .. code-block:: bash

        python -m monai_fine datalist --data-dir /data/btcv --val-cases 39,40 --check

    Args:
        data_dir: data folder holding ``images`` and ``labels`` sub-folders.
        output: JSON path; default ``<data_dir>/dataset_0.json``.
        images: sub-folder of the labelled images.
        labels: sub-folder of the label maps.
        test_images: sub-folder of unlabelled test images (skipped if missing).
        val_cases: number of validation cases (the last ones), or case numbers / names, e.g. ``39,40``.
        check: also run :func:`monai_fine.data.check_datalist_file` on the written datalist.

    Returns:
        Path of the written JSON.
    """
    if isinstance(val_cases, str):
        val_cases = [v.strip() for v in val_cases.split(",") if v.strip()]
    out = Path(output) if output is not None else Path(data_dir) / "dataset_0.json"
    build_datalist(data_dir, images, labels, test_images, val_cases=val_cases, output=out)
    if check:
        check_datalist_file(out, base_dir=data_dir)
    return str(out)
