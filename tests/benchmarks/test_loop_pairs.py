# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""loop_pairs: two bundle trainers in one process, only one with the option, their iterations alternating; and the
alternation of the pairs of fresh processes that step_at_commits uses."""

from __future__ import annotations

import csv
import statistics

import pytest

from benchmarks.bench_pipeline import QUICK
from benchmarks.common import alternating_runs, interval_verdict
from benchmarks.loop_pairs import main, measure_pair


def test_pairs_alternate_their_order():
    calls = []
    out = alternating_runs(lambda name: calls.append(name) or float(len(calls)), ("a", "b"), 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert out == {"a": [1.0, 4.0, 5.0], "b": [2.0, 3.0, 6.0]}


@pytest.mark.slow
def test_two_trainers_alternate_in_one_process_and_only_the_new_one_has_the_option(tmp_path):
    cfg = QUICK["demo"]
    times = measure_pair(cfg, {"scan_memory": True}, rounds=3, warmup=1, device="cpu", work=tmp_path / "w")
    assert len(times["base"]) == len(times["new"]) == 3
    # the option is applied to the new trainer only: its iterations also run the write pass of the scan's view
    assert statistics.median(times["new"]) > 1.1 * statistics.median(times["base"])
    with pytest.raises(RuntimeError, match="create_network"):  # the bundle's own error, before any iteration
        measure_pair(cfg, {"preset": "no_such_preset"}, rounds=1, warmup=0, device="cpu", work=tmp_path / "bad")


@pytest.mark.slow
def test_the_table_reports_the_paired_ratio_against_its_bound(tmp_path):
    out = tmp_path / "pairs.csv"
    row = main(["--new", "scan_memory=true", "--quick", "--rounds", "3", "--warmup", "1", "--threads", "1",
                "--device", "cpu", "--bound", "1.01", "--csv", str(out)])  # fmt: skip
    assert row["rounds"] == 3 and row["new"] == "scan_memory=true" and row["threads"] == 1
    assert row["low"] <= row["ratio"] <= row["high"]
    assert row["verdict"] == interval_verdict(row["low"], row["high"], 1.01)
    with open(out, newline="") as f:
        assert [r["ratio"] for r in csv.DictReader(f)] == [str(row["ratio"])]
    assert f"| {row['ratio']} |" in out.with_suffix(".md").read_text()
