# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m benchmarks.flops_table``: a training step's FLOP/s against the matmul peak of the same process."""

from __future__ import annotations

import csv

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import flops_table
from benchmarks.common import fine_network


def test_the_demo_row_is_consistent_and_counts_forward_and_backward(tmp_path):
    out = tmp_path / "flops.csv"
    (row,) = flops_table.main(["--settings", "demo", "--csv", str(out)])
    with open(out) as f:
        assert [r["setting"] for r in csv.DictReader(f)] == ["demo"]
    assert (row["preset"], row["roi"], row["batch"]) == ("tiny", "32x32x16", 2)
    assert row["step_s"] > 0 and row["matmul_peak_gflops_per_s"] > 0
    assert row["gflops_per_s"] == pytest.approx(row["gflop_per_step"] / row["step_s"], rel=0.01)
    assert row["peak_fraction"] == pytest.approx(row["gflops_per_s"] / row["matmul_peak_gflops_per_s"], abs=1e-3)
    assert isinstance(row["retain_cpu_memory"], bool) and row["page_faults_per_step"] >= 0
    assert row["process_peak_rss_mib"] > 100  # torch and a network: at least that much
    # a training step does the forward's products once and about twice again in the backward (input and weight
    # gradients): between 2.5 and 3.5 forward passes, counted here independently on the forward alone
    net = fine_network("tiny", "full", (32, 32, 16), deep_supervision=True).train()
    box = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 1.0]], [[0.5, 0.25, 0.0], [1.0, 0.75, 1.0]]])
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(2, 1, 32, 32, 16), box)
    forward = counter.get_total_flops() / 1e9
    assert 2.5 * forward < row["gflop_per_step"] < 3.5 * forward, (row["gflop_per_step"], forward)


def test_an_unknown_setting_is_refused_naming_it():
    with pytest.raises(SystemExit):
        flops_table.main(["--settings", "demo,huge"])
