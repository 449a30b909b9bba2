# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""DICOM series in ``bundle/configs/inference.json``: a folder of one CT series per case, read with MONAI's
PydicomReader, segmented like the same CT given as NIfTI and written on the series' own grid; folders that would be
misread (two series, not CT, a missing slice) are refused before any work, naming the folder and what it holds.

The series are written with pydicom from a crop of the real example CT (``tests/dicom_series.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_common import BUNDLE, workflow

pytest.importorskip("pydicom")

from dicom_series import RESCALE_INTERCEPT, RESCALE_SLOPE, dicom_grid, read_hu, write_series
from monai.transforms import LoadImage

from monai_fine.data import check_images, check_output_names, check_series, list_images

# random weights: a non-trivial label map that any change of the input intensities or geometry changes
INFER = {"load_pretrain": "false"}


def _crop(totalseg_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """64 x 56 x 20 voxels (3 mm) of the example CT around the upper abdomen, with its RAS affine."""
    img = nib.load(str(totalseg_dir / "example_ct.nii.gz"))
    lo = np.array([30, 20, 40])
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ np.append(lo, 1))[:3]
    return np.asarray(img.dataobj)[30:94, 20:76, 40:60].astype(np.int16), affine


def _infer(tmp_path: Path, dataset_dir: Path, out: Path, **override):
    return workflow(["inference.json"], "infer", bundle_root=str(tmp_path), dataset_dir=str(dataset_dir),
                    output_dir=str(out), **{**INFER, **override})  # fmt: skip


def test_pydicom_reader_gives_the_rescaled_hu_on_the_series_grid(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    write_series(tmp_path / "case", volume, affine)
    ref, ref_affine = dicom_grid(volume, affine)  # independent: flips derived by hand
    assert np.array_equal(read_hu(tmp_path / "case"), ref)  # pydicom alone, rescale applied by hand
    image = LoadImage(reader="monai_fine.data.NiftiOrDicomReader", image_only=True)(str(tmp_path / "case"))
    assert tuple(image.shape) == ref.shape and np.array_equal(image.numpy(), ref)  # HU, not stored values
    assert not np.array_equal(image.numpy(), (ref - RESCALE_INTERCEPT) / RESCALE_SLOPE)
    np.testing.assert_allclose(image.affine.numpy(), ref_affine, atol=1e-5)
    series = check_series(tmp_path / "case")  # the up-front check predicts the reader's grid from the headers
    assert series.problems == [] and series.shape == ref.shape
    np.testing.assert_allclose(series.affine, ref_affine, atol=1e-5)


def test_a_dicom_series_gives_the_label_map_of_the_same_ct_as_nifti(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    data = tmp_path / "data"
    nifti = data / "imagesTs" / "ct_nifti.nii.gz"
    nifti.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, affine), str(nifti))
    write_series(data / "imagesTs" / "1.2.826.0.1.3680043.42", volume, affine)  # a UID-named folder, as exported
    (data / "imagesTs" / "notes").mkdir()  # a folder without DICOM files is not a case
    (data / "imagesTs" / "notes" / "readme.txt").write_text("x")
    cases = list_images(data / "imagesTs")
    assert [Path(c).name for c in cases] == ["1.2.826.0.1.3680043.42", "ct_nifti.nii.gz"]

    out = tmp_path / "seg"
    wf = _infer(tmp_path, data, out)
    assert wf.parser.get_parsed_content("datalist") == cases
    wf.run()
    assert sorted(p.name for p in out.iterdir()) == ["1.2.826.0.1.3680043.42_seg.nii.gz", "ct_nifti_seg.nii.gz"]
    from_dicom = nib.load(out / "1.2.826.0.1.3680043.42_seg.nii.gz")
    from_nifti = nib.load(out / "ct_nifti_seg.nii.gz")
    # the series' own grid and orientation: columns to the left, rows to posterior, slices superior to inferior
    ref, ref_affine = dicom_grid(np.zeros(volume.shape), affine)
    assert from_dicom.shape == ref.shape and nib.aff2axcodes(from_dicom.affine) == ("L", "P", "I")
    np.testing.assert_allclose(from_dicom.affine, ref_affine, atol=1e-4)
    # the same label map as the NIfTI input, voxel for voxel, once put on the NIfTI's (RAS) grid
    labels_dicom, labels_nifti = np.asarray(from_dicom.dataobj), np.asarray(from_nifti.dataobj)
    back, back_affine = dicom_grid(labels_nifti, from_nifti.affine)
    np.testing.assert_allclose(back_affine, from_dicom.affine, atol=1e-4)
    assert labels_dicom.dtype == np.uint8 and len(np.unique(labels_nifti)) > 1
    assert np.array_equal(labels_dicom, back)


def _run_refused(tmp_path: Path, data: Path) -> str:
    with pytest.raises(Exception) as err:  # before the (missing) checkpoint is looked at
        _infer(tmp_path, data, tmp_path / "out", load_pretrain=True, checkpoint=str(tmp_path / "missing.pt")).run()
    text = str(err.value) + str(err.value.__cause__)
    assert "missing.pt" not in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return text


def test_a_folder_with_two_series_is_refused_before_work(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    folder = tmp_path / "data" / "imagesTs" / "case"
    write_series(folder, volume, affine, series_uid="1.2.3.1")
    write_series(folder, volume[:, :, :4], affine, series_uid="1.2.3.2", first_instance=101, prefix="LOC")
    text = _run_refused(tmp_path, tmp_path / "data")
    assert str(folder) in text and "holds 2 DICOM series" in text
    assert "1.2.3.1 (Modality CT, 20 file(s)" in text and "1.2.3.2 (Modality CT, 4 file(s)" in text


def test_a_non_ct_series_is_refused_before_work(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    folder = tmp_path / "data" / "imagesTs" / "mr_case"
    write_series(folder, volume, affine, modality="MR")
    text = _run_refused(tmp_path, tmp_path / "data")
    assert str(folder) in text and "Modality is {'MR': 20}, expected CT" in text


def test_a_missing_slice_and_shuffled_instance_numbers_are_refused(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    gap = tmp_path / "gap"
    files = write_series(gap, volume, affine)
    files[7].unlink()
    shuffled = tmp_path / "shuffled"
    files = write_series(shuffled, volume, affine)
    import pydicom

    for path, number in [(files[3], 5), (files[4], 4)]:  # two slices swap their InstanceNumber
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(path)
    with pytest.raises(ValueError) as err:
        check_images([str(gap), str(shuffled)], check_values=False)
    text = str(err.value)
    assert (
        f"{gap}: DICOM series: slices unevenly spaced (mean step 3.167 mm, 6 mm between InstanceNumber 7 and 9)" in text
    )
    assert f"{shuffled}: DICOM series: slice positions along the slice normal are not monotonic" in text


def test_a_truncated_slice_is_found_with_check_values(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    files = write_series(tmp_path / "case", volume, affine)
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[: len(raw) - 2000])  # header intact, pixel data cut
    assert check_images([str(tmp_path / "case")], check_values=False)  # headers only: not seen
    with pytest.raises(ValueError, match=r"case: DICOM series: unreadable pixel data in IM0003\.dcm"):
        check_images([str(tmp_path / "case")])


def test_series_folder_names_keep_their_dots_in_the_output_name(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    a, b = tmp_path / "1.2.840.5", tmp_path / "1.2.840.6"
    for folder in (a, b):
        write_series(folder, volume[:, :, :3], affine)
    assert check_output_names([str(a), str(b)])  # MONAI's default naming would give both 1.2.840_seg.nii.gz
    with pytest.raises(ValueError, match="trailing path separator"):
        check_images([str(a) + "/"], check_values=False)


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(BUNDLE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=600, cwd=cwd, check=False
    )


@pytest.mark.slow
def test_without_pydicom_nifti_works_and_a_series_folder_names_the_extra(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    write_series(tmp_path / "imagesTs" / "series", volume, affine)
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "imagesTs" / "ct.nii.gz"))
    code = f"""
import sys
sys.modules["pydicom"] = None  # as if it were not installed: every import of it fails
from monai.transforms import LoadImage
from monai_fine.data import check_images, list_images
cases = list_images({str(tmp_path / "imagesTs")!r})
print("cases", [c.rsplit("/", 1)[1] for c in cases])
image = LoadImage(reader="monai_fine.data.NiftiOrDicomReader", image_only=True)(cases[0])
print("nifti", tuple(image.shape))
check_images(cases[:1])
try:
    check_images(cases)
except ValueError as e:
    print("refused", e)
"""
    proc = _python(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cases ['ct.nii.gz', 'series']" in proc.stdout  # the series is found without pydicom ...
    assert "nifti (64, 56, 20)" in proc.stdout
    # ... and refused up front with the install hint, naming the folder
    assert f"{tmp_path / 'imagesTs' / 'series'}: " in proc.stdout and "pip install 'monai_fine[dicom]'" in proc.stdout


@pytest.mark.slow
def test_monai_fine_infer_command_segments_a_series_folder(tmp_path, totalseg_dir):
    volume, affine = _crop(totalseg_dir)
    write_series(tmp_path / "data" / "imagesTs" / "case.7", volume, affine)
    args = ["--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "out"), "--load_pretrain", "false", "--preset", "test",
            "--roi_size", "[32,32,16]", "--pixdim", "[4.0,4.0,4.0]", "--num_workers", "0",
            "--device", "$torch.device('cpu')"]  # fmt: skip
    proc = _python(["-m", "monai_fine", "infer", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seg = nib.load(tmp_path / "out" / "case.7_seg.nii.gz")
    _, ref_affine = dicom_grid(np.zeros(volume.shape), affine)
    assert seg.shape == volume.shape and np.allclose(seg.affine, ref_affine, atol=1e-4)
