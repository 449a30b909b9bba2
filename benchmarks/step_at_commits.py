# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The same training step at two commits of the package: how much faster the code made it, on one machine.

Each commit's ``monai_fine/`` is exported with ``git archive`` into a temporary folder; then, in alternating order,
one fresh process per commit times the demo-size step (``tiny``, ``full``, 2 crops of 32x32x16, deep supervision,
``DeepSupervisionLoss`` of Dice + CE as the bundle sets it, the package's own ``create_optimizer("adamw")``, random
tensors; the median of ``--steps`` steps after 8 warm-up steps). A pair's two processes ran back to back, so the
per-pair ratio cancels most of a drift of the machine's speed; the result is the median ratio with its 95 %
interval. The step needs only ``create_fine`` and ``create_optimizer``, which every commit since the optimiser
moved into the package has.

    python -m benchmarks.step_at_commits --base 20f8fda --new HEAD [--pairs 8] [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from benchmarks.common import alternating_runs, cpu_name, median_interval

__all__ = ["CHILD", "export_package", "step_ms", "main"]

#: the timed step, run by ``python -c`` in a fresh process whose working folder holds the exported package (``-c``
#: puts that folder first on the import path, ahead of an installed ``monai_fine``; the assert checks it)
CHILD = r"""
import os, statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
from monai.losses import DeepSupervisionLoss, DiceCELoss
import monai_fine
from monai_fine.networks import create_fine
from monai_fine.optim import create_optimizer
assert monai_fine.__file__.startswith(os.getcwd()), monai_fine.__file__
torch.manual_seed(0)
roi = (32, 32, 16)
net = create_fine("tiny", 1, 14, memory="full", roi_size=roi, deep_supervision=True).train()
net.memory_visits.fill_(1)
opt = create_optimizer("adamw", net, lr=2e-3)
loss_fn = DeepSupervisionLoss(
    DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True), weight_mode="exp")
x, y = torch.randn(2, 1, *roi), torch.randint(0, 14, (2, 1, *roi)).float()
box = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 1.0]], [[0.5, 0.25, 0.0], [1.0, 0.75, 1.0]]])

def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(net(x, box), y).backward()
    opt.step()

for _ in range(8):
    step()
times = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
print(statistics.median(times) * 1e3)
"""


def export_package(repo: Path, commit: str, out: Path) -> str:
    """``monai_fine/`` of ``commit`` under ``out``; returns the full commit hash."""
    full = subprocess.run(["git", "-C", str(repo), "rev-parse", commit], check=True, capture_output=True, text=True)
    sha = full.stdout.strip()
    tar = subprocess.run(["git", "-C", str(repo), "archive", sha, "monai_fine"], check=True, capture_output=True)
    with tarfile.open(fileobj=BytesIO(tar.stdout)) as archive:
        archive.extractall(out, filter="data")
    return sha


def step_ms(package_root: Path, steps: int, threads: int) -> float:
    """Median step time (ms) of the package under ``package_root``, in a fresh process."""
    run = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(threads)], cwd=package_root, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return float(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the earlier commit")
    p.add_argument("--new", default="HEAD", help="the later commit (default HEAD)")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(tmp) / name for name in ("base", "new")}
        shas = {name: export_package(args.repo, getattr(args, name), root) for name, root in roots.items()}
        times = alternating_runs(lambda name: step_ms(roots[name], args.steps, args.threads), ("base", "new"),
                                 args.pairs)  # fmt: skip
    ratio, low, high, coverage = median_interval([b / n for b, n in zip(times["base"], times["new"])])
    result = {"base": shas["base"][:7], "new": shas["new"][:7], "machine": cpu_name(), "threads": args.threads,
              "base_ms": statistics.median(times["base"]), "new_ms": statistics.median(times["new"]),
              "base_over_new": round(ratio, 3), "low": round(low, 3), "high": round(high, 3),
              "coverage": round(coverage, 3), "pairs": args.pairs}  # fmt: skip
    print(f"demo-size step on {result['machine']}, {args.threads} threads, {args.pairs} pairs of {args.steps} steps")
    for name in ("base", "new"):
        print(f"  {result[name]}: median {result[name + '_ms']:.1f} ms  (per process: "
              + ", ".join(f"{t:.1f}" for t in times[name]) + ")")  # fmt: skip
    print(f"  {result['base']}/{result['new']}: {result['base_over_new']} [{result['low']}, {result['high']}] "
          f"(coverage {result['coverage']})")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
