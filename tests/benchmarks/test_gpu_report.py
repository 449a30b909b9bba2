# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m benchmarks.gpu_report`` end to end in its ``--tiny`` CPU mode (so the prepared GPU run cannot rot),
its time
budget and its error guard, and the nnU-Net plan the peers are built from."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "gpu_report.md",
    "gpu_report.json",
    "gpu_report_train.csv",
    "gpu_report_infer.csv",
    "gpu_report_loop.csv",
    "gpu_report_bundle.csv",
    "gpu_report.log",
}


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.gpu_report", "--out", str(out), "--tiny", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _positive(value: str) -> bool:
    return math.isfinite(float(value)) and float(value) > 0


@pytest.mark.slow
def test_tiny_run_writes_every_file(tmp_path):
    proc = _run(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == FILES  # flat, nothing else (the bundle run used a temp folder)
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    device_name = report["env"]["device_name"]
    assert device_name and report["env"]["torch"] == torch.__version__
    for name in FILES:
        assert device_name in (tmp_path / name).read_text(), f"{name} does not name the device"

    train = _rows(tmp_path / "gpu_report_train.csv")
    models = ["fine:none", "fine:full", "fine:full+scan", "swinunetr", "dynunet"]
    assert [(r["model"], r["amp"]) for r in train] == [(m, a) for m in models for a in ("False", "True")]
    for r in train:
        assert r["status"] == "ok", r
        assert _positive(r["train_s"]) and _positive(r["params_m"]) and r["steps"] == "1"
        assert math.isfinite(float(r["peak_mb"])) and float(r["peak_mb"]) >= 0
        assert r["amp_dtype"] == ("bfloat16" if r["amp"] == "True" else "float32")
        assert r["device"] == "cpu" and r["device_name"] == device_name and r["roi"] == "64x32x32"

    infer = _rows(tmp_path / "gpu_report_infer.csv")
    assert [r["scan_memory"] for r in infer] == ["False", "True"]
    for r in infer:
        assert r["status"] == "ok", r
        assert r["windows"] == "2"  # 96 voxels in windows of 64 at overlap 0.5: starts 0 and 32
        assert _positive(r["infer_s"]) and r["scan"] == "96x32x32" and r["device_name"] == device_name

    loop = _rows(tmp_path / "gpu_report_loop.csv")  # the recipe's loop (compile off in --tiny), then inference.json
    assert [r["config"].split(",")[-1].strip() for r in loop] == ["compile=False", "scan 96x32x32"]
    assert all(r["status"] == "ok" for r in loop), loop
    assert _positive(loop[0]["bundle_s"]) and _positive(loop[0]["bare_s"]) and _positive(loop[0]["ratio"])
    assert float(loop[0]["low"]) <= float(loop[0]["ratio"]) <= float(loop[0]["high"]) and loop[0]["rounds"] == "2"
    assert _positive(loop[1]["seconds"]) and loop[1]["output"].startswith("(96, 32, 32)")

    epochs = _rows(tmp_path / "gpu_report_bundle.csv")
    assert [r["epoch"] for r in epochs] == ["1", "2"]
    assert all(_positive(r["mean_loss"]) and r["iterations"] == "2" and r["status"] == "ok" for r in epochs)
    bundle = report["bundle"]
    assert bundle["setup"]["network_device"] == "cpu" and bundle["first_epoch_loss"] == float(epochs[0]["mean_loss"])

    md = (tmp_path / "gpu_report.md").read_text()
    for heading in ("## Training step", "## Inference", "## The bundle's training loop", "## Bundle training"):
        assert heading in md
    assert "| config | AMP |" in proc.stdout  # the markdown table on stdout
    assert "DynUNet (nnU-Net plan" in md and "SwinUNETR(12)" in md


def test_budget_skips_and_says_so(tmp_path):
    _run(tmp_path, "--budget_s", "1e-6")  # every deadline (<= 1 us) passes while the report is set up
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert len(report["train"]) == 10 and len(report["infer"]) == 2 and len(report["loop"]) == 1
    skipped = report["train"] + report["infer"] + report["loop"] + report["bundle_infer"]
    assert all(r["status"] == "skipped: time budget" for r in skipped)
    assert report["bundle"]["status"].startswith("skipped: time budget")
    assert any("skipped (time budget)" in n for n in report["notes"])
    assert "skipped: time budget" in (tmp_path / "gpu_report.md").read_text()


def test_error_in_one_configuration_is_recorded_and_the_run_goes_on(tmp_path):
    # a window that fine_tiny (stride 16) cannot take: both inference rows fail, each with the message
    _run(tmp_path, "--sections", "infer", "--infer_roi", "40", "32", "32")
    infer = _rows(tmp_path / "gpu_report_infer.csv")
    assert len(infer) == 2
    for r in infer:
        assert r["status"].startswith("ValueError:") and "divisible" in r["status"], r["status"]
    assert json.loads((tmp_path / "gpu_report.json").read_text())["bundle"]["status"] == "not run"


@pytest.mark.parametrize(
    "image, roi, overlap",
    [((40, 30, 20), (16, 16, 8), 0.5), ((512, 100, 70), (128, 64, 64), 0.25), ((8, 8, 8), (16, 16, 8), 0.5)],
)
def test_num_windows_matches_monai_sliding_window(image, roi, overlap):
    from monai.inferers import sliding_window_inference

    from benchmarks.gpu_report_sections import num_windows

    calls = []

    def predictor(x):
        calls.append(x.shape[0])
        return x

    sliding_window_inference(torch.zeros(1, 1, *image), roi, 1, predictor, overlap=overlap)
    assert num_windows(image, roi, overlap) == sum(calls)
    assert num_windows((512, 512, 200), (128, 128, 64), 0.5) == 7 * 7 * 6  # the GPU report's scan, by hand


def test_nnunet_plan_for_btcv():
    """nnU-Net's 3d_fullres topology at the paper's crop, worked out by hand from nnU-Net v2's planner rules."""
    from monai_fine.networks.peers import ds_loss_weights, nnunet_dynunet, nnunet_plan

    plan = nnunet_plan((128, 128, 64), (0.76, 0.76, 3.0))
    assert plan["strides"] == [[1, 1, 1], [2, 2, 1]] + [[2, 2, 2]] * 4
    assert plan["kernel_size"] == [[3, 3, 1]] + [[3, 3, 3]] * 5
    assert plan["filters"] == [32, 64, 128, 256, 320, 320]
    assert plan["total_stride"] == [32, 32, 16] and plan["deep_supr_num"] == 3
    assert ds_loss_weights(3) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    # isotropic spacing: 3x3x3 kernels from the start, pooling until an edge would drop below 2 x 4 voxels
    iso = nnunet_plan((64, 64, 64), (1.0, 1.0, 1.0))
    assert iso["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4 and iso["kernel_size"] == [[3, 3, 3]] * 5
    with pytest.raises(ValueError, match="divisible"):
        nnunet_plan((128, 128, 60), (0.76, 0.76, 3.0))
    net, plan = nnunet_dynunet((64, 64, 32), base_features=8, max_features=16)
    net.train()
    out = net(torch.zeros(1, 1, 64, 64, 32))
    assert out.shape == (1, 1 + plan["deep_supr_num"], 14, 64, 64, 32)


def test_swinunetr_without_einops(monkeypatch):
    """The GPU machine has no einops: SwinUNETR then runs on ``permute_rearrange``, with the same output (the
    reference output needs einops, which is not a dependency of this project: skipped without it)."""
    einops = pytest.importorskip("einops")
    from monai.networks.nets import swin_unetr

    from monai_fine.networks.peers import permute_rearrange, swinunetr

    x = torch.randn(2, 3, 4, 5, 6)
    for pattern in ("b c d h w -> b d h w c", "b d h w c -> b c d h w", "n c h w -> n h w c"):
        t = x if len(pattern.split("->")[0].split()) == 5 else x[:, :, 0]
        assert torch.equal(permute_rearrange(t, pattern), einops.rearrange(t, pattern))
    with pytest.raises(ValueError, match="permutation"):
        permute_rearrange(x, "b c d h w -> b (c d) h w")

    torch.manual_seed(0)
    net = swinunetr(feature_size=12).eval()
    image = torch.randn(1, 1, 64, 32, 32)
    with torch.no_grad():
        expected = net(image)

    def missing(*args, **kwargs):
        raise RuntimeError("einops is not installed")

    monkeypatch.setattr(swin_unetr, "rearrange", missing)
    monkeypatch.setitem(sys.modules, "einops", None)  # `import einops` now fails, as on the GPU machine
    swinunetr(feature_size=12)  # notices and installs the shim in MONAI's module
    assert swin_unetr.rearrange is permute_rearrange
    with torch.no_grad():
        assert torch.allclose(net(image), expected)
