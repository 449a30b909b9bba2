# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from monai_fine.cli import demo, verify


def test_phantom_command_through_fire(tmp_path):
    out = tmp_path / "ph"
    res = subprocess.run(
        [sys.executable, "-m", "monai_fine", "phantom", "--out", str(out), "--num-cases", "3", "--seed", "5",
         "--shape", "[48,48,32]"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    datalist = json.loads((out / "dataset_0.json").read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == 3 and len(datalist["test"]) == 2
    img = nib.load(out / datalist["training"][0]["image"])
    assert img.shape == (48, 48, 32) and nib.aff2axcodes(img.affine) == ("R", "A", "S")


def test_check_command_names_the_bad_file(tmp_path):
    out = tmp_path / "ph"
    subprocess.run([sys.executable, "-m", "monai_fine", "phantom", "--out", str(out), "--num-cases", "2",
                    "--shape", "[32,32,24]"], check=True, capture_output=True, timeout=300)
    datalist = json.loads((out / "dataset_0.json").read_text())
    bad = out / datalist["training"][0]["image"]
    img = nib.load(bad)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(bad))
    res = subprocess.run([sys.executable, "-m", "monai_fine", "check", str(out / "dataset_0.json")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and bad.name in res.stderr and "NaN" in res.stderr


def test_verify():
    assert "passed" in verify(preset="tiny")


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    """The README's main job on a minimal budget: phantom -> train -> evaluate -> infer -> table, CSV, PNG."""
    out = tmp_path / "demo"
    summary = demo(out=str(out), num_cases=4, max_epochs=1, epoch_length=2, num_workers=0, shape=(48, 48, 32),
                   roi_size=(32, 32, 16))
    assert summary.startswith("mean Dice")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["label"]) for r in rows] == list(range(1, 14))
    png = (out / "overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    png = (out / "training.png").read_bytes()  # one epoch of two iterations, validated once
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    test_images = sorted((out / "data" / "imagesTs").glob("*.nii.gz"))
    for image in test_images:
        seg = nib.load(out / "predictions" / image.name.replace(".nii.gz", "_seg.nii.gz"))
        assert seg.shape == nib.load(image).shape
