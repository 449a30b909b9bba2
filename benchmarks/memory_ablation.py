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

The arms switch the flags :class:`~monai_fine.networks.blocks.transformer.FineBlock` resolves in ``__init__``; they
are ablations for a benchmark, not configurations of the package. Each row gives the training-step FLOPs and the
median of the per-round time ratios to ``none`` with its distribution-free 95 % interval.

``--stage I`` times encoder stage ``I`` alone instead (forward and backward of the stage on random visual tokens,
first four arms), which separates a stage's few-token products from the rest of the step; ``--own-projections``
builds ``share_memory_attention=False`` (V-MSA and G-MSA with their own weights, the official design).

    python benchmarks/memory_ablation.py --roi 64x64x32 --rounds 24
    python benchmarks/memory_ablation.py --roi 64x64x32 --stage 3 --rounds 40
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_network import (
    ROI_BOX,
    _parse_roi,
    _register_cpu_sdpa_flops,
    _roi_str,
    cpu_name,
    median_interval,
    train_step,
)
from memory_flops import fine_model, stage_inputs, table

ARMS = ("none", "full", "full, no V-MSA", "full, no V-MSA, no G-MSA", "full, no memory where V > visual")


def _switch_off(net, arm: str, x, fwd_kwargs: dict) -> list[str]:
    """Switch off the parts ``arm`` leaves out; returns the stages run without memory (last arm)."""
    from monai_fine.networks.blocks.transformer import FineBlock

    for blk in net.modules():
        if isinstance(blk, FineBlock):
            if arm in ("full, no V-MSA", "full, no V-MSA, no G-MSA"):
                blk.volume_attention = False
            if arm == "full, no V-MSA, no G-MSA":
                blk.global_attention = False
    dropped = []
    if arm == "full, no memory where V > visual":
        for name, shape in stage_inputs(net.eval(), x, fwd_kwargs).items():
            stage = net.get_submodule(name)
            if math.prod(shape[1:4]) < stage.memory_size:
                stage.window_tokens = stage.volume_tokens = None  # the stage then runs as "none"
                stage.num_window_tokens = 0
                for blk in stage.blocks:
                    blk.volume_attention = blk.global_attention = False
                dropped.append(name)
    return dropped


def interleaved(calls: dict, rounds: int, warmup: int) -> dict[str, dict]:
    """Time ``calls`` (arm -> callable, ``"none"`` first) in ``rounds`` rounds of one call each, the order rotated every
    round, after ``warmup`` untimed calls each: per arm ``median_s`` and the median of the per-round ratios to
    ``none`` with its 95 % interval (``ratio``, ``low``, ``high``)."""
    for _ in range(max(0, warmup)):
        for call in calls.values():
            call()
    arms = list(calls)
    times: dict[str, list[float]] = {a: [] for a in arms}
    for i in range(rounds):
        k = i % len(arms)
        for arm in arms[k:] + arms[:k]:
            start = time.perf_counter()
            calls[arm]()
            times[arm].append(time.perf_counter() - start)
    out = {}
    for arm in arms:
        ratio, low, high, _ = median_interval([t / b for t, b in zip(times[arm], times["none"])])
        out[arm] = {"median_s": statistics.median(times[arm]), "ratio": ratio, "low": low, "high": high}
    return out


def run(preset: str, roi: tuple[int, int, int], rounds: int, warmup: int = 2) -> list[dict]:
    """Rows per arm: ``arm``, ``flops_train_step`` (and ``gflops_train_step``), ``dropped`` stages and the timing of
    :func:`interleaved`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_flops()
    torch.manual_seed(0)
    x = torch.randn(1, 1, *roi)
    label = torch.randint(0, 14, (1, 1, *roi)).float()
    steps, rows = {}, {}
    for arm in ARMS:
        mode = "none" if arm == "none" else "full"
        net, loss_fn, kwargs = fine_model(preset, mode, roi)
        dropped = _switch_off(net, arm, x, kwargs)
        if arm == ARMS[-1] and not dropped:
            continue
        steps[arm] = train_step(net.train(), loss_fn, kwargs, x, label)
        with FlopCounterMode(display=False) as counter:
            steps[arm]()
        flops = counter.get_total_flops()
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

    from monai_fine.networks.nets.fine import fine_bcv, fine_tiny

    factory = fine_bcv if preset == "bcv" else fine_tiny
    torch.manual_seed(0)
    x = torch.randn(1, 1, *roi)
    box = torch.tensor([ROI_BOX])
    calls, shape = {}, None
    for arm in ARMS[:4]:
        net = factory(1, 14, memory="none" if arm == "none" else "full", roi_size=roi,
                      share_memory_attention=not own_projections)  # fmt: skip
        net.memory_visits.fill_(1)  # every cell seen, as in bench_network.build_model
        _switch_off(net, arm, x, {"roi_box": box})
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
        f"fine_{preset} at {_roi_str(roi)}: encoder stage {stage_index} alone ({tokens} tokens, C {shape[4]}), forward "
        f"and backward, {rounds} rounds, {cpu_name()}, {torch.get_num_threads()} threads"
        + (", own V-MSA/G-MSA projections" if own else "")
    )
    base = rows[0]["median_s"]
    header = ["arm", "median ms", "extra over `none` ms", "time / none: median per-round ratio [95 % interval]"]
    cells = [
        [r["arm"], f"{1000 * r['median_s']:.1f}", f"{1000 * (r['median_s'] - base):.1f}", _ratio_cell(r)] for r in rows
    ]
    return "\n".join([title, ""] + table(header, cells))


def _ratio_cell(row: dict) -> str:
    return f"{row['ratio']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"


def markdown(preset: str, roi: tuple[int, int, int], rounds: int, rows: list[dict]) -> str:
    import torch

    none = rows[0]["gflops_train_step"]
    threads = torch.get_num_threads()
    title = f"fine_{preset} at {_roi_str(roi)}, batch 1, {rounds} rounds, {cpu_name()}, {threads} threads"
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
    return "\n".join([title, ""] + table(header, cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("bcv", "tiny"), default="bcv", help="fine_bcv or fine_tiny")
    parser.add_argument("--roi", type=_parse_roi, default=(64, 64, 32), metavar="XxYxZ")
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
