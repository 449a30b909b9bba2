# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``gpu_report``'s three sections: the training step of FINE and its peers (:func:`run_train`), whole-scan
inference (:func:`run_infer`) and a short bundle training on a phantom (:func:`run_bundle_training`), on a
:class:`Device`."""

from __future__ import annotations

import gc
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROI_BOX, PeakMemory, build_model, cpu_name, fine_network, timed_calls
from benchmarks.gpu_report_output import Report, dims
from monai_fine.bundle_tools import bundle_workflow
from monai_fine.networks.peers import nnunet_plan

__all__ = [
    "Device",
    "bundle_overrides",
    "environment",
    "num_windows",
    "run_bundle_training",
    "run_infer",
    "run_train",
    "train_configs",
]


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
        was made (``common.PeakMemory``; only a smoke check here)."""
        return PeakMemory(self.device, cuda_baseline=False)

    def reserved_mb(self) -> float | None:
        return round(self.torch.cuda.max_memory_reserved(self.device) / 2**20, 1) if self.cuda else None

    def autocast(self, enabled: bool, dtype):
        return self.torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)


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
    ``common.build_model`` takes (the same models as the CPU benchmark)."""
    preset = "tiny" if tiny else "bcv"
    configs = []
    for name in ("none", "full", "full+scan"):  # names of MEMORY_CONFIGS
        build = {"model": "fine", "preset": preset, "memory": name}
        configs.append({"config": f"fine_{preset}:{name}", "model": f"fine:{name}", "build": build})
    feature = 12 if tiny else 48
    build = {"model": "swinunetr", "swin_feature_size": feature}
    configs.append({"config": f"SwinUNETR({feature})", "model": "swinunetr", "build": build})
    dyn = {"config": "DynUNet (nnU-Net 3d_fullres plan)", "model": "dynunet", "build": {"model": "dynunet"}}
    if tiny:
        dyn["config"], dyn["build"]["dynunet_filters"] = "DynUNet (nnU-Net plan, filters 8-32)", (8, 32)
    return [*configs, dyn]


def run_train(cfg: dict, amp: bool, args, dev: Device, section_end: float, t0: float) -> dict:
    """One training configuration: warm-up, timed steps, peak memory."""
    import torch

    build = {**cfg["build"], "roi": list(args.roi), "batch": args.batch}
    row = {k: v for k, v in cfg.items() if k != "build"}
    row.update(amp=amp, amp_dtype=args.amp_dtype if amp else "float32", batch=args.batch, roi=dims(args.roi))
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
def _infer_row(scan_memory: bool, args) -> dict:
    """The settings columns of an inference row."""
    preset = "fine_tiny" if args.tiny else "fine_bcv"
    return {
        "config": f"{preset}:full" + (" + scan memory (scan view, then one pass)" if scan_memory else " (one pass)"),
        "scan_memory": scan_memory,
        "amp": True,
        "amp_dtype": args.amp_dtype,
        "scan": dims(args.scan),
        "roi": dims(args.roi),
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size,
        "windows": num_windows(args.scan, args.roi, args.overlap),
    }


def run_infer(scan_memory: bool, args, dev: Device, section_end: float, t0: float, shared: dict) -> dict:
    """Sliding-window inference of the synthetic scan, one pass or two-pass (scan memory)."""
    import torch

    from monai_fine.inferers import FINEInferer

    row = _infer_row(scan_memory, args)
    meter = dev.meter()
    if "net" not in shared:  # one network for both rows; built on the device once
        torch.manual_seed(0)
        # full+scan: the memory encoder exists (a one-pass run simply does not use it)
        net = fine_network("tiny" if args.tiny else "bcv", "full+scan", args.roi)
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
def bundle_overrides(args, dev: Device, root: Path) -> dict:
    """The bundle overrides of the phantom training in ``root`` (``root / "data"`` holds the phantom)."""
    override = {
        "bundle_root": str(root),
        "dataset_dir": str(root / "data"),
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
    return override


def _trainer_setup(trainer) -> dict:
    """Where the trainer runs: its network's device, AMP and optimizer."""
    return {
        "network_device": str(next(trainer.network.parameters()).device),
        "amp": bool(trainer.amp),
        "amp_dtype": str(trainer.amp_kwargs.get("dtype", "torch.autocast default (float16 on CUDA)"))
        if trainer.amp
        else None,
        "optimizer": type(trainer.optimizer).__name__,
    }


def _record_epochs(trainer, report: Report, section_end: float, t0: float) -> None:
    """Record every epoch's mean loss into ``report.bundle``, rewrite the report after each epoch, and stop after the
    epoch that leaves too little of the section's time for another one."""
    from ignite.engine import Events
    from monai.handlers import from_engine

    b = report.bundle
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


def run_bundle_training(args, dev: Device, report: Report, section_end: float, t0: float) -> None:
    """``train.json`` through MONAI's ``ConfigWorkflow`` on a phantom written to a temporary folder."""
    from monai_fine.data import phantom

    b = report.bundle
    tmp = Path(tempfile.mkdtemp(prefix="gpu_report_bundle_"))
    try:
        t_data = time.perf_counter()
        phantom(str(tmp / "data"), num_cases=args.bundle_cases, seed=0, num_test=0, shape=list(args.bundle_shape))
        override = bundle_overrides(args, dev, tmp)
        b["setup"] = {
            "phantom": f"{args.bundle_cases} cases of {'x'.join(map(str, args.bundle_shape))} at 3 mm "
            f"({time.perf_counter() - t_data:.1f} s to write)",
            "overrides": {k: v for k, v in override.items() if k not in ("bundle_root", "dataset_dir")},
        }
        workflow = bundle_workflow(["train.json"], "train", **override)
        trainer = workflow.parser.get_parsed_content("train#trainer")
        b["setup"].update(_trainer_setup(trainer))
        _record_epochs(trainer, report, section_end, t0)
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
