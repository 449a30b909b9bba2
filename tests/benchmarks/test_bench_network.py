# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m benchmarks.bench_network --quick``: the crop-size sweep with the peers, end to end at tiny sizes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_sweep(tmp_path):
    out = tmp_path / "sweep.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_network",
        "--quick",
        "--threads",
        "1",
        "--paired",
        "3",
        "--csv",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    configs = ["fine_tiny:none", "fine_tiny:full", "swinunetr(12)", "dynunet(filters 8-32)"]
    assert [(r["roi"], r["config"]) for r in rows] == [(roi, c) for roi in ("32x32x16", "64x32x16") for c in configs]
    device_name = rows[0]["device_name"]
    assert device_name and all(r["device"] == "cpu" for r in rows)
    for r in rows:
        if r["config"].startswith("swinunetr"):  # the SwinUNETR path itself runs in test_gpu_report.py
            assert r["status"] == f"skipped: SwinUNETR needs a crop divisible by 32, not {r['roi']}"
            continue
        assert r["status"] == "ok", r
        assert r["device_name"] == device_name
        for key in ("train_s", "train_peak_mb", "infer_s", "gflops_fwd", "gflops_train_step", "params"):
            assert float(r[key]) > 0, (r["config"], key, r[key])

    # the DynUNet rows are nnU-Net's plan at each crop, with the filters asked for
    from monai_fine.networks.peers import nnunet_dynunet

    for r in rows:
        if r["config"].startswith("dynunet"):
            roi = tuple(int(v) for v in r["roi"].split("x"))
            net, _ = nnunet_dynunet(roi, base_features=8, max_features=32)
            assert int(r["params"]) == sum(p.numel() for p in net.parameters())

    # one summary per crop; its full/none ratios are the CSV's numbers
    lines = proc.stdout.splitlines()
    summaries = [json.loads(line[len("SUMMARY ") :]) for line in lines if line.startswith("SUMMARY ")]
    assert [s["roi"] for s in summaries] == ["32x32x16", "64x32x16"]
    md = out.with_suffix(".md").read_text()
    assert device_name in md
    for summary in summaries:
        at = {r["config"]: r for r in rows if r["roi"] == summary["roi"]}
        ratio = round(float(at["fine_tiny:full"]["train_s"]) / float(at["fine_tiny:none"]["train_s"]), 3)
        assert summary["targets"]["full/none train_s <= 1.05"] == ratio
        assert f"| {ratio} {'met' if ratio <= 1.05 else 'MISSED'} |" in md
        assert "dynunet/full" in summary

    # the paired (interleaved, one process) steps: 3 per mode and crop; the paired ratio is the median per-round ratio
    import statistics

    paired = [json.loads(line[len("BENCH_PAIRED ") :]) for line in lines if line.startswith("BENCH_PAIRED ")]
    assert [tuple(p["roi"]) for p in paired] == [(32, 32, 16), (64, 32, 16)]
    for p, summary in zip(paired, summaries):
        assert p["status"] == "ok" and sorted(p["paired_times"]) == ["full", "none"]
        assert all(len(t) == 3 and min(t) > 0 for t in p["paired_times"].values())
        t = p["paired_times"]
        per_round = sorted(f / n for f, n in zip(t["full"], t["none"]))
        assert summary["targets"]["full/none paired train_s <= 1.05"] == round(per_round[1], 3)
        # 3 rounds are too few for a 95 % interval: it is [min, max] and says its coverage (1 - 2/8)
        pr = summary["paired full/none"]
        assert (pr["low"], pr["high"], pr["coverage"], pr["rounds"]) == (
            round(per_round[0], 3),
            round(per_round[2], 3),
            0.75,
            3,
        )
        assert pr["verdict"] == ("met" if pr["high"] <= 1.05 else "MISSED" if pr["low"] > 1.05 else "undecided")
        assert {m: statistics.median(v) for m, v in t.items()} == pytest.approx(summary["paired train_s"], abs=1e-4)


def _coverage_by_enumeration(n: int, k: int) -> float:
    """P(x_(k) <= median < x_(n-k+1)) by counting, over all 2**n equally likely patterns of which samples fall below
    the population median, those with at least k below and at least k above."""
    import itertools

    hits = sum(k <= sum(signs) <= n - k for signs in itertools.product((0, 1), repeat=n))
    return hits / 2**n


@pytest.mark.parametrize(
    "n, k",  # the 95 % order-statistic interval of the median, as printed in nonparametric tables
    [(6, 1), (10, 2), (20, 6), (30, 10)],
)
def test_median_interval_picks_the_tabulated_order_statistics(n, k):
    from benchmarks.common import median_interval

    values = [float(v) for v in range(100, 100 - n, -1)]  # unsorted input: descending
    med, low, high, coverage = median_interval(values)
    xs = sorted(values)
    assert (low, high) == (xs[k - 1], xs[n - k])
    if n <= 20:
        assert coverage == pytest.approx(_coverage_by_enumeration(n, k))
        assert _coverage_by_enumeration(n, k + 1) < 0.95  # one step narrower would fall below 95 %
    else:  # 2**30 patterns are too many to count: the tables' 95.72 %
        assert coverage == pytest.approx(0.9572, abs=1e-4)
    assert coverage >= 0.95
    assert med == pytest.approx((xs[(n - 1) // 2] + xs[n // 2]) / 2)


def test_paired_verdict_reads_the_interval():
    from benchmarks.common import interval_verdict, paired_ratio

    none = [10.0] * 10
    close = paired_ratio(
        {"none": none, "full": [10.0 * r for r in (1.0, 1.02, 1.03, 1.04, 1.04, 1.05, 1.06, 1.08, 1.1, 1.2)]}
    )
    assert (close["ratio"], close["low"], close["high"]) == (1.045, 1.02, 1.1)  # tabulated k=2 for n=10
    assert interval_verdict(close["low"], close["high"], 1.05) == "undecided"
    assert interval_verdict(1.0, 1.05, 1.05) == "met" and interval_verdict(1.051, 1.2, 1.05) == "MISSED"
