# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``benchmarks.scan_cost`` at the test preset's size: its rows, and the FLOP identities its ratios rest on."""

from __future__ import annotations

import pytest

from benchmarks import scan_cost


def test_scan_cost_rows_and_flop_identities(monkeypatch):
    names = ("full_b1", "full_b2", "scan", "scan_all", "scan_mean")
    monkeypatch.setitem(scan_cost.SETTINGS, "t", ("test", (32, 32, 16), 2, 0, names))
    rows = {r["measure"]: r for r in scan_cost.measure("t")}
    assert set(names) | {"scan/full_b2", "scan_all/full_b2", "scan_mean/full_b2", "full_b2/full_b1"} == set(rows)
    assert all(rows[n]["median_s"] > 0 for n in names)
    assert rows["full_b2/full_b1"]["gflop"] == pytest.approx(2.0, rel=1e-3)  # every op of a sample is its own
    # the view's every-stage write pass is one more crop-size pass without heads: at most one crop's FLOPs, and most
    # of them (the mean and the centred read differ by a few small matmuls)
    write = rows["scan_mean"]["gflop"] - rows["full_b2"]["gflop"]
    assert 0.9 * rows["full_b1"]["gflop"] < write <= rows["full_b1"]["gflop"]
    assert rows["scan_mean"]["gflop"] <= rows["scan_all"]["gflop"] < rows["scan_mean"]["gflop"] * 1.02
    # the default, encoder-written memory's pass stops after the encoder: fewer FLOPs than the whole pass, still a pass
    write_enc = rows["scan"]["gflop"] - rows["full_b2"]["gflop"]
    assert 0.3 * write < write_enc < 0.8 * write
    r = rows["scan/full_b2"]
    assert r["low"] <= r["ratio"] <= r["high"] and r["rounds"] == 2 and r["verdict"] in ("met", "MISSED", "undecided")
