# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Inference through ``bundle/configs/inference.json`` never loses or half-writes a result, and its boolean tunables
mean what they say (in-process ``ConfigWorkflow`` and ``python -m monai.bundle run`` / ``python -m monai_fine``)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_common import BUNDLE, CONFIGS, assert_largest_components_of, workflow
from monai.bundle import ConfigWorkflow

# random weights: these tests are about the files, not the segmentation
INFER = {"load_pretrain": "false"}


def infer(tmp_path: Path, images: list[Path], out_dir: Path, **override) -> ConfigWorkflow:
    return workflow(
        ["inference.json"], "infer", bundle_root=str(tmp_path), datalist=[str(p) for p in images],
        output_dir=str(out_dir), **{**INFER, **override},
    )  # fmt: skip


def ct(path: Path, shape=(40, 36, 24), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).normal(0, 200, shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([-4.0, -4.0, 4.0, 1.0])), str(path))
    return path


def test_duplicate_output_names_are_refused_up_front(tmp_path):
    images = [ct(tmp_path / "a" / "case.nii.gz"), ct(tmp_path / "b" / "case.nii.gz"), ct(tmp_path / "c.nii.gz")]
    with pytest.raises(Exception) as err:  # before the (missing) checkpoint is even looked at
        # the checks run first in ``run`` (``initialize`` stays data-free so that ``monai.bundle.load`` works)
        infer(tmp_path, images, tmp_path / "out", load_pretrain=True, checkpoint=str(tmp_path / "missing.pt")).run()
    text = str(err.value) + str(err.value.__cause__)
    assert "case_seg" in text and str(images[0]) in text and str(images[1]) in text and "missing.pt" not in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unwritable_output_dir_fails_before_the_model_is_loaded(tmp_path):
    (tmp_path / "not_a_dir").write_text("x")
    out = tmp_path / "not_a_dir" / "seg"
    with pytest.raises(Exception) as err:
        infer(
            tmp_path, [ct(tmp_path / "c.nii.gz")], out, load_pretrain=True, checkpoint=str(tmp_path / "missing.pt")
        ).run()
    text = str(err.value) + str(err.value.__cause__)
    assert "output_dir is not writable" in text and str(out) in text and "missing.pt" not in text


def test_a_failing_case_is_named_and_leaves_no_partial_file(tmp_path):
    good = ct(tmp_path / "in" / "a_good.nii.gz")
    bad = ct(tmp_path / "in" / "b_bad.nii.gz", seed=1)
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[: len(raw) // 3]))  # header intact, voxel data truncated
    out = tmp_path / "seg"
    wf = infer(tmp_path, [good, bad], out, check_data="False")
    with pytest.raises(Exception) as err:
        wf.run()
    text = str(err.value) + str(err.value.__cause__)
    assert "failed on case" in text and "b_bad.nii.gz" in text and "a_good" not in text
    assert sorted(p.name for p in out.iterdir()) == ["a_good_seg.nii.gz"]  # no partial or temporary file
    seg = nib.load(out / "a_good_seg.nii.gz")
    assert seg.shape == (40, 36, 24) and np.allclose(seg.affine, nib.load(good).affine)
    assert np.asarray(seg.dataobj).dtype == np.uint8


def test_boolean_overrides_in_process(tmp_path):
    image = ct(tmp_path / "c.nii.gz")
    for word, value in [("false", False), ("False", False), ("0", False), ("true", True), ("True", True), ("1", True)]:
        wf = infer(tmp_path, [image], tmp_path / "out", scan_memory=word)
        assert wf.parser.get_parsed_content("inferer").scan_memory is value, word
    with pytest.raises(Exception) as err:
        infer(tmp_path, [image], tmp_path / "out", amp="maybe")
    assert "amp must be a boolean" in str(err.value) + str(err.value.__cause__)


def test_keep_largest_component_leaves_each_organ_its_largest_component(tmp_path):
    image = ct(tmp_path / "c.nii.gz", shape=(48, 40, 32))
    infer(tmp_path, [image], tmp_path / "raw").run()
    infer(tmp_path, [image], tmp_path / "kept", keep_largest_component="true").run()
    raw, kept = (np.asarray(nib.load(tmp_path / d / "c_seg.nii.gz").dataobj) for d in ("raw", "kept"))
    # random weights on noise: a label map of many islands, so the step has components to remove
    assert assert_largest_components_of(kept, raw) > 10
    with pytest.raises(Exception) as err:
        infer(tmp_path, [image], tmp_path / "out", keep_largest_component="sometimes")
    assert "keep_largest_component must be a boolean" in str(err.value) + str(err.value.__cause__)


def test_keep_largest_component_without_scikit_image_is_refused_before_any_case(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # what `import skimage` meets where it is not installed
    monkeypatch.setitem(sys.modules, "skimage.measure", None)
    with pytest.raises(Exception) as err:
        infer(tmp_path, [ct(tmp_path / "c.nii.gz")], tmp_path / "out", keep_largest_component=True)
    assert "pip install 'monai_fine[postprocessing]'" in str(err.value) + str(err.value.__cause__)
    assert not (tmp_path / "out").exists()


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(BUNDLE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_boolean_strings_from_both_command_lines(tmp_path):
    image = ct(tmp_path / "data" / "imagesTs" / "c.nii.gz")
    common = [
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        str(tmp_path / "data"),
        "--preset",
        "tiny",
        "--roi_size",
        "[32,32,16]",
        "--pixdim",
        "[4.0,4.0,4.0]",
        "--num_workers",
        "0",
        "--device",
        "$torch.device('cpu')",
    ]
    # `--load_pretrain false` arrives as the string 'false': no checkpoint is needed, the segmentation is written
    proc = _cli(
        [
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--meta_file",
            str(CONFIGS / "metadata.json"),
            "--output_dir",
            str(tmp_path / "out"),
            "--load_pretrain",
            "false",
            *common,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "c_seg.nii.gz").is_file()
    proc = _cli(
        ["-m", "monai_fine", "infer", "--output_dir", str(tmp_path / "out2"), "--load_pretrain", "no way", *common]
    )
    assert proc.returncode != 0 and "load_pretrain must be a boolean" in proc.stderr + proc.stdout
    assert not (tmp_path / "out2" / "c_seg.nii.gz").exists()
    assert image.is_file()


@pytest.mark.slow
def test_a_full_disk_during_inference_names_the_case_and_file_and_keeps_the_previous_output(tmp_path):
    import resource

    image = ct(tmp_path / "data" / "imagesTs" / "c.nii.gz", shape=(64, 64, 32))
    out = tmp_path / "out"
    out.mkdir()
    previous = out / "c_seg.nii.gz"
    previous.write_bytes(b"an earlier run's complete result")
    limit = 4096  # the new label map is larger: its write fails with EFBIG, as on a full disk
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(BUNDLE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json"), "--meta_file",
         str(CONFIGS / "metadata.json"), "--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data"),
         "--output_dir", str(out), "--load_pretrain", "false", "--preset", "test", "--roi_size", "[32,32,16]",
         "--pixdim", "[4.0,4.0,4.0]",
         "--num_workers", "0", "--device", "$torch.device('cpu')"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # in the traceback's chain, above MONAI's "Failed to evaluate" of the run expression: the case, file and cause
    # (not SaveImage's "cannot find a suitable writer ... install the writer libraries")
    errors = [line for line in text.splitlines() if line.startswith("monai_fine.data.io.WriteFailedError: ")]
    assert errors and errors[-1].startswith("monai_fine.data.io.WriteFailedError: [Errno 27] failed on case"), text[
        -3000:
    ]
    assert str(image) in errors[-1] and f"could not write {previous}: File too large" in errors[-1], errors
    assert previous.read_bytes() == b"an earlier run's complete result"
    assert [p.name for p in out.iterdir()] == ["c_seg.nii.gz"]  # no partial or temporary file
    assert image.is_file()


@pytest.mark.slow
def test_bench_inference_quick(tmp_path):
    proc = _cli([str(BUNDLE.parent / "benchmarks" / "bench_inference.py"), "--quick", "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    with open(tmp_path / "bench_inference_tiny_quick.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["pass"] for r in rows] == ["one", "two"] and all(r["status"] == "ok" for r in rows)
    # 40x36x24 with 32x32x16 windows at overlap 0.5: 2 x 2 x 2 windows; with scan memory the scan view is one more
    assert [int(r["windows"]) for r in rows] == [8, 9]
    for r in rows:
        assert float(r["seconds"]) > 0 and 0 < float(r["peak_rss_gib"]) < 8 and 0 < float(r["peak_fraction"]) < 1
        assert abs(float(r["gflops"]) - float(r["gflops_window"]) * int(r["windows"])) < 0.1
    assert "| 40x36x24 | one |" in (tmp_path / "bench_inference_tiny_quick.md").read_text()
