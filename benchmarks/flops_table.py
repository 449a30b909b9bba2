# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""How near the machine the network's training step runs: FLOP/s and the fraction of the fp32 matmul peak.

For each setting, one training step as the bundle runs it (forward with deep supervision, ``DeepSupervisionLoss`` of
Dice + CE, backward, the bundle's AdamW from ``monai_fine.optim``) on random tensors; its FLOPs as torch's
``FlopCounterMode`` counts them (matmuls, convolutions, attention; 2 per multiply-add); the median wall time of the
timed steps; and the peak: the best of 2048^3 fp32 matmuls, timed in the same process before and after the steps
(the larger of the two is the peak); the minor page faults a timed step makes, and the process's peak resident memory
so far.

The process first keeps freed host memory for its next tensors, as the bundle's training does by default
(``monai_fine.config.retain_freed_cpu_memory``, bundle tunable ``retain_cpu_memory``); ``--default-malloc`` leaves
glibc's ``malloc`` as it is, where every large tensor of a step is faulted in anew.

    python -m benchmarks.flops_table [--settings demo,tiny64,bcv128] [--csv out.csv] [--default-malloc]

Settings: ``demo`` (``tiny`` ``full``, 2 crops of 32x32x16, what the README's demo trains), ``tiny64`` (``tiny``
``full``, one 64x64x32 crop), ``bcv128`` (``bcv`` ``full``, one 128x128x64 crop, the paper's).
"""

from __future__ import annotations

import argparse
import resource
import statistics
from pathlib import Path

import torch

from benchmarks.common import (
    counted_flops,
    fine_network,
    matmul_peak_gflops,
    platform_cpu,
    roi_str,
    timed_calls,
    write_csv,
)
from monai_fine.config import retain_freed_cpu_memory

__all__ = ["SETTINGS", "FIELDS", "measure", "main"]

#: name -> (preset, crop, batch, timed steps)
SETTINGS = {
    "demo": ("tiny", (32, 32, 16), 2, 20),
    "tiny64": ("tiny", (64, 64, 32), 1, 6),
    "bcv128": ("bcv", (128, 128, 64), 1, 3),
}
FIELDS = (
    "setting", "preset", "roi", "batch", "gflop_per_step", "step_s", "gflops_per_s", "matmul_peak_gflops_per_s",
    "peak_fraction", "retain_cpu_memory", "page_faults_per_step", "process_peak_rss_mib", "threads", "torch", "machine",
)  # fmt: skip


def _step(preset: str, roi: tuple[int, int, int], batch: int):
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    from monai_fine.optim import create_optimizer

    torch.manual_seed(0)
    net = fine_network(preset, "full", roi, deep_supervision=True).train()
    opt = create_optimizer("adamw", net, 2e-3)
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    x, label = torch.randn(batch, 1, *roi), torch.randint(0, 14, (batch, 1, *roi)).float()
    boxes = ([[0.0, 0.0, 0.0], [0.5, 0.5, 1.0]], [[0.5, 0.25, 0.0], [1.0, 0.75, 1.0]])
    box = torch.tensor([boxes[i % 2] for i in range(batch)])

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x, box), label).backward()
        opt.step()

    return step


def measure(name: str, peak_before: float, retained: bool = False) -> dict:
    """One row of the table for setting ``name``; the peak is the larger of ``peak_before`` and one measured after;
    ``retained`` is recorded: whether the process keeps freed memory (:func:`main` sets it)."""
    preset, roi, batch, steps = SETTINGS[name]
    step = _step(preset, roi, batch)
    step()  # warm-up (allocations, layouts)
    flops = counted_flops(step)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, _ = timed_calls(step, steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    seconds = statistics.median(wall)
    peak = max(peak_before, matmul_peak_gflops())
    rate = flops / seconds / 1e9
    return {
        "setting": name, "preset": preset, "roi": roi_str(roi), "batch": batch, "gflop_per_step": round(flops / 1e9, 2),
        "step_s": round(seconds, 4), "gflops_per_s": round(rate, 1), "matmul_peak_gflops_per_s": round(peak, 1),
        "peak_fraction": round(rate / peak, 3), "retain_cpu_memory": retained, "page_faults_per_step": round(faults),
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform_cpu(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {','.join(SETTINGS)}")
    p.add_argument("--csv", default=None, help="write the rows here")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc as it is (the bundle: "
                   "retain_cpu_memory false)")  # fmt: skip
    args = p.parse_args(argv)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        p.error(f"--settings must be a non-empty subset of {list(SETTINGS)}, got {names}")
    retained = False if args.default_malloc else retain_freed_cpu_memory()
    rows = []
    for name in names:
        rows.append(measure(name, matmul_peak_gflops(), retained))
        r = rows[-1]
        print(
            f"{name}: {r['gflop_per_step']} GFLOP in {r['step_s']} s = {r['gflops_per_s']} GFLOP/s, "
            f"{r['peak_fraction']:.1%} of the {r['matmul_peak_gflops_per_s']} GFLOP/s matmul peak",
            flush=True,
        )
    if args.csv:
        write_csv(Path(args.csv), FIELDS, rows)
    return rows


if __name__ == "__main__":
    main()
