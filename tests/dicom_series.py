# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Write a NIfTI volume as a DICOM CT series with pydicom, the way a scanner lays one out.

Standard axial geometry: rows run to the patient's left (ImageOrientationPatient ``1,0,0,0,1,0`` in DICOM's LPS),
InstanceNumber 1 is the most superior slice, and the stored pixels are ``(HU - intercept) / slope`` as signed 16-bit
integers with a slope and intercept that are not 1 and 0, so a reader that ignores them gives wrong HU.

:func:`dicom_grid` is the same geometry as a NIfTI (array, RAS affine), derived here by hand from the flips, so a test
can compare what a DICOM reader returns with an independent reference.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["RESCALE_INTERCEPT", "RESCALE_SLOPE", "dicom_grid", "write_series"]

RESCALE_SLOPE = 0.5
RESCALE_INTERCEPT = -1000.0


def dicom_grid(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A RAS-oriented NIfTI volume re-gridded as the series :func:`write_series` writes (no resampling: flips only).

    Columns along the patient's left (RAS -x), rows towards posterior (RAS -y), slices from superior to inferior
    (RAS -z): all three axes of a RAS array reversed, the affine's origin moved to the opposite corner.

    Returns:
        ``(array, affine)`` indexed ``[column, row, slice]`` like :class:`monai.data.PydicomReader`'s output.
    """
    codes = nib.aff2axcodes(affine)
    if codes != ("R", "A", "S") or not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError(f"expected an axis-aligned RAS volume, got {codes}")
    n = np.asarray(volume.shape[:3]) - 1
    flip = np.eye(4)
    flip[:3, :3] = -np.eye(3)
    flip[:3, 3] = n
    return np.ascontiguousarray(volume[::-1, ::-1, ::-1]), affine @ flip


def write_series(
    folder: str | Path,
    volume: np.ndarray,
    affine: np.ndarray,
    modality: str = "CT",
    series_uid: str | None = None,
    first_instance: int = 1,
    prefix: str = "IM",
) -> list[Path]:
    """Write ``volume`` (HU, RAS-oriented, axis-aligned ``affine``) as one DICOM series, one file per axial slice.

    Args:
        folder: output folder (created).
        volume: HU values, integers (the stored value ``(HU - intercept) / slope`` must be an integer).
        affine: its RAS affine (the voxel size and the origin are kept; the orientation is re-expressed).
        modality: the ``Modality`` tag.
        series_uid: ``SeriesInstanceUID``; a new one by default.
        first_instance: InstanceNumber of the first file (to write a second series into the same folder).
        prefix: file name prefix (``<prefix><InstanceNumber>.dcm``).

    Returns:
        The written files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data, grid = dicom_grid(np.asarray(volume), np.asarray(affine, dtype=float))
    stored = (data.astype(np.float64) - RESCALE_INTERCEPT) / RESCALE_SLOPE
    if not np.array_equal(stored, np.round(stored)) or stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("HU values do not fit int16 with the chosen rescale slope and intercept")
    stored = stored.astype(np.int16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid  # DICOM patient coordinates
    col_step, row_step, slice_step = (lps[:3, i] for i in range(3))
    dc, dr = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    iop = np.concatenate([col_step / dc, row_step / dr])  # row direction cosine, then column direction cosine
    study_uid, series_uid = generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid()
    files = []
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{prefix}{first_instance + k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "Example^CT", "EXAMPLE"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, 1, "example abdomen"
        ds.InstanceNumber = first_instance + k
        ds.ImagePositionPatient = [round(float(v), 6) for v in lps[:3, 3] + k * slice_step]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in iop]
        ds.PixelSpacing = [dr, dc]  # spacing between rows, then between columns
        ds.SliceThickness = float(np.linalg.norm(slice_step))
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = RESCALE_SLOPE, RESCALE_INTERCEPT, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # pixel [row, column]
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files


def read_hu(folder: str | Path) -> np.ndarray:
    """The series' HU as ``[column, row, slice]`` by InstanceNumber, decoded with pydicom alone (a reference)."""
    datasets = sorted((pydicom.dcmread(p) for p in Path(folder).glob("*.dcm")), key=lambda d: int(d.InstanceNumber))
    return np.stack([d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets], axis=-1)
