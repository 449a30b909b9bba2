# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``benchmarks.memory_ablation``: each arm switches off what it says, checked by the FLOPs it saves against the
closed form of ``benchmarks.memory_flops``."""

from __future__ import annotations


def test_arms_save_the_closed_form_flops_of_what_they_switch_off():
    import torch

    from benchmarks.memory_ablation import ARMS, markdown, run
    from benchmarks.memory_flops import stage_flops

    roi = (32, 32, 16)  # fine_tiny: the bottleneck has 2x2x1 = 4 visual tokens beside 16 volume tokens
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = {r["arm"]: r for r in run("tiny", roi, rounds=2, warmup=1)}
    finally:
        torch.set_num_threads(threads)
    assert list(rows) == list(ARMS)
    flops = {arm: r["flops_train_step"] for arm, r in rows.items()}
    stages = {r["stage"]: r for r in stage_flops("tiny", roi)}
    assert flops["full"] - flops["none"] == stages["step"]["counted_extra"]
    # no memory at the stages with fewer visual tokens than volume tokens: exactly that stage's extra is saved
    assert rows[ARMS[-1]]["dropped"] == ["encoder_stages.3"]
    assert flops["full"] - flops[ARMS[-1]] == stages["encoder_stages.3"]["counted_extra"]
    # no V-MSA: its training FLOPs, 2 x depth x (3 (4 V C^2 + 2 V^2 C) + V^2 C) per stage (the fused kernel's
    # backward recomputes the scores once), are saved
    V, depth = 16, 2
    v_msa = sum(2 * depth * (3 * (4 * V * C * C + 2 * V * V * C) + V * V * C) for C in (24, 48, 96, 192, 96, 48, 24))
    assert flops["full"] - flops["full, no V-MSA"] == v_msa
    assert flops["none"] < flops["full, no V-MSA, no G-MSA"] < flops["full, no V-MSA"] < flops["full"]
    assert all(r["low"] <= r["ratio"] <= r["high"] for r in rows.values())
    table = markdown("tiny", roi, 2, list(rows.values()))
    assert "| full, no memory where V > visual (encoder_stages.3) |" in table


def test_stage_timing_runs_the_first_four_arms_on_the_stage_alone():
    from benchmarks.memory_ablation import ARMS, run_stage, stage_markdown

    rows = run_stage("tiny", (32, 32, 16), 3, rounds=2, warmup=1, own_projections=True)
    assert [r["arm"] for r in rows] == list(ARMS[:4])
    assert rows[0]["shape"] == (1, 2, 2, 1, 192)  # fine_tiny's bottleneck at 32x32x16
    assert rows[0]["ratio"] == 1.0 and all(r["median_s"] > 0 for r in rows)
    table = stage_markdown("tiny", (32, 32, 16), 3, 2, True, rows)
    assert "encoder stage 3 alone (2x2x1 tokens, C 192)" in table and "own V-MSA/G-MSA projections" in table
