# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Cost of FINE per memory mode against MONAI's SwinUNETR and nnU-Net's DynUNet at the same crop: parameters, FLOPs,
training-step and inference time, peak memory; over one crop or a sweep of crop sizes.

One command measures every configuration; each (configuration, repeat) runs in a fresh subprocess so that one
model's allocations cannot pollute the next one's memory peak, and with ``--repeats 2`` the order is reversed on the
second pass (ABBA) so that a drift in background load does not favour one configuration. Every configuration prints a
``BENCH {json}`` line on stdout; a CSV (device name and thread count in every row) and a summary of ratios follow.

    python benchmarks/bench_network.py                          # fine_bcv at 128x128x64 on CPU (slow, many GB)
    python benchmarks/bench_network.py --device cuda --steps 10
    python benchmarks/bench_network.py --sweep --modes none full               # crops 64x64x32, 96x96x64, 128x128x64
    python benchmarks/bench_network.py --quick                                  # a quick check of the script

See ``benchmarks/README.md`` for the columns and how memory is measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

FINE_MODES = ("none", "window", "released", "full", "scan")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
# the crop-size sweep: every crop divisible by fine_bcv's stride (32, 32, 16) and by SwinUNETR's 32
# (96x96x48 would suit FINE but not SwinUNETR, so the middle crop is 96x96x64)
SWEEP_ROIS = ((64, 64, 32), (96, 96, 64), (128, 128, 64))
QUICK = {  # --quick: the script's own smoke check, seconds per configuration
    "preset": "tiny",
    "rois": [(32, 32, 16), (64, 32, 16)],  # too small for SwinUNETR (multiples of 32): its rows say so
    "modes": ["none", "full"],
    "warmup": 1,
    "steps": 1,
    "swin_feature_size": 12,
    "dynunet_filters": (8, 32),
}
# the crop's place in its scan, as (2, 3) [start, stop) fractions: 3x3 of the 4x4x1 memory cells
ROI_BOX = ((0.1, 0.1, 0.25), (0.6, 0.6, 0.75))
ROI_BOX_2 = ((0.4, 0.4, 0.25), (0.9, 0.9, 0.75))  # the scan-memory row's second crop of the same scan
CSV_FIELDS = (
    "config", "model", "memory", "scan_memory", "batch", "roi", "device", "device_name", "threads", "torch", "monai",
    "fused_attn", "tf32", "params", "params_m", "params_tokens", "params_memory_norms", "params_memory_attn",
    "gflops_fwd", "gmacs_fwd", "gflops_fwd_per_crop", "gflops_fwd_one_pass", "gflops_train_step",
    "train_s", "train_s_per_crop", "train_s_min", "train_s_max", "train_runq_wait", "train_peak_mb",
    "infer_s", "infer_s_per_crop", "infer_one_pass_s", "two_pass_ratio", "infer_runq_wait", "infer_peak_mb",
    "mem_baseline_mb", "mem_method", "warmup", "steps", "repeats", "status",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- worker
class PeakMemory:
    """Peak memory of a phase in MiB, measured from ``start()`` to ``stop()``.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, the model included), reset per phase. CPU: the kernel's
    resident-set high-water mark ``VmHWM`` of this process, reset per phase by writing ``5`` to
    ``/proc/self/clear_refs`` (Linux >= 4.0), minus the RSS measured before the model was built; where that reset is
    not allowed, RSS sampled every 2 ms with psutil, minus the same baseline.
    """

    def __init__(self, device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.method = "cuda_max_memory_allocated" if self.cuda else self._cpu_method()
        self.baseline = self._current()
        self._peak = 0.0
        self._sampler: threading.Thread | None = None
        self._running = False

    @staticmethod
    def _cpu_method() -> str:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            PeakMemory._status("VmHWM")
            return "rss_vmhwm_minus_baseline"
        except (OSError, ValueError):
            return "rss_psutil_2ms_minus_baseline"

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
        if match is None:
            raise ValueError(f"{key} not in /proc/self/status")
        return int(match.group(1)) / 1024

    def _current(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.memory_allocated(self.device) / 2**20
        if self.method.startswith("rss_vmhwm"):
            return self._status("VmRSS")
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while self._running:
            self._peak = max(self._peak, proc.memory_info().rss / 2**20)
            time.sleep(0.002)

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.method.startswith("rss_vmhwm"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        else:
            self._peak, self._running = self._current(), True
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def stop(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.method.startswith("rss_vmhwm"):
            peak = self._status("VmHWM")
        else:
            self._running = False
            self._sampler.join()
            peak = max(self._peak, self._current())
        return round(peak - self.baseline, 1)


def _register_cpu_sdpa_flops() -> None:
    """FlopCounterMode (torch 2.13) has no formula for the CPU fused-attention kernel and would count attention as 0;
    register the same formulas it uses for the CUDA kernels."""
    import torch
    from torch.utils import flop_counter as fc

    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry:
        fc.register_flop_formula(fwd)(lambda q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_flop_count(q, k, v))
    if bwd is not None and bwd not in fc.flop_registry:
        fc.register_flop_formula(bwd)(
            lambda g, q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_backward_flop_count(g, q, k, v)
        )


def build_model(cfg: dict):
    """The model, its loss, its forward keyword arguments and the transform of its training output for the loss, for
    ``cfg`` with ``model`` (``fine``, ``swinunetr`` or ``dynunet``), ``roi``, ``batch`` and, for FINE, ``preset`` and
    ``memory`` (``scan``: ``full`` with scan memory and all crops of one scan)."""
    import torch
    from monai.losses import DeepSupervisionLoss, DiceCELoss
    from peers import ds_loss_weights, ds_outputs, nnunet_dynunet, swinunetr

    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    if cfg["model"] == "swinunetr":
        return swinunetr(feature_size=cfg.get("swin_feature_size", 48)), loss, {}, None
    if cfg["model"] == "dynunet":
        base, cap = cfg.get("dynunet_filters") or (32, 320)
        net, plan = nnunet_dynunet(cfg["roi"], base_features=base, max_features=cap)
        return net, DeepSupervisionLoss(loss, weights=ds_loss_weights(plan["deep_supr_num"])), {}, ds_outputs
    from monai_fine.networks.nets.fine import fine_bcv, fine_tiny

    factory = fine_bcv if cfg["preset"] == "bcv" else fine_tiny
    scan = cfg["memory"] == "scan"
    net = factory(
        1, 14, memory="full" if scan else cfg["memory"], scan_memory=scan, deep_supervision=True, roi_size=cfg["roi"]
    )
    # steady state of training: every memory cell visited, so V-MSA attends to all volume tokens
    net.memory_visits.fill_(1)
    boxes = [(ROI_BOX, ROI_BOX_2)[i % 2] for i in range(cfg["batch"])]
    kwargs = {"roi_box": torch.tensor(boxes, dtype=torch.float32)}
    if scan:  # both crops from one scan: its scan view (the whole scan at the crop size) writes the memory
        kwargs["scan_id"] = torch.zeros(cfg["batch"], dtype=torch.long)
        kwargs["scan_view"] = torch.randn(1, 1, *cfg["roi"])
    return net, DeepSupervisionLoss(loss), kwargs, None


def _run_delay() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux schedstat), or None."""
    total = 0
    for path in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(path.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if Path("/proc/self/task").is_dir() else None


def timed_calls(fn, n: int, sync, threads: int | None) -> tuple[list[float], list[float]]:
    """Wall-clock seconds of ``n`` calls of ``fn`` and, given ``threads`` (CPU runs), for each the fraction of
    ``threads`` x wall time that this process's threads waited for a CPU (0 on a quiet machine)."""
    wall, wait = [], []
    for _ in range(n):
        sync()
        t0, d0 = time.perf_counter(), _run_delay() if threads else None
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        d1 = _run_delay() if threads else None
        if d0 is not None and d1 is not None:
            wait.append((d1 - d0) / (wall[-1] * threads))
    return wall, wait


def set_tf32(enable: bool) -> None:
    """TF32 for both matmuls and cuDNN convolutions, or for neither (torch's default mixes them)."""
    import torch

    mode = "tf32" if enable else "ieee"
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = enable
        torch.backends.cudnn.allow_tf32 = enable


def train_step(net, loss_fn, fwd_kwargs: dict, x, label, to_loss=None):
    """One training step as every timed row runs it: forward, loss, backward, SGD (nnU-Net's settings)."""
    import torch

    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    to_loss = to_loss or (lambda out: out)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(to_loss(net(x, **fwd_kwargs)), label).backward()
        opt.step()

    return step


def run_worker(cfg: dict) -> dict:
    """Measure one configuration in this process (called in a fresh subprocess by :func:`main`)."""
    import torch

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    import monai
    from torch.utils.flop_counter import FlopCounterMode

    from monai_fine.config import use_fused_attn

    _register_cpu_sdpa_flops()
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        set_tf32(cfg["tf32"])
    mem = PeakMemory(device)  # baseline before the model exists

    net, loss_fn, fwd_kwargs, to_loss = build_model(cfg)
    net = net.to(device)
    fwd_kwargs = {k: v.to(device) for k, v in fwd_kwargs.items()}
    B = cfg["batch"]
    x = torch.randn(B, 1, *cfg["roi"], device=device)
    label = torch.randint(0, 14, (B, 1, *cfg["roi"]), device=device).float()
    warmup, steps = max(1, cfg["warmup"]), cfg["steps"]
    named = dict(net.named_parameters())

    def count(*parts: str) -> int:
        return sum(p.numel() for n, p in named.items() if any(part in n for part in parts))

    threads = torch.get_num_threads()
    cpu_threads = None if cuda else threads  # CPU runs also measure how long threads waited for a core
    res = {
        "params": sum(p.numel() for p in net.parameters()),
        "params_tokens": count("window_tokens", "volume_tokens"),  # what the memory modes add to "none":
        "params_memory_norms": count("norm_global", "norm_volume"),
        "params_memory_attn": count("attn_global", "attn_volume"),  # 0 with share_memory_attention=True
        "device_name": torch.cuda.get_device_name(device) if cuda else cfg["cpu_name"],
        "threads": threads,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "fused_attn": use_fused_attn() if cfg["model"] == "fine" else False,
        "tf32": cfg["tf32"] if cuda else None,
        "mem_baseline_mb": round(mem.baseline, 1),
        "mem_method": mem.method,
    }

    # inference: eval mode, no grad, one forward (the scan-memory row: the scan view's write pass, then the crops)
    net.eval().requires_grad_(False)
    one_pass_kwargs = {k: v for k, v in fwd_kwargs.items() if k not in ("scan_id", "scan_view")}
    mem.start()
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            net(x, **fwd_kwargs)
        res["gflops_fwd"] = counter.get_total_flops() / 1e9
        for _ in range(warmup - 1):
            net(x, **fwd_kwargs)
        res["infer_times"], res["infer_waits"] = timed_calls(lambda: net(x, **fwd_kwargs), steps, sync, cpu_threads)
        if "scan_id" in fwd_kwargs:  # the same crops in one ordinary pass
            with FlopCounterMode(display=False) as counter:
                net(x, **one_pass_kwargs)
            res["gflops_fwd_one_pass"] = counter.get_total_flops() / 1e9
            res["infer_one_pass_times"] = timed_calls(lambda: net(x, **one_pass_kwargs), steps, sync, cpu_threads)[0]
    res["infer_peak_mb"] = mem.stop()
    if cfg["flops_only"]:
        return res

    # training step: forward, DiceCE (deep supervision for FINE), backward, SGD step
    net.train().requires_grad_(True)
    step = train_step(net, loss_fn, fwd_kwargs, x, label, to_loss)

    mem.start()
    with FlopCounterMode(display=False) as counter:
        step()
    res["gflops_train_step"] = counter.get_total_flops() / 1e9
    for _ in range(warmup - 1):
        step()
    res["train_times"], res["train_waits"] = timed_calls(step, steps, sync, cpu_threads)
    res["train_peak_mb"] = mem.stop()
    return res


def run_paired(cfg: dict) -> dict:
    """Training-step times of several FINE memory modes at one crop, measured in one process with their steps
    interleaved (mode order reversed every round, ABBA), so that a drift of the machine's speed hits every mode alike;
    on a shared host the run-to-run spread of separate processes (tens of %) hides a few-% difference."""
    import torch

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    x = torch.randn(1, 1, *cfg["roi"], device=device)
    label = torch.randint(0, 14, (1, 1, *cfg["roi"]), device=device).float()
    steps = {}
    for mode in cfg["modes"]:
        net, loss_fn, kwargs, _ = build_model({**cfg, "model": "fine", "memory": mode, "batch": 1})
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        steps[mode] = train_step(net.to(device).train(), loss_fn, kwargs, x, label)
    for mode in cfg["modes"]:
        for _ in range(max(1, cfg["warmup"])):
            steps[mode]()
    times: dict[str, list[float]] = {m: [] for m in cfg["modes"]}
    for i in range(cfg["pairs"]):
        for mode in cfg["modes"] if i % 2 == 0 else cfg["modes"][::-1]:
            times[mode] += timed_calls(steps[mode], 1, sync, None)[0]
    return {"paired_times": times, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------------------- driver
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _roi_str(roi) -> str:
    return "x".join(map(str, roi))


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
            name = f"{preset}:full+scan" if mode == "scan" else f"{preset}:{mode}"
            batch = 2 if mode == "scan" else 1
            fine = {"config": name, "model": "fine", "preset": args.preset, "memory": mode, "batch": batch}
            configs.append({**at, **fine})
        if not args.skip_swinunetr:
            name = "swinunetr" if args.swin_feature_size == 48 else f"swinunetr({args.swin_feature_size})"
            swin = {"config": name, "model": "swinunetr", "preset": None, "memory": None, "batch": 1}
            if any(r % 32 for r in roi):
                swin["skip"] = f"skipped: SwinUNETR needs a crop divisible by 32, not {_roi_str(roi)}"
            configs.append({**at, **swin})
        if not args.skip_dynunet:
            name = "dynunet" if args.dynunet_filters is None else "dynunet(filters {}-{})".format(*args.dynunet_filters)
            configs.append({**at, "config": name, "model": "dynunet", "preset": None, "memory": None, "batch": 1})
    for cfg in configs:
        cfg["key"] = f"{cfg['config']}@{_roi_str(cfg['roi'])}"
    return configs


def _spawn(cfg: dict) -> dict:
    """Run one configuration in a fresh interpreter; returns the worker's result or an error status."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("WORKER_RESULT "):
            return json.loads(line[len("WORKER_RESULT ") :])
    if proc.returncode < 0:
        status = f"killed by signal {-proc.returncode} (out of memory?)"
    else:
        status = f"failed with exit code {proc.returncode}"
    return {"status": status}


def _aggregate(cfg: dict, runs: list[dict], repeats: int) -> dict:
    """One row per configuration: timed steps pooled over repeats (median), memory peaks the max over repeats."""
    ok = [r for r in runs if r.get("status", "ok") == "ok"]
    row = {k: None for k in CSV_FIELDS}
    row.update(
        config=cfg["config"],
        model=cfg["model"],
        memory=cfg["memory"] if cfg["memory"] != "scan" else "full",
        scan_memory=cfg["memory"] == "scan",
        batch=cfg["batch"],
        roi=_roi_str(cfg["roi"]),
        device=cfg["device"],
        warmup=cfg["warmup"],
        steps=cfg["steps"],
        repeats=repeats,
        status=cfg.get("skip") or ("ok" if len(ok) == len(runs) else "; ".join(r.get("status", "ok") for r in runs)),
    )
    if not ok:
        return row
    first = ok[0]
    for key in ("device_name", "threads", "torch", "monai", "fused_attn", "tf32", "mem_method"):
        row[key] = first[key]
    for key in ("params", "params_tokens", "params_memory_norms", "params_memory_attn"):
        row[key] = first[key]
    B = cfg["batch"]
    row["params_m"] = round(first["params"] / 1e6, 3)
    row["gflops_fwd"] = round(first["gflops_fwd"], 3)
    row["gmacs_fwd"] = round(first["gflops_fwd"] / 2, 3)
    row["gflops_fwd_per_crop"] = round(first["gflops_fwd"] / B, 3)
    if "gflops_fwd_one_pass" in first:
        row["gflops_fwd_one_pass"] = round(first["gflops_fwd_one_pass"], 3)

    def pooled(key: str) -> list[float]:
        return [t for r in ok for t in r.get(key, [])]

    train = pooled("train_times")
    if train:
        row["train_s"] = round(statistics.median(train), 4)
        row["train_s_per_crop"] = round(row["train_s"] / B, 4)
        row["train_s_min"], row["train_s_max"] = round(min(train), 4), round(max(train), 4)
    infer, one_pass = pooled("infer_times"), pooled("infer_one_pass_times")
    if infer:
        row["infer_s"] = round(statistics.median(infer), 4)
        row["infer_s_per_crop"] = round(row["infer_s"] / B, 4)
    for phase in ("train", "infer"):
        waits = pooled(f"{phase}_waits")
        if waits:
            row[f"{phase}_runq_wait"] = round(max(0.0, statistics.median(waits)), 3)
    if one_pass and infer:
        row["infer_one_pass_s"] = round(statistics.median(one_pass), 4)
        row["two_pass_ratio"] = round(row["infer_s"] / row["infer_one_pass_s"], 3)
    if "train_peak_mb" in first:
        row["train_peak_mb"] = max(r["train_peak_mb"] for r in ok)
        row["gflops_train_step"] = round(first["gflops_train_step"], 3)
    row["infer_peak_mb"] = max(r["infer_peak_mb"] for r in ok)
    row["mem_baseline_mb"] = max(r["mem_baseline_mb"] for r in ok)
    return row


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


PAIRED_KEY = "full/none paired train_s <= 1.05"  # judged by its interval (:func:`interval_verdict`)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Median of ``values`` and a distribution-free confidence interval for the population median: the order
    statistics ``[x_(k), x_(n-k+1)]`` (1-based) with the largest ``k`` whose coverage ``1 - 2 P(Bin(n, 1/2) <= k-1)``
    is at least ``confidence``; with too few values for that, ``[min, max]``.

    Returns:
        ``(median, low, high, coverage)``, coverage being that of the returned interval.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_interval needs at least one value.")

    def coverage(k: int) -> float:  # P(x_(k) <= median <= x_(n-k+1)) for continuous data
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return statistics.median(xs), xs[k - 1], xs[n - k], coverage(k)


def paired_ratio(paired_times: dict[str, list[float]], mode: str = "full", base: str = "none") -> dict:
    """``mode``/``base`` time from interleaved steps: the median of the per-round ratios (a round's two steps ran
    back to back, so a drift of the machine's speed cancels in each ratio) with its 95 % interval
    (:func:`median_interval`)."""
    ratios = [a / b for a, b in zip(paired_times[mode], paired_times[base])]
    med, low, high, cover = median_interval(ratios)
    return {"ratio": round(med, 3), "low": round(low, 3), "high": round(high, 3), "coverage": round(cover, 3),
            "rounds": len(ratios)}  # fmt: skip


def interval_verdict(low: float, high: float, bound: float) -> str:
    """``met`` when the whole interval is within ``<= bound``, ``MISSED`` when all of it is above, else
    ``undecided`` (the rounds cannot tell)."""
    return "met" if high <= bound else ("MISSED" if low > bound else "undecided")


def summarize(rows: list[dict], preset: str, paired: dict[str, list[float]] | None = None) -> dict:
    """Ratios, and the design targets (DESIGN.md sections 1 and 4) as ``{"<ratio> <op> <bound>": value}``; with
    ``paired`` (the step times per mode from :func:`run_paired`) the time target also reads the paired steps: the
    median per-round ratio, with its interval and verdict under ``"paired full/none"``."""
    by = {r["config"]: r for r in rows if r["status"] == "ok"}
    none, full = by.get(f"fine_{preset}:none"), by.get(f"fine_{preset}:full")
    scan = by.get(f"fine_{preset}:full+scan")
    swin = next((r for r in by.values() if r["model"] == "swinunetr"), None)
    dyn = next((r for r in by.values() if r["model"] == "dynunet"), None)
    keys = ("train_s", "train_peak_mb", "infer_s", "infer_peak_mb", "params", "gflops_fwd", "gflops_train_step")
    out: dict = {}
    targets: dict = {}
    if none:
        for mode in ("window", "released", "full"):
            r = by.get(f"fine_{preset}:{mode}")
            if r:
                out[f"{mode}/none"] = {k: _ratio(r[k], none[k]) for k in keys}
                out[f"{mode} - none params"] = {
                    "total": r["params"] - none["params"],
                    "tokens": r["params_tokens"],
                    "layernorms": r["params_memory_norms"],
                    "own_attention": r["params_memory_attn"],
                }
    if paired and "full" in paired and "none" in paired:
        out["paired train_s"] = {m: round(statistics.median(t), 4) for m, t in paired.items()}
        pr = paired_ratio(paired)
        out["paired full/none"] = {**pr, "verdict": interval_verdict(pr["low"], pr["high"], float(PAIRED_KEY.split()[-1]))}
        targets[PAIRED_KEY] = pr["ratio"]
    if full and none:
        targets["full/none train_s <= 1.05"] = _ratio(full["train_s"], none["train_s"])
        targets["full/none train_peak_mb <= 1.04"] = _ratio(full["train_peak_mb"], none["train_peak_mb"])
    if full and swin:
        out["swinunetr/full"] = {k: _ratio(swin[k], full[k]) for k in keys}
        targets["swinunetr/full train_s >= 1.5"] = out["swinunetr/full"]["train_s"]
    if full and dyn:
        out["dynunet/full"] = {k: _ratio(dyn[k], full[k]) for k in keys}
    if scan:
        if full:  # training iteration with scan memory (2 crops + their scan view) over one plain pass of the 2 crops
            targets["scan/plain train_s per iteration <= 1.6"] = _ratio(scan["train_s_per_crop"], full["train_s"])
            out["scan per crop / full"] = {
                "train_s": _ratio(scan["train_s_per_crop"], full["train_s"]),
                "infer_s": _ratio(scan["infer_s_per_crop"], full["infer_s"]),
                "gflops_fwd": _ratio(scan["gflops_fwd_per_crop"], full["gflops_fwd"]),
                "train_peak_mb (B=2 vs B=1)": _ratio(scan["train_peak_mb"], full["train_peak_mb"]),
            }
    out["targets"] = targets
    waits = [r[k] for r in by.values() for k in ("train_runq_wait", "infer_runq_wait") if r.get(k) is not None]
    if waits and max(waits) > 0.05:
        out["warning"] = (
            f"the timed threads waited for a CPU up to {max(waits):.0%} of their time (runq_wait columns): other "
            "load shared the cores, so times are unreliable. Rerun on a quiet machine."
        )
    return out


GOALS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t}


def verdict(name: str, value) -> str:
    """``met``, ``MISSED`` or ``n/a`` for a target named ``"<ratio> <op> <bound>"``."""
    op, bound = name.split()[-2:]
    return "n/a" if value is None else ("met" if GOALS[op](value, float(bound)) else "MISSED")


def _target_verdict(summary: dict, name: str, value) -> str:
    """:func:`verdict`, but the paired time target is judged by its interval (``"paired full/none"``)."""
    pr = summary.get("paired full/none")
    if name == PAIRED_KEY and pr:
        return f"[{pr['low']}, {pr['high']}] over {pr['rounds']} rounds ({pr['coverage']:.0%}): {pr['verdict']}"
    return verdict(name, value)


def _print_summary(summary: dict, rows: list[dict]) -> None:
    dev = next((r for r in rows if r["device_name"]), rows[0])
    print(f"\nSummary on {dev['device_name']} ({dev['device']}, {dev['threads']} threads), crop {dev['roi']}")
    print("  GFLOPs = FLOPs / 1e9 as torch's FlopCounterMode counts them (2 per multiply-add: GMACs = GFLOPs / 2);")
    print("  times are medians in seconds; peak = training-step memory in MiB (" + str(dev["mem_method"]) + ")")
    for r in rows:
        print(
            f"  {r['config']:<22} B={r['batch']}  params {r['params_m']} M  fwd {r['gflops_fwd']} GFLOPs "
            f"({r['gmacs_fwd']} GMACs)  train {r['train_s']} s  infer {r['infer_s']} s  "
            f"peak {r['train_peak_mb']} MiB  [{r['status']}]"
        )
    for name, value in summary.items():
        if isinstance(value, dict) and name != "targets":
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
    for name, value in summary["targets"].items():
        print(f"  target {name}: {value} -> {_target_verdict(summary, name, value)}")
    if "warning" in summary:
        print("  WARNING: " + summary["warning"])


def _cell(value) -> str:
    return "-" if value is None else str(value)


def sweep_markdown(rows: list[dict], summaries: dict[str, dict], preset: str, command: str) -> str:
    """The run as markdown: the targets per crop (memory's cost against ``none``, the peers against ``full``), then
    every configuration."""
    dev = next((r for r in rows if r["device_name"]), rows[0])
    lines = [
        f"# bench_network: {dev['device_name']} ({dev['device']}, {dev['threads']} threads)",
        "",
        f"torch {dev['torch']}, MONAI {dev['monai']}; memory: {dev['mem_method']}; command: `{command}`",
        "",
        "| crop | none train s | full train s | full/none time (<= 1.05) | paired none, full s (medians) | paired "
        "full/none time (<= 1.05): median per-round ratio [95 % interval] | none peak MiB | full peak MiB "
        "| full/none memory (<= 1.04) | SwinUNETR train s, peak MiB | DynUNet train s, peak MiB "
        "| SwinUNETR/full time | DynUNet/full time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for roi, summary in summaries.items():
        at = {r["model"] if r["model"] != "fine" else r["config"]: r for r in rows if r["roi"] == roi}
        none, full = at.get(f"fine_{preset}:none", {}), at.get(f"fine_{preset}:full", {})
        swin, dyn = at.get("swinunetr", {}), at.get("dynunet", {})
        t = summary["targets"]
        time_key, mem_key = "full/none train_s <= 1.05", "full/none train_peak_mb <= 1.04"
        pair_key, pair = PAIRED_KEY, summary.get("paired train_s", {})
        lines.append(
            f"| {roi} | {_cell(none.get('train_s'))} | {_cell(full.get('train_s'))} "
            f"| {_cell(t.get(time_key))} {verdict(time_key, t.get(time_key))} "
            f"| {_cell(pair.get('none'))}, {_cell(pair.get('full'))} "
            f"| {_cell(t.get(pair_key))} {_target_verdict(summary, pair_key, t.get(pair_key))} "
            f"| {_cell(none.get('train_peak_mb'))} | {_cell(full.get('train_peak_mb'))} "
            f"| {_cell(t.get(mem_key))} {verdict(mem_key, t.get(mem_key))} "
            f"| {_cell(swin.get('train_s'))}, {_cell(swin.get('train_peak_mb'))} "
            f"| {_cell(dyn.get('train_s'))}, {_cell(dyn.get('train_peak_mb'))} "
            f"| {_cell(summary.get('swinunetr/full', {}).get('train_s'))} "
            f"| {_cell(summary.get('dynunet/full', {}).get('train_s'))} |"
        )
    lines += [
        "",
        "| config | crop | batch | params M | fwd GFLOPs | train-step GFLOPs | train s (min-max) | train peak MiB "
        "| infer s | infer peak MiB | runq wait | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['roi']} | {r['batch']} | {_cell(r['params_m'])} | {_cell(r['gflops_fwd'])} "
            f"| {_cell(r['gflops_train_step'])} | {_cell(r['train_s'])} ({_cell(r['train_s_min'])}-"
            f"{_cell(r['train_s_max'])}) | {_cell(r['train_peak_mb'])} | {_cell(r['infer_s'])} "
            f"| {_cell(r['infer_peak_mb'])} | {_cell(r['train_runq_wait'])} | {r['status']} |"
        )
    warnings = [f"{roi}: {s['warning']}" for roi, s in summaries.items() if "warning" in s]
    return "\n".join(lines + [""] + [f"WARNING {w}" for w in warnings]) + "\n"


def _parse_roi(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a crop is XxYxZ with positive integers, e.g. 96x96x64, got {text!r}")
    return tuple(int(p) for p in parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=FINE_MODES, default=list(FINE_MODES),
                        help="FINE memory modes; 'scan' is memory='full' with scan_memory=True on 2 crops of one scan")
    parser.add_argument("--roi", nargs=3, type=int, default=(128, 128, 64), metavar=("X", "Y", "Z"),
                        help="crop size (SwinUNETR needs multiples of 32)")
    parser.add_argument("--rois", nargs="+", type=_parse_roi, default=None, metavar="XxYxZ",
                        help="several crops side by side in one run (replaces --roi)")
    parser.add_argument("--sweep", action="store_true",
                        help="--rois " + " ".join(_roi_str(r) for r in SWEEP_ROIS) + " (the crop-size sweep)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check of the script: tiny preset, 2 small crops, none/full, small peers, 1 step")
    parser.add_argument("--preset", choices=("bcv", "tiny"), default="bcv", help="fine_bcv or fine_tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (>= 1; the first counts FLOPs)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps; the median is reported")
    parser.add_argument("--repeats", type=int, default=1, help="passes over all configurations, alternating order")
    parser.add_argument("--paired", type=int, default=0, metavar="N",
                        help="also time N interleaved training steps of every FINE mode in one process per crop "
                        "(the targets then list the paired time ratio, the median of the per-round ratios with its "
                        "95 %% interval, beside the separate-process one)")
    parser.add_argument("--flops-only", action="store_true",
                        help="only parameters, forward FLOPs and one inference forward (no training step)")
    parser.add_argument("--tf32", action="store_true", help="CUDA: TF32 in matmuls and convolutions (default: neither)")
    parser.add_argument("--skip-swinunetr", action="store_true", help="leave out the SwinUNETR anchor")
    parser.add_argument("--skip-dynunet", action="store_true", help="leave out DynUNet (nnU-Net's plan)")
    parser.add_argument("--swin-feature-size", type=int, default=48, help="SwinUNETR feature_size (default 48)")
    parser.add_argument("--dynunet-filters", nargs=2, type=int, default=None, metavar=("BASE", "MAX"),
                        help="DynUNet filters min(BASE * 2**stage, MAX) (default nnU-Net's 32, 320)")
    parser.add_argument("--csv", type=Path, default=None,
                        help="default benchmarks/results/bench_network_<device>.csv (_tiny_ for --preset tiny, "
                        "_sweep_ for several crops); the markdown goes beside it (.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration as JSON
    args = parser.parse_args(argv)  # fmt: skip

    if args.worker:
        sys.path.insert(0, str(REPO_ROOT))  # monai_fine without an install
        cfg = json.loads(args.worker)
        try:
            res = {**(run_paired(cfg) if cfg.get("paired") else run_worker(cfg)), "status": "ok"}
        except Exception as e:  # report (out-of-memory included) and let the driver go on
            res = {"status": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        print("WORKER_RESULT " + json.dumps(res), flush=True)
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
    runs: dict[str, list[dict]] = {c["key"]: [] for c in configs}
    for rep in range(args.repeats):
        for cfg in configs if rep % 2 == 0 else configs[::-1]:
            if cfg.get("skip"):
                continue
            print(f"# {cfg['key']} (repeat {rep + 1}/{args.repeats}) ...", file=sys.stderr, flush=True)
            res = _spawn(cfg)
            runs[cfg["key"]].append(res)
            run = {"config": cfg["config"], "roi": cfg["roi"], "repeat": rep, **res}
            print("BENCH_RUN " + json.dumps(run), flush=True)

    rows = [_aggregate(c, runs[c["key"]], args.repeats) for c in configs]
    paired: dict[str, dict] = {}
    fine_modes = [m for m in args.modes if m != "scan"]
    if args.paired and len(fine_modes) > 1:
        for roi in rois:
            cfg = {**configs[0], "paired": True, "pairs": args.paired, "modes": fine_modes, "roi": list(roi),
                   "preset": args.preset}  # fmt: skip
            print(f"# paired {'/'.join(fine_modes)}@{_roi_str(roi)} ({args.paired} rounds) ...", file=sys.stderr, flush=True)
            res = _spawn(cfg)
            print("BENCH_PAIRED " + json.dumps({"roi": list(roi), **res}), flush=True)
            if res.get("status") == "ok":
                paired[_roi_str(roi)] = res["paired_times"]
    for row in rows:
        print("BENCH " + json.dumps(row), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    summaries = {}
    for roi in map(_roi_str, rois):
        at = [r for r in rows if r["roi"] == roi]
        summaries[roi] = summarize(at, args.preset, paired.get(roi))
        print("SUMMARY " + json.dumps({"roi": roi, **summaries[roi]}), flush=True)
        _print_summary(summaries[roi], at)
    command = " ".join(["python", "benchmarks/bench_network.py", *(sys.argv[1:] if argv is None else argv)])
    markdown = sweep_markdown(rows, summaries, args.preset, command)
    path.with_suffix(".md").write_text(markdown)
    print("\n" + markdown)
    print(f"\nwrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
