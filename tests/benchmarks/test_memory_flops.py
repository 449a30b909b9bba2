# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``benchmarks.memory_flops``: the closed form of what ``full`` adds to a training step, stage by stage, against
torch's ``FlopCounterMode`` counting the real forward and backward."""

from __future__ import annotations


def test_closed_form_equals_the_counted_flops_in_every_stage():
    from benchmarks.memory_flops import markdown, stage_flops

    # 48x48x16 with fine_tiny: stage 2 (6x6x2) is padded to whole windows, the bottleneck (3x3x1) has one clipped
    # window; the shallow stages run the window tokens' MLP as its own call, the deep ones join it to the visual tokens
    roi = (48, 48, 16)
    rows = stage_flops("tiny", roi)
    assert [r["stage"] for r in rows] == [f"encoder_stages.{i}" for i in range(4)] + [
        f"decoder_stages.{i}" for i in range(3)
    ] + ["step"]
    for r in rows:
        assert r["counted_extra"] > 0, r
        assert r["counted_extra"] == r["closed_form_extra"], r  # exact: both are integer FLOP counts
    stages, step = rows[:-1], rows[-1]
    assert step["counted_extra"] == sum(r["counted_extra"] for r in stages)
    assert [r["windows"] for r in stages] == [72, 9, 4, 1, 4, 9, 72]
    # the bottleneck's memory costs more than the stage itself: the fixed cost the small-crop target runs into
    assert stages[3]["counted_extra"] > stages[3]["none"]
    table = markdown("tiny", roi, rows)
    assert "| encoder_stages.3 | 3x3x1 | 192 | 1 | 16 |" in table
