# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""What an option costs the bundle's whole training loop, iteration for iteration: two trainers in one process,
their iterations alternating.

Both trainers are built from the real ``bundle/configs/train.json`` (``bench_pipeline.build_trainer``) on the same
phantom, one with a setting's overrides (``base``), one with those plus ``--new`` ones, each running its own Ignite
loop with all its handlers. The ``new`` trainer runs one iteration at a time (Ignite's ``interrupt`` and resume),
between two iterations of the ``base`` trainer and outside their timed spans, so every round is one iteration of
each, back to back: a drift of the machine's speed, which on a shared VM moves a step by tens of percent within
minutes, hits both alike (separate processes a minute apart do not cancel it). An iteration is timed from Ignite's
``GET_BATCH_STARTED`` to the end of its ``ITERATION_COMPLETED`` handlers (``bench_pipeline.LoopTimer``); the result
is the median of the per-round ratios new/base with its distribution-free 95 % interval (``common.paired_ratio``).
Both settings take the same crops per iteration, so the ratio is also the cost per crop.

    python -m benchmarks.loop_pairs --new scan_memory=true --rounds 60 --bound 1.6
    python -m benchmarks.loop_pairs --new scan_memory=true --quick           # a check of the script (< 1 min)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline import (
    QUICK,
    SETTINGS,
    LoopTimer,
    build_trainer,
    set_overrides,
    setting_overrides,
    setting_phantom,  # fmt: skip
)
from benchmarks.common import RESULTS_DIR, cpu_name, interval_verdict, markdown_table, paired_ratio, write_csv

__all__ = ["CSV_FIELDS", "main", "measure_pair"]

CSV_FIELDS = ("setting", "measure", "ratio", "low", "high", "coverage", "rounds", "verdict", "base_median_ms",
              "new_median_ms", "base", "new", "device", "threads")  # fmt: skip


def measure_pair(cfg: dict[str, Any], new: dict[str, Any], rounds: int, warmup: int, device: str | None,
                 work: Path) -> dict[str, list[float]]:  # fmt: skip
    """``warmup + rounds`` alternating iterations of the two trainers; returns each one's iteration times (s, warm-up
    dropped), round by round."""
    from ignite.engine import Engine, Events

    data = setting_phantom(cfg, work / "data")
    trainers, timers = {}, {}
    for name, extra in (("base", {}), ("new", new)):
        over = setting_overrides({**cfg, "overrides": {**cfg["overrides"], **extra}}, data, work / name, rounds, warmup)
        trainers[name] = build_trainer(over, device).parser.get_parsed_content("train#trainer")
    state = {"started": False}

    def new_iteration() -> None:  # runs between two base iterations, outside their timed spans
        trainer = trainers["new"]
        if trainer.state.iteration >= trainer.state.epoch_length:
            return
        if state["started"]:
            Engine.run(trainer)  # resumes the interrupted run for one more iteration
        else:
            state["started"] = True
            trainer.run()

    timers["new"] = LoopTimer(trainers["new"], lambda: None, lambda: None)
    trainers["new"].add_event_handler(Events.INTERRUPT, timers["new"].close)
    trainers["new"].add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.interrupt())  # the last handler
    timers["base"] = LoopTimer(trainers["base"], lambda: None, new_iteration)
    trainers["base"].run()
    if state["started"]:  # it ran as many iterations as the base, one before each: resume it for its epoch's end
        Engine.run(trainers["new"])
    n = min(len(timers["base"].rows), len(timers["new"].rows), warmup + rounds)
    return {name: [r["total"] for r in timers[name].rows[warmup:n]] for name in ("base", "new")}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--new", action="append", required=True, metavar="ID=VALUE", help="the option measured")
    p.add_argument("--base", action="append", default=[], metavar="ID=VALUE", help="overrides of both (default none)")
    p.add_argument("--settings", default="demo", choices=list(SETTINGS), help="a bench_pipeline setting")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default=None, help="e.g. cpu; default the bundle's")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="the test preset on small volumes, a few rounds")
    p.add_argument("--bound", type=float, default=None, help="a target for the ratio new/base (e.g. 1.6)")
    p.add_argument("--csv", default=str(RESULTS_DIR / "loop_pairs.csv"), help="CSV path; the table beside it (.md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, write the CSV and its markdown table; returns the CSV row."""
    import torch

    args = _args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = (QUICK if args.quick else SETTINGS)[args.settings]
    cfg = {**cfg, "overrides": {**cfg["overrides"], **set_overrides(args.base)}}
    with tempfile.TemporaryDirectory(prefix="loop_pairs_") as work:
        times = measure_pair(cfg, set_overrides(args.new), args.rounds, args.warmup, args.device, Path(work))
    pr = paired_ratio(times, "new", "base")
    row = {"setting": args.settings, "measure": "bundle iteration new/base", **pr,
           "verdict": interval_verdict(pr["low"], pr["high"], args.bound) if args.bound else "",
           "base_median_ms": round(1e3 * sorted(times["base"])[len(times["base"]) // 2], 2),
           "new_median_ms": round(1e3 * sorted(times["new"])[len(times["new"]) // 2], 2),
           "base": " ".join(args.base) or "the setting's", "new": " ".join(args.new),
           "device": cpu_name() if (args.device or "cpu") == "cpu" else args.device,
           "threads": torch.get_num_threads()}  # fmt: skip
    out = Path(args.csv)
    write_csv(out, CSV_FIELDS, [row])
    command = "python -m benchmarks.loop_pairs " + " ".join(sys.argv[1:] if argv is None else argv)
    md = [f"# The bundle's loop with `{row['new']}` against without ({args.settings})", "", f"`{command}`", "",
          f"{row['device']}, {row['threads']} threads; base overrides: {row['base']}", "",
          *markdown_table(["measure", "base ms (median)", "new ms (median)", "ratio (median of per-round ratios)",
                           "interval", "coverage", "rounds", "verdict"],
                          [[row["measure"], str(row["base_median_ms"]), str(row["new_median_ms"]), str(row["ratio"]),
                            f"[{row['low']}, {row['high']}]", str(row["coverage"]), str(row["rounds"]),
                            row["verdict"]]])]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return row


if __name__ == "__main__":
    main()
