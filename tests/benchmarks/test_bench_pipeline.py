# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m benchmarks.bench_pipeline --quick``: the bundle's training loop against the bare step, both settings
at tiny
sizes, end to end through the real ``train.json``; the table's structure and its numbers' consistency."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ROUNDS = 3


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_pipeline") / "pipeline.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.bench_pipeline", "--quick", "--threads", "1", "--device",
           "cpu", "--rounds", str(ROUNDS), "--csv", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [json.loads(line[len("BENCH_PIPELINE ") :]) for line in proc.stdout.splitlines()
             if line.startswith("BENCH_PIPELINE ")]  # fmt: skip
    return rows, lines, out.with_suffix(".md").read_text()


def _measures(parts: tuple[str, ...], per_it: dict[str, int], setting: str) -> list[str]:
    n = per_it[setting]
    return (["bundle"] + [f"bundle:{p}" for p in parts] + ["bare", "bare_meta"]
            + ["validation (once)", f"validation (amortized, 1/{n} it)", "epoch_end (once)",
               f"epoch_end (amortized, 1/{n} it)", "bundle/bare", "bare_meta/bare"])  # fmt: skip


@pytest.mark.slow
def test_quick_table_has_every_setting_part_and_ratio(quick_run):
    from benchmarks.bench_pipeline import PARTS
    from monai_fine.engines import default_num_workers

    rows, lines, md = quick_run
    assert [s["setting"] for s in lines] == ["demo", "fine_bcv"]
    per_it = {"demo": 50 * 100, "fine_bcv": 18 * 10}  # the demo's schedule; the bundle's on BTCV's 18 training scans
    for setting in ("demo", "fine_bcv"):
        at = [r for r in rows if r["setting"] == setting]
        assert [r["measure"] for r in at] == _measures(PARTS, per_it, setting)
        # the bundle's own default on this CPU, as the demo and the bundle now choose it
        assert all(r["device"] == "cpu" and r["threads"] == "1" for r in at)
        assert all(int(r["num_workers"]) == default_num_workers("cpu") for r in at)
        assert f"## {setting}" in md
    for r in rows:
        if r["ratio"]:
            assert f"| {r['measure']} | {r['ratio']} | [{r['low']}, {r['high']}] |" in md
        else:
            assert f"| {r['measure']} | {r['median_ms']} | {r['p90_ms']} | {r['mean_ms']} |" in md


@pytest.mark.slow
def test_quick_parts_add_up_to_at_most_the_iteration(quick_run):
    from benchmarks.common import interval_verdict, median_interval

    rows, lines, _ = quick_run
    for line in lines:
        at = {r["measure"]: r for r in rows if r["setting"] == line["setting"]}
        total = at["bundle"]
        assert int(total["n"]) == ROUNDS and float(total["median_ms"]) > 0
        parts = {m: r for m, r in at.items() if m.startswith("bundle:")}
        for r in parts.values():  # disjoint spans of one iteration: none negative, none longer than the whole
            assert 0 <= float(r["mean_ms"]) <= float(total["mean_ms"]) and int(r["n"]) == ROUNDS
        measured = sum(float(r["mean_ms"]) for m, r in parts.items() if m != "bundle:other")
        assert measured <= float(total["mean_ms"]) + 1e-2
        assert sum(float(r["mean_ms"]) for r in parts.values()) == pytest.approx(float(total["mean_ms"]), abs=0.05)
        for r in at.values():
            if not r["ratio"]:
                assert float(r["median_ms"]) <= float(r["p90_ms"]) + 1e-9
        for name in ("validation", "epoch_end"):
            once = at[f"{name} (once)"]
            amortized = next(v for m, v in at.items() if m.startswith(f"{name} (amortized, 1/"))
            n = int(amortized["measure"].split("1/")[1].split(" ")[0])
            assert float(once["mean_ms"]) > 0
            assert float(amortized["mean_ms"]) == pytest.approx(float(once["mean_ms"]) / n, abs=2e-3)
        # the ratios are the medians of the per-round ratios of the interleaved steps, with their intervals
        t = line["times_s"]
        assert len(t["bundle"]) == len(t["bare"]) == len(t["bare_meta"]) == ROUNDS
        assert statistics.median(t["bundle"]) * 1e3 == pytest.approx(float(total["median_ms"]), abs=2e-3)
        for mode in ("bundle", "bare_meta"):
            med, low, high, cover = median_interval([a / b for a, b in zip(t[mode], t["bare"])])
            r = at[f"{mode}/bare"]
            assert (float(r["ratio"]), float(r["low"]), float(r["high"])) == pytest.approx((med, low, high), abs=1e-3)
            assert float(r["coverage"]) == pytest.approx(cover, abs=1e-3)
        r = at["bundle/bare"]
        assert r["verdict"] == interval_verdict(float(r["low"]), float(r["high"]), 1.10)


@pytest.mark.slow
def test_a_signalled_run_says_it_measured_nothing(tmp_path):
    """SIGTERM to the benchmark's PID mid-loop: the bundle's preemption handler ends the trainer early, and the
    benchmark says so instead of writing a table of a partial epoch."""
    out = tmp_path / "pipeline.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.bench_pipeline", "--quick", "--settings", "demo", "--threads", "1",
           "--device", "cpu", "--rounds", "100000", "--csv", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in iter(proc.stdout.readline, ""):  # the progress bar: the loop is running
            seen.append(line)
            if "Iteration" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    text = "".join(seen) + rest
    assert proc.returncode != 0, text[-3000:]
    assert "before its epoch ended" in text, text[-3000:]
    assert not out.exists()
