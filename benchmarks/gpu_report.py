# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""One prepared GPU run: FINE's training and inference cost against its peers, and a short bundle training.

    python benchmarks/gpu_report.py --out DIR            # one GPU, <= 8 minutes (default budget 420 s)
    python benchmarks/gpu_report.py --out DIR --tiny     # CPU smoke run of the same code (well under a minute)

Three sections, each configuration guarded (an error or out-of-memory is recorded with its message and the run goes
on), under one time budget (``--budget_s``) that skips what no longer fits and says so:

1. **train**: training-step time (median of timed steps after warm-up, ``torch.cuda.synchronize()`` around each) and
   peak CUDA memory (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``) at 128x128x64, batch 2,
   with AMP off (fp32, no TF32 unless ``--tf32``) and on (``torch.autocast``, bfloat16 by default), for ``fine_bcv``
   ``memory="none"``, ``"full"``, ``"full"`` + scan memory (2 crops of one scan), MONAI ``SwinUNETR(feature_size=48)``
   and MONAI ``DynUNet`` as nnU-Net's 3d_fullres plan for BTCV (``peers.py``). DiceCE loss (with deep supervision
   where the network has it), SGD step.
2. **infer**: ``FINEInferer`` (roi 128x128x64, overlap 0.5, ``--sw_batch_size``) over a synthetic 512x512x200 scan
   with ``fine_bcv`` ``memory="full"``, one pass and with scan memory (scan view, then one pass), AMP on, windows and stitching on the GPU.
3. **bundle**: ``bundle/configs/train.json`` through MONAI's ``ConfigWorkflow`` on a phantom generated on the fly,
   loss per epoch, first vs last epoch.

Writes into ``--out`` (flat, six files, the device in each): ``gpu_report.md``, ``gpu_report.json``,
``gpu_report_train.csv``, ``gpu_report_infer.csv``, ``gpu_report_bundle.csv`` and ``gpu_report.log`` (everything
printed). The files are rewritten after every configuration, so a run cut short still leaves what it measured. See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_network, peers
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # monai_fine without an install

from bench_network import ROI_BOX, PeakMemory, build_model, cpu_name, set_tf32, timed_calls  # noqa: E402
from peers import nnunet_plan  # noqa: E402

__all__ = ["main", "Report", "train_configs"]

TRAIN_FIELDS = (
    "config", "model", "amp", "amp_dtype", "batch", "roi", "params_m", "status", "train_s", "train_s_min",
    "train_s_max", "steps", "warmup", "peak_mb", "model_mb", "reserved_mb", "device", "device_name", "torch", "cuda",
)  # fmt: skip
INFER_FIELDS = (
    "config", "scan_memory", "amp", "amp_dtype", "scan", "roi", "overlap", "sw_batch_size", "windows", "status",
    "infer_s", "s_per_window", "peak_mb", "model_mb", "reserved_mb", "device", "device_name", "torch", "cuda",
)  # fmt: skip
BUNDLE_FIELDS = ("epoch", "mean_loss", "iterations", "epoch_s", "status", "device", "device_name", "torch", "cuda")
FILES = ("gpu_report.md", "gpu_report.json", "gpu_report_train.csv", "gpu_report_infer.csv", "gpu_report_bundle.csv")
# share of --budget_s by which each section must be done (unused time carries over to the next section)
SECTION_END = {"train": 0.55, "infer": 0.75, "bundle": 1.0}


# ------------------------------------------------------------------------------------------------------------ report
class _Tee:
    """Write to the terminal and the log file."""

    def __init__(self, stream, log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        if not self.log.closed:
            self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        if not self.log.closed:
            self.log.flush()
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


class Report:
    """Results so far; :meth:`write` rewrites every output file (called after each configuration)."""

    def __init__(self, out: Path, env: dict, settings: dict) -> None:
        self.out, self.env, self.settings = out, env, settings
        self.train: list[dict] = []
        self.infer: list[dict] = []
        self.bundle: dict = {"status": "not run", "epochs": []}
        self.notes: list[str] = []
        self.lock = threading.Lock()

    def device_cols(self) -> dict:
        return {k: self.env[k] for k in ("device", "device_name", "torch", "cuda")}

    def note(self, text: str) -> None:
        print(f"[gpu_report] NOTE: {text}", flush=True)
        self.notes.append(text)

    def _csv(self, name: str, fields: tuple, rows: list[dict]) -> None:
        with open(self.out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({**self.device_cols(), **row})

    def write(self) -> None:
        with self.lock:
            data = {
                "env": self.env,
                "settings": self.settings,
                "train": self.train,
                "infer": self.infer,
                "bundle": self.bundle,
                "notes": self.notes,
            }
            (self.out / "gpu_report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
            self._csv("gpu_report_train.csv", TRAIN_FIELDS, self.train)
            self._csv("gpu_report_infer.csv", INFER_FIELDS, self.infer)
            epochs = [{**e, "status": self.bundle["status"]} for e in self.bundle["epochs"]]
            self._csv("gpu_report_bundle.csv", BUNDLE_FIELDS, epochs)
            (self.out / "gpu_report.md").write_text(self.markdown())

    def markdown(self) -> str:
        e, s = self.env, self.settings
        lines = [
            "# FINE GPU report",
            "",
            f"- device: **{e['device_name']}** ({e['device']}), {e.get('device_memory_gib', 'n/a')} GiB",
            f"- torch {e['torch']}, CUDA {e['cuda']}, cuDNN {e.get('cudnn')}, MONAI {e['monai']}, "
            f"Python {e['python']}, host CPU {e['host_cpu']} ({e['host_cores']} cores)",
            f"- command: `{s['command']}`",
            f"- started {s['started_utc']} UTC; elapsed {s.get('elapsed_s', 0):.0f} s of a {s['budget_s']} s budget",
            f"- AMP: torch.autocast({s['amp_dtype']}); AMP off = fp32 with TF32 {'on' if s['tf32'] else 'off'} "
            f"(matmuls and convolutions: {e.get('fp32_precision', 'n/a')}); cudnn.benchmark {s['cudnn_benchmark']}",
            "",
            f"## Training step (batch {s['batch']}, crop {s['roi']}, DiceCE + deep supervision, SGD)",
            "",
            "| config | AMP | params M | step s (median) | min-max | peak MiB | weights MiB | status |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.train:
            lines.append(
                f"| {r['config']} | {r['amp_dtype'] if r['amp'] else 'off (fp32)'} | {_fmt(r.get('params_m'))} | "
                f"{_fmt(r.get('train_s'))} | {_fmt(r.get('train_s_min'))}-{_fmt(r.get('train_s_max'))} | "
                f"{_fmt(r.get('peak_mb'))} | {_fmt(r.get('model_mb'))} | {r['status']} |"
            )
        ratios = train_ratios(self.train)
        if ratios:
            lines += ["", "Ratios (same AMP setting): " + "; ".join(f"{k} {v}" for k, v in ratios.items())]
        lines += [
            "",
            f"## Inference (`FINEInferer`, scan {s['scan']}, roi {s['roi']}, overlap {s['overlap']}, "
            f"sw_batch_size {s['sw_batch_size']}, stitched on the device)",
            "",
            "| config | AMP | windows | seconds | s / window | peak MiB | status |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.infer:
            lines.append(
                f"| {r['config']} | {r['amp_dtype'] if r['amp'] else 'off (fp32)'} | {r.get('windows')} | "
                f"{_fmt(r.get('infer_s'))} | {_fmt(r.get('s_per_window'))} | {_fmt(r.get('peak_mb'))} | {r['status']} |"
            )
        b = self.bundle
        lines += ["", "## Bundle training on the phantom (`train.json`, `ConfigWorkflow`)", ""]
        lines.append(f"- status: {b['status']}; " + ", ".join(f"{k}: {v}" for k, v in b.get("setup", {}).items()))
        if b.get("first_epoch_loss") is not None:
            lines.append(
                f"- mean loss first epoch {b['first_epoch_loss']:.4f}, last epoch {b['last_epoch_loss']:.4f}: "
                f"{'fell' if b['loss_fell'] else 'DID NOT FALL'}"
            )
        if b["epochs"]:
            lines += ["", "| epoch | mean loss | iterations | seconds |", "|---|---|---|---|"]
            lines += [
                f"| {x['epoch']} | {x['mean_loss']:.4f} | {x['iterations']} | {x['epoch_s']:.1f} |" for x in b["epochs"]
            ]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _dims(size) -> str:
    return "x".join(map(str, size))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def train_ratios(rows: list[dict]) -> dict:
    """``full/none`` time and memory, and each peer against ``full``, per AMP setting."""
    out = {}
    ok = {(r["model"], r["amp"]): r for r in rows if r["status"] == "ok"}
    for amp in (False, True):
        tag = "amp" if amp else "fp32"
        full = ok.get(("fine:full", amp))
        pairs = [("full/none", full, ok.get(("fine:none", amp)))]
        pairs += [(f"{m}/full", ok.get((m, amp)), full) for m in ("swinunetr", "dynunet")]
        for name, a, b in pairs:
            if a and b and b.get("train_s") and b.get("peak_mb"):
                out[f"{name} {tag}"] = (
                    f"time {a['train_s'] / b['train_s']:.3f}, memory {a['peak_mb'] / b['peak_mb']:.3f}"
                )
    return out


# ------------------------------------------------------------------------------------------------------------ device
class Device:
    """The device, its synchronisation and peak-memory meter (CUDA allocator, or process RSS on CPU)."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: CUDA is not available (torch {torch.__version__}).")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def cleanup(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def allocated_mb(self) -> float | None:
        return round(self.torch.cuda.memory_allocated(self.device) / 2**20, 1) if self.cuda else None

    def meter(self):
        """CUDA: ``max_memory_allocated`` as it is (every tensor then allocated: weights, inputs, activations, the
        optimizer state), after ``reset_peak_memory_stats``. CPU: the process's peak RSS above the RSS when the meter
        was made (``bench_network.PeakMemory``; only a smoke check here)."""
        return _CudaPeak(self) if self.cuda else PeakMemory(self.device)

    def reserved_mb(self) -> float | None:
        return round(self.torch.cuda.max_memory_reserved(self.device) / 2**20, 1) if self.cuda else None

    def autocast(self, enabled: bool, dtype):
        return self.torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)


class _CudaPeak:
    def __init__(self, dev: Device) -> None:
        self.dev = dev

    def start(self) -> None:
        self.dev.sync()
        self.dev.torch.cuda.reset_peak_memory_stats(self.dev.device)

    def stop(self) -> float:
        self.dev.sync()
        return round(self.dev.torch.cuda.max_memory_allocated(self.dev.device) / 2**20, 1)


def num_windows(image_size, roi_size, overlap: float) -> int:
    """Windows MONAI's ``sliding_window_inference`` cuts: per axis ``ceil((size - roi) / interval) + 1`` with
    ``interval = int(roi * (1 - overlap))`` (one window where the image is not larger than the roi)."""
    n = 1
    for size, roi in zip(image_size, roi_size):
        roi = min(roi, size)
        interval = max(int(roi * (1 - overlap)), 1)
        n *= 1 if size <= roi else math.ceil((size - roi) / interval) + 1
    return n


def environment(dev: Device) -> dict:
    import monai
    import torch

    env = {
        "device": str(dev.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "host_cpu": cpu_name(),
        "host_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if dev.cuda:
        props = torch.cuda.get_device_properties(dev.device)
        env["device_name"] = torch.cuda.get_device_name(dev.device)
        env["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["capability"] = f"{props.major}.{props.minor}"
    else:
        env["device_name"] = cpu_name()
    return env


# ------------------------------------------------------------------------------------------------------------- train
def train_configs(tiny: bool) -> list[dict]:
    """The training-step configurations: FINE's memory modes, then the peers; ``build`` is what
    ``bench_network.build_model`` takes (the same models as the CPU benchmark)."""
    preset = "tiny" if tiny else "bcv"
    configs = []
    for mode, memory in (("none", "none"), ("full", "full"), ("full+scan", "scan")):
        build = {"model": "fine", "preset": preset, "memory": memory}
        configs.append({"config": f"fine_{preset}:{mode}", "model": f"fine:{mode}", "build": build})
    feature = 12 if tiny else 48
    build = {"model": "swinunetr", "swin_feature_size": feature}
    configs.append({"config": f"SwinUNETR({feature})", "model": "swinunetr", "build": build})
    dyn = {"config": "DynUNet (nnU-Net 3d_fullres plan)", "model": "dynunet", "build": {"model": "dynunet"}}
    if tiny:
        dyn["config"], dyn["build"]["dynunet_filters"] = "DynUNet (nnU-Net plan, filters 8-32)", (8, 32)
    return configs + [dyn]


def run_train(cfg: dict, amp: bool, args, dev: Device, section_end: float, t0: float) -> dict:
    """One training configuration: warm-up, timed steps, peak memory."""
    import torch

    build = {**cfg["build"], "roi": list(args.roi), "batch": args.batch}
    row = {k: v for k, v in cfg.items() if k != "build"}
    row.update(amp=amp, amp_dtype=args.amp_dtype if amp else "float32", batch=args.batch, roi=_dims(args.roi))
    if build["model"] == "dynunet":
        base, cap = build.get("dynunet_filters") or (32, 320)
        plan = nnunet_plan(args.roi, base_features=base, max_features=cap)
        row.update(plan_kernels=plan["kernel_size"], plan_strides=plan["strides"], plan_filters=plan["filters"])
    torch.manual_seed(0)
    meter = dev.meter()  # CPU: RSS before the model exists
    row["before_mb"] = dev.allocated_mb()  # CUDA: what earlier configurations left (should be ~0)
    net, loss_fn, kwargs, to_loss = build_model(build)
    to_loss = to_loss or (lambda out: out)
    row["params_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 3)
    net = net.to(dev.device).train()
    kwargs = {k: v.to(dev.device) for k, v in kwargs.items()}
    x = torch.randn(args.batch, 1, *args.roi, device=dev.device)
    label = torch.randint(0, 14, (args.batch, 1, *args.roi), device=dev.device).float()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    dtype = getattr(torch, args.amp_dtype)
    scaler = torch.amp.GradScaler(dev.device.type, enabled=amp and dtype == torch.float16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with dev.autocast(amp, dtype):
            loss = loss_fn(to_loss(net(x, **kwargs)), label)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    row["model_mb"] = dev.allocated_mb()
    meter.start()
    warm = timed_calls(step, args.warmup, dev.sync, None)[0]
    # as many timed steps as fit before the section's end (at least 1)
    left = section_end - (time.perf_counter() - t0)
    steps = max(1, min(args.steps, int(left / max(min(warm), 1e-3)) - 1)) if warm else args.steps
    if steps < args.steps:
        row["note"] = f"{steps} of {args.steps} timed steps (time budget)"
    times = timed_calls(step, steps, dev.sync, None)[0]
    row["peak_mb"] = meter.stop()
    row["reserved_mb"] = dev.reserved_mb()
    row.update(
        steps=steps,
        warmup=args.warmup,
        train_s=round(statistics.median(times), 4),
        train_s_min=round(min(times), 4),
        train_s_max=round(max(times), 4),
        first_warmup_s=round(warm[0], 3) if warm else None,
        status="ok",
    )
    return row


# ------------------------------------------------------------------------------------------------------------- infer
def run_infer(scan_memory: bool, args, dev: Device, section_end: float, t0: float, shared: dict) -> dict:
    """Sliding-window inference of the synthetic scan, one pass or two-pass (scan memory)."""
    import torch

    from monai_fine.inferers import FINEInferer
    from monai_fine.networks import fine_bcv, fine_tiny

    preset = "fine_tiny" if args.tiny else "fine_bcv"
    row = {
        "config": f"{preset}:full" + (" + scan memory (scan view, then one pass)" if scan_memory else " (one pass)"),
        "scan_memory": scan_memory,
        "amp": True,
        "amp_dtype": args.amp_dtype,
        "scan": _dims(args.scan),
        "roi": _dims(args.roi),
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size,
    }
    row["windows"] = num_windows(args.scan, args.roi, args.overlap)
    meter = dev.meter()
    if "net" not in shared:  # one network for both rows; built on the device once
        torch.manual_seed(0)
        # scan_memory=True: the memory encoder exists (a one-pass run simply does not use it)
        net = (fine_tiny if args.tiny else fine_bcv)(1, 14, memory="full", scan_memory=True, roi_size=list(args.roi))
        if hasattr(net, "memory_visits"):
            net.memory_visits.fill_(1)
        shared["net"] = net.to(dev.device).eval().requires_grad_(False)
        shared["scan"] = torch.randn(1, 1, *args.scan, device=dev.device)
    net, image = shared["net"], shared["scan"]
    dtype = getattr(torch, args.amp_dtype)
    inferer = FINEInferer(
        args.roi, sw_batch_size=args.sw_batch_size, overlap=args.overlap, sw_device=dev.device, device=dev.device,
        scan_memory=scan_memory,
    )  # fmt: skip
    # warm-up on a few windows; it also gives the estimate of the full run
    box = torch.tensor([ROI_BOX] * args.sw_batch_size, dtype=torch.float32, device=dev.device)
    crops = torch.randn(args.sw_batch_size, 1, *args.roi, device=dev.device)
    with torch.no_grad(), dev.autocast(True, dtype):
        warm = timed_calls(lambda: net(crops, roi_box=box), 2, dev.sync, None)[0]
    estimate = min(warm) * (row["windows"] + (args.sw_batch_size if scan_memory else 0)) / args.sw_batch_size
    row["estimate_s"] = round(estimate, 2)
    left = section_end - (time.perf_counter() - t0)
    if estimate > left:
        row["status"] = f"skipped: estimated {estimate:.0f} s, {max(left, 0):.0f} s left in the budget"
        return row
    row["model_mb"] = dev.allocated_mb()  # CUDA: the network and the scan
    result: dict = {}

    def infer() -> None:
        result["out"] = inferer(image, net)

    meter.start()
    with torch.no_grad(), dev.autocast(True, dtype):
        times = timed_calls(infer, 1, dev.sync, None)[0]
    row["peak_mb"] = meter.stop()
    row["reserved_mb"] = dev.reserved_mb()
    out = result.pop("out")
    row["output"] = f"{tuple(out.shape)} {out.dtype} on {out.device}"
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("the stitched output holds non-finite values")
    del out
    row.update(infer_s=round(times[0], 3), s_per_window=round(times[0] / row["windows"], 5), status="ok")
    return row


# ------------------------------------------------------------------------------------------------------------ bundle
def run_bundle_training(args, dev: Device, report: Report, section_end: float, t0: float) -> None:
    """``train.json`` through MONAI's ``ConfigWorkflow`` on a phantom written to a temporary folder."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.handlers import from_engine

    from monai_fine.bundle_tools import bundle_dir
    from monai_fine.data import phantom

    b = report.bundle
    tmp = Path(tempfile.mkdtemp(prefix="gpu_report_bundle_"))
    try:
        t_data = time.perf_counter()
        phantom(str(tmp / "data"), num_cases=args.bundle_cases, seed=0, num_test=0, shape=list(args.bundle_shape))
        override = {
            "bundle_root": str(tmp),
            "dataset_dir": str(tmp / "data"),
            "preset": args.bundle_preset,
            "roi_size": list(args.bundle_roi),
            "pixdim": [3.0, 3.0, 3.0],
            "max_epochs": args.bundle_epochs,
            "epoch_length": args.bundle_epoch_length,
            "val_interval": args.bundle_epochs + 1,  # no validation: the loss is what is recorded
            "num_workers": args.bundle_workers,
            "device": f"$torch.device('{dev.device}')",
            "seed": 0,
            "progress": False,  # ignite's ProgressBar needs tqdm, TensorBoard tensorboard: the GPU machine has neither
            "tensorboard": False,
        }
        if args.bundle_optimizer:
            override["optimizer_name"] = args.bundle_optimizer
        if args.bundle_lr:
            override["learning_rate"] = args.bundle_lr
        b["setup"] = {
            "phantom": f"{args.bundle_cases} cases of {'x'.join(map(str, args.bundle_shape))} at 3 mm "
            f"({time.perf_counter() - t_data:.1f} s to write)",
            "overrides": {k: v for k, v in override.items() if k not in ("bundle_root", "dataset_dir")},
        }
        configs = bundle_dir() / "configs"
        workflow = ConfigWorkflow(
            config_file=str(configs / "train.json"),
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            workflow_type="train",
            **override,
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        b["setup"].update(
            network_device=str(next(trainer.network.parameters()).device),
            amp=bool(trainer.amp),
            amp_dtype=str(trainer.amp_kwargs.get("dtype", "torch.autocast default (float16 on CUDA)"))
            if trainer.amp
            else None,
            optimizer=type(trainer.optimizer).__name__,
        )
        losses: list[float] = []
        epoch_t = [time.perf_counter()]

        def on_iteration(engine) -> None:  # the iteration's loss, decollated into every item or not
            loss = from_engine(["loss"], first=True)(engine.state.output)
            losses.append(float(loss.detach() if hasattr(loss, "detach") else loss))

        def on_epoch(engine) -> None:
            now = time.perf_counter()
            b["epochs"].append(
                {
                    "epoch": engine.state.epoch,
                    "mean_loss": statistics.fmean(losses),
                    "iterations": len(losses),
                    "epoch_s": now - epoch_t[0],
                }
            )
            losses.clear()
            report.write()
            left = section_end - (now - t0)
            if engine.state.epoch < engine.state.max_epochs and left < 1.5 * (now - epoch_t[0]):
                report.note(f"bundle training stopped after epoch {engine.state.epoch} (time budget)")
                engine.terminate()
            epoch_t[0] = now

        trainer.add_event_handler(Events.ITERATION_COMPLETED, on_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, on_epoch)
        workflow.run()
        workflow.finalize()
        ep = b["epochs"]
        if not ep:
            raise RuntimeError("the trainer completed no epoch")
        b["first_epoch_loss"], b["last_epoch_loss"] = ep[0]["mean_loss"], ep[-1]["mean_loss"]
        b["loss_fell"] = ep[-1]["mean_loss"] < ep[0]["mean_loss"]
        if not all(math.isfinite(e["mean_loss"]) for e in ep):
            raise FloatingPointError("non-finite training loss")
        b["status"] = "ok"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: fine_tiny, small crops, 1 step, 2 epochs")
    p.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    p.add_argument("--budget_s", type=float, default=420.0, help="time budget; what no longer fits is skipped")
    p.add_argument("--grace_s", type=float, default=50.0, help="hard stop at budget + grace (a hung step)")
    p.add_argument("--sections", default="train,infer,bundle", help="comma-separated subset of train,infer,bundle")
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
    }
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    args.infer_roi = args.infer_roi or args.roi
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTION_END]
    if bad:
        p.error(f"--sections: unknown {bad}; choose from {list(SECTION_END)}")
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.budget_s <= 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0, --budget_s > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "gpu_report.log", "w")
    sys.stdout = _Tee(sys.__stdout__, log)
    sys.stderr = _Tee(sys.__stderr__, log)
    import torch

    dev = Device(args.device)
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
    settings = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else f"main({argv})",
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "batch": args.batch,
        "roi": _dims(args.roi),
        "warmup": args.warmup,
        "steps": args.steps,
        "amp_dtype": args.amp_dtype,
        "tf32": args.tf32,
        "cudnn_benchmark": args.cudnn_benchmark,
        "scan": _dims(args.scan),
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size,
        "sections": args.sections,
    }
    report = Report(args.out, env, settings)
    if isinstance(env.get("fp32_precision"), str):
        report.note(f"TF32 setting {env['fp32_precision']}: fp32 rows use torch's defaults")
    print(f"[gpu_report] {env['device_name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda']}", flush=True)
    threading.Thread(target=_watchdog, args=(report, args.budget_s + args.grace_s, t0), daemon=True).start()
    report.write()

    def section_end(name: str) -> float:
        return SECTION_END[name] * args.budget_s

    def guarded(label: str, fn, fallback: dict, rows: list | None) -> None:
        try:
            row = fn()
        except Exception as e:  # out-of-memory included: record and go on
            row = {**fallback, "status": _error(e)}
            print(f"[gpu_report] {label}: {row['status']}", flush=True)
        dev.cleanup()
        if rows is not None:
            rows.append(row)
        report.settings["elapsed_s"] = time.perf_counter() - t0
        report.write()

    if "train" in args.sections:
        for cfg in train_configs(args.tiny):
            for amp in (False, True):
                label = f"train {cfg['config']} amp={amp}"
                base = {k: v for k, v in cfg.items() if k != "build"}
                base.update(amp=amp, amp_dtype=args.amp_dtype if amp else "float32", batch=args.batch)
                base["roi"] = _dims(args.roi)
                if time.perf_counter() - t0 > section_end("train"):
                    report.train.append({**base, "status": "skipped: time budget"})
                    report.note(f"{label} skipped (time budget)")
                    continue
                print(f"[gpu_report] {label} ...", flush=True)
                guarded(label, lambda: run_train(cfg, amp, args, dev, section_end("train"), t0), base, report.train)
    if "infer" in args.sections:
        shared: dict = {}
        infer_args = argparse.Namespace(**{**vars(args), "roi": args.infer_roi})
        for scan_memory in (False, True):
            label = f"infer scan_memory={scan_memory}"
            base = {"config": label, "scan_memory": scan_memory, "amp": True, "amp_dtype": args.amp_dtype}
            if time.perf_counter() - t0 > section_end("infer"):
                report.infer.append({**base, "status": "skipped: time budget"})
                report.note(f"{label} skipped (time budget)")
                continue
            print(f"[gpu_report] {label} ...", flush=True)
            guarded(
                label, lambda: run_infer(scan_memory, infer_args, dev, section_end("infer"), t0, shared), base,
                report.infer,
            )  # fmt: skip
        shared.clear()
        dev.cleanup()
    if "bundle" in args.sections:
        left = section_end("bundle") - (time.perf_counter() - t0)
        if left < 20:
            report.bundle["status"] = f"skipped: time budget ({left:.0f} s left)"
            report.note("bundle training skipped (time budget)")
        else:
            print("[gpu_report] bundle training ...", flush=True)
            try:
                run_bundle_training(args, dev, report, section_end("bundle"), t0)
            except Exception as e:
                report.bundle["status"] = _error(e)
                print(f"[gpu_report] bundle: {report.bundle['status']}", flush=True)
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
