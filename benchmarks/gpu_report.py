# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""One prepared GPU run: FINE's training and inference cost against its peers, and a short bundle training.

    python -m benchmarks.gpu_report --out DIR       # one GPU, <= 8 minutes (default budget 420 s)
    python -m benchmarks.gpu_report --out DIR --tiny     # CPU smoke run of the same code (well under a minute)

Four sections, each configuration guarded (an error or out-of-memory is recorded with its message and the run goes
on), under one time budget (``--budget_s``) that skips what no longer fits and says so:

1. **train**: training-step time (median of timed steps after warm-up, ``torch.cuda.synchronize()`` around each) and
   peak CUDA memory (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``) at 128x128x64, batch 2,
   with AMP off (fp32, no TF32 unless ``--tf32``) and on (``torch.autocast``, bfloat16 by default), for ``fine_bcv``
   ``memory="none"``, ``"full"``, ``"full"`` + scan memory (2 crops of one scan), MONAI ``SwinUNETR(feature_size=48)``
   and MONAI ``DynUNet`` as nnU-Net's 3d_fullres plan for BTCV (``monai_fine/networks/peers.py``). DiceCE loss (with
   deep supervision where the network has it), SGD step.
2. **infer**: ``FINEInferer`` (roi 128x128x64, overlap 0.5, ``--sw_batch_size``) over a synthetic 512x512x200 scan
   with ``fine_bcv`` ``memory="full"``, one pass and with scan memory (scan view, then one pass), AMP on, windows and
   stitching on the GPU.
3. **loop**: the bundle's training loop with the GPU recipe (``cache_device`` the GPU, ``thread_loader``, AMP) at
   ``fine_bcv`` 128x128x64 against the bare step of the same network, loss and optimizer, interleaved in one process
   (``bench_pipeline.measure``): seconds and iterations per second, the bundle/bare ratio, without and with
   ``compile`` (``gpu_report_loop.py``); then ``inference.json`` on the synthetic scan read from NIfTI (seconds, peak
   memory).
4. **bundle**: ``bundle/configs/train.json`` through MONAI's ``ConfigWorkflow`` on a phantom generated on the fly,
   loss per epoch, first vs last epoch.

Writes into ``--out`` (flat, seven files, the device in each): ``gpu_report.md``, ``gpu_report.json``,
``gpu_report_train.csv``, ``gpu_report_infer.csv``, ``gpu_report_loop.csv``, ``gpu_report_bundle.csv`` and
``gpu_report.log`` (everything printed). The files are rewritten after every configuration, so a run cut short still
leaves what it measured. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import set_tf32
from benchmarks.gpu_report_loop import run_bundle_inference, run_loop
from benchmarks.gpu_report_output import FILES, Report, Tee, dims
from benchmarks.gpu_report_sections import (
    Device,
    environment,
    num_windows,
    run_bundle_training,
    run_infer,
    run_train,
    train_configs,
)
from monai_fine.bools import as_bool

__all__ = ["Report", "main", "num_windows", "parse_args", "train_configs"]

# share of --budget_s by which each section must be done (unused time carries over to the next section)
SECTION_END = {"train": 0.35, "infer": 0.5, "loop": 0.88, "bundle": 1.0}


# -------------------------------------------------------------------------------------------------------------- main
def _error(e: BaseException) -> str:
    """``Type: first line`` of the error and, when it wraps another (e.g. MONAI's config errors), of its root."""

    def line(err: BaseException) -> str:
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"

    root = e
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    return line(e) if root is e else f"{line(e)} <- {line(root)}"


def _watchdog(report: Report, hard_s: float, t0: float) -> None:
    """Write what was measured and exit if the run overruns its budget by the grace time (a hung configuration)."""
    time.sleep(max(0.0, hard_s - (time.perf_counter() - t0)))
    report.notes.append(f"hard stop after {hard_s:.0f} s (budget + grace): the configuration running then is lost")
    report.settings["elapsed_s"] = time.perf_counter() - t0
    try:
        report.write()
    finally:
        print(f"[gpu_report] hard stop after {hard_s:.0f} s; wrote {report.out}", file=sys.__stdout__, flush=True)
        os._exit(3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: the tiny preset, small crops, 1 step, 2 epochs")
    p.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    p.add_argument("--budget_s", type=float, default=420.0, help="time budget; what no longer fits is skipped")
    p.add_argument("--grace_s", type=float, default=50.0, help="hard stop at budget + grace (a hung step)")
    p.add_argument(
        "--sections", default="train,infer,loop,bundle", help="comma-separated subset of train,infer,loop,bundle"
    )
    p.add_argument("--loop_rounds", type=int, default=None, help="loop section: measured rounds (default 8; tiny 2)")
    p.add_argument(
        "--loop_compile", default=None, help="loop section: compile settings to run (default false,true; tiny false)"
    )
    p.add_argument("--loop_warmup", type=int, default=None, help="loop section: warm-up rounds (default 3; tiny 1)")
    p.add_argument("--roi", nargs=3, type=int, default=None, help="crop (default 128 128 64; tiny 64 32 32)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; tiny 0)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 1)")
    p.add_argument("--amp_dtype", choices=("bfloat16", "float16"), default="bfloat16")
    p.add_argument("--tf32", action="store_true", help="TF32 in fp32 matmuls and convolutions (default: off)")
    p.add_argument("--cudnn_benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--scan", nargs=3, type=int, default=None, help="scan (default 512 512 200; tiny 96 32 32)")
    p.add_argument("--infer_roi", nargs=3, type=int, default=None, help="inference window (default: --roi)")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--sw_batch_size", type=int, default=4)
    p.add_argument("--bundle_preset", default=None, help="bcv (default) or tiny")
    p.add_argument("--bundle_roi", nargs=3, type=int, default=None, help="default 64 64 32 (tiny 32 32 16)")
    p.add_argument("--bundle_shape", nargs=3, type=int, default=None, help="phantom size (default 96 96 64)")
    p.add_argument("--bundle_cases", type=int, default=None, help="phantom cases (default 8; tiny 4)")
    p.add_argument("--bundle_epochs", type=int, default=None, help="default 8 (tiny 2)")
    p.add_argument("--bundle_epoch_length", type=int, default=None, help="iterations per epoch (default 20; tiny 2)")
    p.add_argument("--bundle_workers", type=int, default=None, help="data-loader workers (default 4; tiny 0)")
    p.add_argument("--bundle_optimizer", default=None, help="the bundle's optimizer_name (default: the bundle's)")
    p.add_argument("--bundle_lr", type=float, default=None, help="the bundle's learning_rate (default: the bundle's)")
    args = p.parse_args(argv)
    defaults = {  # full run, tiny run
        "device": ("cuda", "cpu"),
        "roi": ([128, 128, 64], [64, 32, 32]),  # SwinUNETR: multiples of 32, a bottleneck > 1 voxel
        "warmup": (3, 0),
        "steps": (10, 1),
        "scan": ([512, 512, 200], [96, 32, 32]),
        "bundle_preset": ("bcv", "tiny"),
        "bundle_roi": ([64, 64, 32], [32, 32, 16]),
        "bundle_shape": ([96, 96, 64], [48, 48, 32]),
        "bundle_cases": (8, 4),
        "bundle_epochs": (8, 2),
        "bundle_epoch_length": (20, 2),
        "bundle_workers": (4, 0),
        "loop_rounds": (8, 2),
        "loop_warmup": (3, 1),
        "loop_compile": ("false,true", "false"),  # inductor's first compile takes minutes on a CPU
    }
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    args.infer_roi = args.infer_roi or args.roi
    args.loop_compile = [as_bool(v.strip(), "--loop_compile") for v in args.loop_compile.split(",") if v.strip()]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTION_END]
    if bad:
        p.error(f"--sections: unknown {bad}; choose from {list(SECTION_END)}")
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.budget_s <= 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0, --budget_s > 0")
    return args


def _environment(args, dev: Device) -> dict:
    """The device's description, with the fp32 precision the run sets (CUDA: TF32 and cuDNN's autotuner)."""
    import torch

    env = environment(dev)
    if dev.cuda:
        try:
            set_tf32(args.tf32)
            env["fp32_precision"] = {
                "matmul": torch.backends.cuda.matmul.fp32_precision,
                "cudnn_conv": torch.backends.cudnn.conv.fp32_precision,
            }
        except Exception as e:  # an older or newer torch: keep its defaults, and say so below
            env["fp32_precision"] = f"not set ({_error(e)})"
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    return env


def _settings(args, argv: list[str] | None) -> dict:
    command = " ".join([Path(sys.executable).name, "-m", "benchmarks.gpu_report", *sys.argv[1:]])
    return {
        "command": command if argv is None else f"main({argv})",
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "batch": args.batch,
        "roi": dims(args.roi),
        "warmup": args.warmup,
        "steps": args.steps,
        "amp_dtype": args.amp_dtype,
        "tf32": args.tf32,
        "cudnn_benchmark": args.cudnn_benchmark,
        "scan": dims(args.scan),
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size,
        "sections": args.sections,
    }


class _Run:
    """One report run: its time budget, the guard around each configuration and the four sections."""

    def __init__(self, args, dev: Device, report: Report, t0: float) -> None:
        self.args, self.dev, self.report, self.t0 = args, dev, report, t0

    def section_end(self, name: str) -> float:
        return SECTION_END[name] * self.args.budget_s

    def over(self, name: str) -> bool:
        return time.perf_counter() - self.t0 > self.section_end(name)

    def guarded(self, label: str, fn, fallback: dict, rows: list | None) -> None:
        try:
            row = fn()
        except Exception as e:  # out-of-memory included: record and go on
            row = {**fallback, "status": _error(e)}
            print(f"[gpu_report] {label}: {row['status']}", flush=True)
        self.dev.cleanup()
        if rows is not None:
            rows.append(row)
        self.report.settings["elapsed_s"] = time.perf_counter() - self.t0
        self.report.write()

    def skip(self, rows: list, base: dict, label: str) -> None:
        rows.append({**base, "status": "skipped: time budget"})
        self.report.note(f"{label} skipped (time budget)")

    def train(self) -> None:
        args, end = self.args, self.section_end("train")
        for cfg in train_configs(args.tiny):
            for amp in (False, True):
                label = f"train {cfg['config']} amp={amp}"
                base = {k: v for k, v in cfg.items() if k != "build"}
                base.update(amp=amp, amp_dtype=args.amp_dtype if amp else "float32", batch=args.batch)
                base["roi"] = dims(args.roi)
                if self.over("train"):
                    self.skip(self.report.train, base, label)
                    continue
                print(f"[gpu_report] {label} ...", flush=True)
                run = functools.partial(run_train, cfg, amp, args, self.dev, end, self.t0)
                self.guarded(label, run, base, self.report.train)

    def infer(self) -> None:
        args, end, shared = self.args, self.section_end("infer"), {}
        infer_args = argparse.Namespace(**{**vars(args), "roi": args.infer_roi})
        for scan_memory in (False, True):
            label = f"infer scan_memory={scan_memory}"
            base = {"config": label, "scan_memory": scan_memory, "amp": True, "amp_dtype": args.amp_dtype}
            if self.over("infer"):
                self.skip(self.report.infer, base, label)
                continue
            print(f"[gpu_report] {label} ...", flush=True)
            run = functools.partial(run_infer, scan_memory, infer_args, self.dev, end, self.t0, shared)
            self.guarded(label, run, base, self.report.infer)
        shared.clear()
        self.dev.cleanup()

    def loop(self) -> None:
        """The bundle's loop with the GPU recipe against the bare step, without and with ``compile``; then
        ``inference.json`` on the synthetic scan."""
        for compile_network in self.args.loop_compile:
            label = f"loop compile={compile_network}"
            base = {"config": label, "compile": compile_network}
            if self.over("loop"):
                self.skip(self.report.loop, base, label)
                continue
            print(f"[gpu_report] {label} ...", flush=True)
            run = functools.partial(run_loop, compile_network, self.args, self.dev)
            self.guarded(label, run, base, self.report.loop)
        label = "inference.json"
        if self.over("loop"):
            self.skip(self.report.bundle_infer, {"config": label}, label)
            return
        print(f"[gpu_report] {label} ...", flush=True)
        run = functools.partial(run_bundle_inference, self.args, self.dev)
        self.guarded(label, run, {"config": label}, self.report.bundle_infer)

    def bundle(self) -> None:
        left = self.section_end("bundle") - (time.perf_counter() - self.t0)
        if left < 20:
            self.report.bundle["status"] = f"skipped: time budget ({left:.0f} s left)"
            self.report.note("bundle training skipped (time budget)")
            return
        print("[gpu_report] bundle training ...", flush=True)
        try:
            run_bundle_training(self.args, self.dev, self.report, self.section_end("bundle"), self.t0)
        except Exception as e:
            self.report.bundle["status"] = _error(e)
            print(f"[gpu_report] bundle: {self.report.bundle['status']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "gpu_report.log", "w")  # noqa: SIM115 (open for the whole run, behind the Tee)
    sys.stdout = Tee(sys.__stdout__, log)
    sys.stderr = Tee(sys.__stderr__, log)
    dev = Device(args.device)
    env = _environment(args, dev)
    report = Report(args.out, env, _settings(args, argv))
    if isinstance(env.get("fp32_precision"), str):
        report.note(f"TF32 setting {env['fp32_precision']}: fp32 rows use torch's defaults")
    print(f"[gpu_report] {env['device_name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda']}", flush=True)
    threading.Thread(target=_watchdog, args=(report, args.budget_s + args.grace_s, t0), daemon=True).start()
    report.write()
    run = _Run(args, dev, report, t0)
    for name in SECTION_END:
        if name in args.sections:
            getattr(run, name)()
    report.settings["elapsed_s"] = time.perf_counter() - t0
    report.write()
    print("\n" + report.markdown(), flush=True)
    print(f"[gpu_report] wrote {', '.join(FILES)} and gpu_report.log into {args.out}", flush=True)
    sys.stdout.flush()
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
