# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""What each part of the memory costs in a training step: paired rounds of ``none``, ``full`` and ``full`` with parts
switched off, at one crop, in one process.

Arms (one network each, steps interleaved, order rotated every round, as ``bench_network.py --paired``):

- ``none``, ``full``;
- ``full, no V-MSA``: every block's ``volume_attention`` off (G-MSA still reads the learned volume tokens);
- ``full, no V-MSA, no G-MSA``: window tokens in W-MSA and the MLP only;
- ``full, no memory where V > visual``: ``full`` except at the stages whose crop has fewer visual tokens than the
  stage has volume tokens, which run as ``none`` (a design option for small crops; the arm is left out when no stage
  qualifies, e.g. ``fine_bcv`` at 96x96x64 and larger).

Each arm is a network built for it (:func:`arm_memory`): a memory configuration of ``MEMORY_CONFIGS`` with parts
switched off (``MEMORY_CONFIGS["full"].without(...)``) or a memory per stage (``stage_memory``). Each row gives the
training-step FLOPs and the median of the per-round time ratios to ``none`` with its distribution-free 95 %
interval.

``--stage I`` times encoder stage ``I`` alone instead (forward and backward of the stage on random visual tokens,
first four arms), which separates a stage's few-token products from the rest of the step; ``--own-projections``
builds ``share_memory_attention=False`` (V-MSA and G-MSA with their own weights, the official design).

    python -m benchmarks.memory_ablation --roi 64x64x32 --rounds 24
    python -m benchmarks.memory_ablation --roi 64x64x32 --stage 3 --rounds 40
"""

from __future__ import annotations

import argparse
import math
import statistics

from benchmarks.common import (
    ROI_BOX,
    counted_flops,
    cpu_name,
    fine_model,
    fine_network,
    interleaved_times,
    markdown_table,
    median_interval,
    parse_roi,
    register_cpu_sdpa_flops,
    roi_str,
    stage_inputs,
    train_step,
)

__all__ = ["ARMS", "arm_memory", "interleaved", "main", "markdown", "run", "run_stage", "stage_markdown"]

ARMS = ("none", "full", "full, no V-MSA", "full, no V-MSA, no G-MSA", "full, no memory where V > visual")


def arm_memory(arm: str, stage_shapes: dict[str, tuple[int, ...]] | None = None, memory_size: int = 0):
    """The network keywords of ``arm`` and the stages it runs without memory (the last arm: every encoder stage, and
    with it its decoder stage, whose ``stage_shapes`` (visual tokens of the ``full`` network, :func:`stage_inputs`)
    hold fewer tokens than the ``memory_size`` volume tokens of a stage)."""
    from monai_fine.networks import MEMORY_CONFIGS

    full = MEMORY_CONFIGS["full"]
    if arm == "none":
        return {"memory": "none"}, []
    if arm == "full":
        return {"memory": "full"}, []
    if arm == "full, no V-MSA":
        return {"memory": full.without("volume_attention")}, []
    if arm == "full, no V-MSA, no G-MSA":
        return {"memory": full.without("volume_attention", "global_attention")}, []
    dropped = [name for name, shape in (stage_shapes or {}).items() if math.prod(shape[1:4]) < memory_size]
    encoders = sorted(n for n in stage_shapes or {} if n.startswith("encoder_stages."))
    stage_memory = ["none" if name in dropped else "full" for name in encoders]
    return {"memory": "full", "stage_memory": stage_memory}, dropped


def interleaved(calls: dict, rounds: int, warmup: int) -> dict[str, dict]:
    """Time ``calls`` (arm -> callable, ``"none"`` first) in ``rounds`` rounds of one call each, the order rotated every
    round, after ``warmup`` untimed calls each: per arm ``median_s`` and the median of the per-round ratios to
    ``none`` with its 95 % interval (``ratio``, ``low``, ``high``)."""
    for _ in range(max(0, warmup)):
        for call in calls.values():
            call()
    times = interleaved_times(calls, rounds, "rotate")
    out = {}
    for arm in calls:
        ratio, low, high, _ = median_interval([t / b for t, b in zip(times[arm], times["none"])])
        out[arm] = {"median_s": statistics.median(times[arm]), "ratio": ratio, "low": low, "high": high}
    return out


def run(preset: str, roi: tuple[int, int, int], rounds: int, warmup: int = 2) -> list[dict]:
    """Rows per arm: ``arm``, ``flops_train_step`` (and ``gflops_train_step``), ``dropped`` stages and the timing of
    :func:`interleaved`."""
    import torch

    register_cpu_sdpa_flops()
    torch.manual_seed(0)
    x = torch.randn(1, 1, *roi)
    label = torch.randint(0, 14, (1, 1, *roi)).float()
    steps, rows, shapes, memory_size = {}, {}, None, 0
    for arm in ARMS:
        memory, dropped = arm_memory(arm, shapes, memory_size)
        if arm == ARMS[-1] and not dropped:
            continue
        net, loss_fn, kwargs = fine_model(preset, **memory, roi=roi)
        if arm == "full":  # the visual tokens per stage, for the last arm
            shapes, memory_size = stage_inputs(net.eval(), x, kwargs), net.memory_size
        steps[arm] = train_step(net.train(), loss_fn, kwargs, x, label)
        flops = counted_flops(steps[arm])
        rows[arm] = {"arm": arm, "flops_train_step": flops, "gflops_train_step": flops / 1e9, "dropped": dropped}
    timed = interleaved(steps, rounds, warmup - 1)  # the FLOP count was the first warm-up step
    return [{**rows[arm], **timed[arm]} for arm in steps]


def run_stage(
    preset: str,
    roi: tuple[int, int, int],
    stage_index: int,
    rounds: int,
    warmup: int = 2,
    own_projections: bool = False,
) -> list[dict]:
    """Rows per arm (the first four) for encoder stage ``stage_index`` alone: ``arm``, ``median_s`` of its forward and
    backward, and the paired time ratio to ``none``; ``shape`` its visual tokens."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(1, 1, *roi)
    box = torch.tensor([ROI_BOX])
    calls, shape = {}, None
    for arm in ARMS[:4]:
        memory, _ = arm_memory(arm)
        net = fine_network(preset, memory["memory"], roi, share_memory_attention=not own_projections)
        if shape is None:  # the same in every arm: one forward finds it
            shape = stage_inputs(net.eval(), x, {"roi_box": box})[f"encoder_stages.{stage_index}"]
        stage = net.encoder_stages[stage_index].train()
        ctx = net.memory_context(box, 1, x.device)
        tokens = torch.randn(shape)

        def call(stage=stage, ctx=ctx, tokens=tokens) -> None:
            stage(tokens.clone().requires_grad_(True), ctx, stage_index).square().sum().backward()

        calls[arm] = call
    timed = interleaved(calls, rounds, max(1, warmup))
    return [{"arm": arm, "shape": shape, **timed[arm]} for arm in calls]


def stage_markdown(preset: str, roi, stage_index: int, rounds: int, own: bool, rows: list[dict]) -> str:
    import torch

    shape = rows[0]["shape"]
    tokens = "x".join(map(str, shape[1:4]))
    title = (
        f"fine_{preset} at {roi_str(roi)}: encoder stage {stage_index} alone ({tokens} tokens, C {shape[4]}), forward "
        f"and backward, {rounds} rounds, {cpu_name()}, {torch.get_num_threads()} threads"
        + (", own V-MSA/G-MSA projections" if own else "")
    )
    base = rows[0]["median_s"]
    header = ["arm", "median ms", "extra over `none` ms", "time / none: median per-round ratio [95 % interval]"]
    cells = [
        [r["arm"], f"{1000 * r['median_s']:.1f}", f"{1000 * (r['median_s'] - base):.1f}", _ratio_cell(r)] for r in rows
    ]
    return "\n".join([title, "", *markdown_table(header, cells)])


def _ratio_cell(row: dict) -> str:
    return f"{row['ratio']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"


def markdown(preset: str, roi: tuple[int, int, int], rounds: int, rows: list[dict]) -> str:
    import torch

    none = rows[0]["gflops_train_step"]
    threads = torch.get_num_threads()
    title = f"fine_{preset} at {roi_str(roi)}, batch 1, {rounds} rounds, {cpu_name()}, {threads} threads"
    header = ["arm", "train-step GFLOPs", "FLOPs / none", "median step s",
              "time / none: median per-round ratio [95 % interval]"]  # fmt: skip
    cells = [
        [
            r["arm"] + (f" ({', '.join(r['dropped'])})" if r["dropped"] else ""),
            f"{r['gflops_train_step']:.2f}",
            f"{r['gflops_train_step'] / none:.4f}",
            f"{r['median_s']:.3f}",
            _ratio_cell(r),
        ]
        for r in rows
    ]
    return "\n".join([title, "", *markdown_table(header, cells)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", choices=("bcv", "tiny"), default="bcv", help="a preset of monai_fine.networks.PRESETS"
    )
    parser.add_argument("--roi", type=parse_roi, default=(64, 64, 32), metavar="XxYxZ")
    parser.add_argument("--rounds", type=int, default=24, help="interleaved rounds (one step per arm each)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm (the first counts FLOPs)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--stage", type=int, default=None, metavar="I", help="time encoder stage I alone")
    parser.add_argument(
        "--own-projections",
        action="store_true",
        help="share_memory_attention=False: V-MSA and G-MSA with their own weights",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    roi = tuple(args.roi)
    if args.stage is not None:
        rows = run_stage(args.preset, roi, args.stage, args.rounds, args.warmup, args.own_projections)
        print(stage_markdown(args.preset, roi, args.stage, args.rounds, args.own_projections, rows), flush=True)
        return
    if args.own_projections:
        parser.error("--own-projections goes with --stage")
    rows = run(args.preset, roi, args.rounds, args.warmup)
    print(markdown(args.preset, roi, args.rounds, rows), flush=True)


if __name__ == "__main__":
    main()
