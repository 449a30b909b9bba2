# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""DICOM series as inference input: discovery, an up-front header check, the reader, the output name.

Layout: a case is either a NIfTI file or a folder holding the files of **one** DICOM CT series (DICOM Part-10 files,
recognised by their ``DICM`` preamble whatever their name: ``*.dcm`` or no extension, directly in the folder, no
sub-folders). :func:`list_images` finds both in ``dataset_dir/imagesTs``::

    imagesTs/
        case01.nii.gz            -> case01_seg.nii.gz
        case02/  IM0001.dcm ...  -> case02_seg.nii.gz   (on the series' own grid and orientation)

The series is read with MONAI's :class:`monai.data.PydicomReader` (``pip install monai_fine[dicom]`` installs
pydicom): slices stacked in ``InstanceNumber`` order, ``RescaleSlope`` / ``RescaleIntercept`` applied (HU), the affine
from ``ImageOrientationPatient``, ``ImagePositionPatient`` and ``PixelSpacing`` in RAS like the NIfTI reader's.
:func:`check_series` reads only the headers and refuses, before any work, what that reader would get wrong or mix up:
two series in one folder, a modality other than CT, missing geometry tags, slices of different size or orientation,
slice positions out of ``InstanceNumber`` order, duplicated or unevenly spaced (a missing slice).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, NibabelReader
from monai.data.folder_layout import default_name_formatter
from monai.utils import optional_import

pydicom, has_pydicom = optional_import("pydicom")

__all__ = [
    "NIFTI_SUFFIXES",
    "DicomSeries",
    "NiftiOrDicomReader",
    "check_series",
    "is_dicom_series_dir",
    "list_images",
    "pixel_problems",
    "series_files",
    "series_name_formatter",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_INSTALL = "pip install 'monai_fine[dicom]' (or pip install pydicom)"
_GEOMETRY_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "InstanceNumber",
    "Rows",
    "Columns",
)
# slice positions may differ from even spacing by this fraction of the slice step (DS values are rounded to 16 chars)
_SPACING_RTOL = 0.01


def _require_pydicom(folder: str | os.PathLike) -> None:
    if not has_pydicom:
        raise ImportError(f"{folder} is a folder (read as a DICOM series), but pydicom is not installed: {_INSTALL}.")


def _is_dicom_file(path: Path) -> bool:
    """The test of ``pydicom.misc.is_dicom`` (``DICM`` after the 128-byte preamble), without needing pydicom: a folder
    of DICOM files is recognised as a case even where pydicom is missing, and then refused with the install hint."""
    if path.name.startswith(".") or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def series_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files of a series folder, as :class:`monai.data.PydicomReader` (``fname_regex=None``, which tests
    with ``pydicom.misc.is_dicom``) selects them: the non-hidden files directly in ``folder`` that carry the DICOM
    Part-10 preamble, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if _is_dicom_file(p))


def is_dicom_series_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM file directly."""
    path = Path(path)
    return path.is_dir() and any(_is_dicom_file(p) for p in path.iterdir())


def list_images(folder: str | os.PathLike) -> list[str]:
    """The cases of an image folder (``dataset_dir/imagesTs``): its NIfTI files and its DICOM series sub-folders.

    NIfTI: non-hidden ``*.nii.gz`` / ``*.nii`` files. DICOM: each non-hidden sub-folder with at least one DICOM file
    directly in it (sub-folders without DICOM files are not cases and are skipped; pydicom is not needed to find them,
    only to read them). Paths are returned without a trailing separator (the output name is the last component).

    Returns:
        Sorted paths as strings; empty when ``folder`` does not exist (the up-front check then names it).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if (p.is_file() and p.name.endswith(NIFTI_SUFFIXES)) or is_dicom_series_dir(p):
            out.append(os.path.normpath(str(p)))
    return out


@dataclass
class DicomSeries:
    """What :func:`check_series` learns from the headers of one series folder.

    ``shape`` and ``affine`` are those :class:`monai.data.PydicomReader` produces (axes: columns, rows, slices in
    ``InstanceNumber`` order; affine in RAS, mm); ``problems`` is empty when the series can be read as one volume.
    """

    folder: Path
    files: list[Path]
    shape: tuple[int, int, int] | None = None
    affine: np.ndarray | None = None
    problems: list[str] | None = None


def _describe(datasets: Sequence[Any]) -> str:
    ds = datasets[0]
    desc = getattr(ds, "SeriesDescription", "") or ""
    return f"Modality {getattr(ds, 'Modality', '?')}, {len(datasets)} file(s)" + (f", '{desc}'" if desc else "")


def check_series(folder: str | os.PathLike) -> DicomSeries:
    """Read the headers of a DICOM series folder and list every reason it cannot be segmented as one CT volume.

    Only the headers are read (``stop_before_pixels``); :func:`pixel_problems` decodes the pixel data.

    Args:
        folder: a folder holding the files of one series.

    Returns:
        A :class:`DicomSeries`; its ``problems`` name the folder's content (series found, modality, the offending
        files and values), one line each.

    Raises:
        ImportError: pydicom is not installed (naming the extra to install).
    """
    folder = Path(folder)
    _require_pydicom(folder)
    files = series_files(folder)
    result = DicomSeries(folder=folder, files=files, problems=[])
    problems = result.problems
    nested = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if nested:
        problems.append(f"folder holds sub-folder(s) {nested[:5]}: one series per folder, its files directly in it")
    if not files:
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        problems.append(f"no DICOM files in the folder (found {len(others)} other file(s): {others[:5]})")
        return result
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as e:
            problems.append(f"unreadable DICOM file {f.name} ({type(e).__name__}: {e})")
    if not datasets:
        return result
    by_series: dict[str, list[Any]] = defaultdict(list)
    for ds in datasets:
        by_series[str(getattr(ds, "SeriesInstanceUID", "<no SeriesInstanceUID>"))].append(ds)
    if len(by_series) > 1:
        found = "; ".join(f"{uid} ({_describe(group)})" for uid, group in sorted(by_series.items()))
        problems.append(
            f"folder holds {len(by_series)} DICOM series, expected one per folder (move each series into its own "
            f"folder): {found}"
        )
        return result
    modalities = Counter(str(getattr(ds, "Modality", "<none>")) for ds in datasets)
    if set(modalities) != {"CT"}:
        problems.append(
            f"Modality is {dict(modalities)}, expected CT for every file: the model segments CT only "
            f"({_describe(datasets)})"
        )
        return result
    missing = sorted({t for ds in datasets for t in _GEOMETRY_TAGS if getattr(ds, t, None) in (None, "")})
    if missing:
        problems.append(f"DICOM tag(s) {missing} missing in some file(s): the volume's geometry cannot be derived")
        return result
    for tag in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient"):
        values = {tuple(np.round(np.atleast_1d(np.asarray(getattr(ds, tag), dtype=float)), 4)) for ds in datasets}
        if len(values) > 1:
            problems.append(f"{tag} differs between slices: {sorted(values)[:4]}")
    if problems:
        return result
    numbers = Counter(int(ds.InstanceNumber) for ds in datasets)
    duplicated = sorted(n for n, c in numbers.items() if c > 1)
    if duplicated:
        problems.append(f"InstanceNumber repeated: {duplicated[:10]} (the slices' stacking order is ambiguous)")
        return result
    order = sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
    first = order[0]
    row_dir, col_dir = np.asarray(first.ImageOrientationPatient, dtype=float).reshape(2, 3)
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([ds.ImagePositionPatient for ds in order], dtype=float)
    dr, dc = (float(v) for v in first.PixelSpacing)
    rows, cols, n = int(first.Rows), int(first.Columns), len(order)
    if n < 2:
        problems.append(f"series has {n} slice: a 3D CT volume (two slices or more) is expected")
        return result
    along = positions @ normal
    steps = np.diff(along)
    step = (along[-1] - along[0]) / (n - 1)
    if abs(step) < 1e-6 or not (np.all(steps > 0) or np.all(steps < 0)):
        problems.append(
            f"slice positions along the slice normal are not monotonic in InstanceNumber order "
            f"({np.round(along[:8], 3).tolist()} ...): the reader stacks by InstanceNumber"
        )
    elif np.max(np.abs(steps - step)) > _SPACING_RTOL * abs(step):
        worst = int(np.argmax(np.abs(steps - step)))
        problems.append(
            f"slices unevenly spaced (mean step {abs(step):.4g} mm, {abs(steps[worst]):.4g} mm between "
            f"InstanceNumber {int(order[worst].InstanceNumber)} and {int(order[worst + 1].InstanceNumber)}): "
            "a missing slice or a second stack; the volume would be distorted"
        )
    last_step = (positions[-1] - positions[0]) / (n - 1)
    # LPS affine of (column c, row r, slice k), as PydicomReader builds it with swap_ij, then LPS -> RAS
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = last_step
    lps[:3, 3] = positions[0]
    result.affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    result.shape = (cols, rows, n)
    return result


def pixel_problems(files: Sequence[str | os.PathLike]) -> list[str]:
    """Decode the pixel data of every file of a series; one line per file that fails (truncated, bad encoding)."""
    problems = []
    for f in files:
        try:
            pydicom.dcmread(f).pixel_array  # noqa: B018 (decoding is the check)
        except Exception as e:
            problems.append(f"unreadable pixel data in {Path(f).name} ({type(e).__name__}: {e})")
    return problems


class NiftiOrDicomReader(ImageReader):
    """A MONAI image reader for the inference datalist: a folder is a DICOM series, anything else a NIfTI file.

    Folders go to :class:`monai.data.PydicomReader` (``fname_regex=None``: the files with a DICOM preamble, the same
    selection as :func:`series_files`), files to :class:`monai.data.NibabelReader`. Choosing by the path instead of
    trying one reader after the other (what ``LoadImaged(reader=[...])`` does) keeps the log free of failed attempts
    and makes pydicom needed only when a series is read. Use it as ``LoadImaged(..., reader=
    "monai_fine.data.NiftiOrDicomReader")``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        self._nifti = NibabelReader(**kwargs)
        self._dicom: ImageReader | None = None
        self._last: ImageReader = self._nifti

    def _dicom_reader(self, folder: str) -> ImageReader:
        _require_pydicom(folder)
        if self._dicom is None:
            from monai.data import PydicomReader

            self._dicom = PydicomReader(fname_regex=None, **self.kwargs)
        return self._dicom

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        names = [str(d) for d in (data if isinstance(data, (list, tuple)) else [data])]
        is_dir = [Path(n).is_dir() for n in names]
        if any(is_dir) and not all(is_dir):
            raise ValueError(f"cannot stack DICOM folders and files into one image: {names}")
        self._last = self._dicom_reader(names[0]) if is_dir[0] else self._nifti
        return self._last.read(data, **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        return self._last.get_data(img)


def series_name_formatter(metadict: dict, saver: Any) -> dict:
    """``SaveImaged(output_name_formatter=...)``: the output of a series folder is named after the whole folder name.

    MONAI drops what follows the last ``.`` of an input name as its extension; a folder has none, so folder
    ``1.2.840.5`` would become ``1.2.840_seg.nii.gz`` (and two UID-named folders could share a name). Files keep
    MONAI's default naming.
    """
    kw = default_name_formatter(metadict, saver)
    if os.path.isdir(kw["subject"]):
        kw["subject"] = os.path.normpath(kw["subject"]) + ".series"  # the suffix MONAI removes
    return kw
