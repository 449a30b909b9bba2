# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Cost of FINE per memory mode against MONAI's SwinUNETR and nnU-Net's DynUNet at the same crop: parameters, FLOPs,
training-step and inference time, peak memory; over one crop or a sweep of crop sizes.

One command measures every configuration; each (configuration, repeat) runs in a fresh subprocess so that one
model's allocations cannot pollute the next one's memory peak, and with ``--repeats 2`` the order is reversed on the
second pass (ABBA) so that a drift in background load does not favour one configuration. Every configuration prints a
``BENCH {json}`` line on stdout; a CSV (device name and thread count in every row) and a summary of ratios follow.

    python -m benchmarks.bench_network                        # fine_bcv at 128x128x64 on CPU (slow, many GB)
    python -m benchmarks.bench_network --device cuda --steps 10
    python -m benchmarks.bench_network --sweep --modes none full               # crops 64x64x32, 96x96x64, 128x128x64
    python -m benchmarks.bench_network --quick                                  # a quick check of the script

See ``benchmarks/README.md`` for the columns and how memory is measured.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, SWEEP_ROIS, cpu_name, parse_roi, roi_str, write_csv
from benchmarks.network_report import CSV_FIELDS, aggregate, print_summary, summarize, sweep_markdown

__all__ = ["FINE_MODES", "QUICK", "main"]

# --modes: the memory configurations of FINE (``scan``: ``MEMORY_CONFIGS["full+scan"]``, 2 crops of one scan)
FINE_MODES = ("none", "window", "released", "full", "scan")
QUICK = {  # --quick: the script's own smoke check, seconds per configuration
    "preset": "tiny",
    "rois": [(32, 32, 16), (64, 32, 16)],  # too small for SwinUNETR (multiples of 32): its rows say so
    "modes": ["none", "full"],
    "warmup": 1,
    "steps": 1,
    "swin_feature_size": 12,
    "dynunet_filters": (8, 32),
}


def _config_name(mode: str) -> str:
    """The ``MEMORY_CONFIGS`` name of a ``--modes`` entry."""
    return "full+scan" if mode == "scan" else mode


def _configs(args, rois: list[tuple[int, int, int]]) -> list[dict]:
    """One configuration per crop and model; ``key`` (config@crop) names it in the driver."""
    base = {
        "device": args.device,
        "threads": args.threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "cpu_name": cpu_name(),
        "flops_only": args.flops_only,
        "tf32": args.tf32,
        "swin_feature_size": args.swin_feature_size,
        "dynunet_filters": args.dynunet_filters,
    }
    preset = f"fine_{args.preset}"
    configs = []
    for roi in rois:
        at = {**base, "roi": list(roi)}
        for mode in args.modes:
            memory = _config_name(mode)
            batch = 2 if mode == "scan" else 1
            fine = {"config": f"{preset}:{memory}", "model": "fine", "preset": args.preset, "memory": memory,
                    "batch": batch}  # fmt: skip
            configs.append({**at, **fine})
        if not args.skip_swinunetr:
            name = "swinunetr" if args.swin_feature_size == 48 else f"swinunetr({args.swin_feature_size})"
            swin = {"config": name, "model": "swinunetr", "preset": None, "memory": None, "batch": 1}
            if any(r % 32 for r in roi):
                swin["skip"] = f"skipped: SwinUNETR needs a crop divisible by 32, not {roi_str(roi)}"
            configs.append({**at, **swin})
        if not args.skip_dynunet:
            name = "dynunet" if args.dynunet_filters is None else "dynunet(filters {}-{})".format(*args.dynunet_filters)
            configs.append({**at, "config": name, "model": "dynunet", "preset": None, "memory": None, "batch": 1})
    for cfg in configs:
        cfg["key"] = f"{cfg['config']}@{roi_str(cfg['roi'])}"
    return configs


def _spawn(cfg: dict) -> dict:
    """Run one configuration in a fresh interpreter; returns the worker's result or an error status."""
    cmd = [sys.executable, "-m", "benchmarks.bench_network", "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, cwd=REPO_ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("WORKER_RESULT "):
            return json.loads(line[len("WORKER_RESULT ") :])
    if proc.returncode < 0:
        status = f"killed by signal {-proc.returncode} (out of memory?)"
    else:
        status = f"failed with exit code {proc.returncode}"
    return {"status": status}


def _worker(payload: str) -> None:
    """``--worker``: measure one configuration in this process and print its ``WORKER_RESULT`` line."""
    from benchmarks.network_worker import run_paired, run_worker

    cfg = json.loads(payload)
    try:
        res = {**(run_paired(cfg) if cfg.get("paired") else run_worker(cfg)), "status": "ok"}
    except Exception as e:  # report (out-of-memory included) and let the driver go on
        res = {"status": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    print("WORKER_RESULT " + json.dumps(res), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=FINE_MODES,
        default=list(FINE_MODES),
        help="FINE memory modes; 'scan' is memory='full' with scan_memory=True on 2 crops of one scan",
    )
    parser.add_argument(
        "--roi",
        nargs=3,
        type=int,
        default=(128, 128, 64),
        metavar=("X", "Y", "Z"),
        help="crop size (SwinUNETR needs multiples of 32)",
    )
    parser.add_argument(
        "--rois",
        nargs="+",
        type=parse_roi,
        default=None,
        metavar="XxYxZ",
        help="several crops side by side in one run (replaces --roi)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="--rois " + " ".join(roi_str(r) for r in SWEEP_ROIS) + " (the crop-size sweep)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check of the script: tiny preset, 2 small crops, none/full, small peers, 1 step",
    )
    parser.add_argument(
        "--preset", choices=("bcv", "tiny"), default="bcv", help="a preset of monai_fine.networks.PRESETS"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (>= 1; the first counts FLOPs)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps; the median is reported")
    parser.add_argument("--repeats", type=int, default=1, help="passes over all configurations, alternating order")
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="N",
        help="also time N interleaved training steps of every FINE mode in one process per crop "
        "(the targets then list the paired time ratio, the median of the per-round ratios with its "
        "95 %% interval, beside the separate-process one)",
    )
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="only parameters, forward FLOPs and one inference forward (no training step)",
    )
    parser.add_argument("--tf32", action="store_true", help="CUDA: TF32 in matmuls and convolutions (default: neither)")
    parser.add_argument("--skip-swinunetr", action="store_true", help="leave out the SwinUNETR anchor")
    parser.add_argument("--skip-dynunet", action="store_true", help="leave out DynUNet (nnU-Net's plan)")
    parser.add_argument("--swin-feature-size", type=int, default=48, help="SwinUNETR feature_size (default 48)")
    parser.add_argument(
        "--dynunet-filters",
        nargs=2,
        type=int,
        default=None,
        metavar=("BASE", "MAX"),
        help="DynUNet filters min(BASE * 2**stage, MAX) (default nnU-Net's 32, 320)",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="default benchmarks/results/bench_network_<device>.csv (_tiny_ for --preset tiny, "
        "_sweep_ for several crops); the markdown goes beside it (.md)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration as JSON  # fmt: skip
    return parser


def _run_configs(configs: list[dict], repeats: int) -> dict[str, list[dict]]:
    """Every configuration in its own worker, ``repeats`` passes in alternating order (ABBA)."""
    runs: dict[str, list[dict]] = {c["key"]: [] for c in configs}
    for rep in range(repeats):
        for cfg in configs if rep % 2 == 0 else configs[::-1]:
            if cfg.get("skip"):
                continue
            print(f"# {cfg['key']} (repeat {rep + 1}/{repeats}) ...", file=sys.stderr, flush=True)
            res = _spawn(cfg)
            runs[cfg["key"]].append(res)
            run = {"config": cfg["config"], "roi": cfg["roi"], "repeat": rep, **res}
            print("BENCH_RUN " + json.dumps(run), flush=True)
    return runs


def _run_paired(args, configs: list[dict], rois: list) -> dict[str, dict]:
    """``--paired N``: per crop, N interleaved training steps of every FINE mode in one worker."""
    paired: dict[str, dict] = {}
    fine_modes = [m for m in args.modes if m != "scan"]
    if not (args.paired and len(fine_modes) > 1):
        return paired
    for roi in rois:
        cfg = {**configs[0], "paired": True, "pairs": args.paired, "modes": fine_modes, "roi": list(roi),
               "preset": args.preset}  # fmt: skip
        print(f"# paired {'/'.join(fine_modes)}@{roi_str(roi)} ({args.paired} rounds) ...", file=sys.stderr, flush=True)
        res = _spawn(cfg)
        print("BENCH_PAIRED " + json.dumps({"roi": list(roi), **res}), flush=True)
        if res.get("status") == "ok":
            paired[roi_str(roi)] = res["paired_times"]
    return paired


def _write(path, rows: list[dict], rois: list, preset: str, paired: dict, command: str) -> None:
    """The CSV, one summary per crop (JSON and words), and the markdown beside the CSV."""
    for row in rows:
        print("BENCH " + json.dumps(row), flush=True)
    write_csv(path, CSV_FIELDS, rows)
    summaries = {}
    for roi in map(roi_str, rois):
        at = [r for r in rows if r["roi"] == roi]
        summaries[roi] = summarize(at, preset, paired.get(roi))
        print("SUMMARY " + json.dumps({"roi": roi, **summaries[roi]}), flush=True)
        print_summary(summaries[roi], at)
    markdown = sweep_markdown(rows, summaries, preset, command)
    path.with_suffix(".md").write_text(markdown)
    print("\n" + markdown)
    print(f"\nwrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    rois = args.rois or ([*SWEEP_ROIS] if args.sweep else [tuple(args.roi)])
    if args.steps < 0 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --warmup must be >= 0, --repeats >= 1")
    if len(rois) == 1 and not args.skip_swinunetr and any(r % 32 for r in rois[0]):
        parser.error(f"SwinUNETR needs a crop divisible by 32, got {rois[0]}; change it or --skip-swinunetr")
    device_tag = re.sub(r"[^a-z0-9]+", "", args.device.lower())
    tags = ("tiny_" if args.preset == "tiny" else "") + ("sweep_" if len(rois) > 1 else "")
    path = args.csv or RESULTS_DIR / f"bench_network_{tags}{device_tag}.csv"

    configs = _configs(args, rois)
    runs = _run_configs(configs, args.repeats)
    rows = [aggregate(c, runs[c["key"]], args.repeats) for c in configs]
    paired = _run_paired(args, configs, rois)
    command = " ".join(["python", "-m", "benchmarks.bench_network", *(sys.argv[1:] if argv is None else argv)])
    _write(path, rows, rois, args.preset, paired, command)


if __name__ == "__main__":
    main()
