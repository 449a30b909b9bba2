# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Speed-up of ``torch.compile`` on FINE: eager against compiled, training step and inference forward, one run.

Every (configuration, phase) runs in a fresh Python subprocess so that compiled-code caches of one run do not help
the next. A phase builds the net (memory cells all marked as visited, as after the first epochs of training), runs
``--warmup`` untimed steps (for the compiled model the first of them is the compilation, timed separately as
``compile_s``), then ``--steps`` timed steps; the median is reported. The compiled model's output is compared with
the eager model's on the same weights and input (``max_abs_diff``).

    python -m benchmarks.bench_compile                             # fine_bcv at 128x128x64, CPU
    python -m benchmarks.bench_compile --preset tiny --roi 32 32 16 --steps 1 --backend aot_eager   # smoke check

Writes ``--out`` (CSV, one row per configuration and phase, device named) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO_ROOT, ROI_BOX, device_name, fine_network, platform_cpu, timed_calls, write_csv

__all__ = ["FIELDS", "main", "worker"]

FIELDS = (
    "preset", "memory", "phase", "roi", "batch", "device", "device_name", "threads", "torch", "backend",
    "eager_s", "compiled_s", "speedup", "compile_s", "max_abs_diff", "status",
)  # fmt: skip


def _make_step(model, net, phase: str, x, y, box):
    """One step of ``model`` (eager ``net`` or its compiled form): a training step (SGD on ``net``'s parameters,
    cross-entropy) or a no-grad inference forward."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    if phase == "train":
        model.train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x, box), y[:, 0])
            loss.backward()
            opt.step()
            return loss

    else:
        model.eval()

        def step():
            with torch.no_grad():
                return model(x, box)

    return step


def _parity(net, compiled, x, box, sync) -> tuple[float, float]:
    """The compiled model's largest deviation from the eager one on the initial weights, and the seconds of its first
    (compiling) inference forward."""
    import torch

    net.eval()
    with torch.no_grad():
        ref = net(x, box)
        out, seconds = None, 0.0

        def first() -> None:
            nonlocal out
            out = compiled(x, box)

        seconds = timed_calls(first, 1, sync)[0][0]
    return float((ref - out).abs().max()), seconds


def worker(args: argparse.Namespace) -> dict:
    """Measure one (memory mode, phase): eager and compiled step times, compile time, parity."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    net = fine_network(args.preset, args.memory, args.roi, deep_supervision=False).to(device)
    x = torch.randn(args.batch, 1, *args.roi, device=device)
    y = torch.randint(0, 14, (args.batch, 1, *args.roi), device=device)
    box = torch.tensor([ROI_BOX] * args.batch, device=device)

    row = {"status": "ok"}
    # parity first, on the initial weights (training steps change them)
    compiled = torch.compile(net, backend=args.backend)
    row["max_abs_diff"], first_eval_s = _parity(net, compiled, x, box, sync)
    eager_step = _make_step(net, net, args.phase, x, y, box)
    compiled_step = _make_step(compiled, net, args.phase, x, y, box)
    if args.phase == "train":
        # the training graph (forward + backward) compiles here
        row["compile_s"] = timed_calls(compiled_step, 1, sync)[0][0]
    else:
        row["compile_s"] = first_eval_s
    timed_calls(compiled_step, max(args.warmup - 1, 0), sync)
    timed_calls(eager_step, args.warmup, sync)
    # interleave eager and compiled steps so that a drift in background load hits both alike
    eager_t, comp_t = [], []
    for _ in range(args.steps):
        eager_t += timed_calls(eager_step, 1, sync)[0]
        comp_t += timed_calls(compiled_step, 1, sync)[0]
    row["eager_s"] = statistics.median(eager_t)
    row["compiled_s"] = statistics.median(comp_t)
    row["speedup"] = row["eager_s"] / row["compiled_s"]
    row.update(
        preset=args.preset, memory=args.memory, phase=args.phase, roi="x".join(map(str, args.roi)), batch=args.batch,
        device=str(device), device_name=device_name(device, platform_cpu), threads=torch.get_num_threads(),
        torch=torch.__version__, backend=args.backend,
    )  # fmt: skip
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="bcv")
    p.add_argument("--roi", type=int, nargs=3, default=[128, 128, 64])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["none", "full"])
    p.add_argument("--phases", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "bench_compile_cpu.csv"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", default="full", help=argparse.SUPPRESS)
    p.add_argument("--phase", default="train", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("BENCH " + json.dumps(worker(args)), flush=True)
        return 0

    rows = []
    for memory in args.modes:
        for phase in args.phases:
            cmd = [sys.executable, "-m", "benchmarks.bench_compile", "--worker", "--memory", memory, "--phase", phase]
            for k in ("preset", "batch", "device", "threads", "backend", "warmup", "steps"):
                cmd += [f"--{k}", str(getattr(args, k))]
            cmd += ["--roi", *map(str, args.roi)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
            if proc.returncode or not lines:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"preset": args.preset, "memory": memory, "phase": phase, "status": f"error: {err}"}
            else:
                row = json.loads(lines[-1][6:])
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    write_csv(out, FIELDS, rows, extrasaction="ignore")
    print(
        "\n| memory | phase | eager s | compiled s | speed-up | compile s | max abs diff |"
        "\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        if r.get("status") != "ok":
            print(f"| {r['memory']} | {r['phase']} | {r['status']} | | | | |")
            continue
        print(
            f"| {r['memory']} | {r['phase']} | {r['eager_s']:.3f} | {r['compiled_s']:.3f} | {r['speedup']:.2f}x | "
            f"{r['compile_s']:.1f} | {r['max_abs_diff']:.2e} |"
        )
    print(f"wrote {out}")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
