# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""What the scan memory costs in a training step, with batch scaling and the scan view separated.

Per setting, three training steps of the same FINE (``memory="full"``, deep supervision, DiceCE, SGD as in
``common.train_step``), timed interleaved in one process (the order reversed every round), with their FLOPs counted
by torch's ``FlopCounterMode``:

- ``full_b1``: one crop (the per-crop reference of earlier measurements);
- ``full_b2``: two crops of one scan, no scan memory (the step the scan memory is compared with);
- ``scan``: the same two crops reading the memory their scan's view writes (``forward(scan_view=...)``, the bundle's
  training form: the view's write pass, then the crops' pass), the network's defaults (the centred read, the
  encoder-only write);
- ``scan_all``: the same with ``scan_write="all"`` (the view's pass runs every stage; demo only);
- ``scan_mean``: the first design, ``scan_read="mean"`` and ``scan_write="all"`` (demo only).

    python -m benchmarks.scan_cost                         # demo (tiny 32x32x16) and bcv (128x128x64)
    python -m benchmarks.scan_cost --settings demo --rounds 20

The ratios (median of per-round ratios, 95 % interval) are ``scan/full_b2`` (target <= 1.6), ``scan_all/full_b2``,
``scan_mean/full_b2`` and ``full_b2/full_b1``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common import (
    RESULTS_DIR,
    build_model,
    counted_flops,
    interleaved_times,
    interval_verdict,
    paired_ratio,
    platform_cpu,
    register_cpu_sdpa_flops,
    train_step,
    write_csv,
)

__all__ = ["SETTINGS", "main", "measure", "steps"]

#: preset, roi, default rounds, warm-up rounds, steps (bcv: the two that are compared; four nets of 121 M parameters
#: and a batch of 3 at 128x128x64 would not fit this machine's 24 GiB)
SETTINGS = {
    "demo": ("tiny", (32, 32, 16), 12, 2, ("full_b1", "full_b2", "scan", "scan_all", "scan_mean")),
    "bcv": ("bcv", (128, 128, 64), 3, 0, ("full_b2", "scan")),
}
TARGET = 1.6
FIELDS = ("setting", "preset", "roi", "measure", "median_s", "gflop", "ratio", "low", "high", "rounds", "verdict",
          "threads", "torch", "machine")  # fmt: skip


#: step name -> (memory configuration, batch, FINE keywords)
STEPS = {
    "full_b1": ("full", 1, {}),
    "full_b2": ("full", 2, {}),
    "scan": ("full+scan", 2, {}),
    "scan_all": ("full+scan", 2, {"scan_write": "all"}),
    "scan_mean": ("full+scan", 2, {"scan_read": "mean", "scan_write": "all"}),
}


def steps(preset: str, roi: tuple[int, int, int], names=("full_b1", "full_b2", "scan")) -> dict:
    """The training steps ``names`` (of :data:`STEPS`; name -> callable), each network seeded alike."""
    import torch

    out = {}
    for name in names:
        memory, batch, extra = STEPS[name]
        torch.manual_seed(0)
        net, loss_fn, kwargs, _ = build_model({"model": "fine", "preset": preset, "memory": memory, "batch": batch,
                                               "roi": roi, "network_kwargs": extra})  # fmt: skip
        net.train()
        x, label = torch.randn(batch, 1, *roi), torch.randint(0, 14, (batch, 1, *roi)).float()
        out[name] = train_step(net, loss_fn, kwargs, x, label)
    return out


def measure(name: str, rounds: int | None = None) -> list[dict]:
    """The rows of one setting: each step's median seconds and GFLOP, then the ratios."""
    import torch

    preset, roi, default_rounds, warmup, names = SETTINGS[name]
    calls = steps(preset, roi, names)
    register_cpu_sdpa_flops()
    flops = {k: counted_flops(fn) for k, fn in calls.items()}  # also the first (warm-up) call of each
    if warmup:
        interleaved_times(calls, warmup, "reverse")
    times = interleaved_times(calls, rounds or default_rounds, "reverse")
    common = {"setting": name, "preset": preset, "roi": "x".join(map(str, roi)), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform_cpu()}  # fmt: skip
    rows = [{**common, "measure": k, "median_s": round(statistics.median(v), 4), "gflop": round(flops[k] / 1e9, 2)}
            for k, v in times.items()]  # fmt: skip
    pairs = (("scan", "full_b2", TARGET), ("scan_all", "full_b2", None), ("scan_mean", "full_b2", None),
             ("full_b2", "full_b1", None))  # fmt: skip
    for a, b, bound in pairs:
        if a not in times or b not in times:
            continue
        pr = paired_ratio(times, a, b)
        rows.append({**common, "measure": f"{a}/{b}", "ratio": pr["ratio"], "low": pr["low"], "high": pr["high"],
                     "rounds": pr["rounds"], "gflop": round(flops[a] / flops[b], 3),
                     "verdict": interval_verdict(pr["low"], pr["high"], bound) if bound else ""})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 12 demo, 3 bcv)")
    p.add_argument("--csv", default=str(RESULTS_DIR / "scan_cost_cpu.csv"))
    args = p.parse_args(argv)
    rows = []
    for name in args.settings:
        at = measure(name, args.rounds)
        print("SCAN_COST " + json.dumps(at), flush=True)
        rows += at
    write_csv(Path(args.csv), FIELDS, rows, extrasaction="ignore")
    for r in rows:
        if r.get("ratio") is not None:
            print(f"{r['setting']} {r['measure']}: time {r['ratio']} [{r['low']}, {r['high']}], FLOPs {r['gflop']} "
                  f"{r['verdict']}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
