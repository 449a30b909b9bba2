# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m monai_fine context_benchmark`` end to end at a seconds-long budget, and the batch helper it relies on."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from monai_fine.engines import PrepareScanBatch, one_view_per_scan


def test_one_view_per_scan_keeps_first_views_and_maps_crops():
    views = torch.arange(5.0).view(5, 1, 1, 1, 1).expand(5, 1, 2, 2, 2)
    boxes = torch.arange(5.0).view(5, 1, 1).expand(5, 2, 3)
    kept, kept_boxes, index = one_view_per_scan(views, boxes, torch.tensor([70, 70, 9, 70, 9]))
    assert kept[:, 0, 0, 0, 0].tolist() == [0.0, 2.0] and kept_boxes[:, 0, 0].tolist() == [0.0, 2.0]
    assert index.tolist() == [0, 0, 1, 0, 1]
    same, _, own = one_view_per_scan(views, None, None)
    assert torch.equal(same, views) and own.tolist() == [0, 1, 2, 3, 4]
    batch = {
        "image": torch.zeros(2, 1, 4, 4, 4),
        "label": torch.zeros(2, 1, 4, 4, 4),
        "roi_box": torch.zeros(2, 2, 3),
        "scan_id": torch.tensor([3, 3]),
        "scan_view": views[:2],
        "scan_view_box": boxes[:2],
    }
    _, _, args, kwargs = PrepareScanBatch()(batch, torch.device("cpu"))
    assert args == () and set(kwargs) == {"roi_box", "scan_view", "scan_view_box", "scan_index"}
    assert kwargs["scan_view"].shape == (1, 1, 2, 2, 2) and kwargs["scan_index"].tolist() == [0, 0]
    without = {k: v for k, v in batch.items() if not k.startswith("scan")}
    assert set(PrepareScanBatch()(without, torch.device("cpu"))[3]) == {"roi_box"}


@pytest.mark.slow
def test_context_benchmark_command_writes_one_row_per_config_and_seed(tmp_path):
    out = tmp_path / "ctx"
    cmd = [
        sys.executable,
        "-m",
        "monai_fine",
        "context_benchmark",
        "--out",
        str(out),
        "--configs",
        "none,full+scan",
        "--seeds",
        "0,1",
        "--iterations",
        "2",
        "--epoch_length",
        "2",
        "--num_train",
        "2",
        "--num_val",
        "2",
        "--preset",
        "test",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["config"], r["seed"]) for r in rows) == [
        ("full+scan", "0"),
        ("full+scan", "1"),
        ("none", "0"),
        ("none", "1"),
    ]
    for r in rows:
        assert 0.0 <= float(r["twin_found"]) <= 1.0 and int(r["twin_voxels"]) > 0 and int(r["iterations"]) == 2
        swap = float(r["swap_rate"])
        assert swap != swap or 0.0 <= swap <= 1.0  # nan when no twin voxel got a twin label
        assert (r["swap_rate_scan_off"] != "") == (r["config"] == "full+scan")  # the memory probe
    summary = (out / "summary.md").read_text()
    assert "| full+scan |" in summary and "label, twin features" in summary  # the probes' table
    assert all((r["probe_view"] != "") == (r["config"] == "full+scan") for r in rows)
    assert (out / "context_benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "data" / "dataset_0.json").read_text())["labels"]["1"] == "twin_a"
    # a second call: refused without --resume (nothing lost), and with it the finished runs are kept as they are
    before = (out / "results.csv").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode != 0 and "already holds 4 finished run(s)" in again.stderr and "--resume" in again.stderr
    assert (out / "results.csv").read_text() == before
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "results.csv").read_text() == before


def test_ridge_probe_finds_a_linear_rule_and_not_a_random_one():
    """Known answers: a target that is a linear function of the features is recovered on held-out groups; one drawn
    independently of them is not (about 0.5); a target that is the XOR of two features, no linear function, neither."""
    from monai_fine.experiments.context_benchmark import ridge_cv_accuracy

    g = torch.Generator().manual_seed(0)
    n, d = 200, 10
    x = torch.randn(n, d, generator=g)
    groups = torch.arange(n) // 2
    linear = (x[:, 3] - 0.5 * x[:, 7] > 0).long()
    assert ridge_cv_accuracy(x, linear, groups, ridge=0.01) >= 0.9
    noise = torch.randint(0, 2, (n,), generator=g)
    assert abs(ridge_cv_accuracy(x, noise, groups) - 0.5) <= 0.2
    bits = torch.randint(0, 2, (n, 2), generator=g).float()
    xor = (bits[:, 0] != bits[:, 1]).long()
    assert ridge_cv_accuracy(bits * 2 - 1, xor, groups) <= 0.7
    assert (
        ridge_cv_accuracy(torch.cat([bits, torch.zeros(n, 3)], 1), bits[:, 0].long(), groups) == 1.0
    )  # constants drop


def test_linear_probes_read_the_side_from_the_scan_view_of_an_untrained_network(tmp_path):
    """The data's own property, independent of training: the marker's side is linearly in the scan view (the probe
    of the view is exact), while the probes of an untrained network's memory and features are defined and bounded."""
    from monai.bundle import ConfigParser

    from monai_fine.bundle_tools import bundle_dir, create_network
    from monai_fine.experiments import context_benchmark as cb

    torch.manual_seed(0)
    net = create_network(None, "test", 1, 4, scan_memory=True, roi_size=[32, 32, 16]).eval()
    for rule in ("xor", "side"):  # under "side" both twins of a case have one label: still two twin crops a scan
        args = cb.parse_args(["--out", str(tmp_path), "--rule", rule, "--preset", "test"])
        parser = ConfigParser()
        parser.read_config(str(bundle_dir() / "configs" / "train.json"))
        parser.update(cb.overrides(args, "full+scan", 0, tmp_path))
        preprocess = parser.get_parsed_content("validate#preprocessing")
        out = cb.linear_probes(args, net, preprocess, pairs=6)
        assert out["probe_view"] == 1.0 and out["probe_pairs"] == 6 and out["probe_twin_crops"] == 24
        assert len(out["probe_context_stages"]) == 7 and len(out["probe_context_label_stages"]) == 7
        for key in ("probe_context", "probe_context_label", "probe_twin", "probe_twin_label"):
            assert 0.0 <= out[key] <= 1.0
