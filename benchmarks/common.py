# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""What several benchmarks share: the models and their inputs, the training step, timed calls, peak memory, the
machine's description, the paired statistics, FLOP counting and the output helpers.

Heavy modules (torch, MONAI, ``monai_fine``) are imported inside the functions, so that a driver that only spawns
workers and writes tables (``bench_network``) stays light and ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "REPO_ROOT",
    "RESULTS_DIR",
    "ROI_BOX",
    "ROI_BOX_2",
    "SWEEP_ROIS",
    "PeakMemory",
    "alternating_runs",
    "build_model",
    "counted_flops",
    "matmul_peak_gflops",
    "cpu_name",
    "device_name",
    "fine_model",
    "fine_network",
    "interleaved_times",
    "interval_verdict",
    "markdown_table",
    "median_interval",
    "paired_ratio",
    "parse_roi",
    "platform_cpu",
    "proc_status_kib",
    "register_cpu_sdpa_flops",
    "roi_str",
    "run_delay",
    "set_tf32",
    "stage_inputs",
    "timed_calls",
    "train_step",
    "write_csv",
]  # fmt: skip

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# the crop's place in its scan, as (2, 3) [start, stop) fractions: 3x3 of the 4x4x1 memory cells
ROI_BOX = ((0.1, 0.1, 0.25), (0.6, 0.6, 0.75))
ROI_BOX_2 = ((0.4, 0.4, 0.25), (0.9, 0.9, 0.75))  # the scan-memory row's second crop of the same scan
# the crop-size sweep: every crop divisible by fine_bcv's stride (32, 32, 16) and by SwinUNETR's 32
# (96x96x48 would suit FINE but not SwinUNETR, so the middle crop is 96x96x64)
SWEEP_ROIS = ((64, 64, 32), (96, 96, 64), (128, 128, 64))


# ------------------------------------------------------------------------------------------------------------ output
def parse_roi(text: str) -> tuple[int, int, int]:
    """``"96x96x64"`` -> ``(96, 96, 64)`` (an ``argparse`` type)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a crop is XxYxZ with positive integers, e.g. 96x96x64, got {text!r}")
    return tuple(int(p) for p in parts)


def roi_str(roi) -> str:
    """``(96, 96, 64)`` -> ``"96x96x64"``."""
    return "x".join(map(str, roi))


def markdown_table(header: list[str], cells: list[list[str]]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(c) + " |" for c in cells]


def write_csv(path: Path, fields: Iterable[str], rows: Iterable[dict], extrasaction: str = "raise") -> None:
    """``rows`` as a CSV with the header ``fields`` (the parent folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction=extrasaction)
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------------------- machine
def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else :func:`platform_cpu`."""
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform_cpu()


def platform_cpu() -> str:
    """What Python's ``platform`` says of the CPU (often only the architecture on Linux)."""
    return platform.processor() or platform.machine()


def device_name(device, cpu: Callable[[], str] = cpu_name) -> str:
    """The CUDA device's name, or ``cpu()`` for the CPU."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu()


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


# ------------------------------------------------------------------------------------------------------------ models
def fine_network(preset: str, memory, roi, **overrides):
    """``create_fine(preset, 1, 14, memory=..., roi_size=roi, **overrides)`` in the steady state of training: every
    memory cell visited, so V-MSA attends to all volume tokens. ``memory`` is a name of ``MEMORY_CONFIGS`` (or a
    mode, or a ``MemoryMode``: an ablation arm)."""
    from monai_fine.networks import create_fine

    net = create_fine(preset, 1, 14, memory=memory, roi_size=tuple(roi), **overrides)
    net.memory_visits.fill_(1)
    return net


def build_model(cfg: dict):
    """The model, its loss, its forward keyword arguments and the transform of its training output for the loss, for
    ``cfg`` with ``model`` (``fine``, ``swinunetr`` or ``dynunet``), ``roi``, ``batch`` and, for FINE, ``preset``,
    ``memory`` (a configuration of ``MEMORY_CONFIGS`` or a ``MemoryMode``; with scan memory all crops come from one
    scan) and optionally ``stage_memory`` and ``network_kwargs`` (more FINE keywords)."""
    import torch
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    from monai_fine.networks import memory_mode
    from monai_fine.networks.peers import ds_loss_weights, ds_outputs, nnunet_dynunet, swinunetr

    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    if cfg["model"] == "swinunetr":
        return swinunetr(feature_size=cfg.get("swin_feature_size", 48)), loss, {}, None
    if cfg["model"] == "dynunet":
        base, cap = cfg.get("dynunet_filters") or (32, 320)
        net, plan = nnunet_dynunet(cfg["roi"], base_features=base, max_features=cap)
        return net, DeepSupervisionLoss(loss, weights=ds_loss_weights(plan["deep_supr_num"])), {}, ds_outputs
    mode = memory_mode(cfg["memory"])
    extra = {"stage_memory": cfg["stage_memory"]} if cfg.get("stage_memory") else {}
    extra.update(cfg.get("network_kwargs") or {})
    net = fine_network(cfg["preset"], mode, cfg["roi"], deep_supervision=True, **extra)
    boxes = [(ROI_BOX, ROI_BOX_2)[i % 2] for i in range(cfg["batch"])]
    kwargs = {"roi_box": torch.tensor(boxes, dtype=torch.float32)}
    if mode.scan_memory:  # both crops from one scan: its scan view (the whole scan at the crop size) writes the memory
        kwargs["scan_index"] = torch.zeros(cfg["batch"], dtype=torch.long)
        kwargs["scan_view"] = torch.randn(1, 1, *cfg["roi"])
    return net, DeepSupervisionLoss(loss), kwargs, None


def fine_model(preset: str, memory, roi: tuple[int, int, int], **extra):
    """:func:`build_model` for one FINE crop of batch 1: network, loss, forward keyword arguments."""
    cfg = {"model": "fine", "preset": preset, "memory": memory, "batch": 1, "roi": roi, **extra}
    net, loss_fn, kwargs, _ = build_model(cfg)
    return net, loss_fn, kwargs


def stage_inputs(net, x, fwd_kwargs: dict) -> dict[str, tuple[int, ...]]:
    """``{stage name: (B, X, Y, Z, C)}``: the visual tokens each FINE stage receives in one forward of ``net``."""
    import torch

    from monai_fine.networks.blocks.transformer import FineStage

    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:  # returns None: the output stays as it is
            shapes[name] = tuple(int(s) for s in args[0].shape)

        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in net.named_modules() if isinstance(m, FineStage)]
    try:
        with torch.no_grad():
            net(x, **fwd_kwargs)
    finally:
        for h in hooks:
            h.remove()
    return shapes


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


# ------------------------------------------------------------------------------------------------------------ timing
def run_delay() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux schedstat), or None."""
    total = 0
    for path in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(path.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if Path("/proc/self/task").is_dir() else None


def _no_sync() -> None:
    return None


def timed_calls(fn, n: int, sync=_no_sync, threads: int | None = None) -> tuple[list[float], list[float]]:
    """Wall-clock seconds (``time.perf_counter``, ``sync()`` before and after) of ``n`` calls of ``fn`` and, given
    ``threads`` (CPU runs), for each the fraction of ``threads`` x wall time that this process's threads waited for
    a CPU (0 on a quiet machine)."""
    wall, wait = [], []
    for _ in range(n):
        sync()
        t0, d0 = time.perf_counter(), run_delay() if threads else None
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        d1 = run_delay() if threads else None
        if d0 is not None and d1 is not None:
            wait.append((d1 - d0) / (wall[-1] * threads))
    return wall, wait


def interleaved_times(calls: dict[str, Callable[[], None]], rounds: int, order: str, sync=_no_sync) -> dict:
    """Seconds of ``rounds`` rounds of one call of each of ``calls`` (name -> callable) in one process, so that a
    drift of the machine's speed hits them alike: ``order="reverse"`` reverses the order every round (ABBA),
    ``"rotate"`` starts each round one further. Returns name -> list of seconds."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        if order == "reverse":
            now = names if i % 2 == 0 else names[::-1]
        else:
            k = i % len(names)
            now = names[k:] + names[:k]
        for name in now:
            times[name] += timed_calls(calls[name], 1, sync)[0]
    return times


# ------------------------------------------------------------------------------------------------------------ memory
def proc_status_kib(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in KiB.

    Raises:
        OSError: no ``/proc`` (not Linux). ValueError: the field is missing.
    """
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{key} not in /proc/self/status")
    return int(match.group(1))


class PeakMemory:
    """Peak memory of a phase in MiB, measured from ``start()`` to ``stop()``.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, the model included), reset per phase, minus what was
    allocated when the meter was made (``cuda_baseline=False``: nothing subtracted). CPU: the kernel's resident-set
    high-water mark ``VmHWM`` of this process, reset per phase by writing ``5`` to ``/proc/self/clear_refs``
    (Linux >= 4.0), minus the RSS measured when the meter was made; where that reset is not allowed, RSS sampled
    every 2 ms with psutil, minus the same baseline. A CPU phase whose peak stays below that baseline (pages the
    allocator gave back between the meter's making and ``start()``) reads 0: it grew nothing.
    """

    def __init__(self, device, cuda_baseline: bool = True) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.method = "cuda_max_memory_allocated" if self.cuda else self._cpu_method()
        self.baseline = self._current() if cuda_baseline or not self.cuda else 0.0
        self._peak = 0.0
        self._sampler: threading.Thread | None = None
        self._running = False

    @staticmethod
    def _cpu_method() -> str:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            proc_status_kib("VmHWM")
            return "rss_vmhwm_minus_baseline"
        except (OSError, ValueError):
            return "rss_psutil_2ms_minus_baseline"

    def _current(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.memory_allocated(self.device) / 2**20
        if self.method.startswith("rss_vmhwm"):
            return proc_status_kib("VmRSS") / 1024
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
            peak = proc_status_kib("VmHWM") / 1024
        else:
            self._running = False
            self._sampler.join()
            peak = max(self._peak, self._current())
        if not self.cuda:
            return round(max(peak - self.baseline, 0.0), 1)
        return round(peak - self.baseline, 1)


# -------------------------------------------------------------------------------------------------------- statistics
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


def alternating_runs(run: Callable[[str], float], names: tuple[str, str], pairs: int) -> dict[str, list[float]]:
    """``pairs`` pairs of ``run(name)`` calls (one fresh measurement each, e.g. a subprocess), the order of each pair
    alternating (``a b``, ``b a``, ...) so that a drift of the machine's speed hits both names alike; returns each
    name's values, pair by pair (the per-pair ratios are then ``values[a][i] / values[b][i]``)."""
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(pairs):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(run(name))
    return out


def interval_verdict(low: float, high: float, bound: float) -> str:
    """``met`` when the whole interval is within ``<= bound``, ``MISSED`` when all of it is above, else
    ``undecided`` (the rounds cannot tell)."""
    return "met" if high <= bound else ("MISSED" if low > bound else "undecided")


# ------------------------------------------------------------------------------------------------------------- FLOPs
def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of ``n x n @ n x n`` on this machine's CPU threads: the peak the achieved FLOP/s are
    compared with."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def register_cpu_sdpa_flops() -> None:
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


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as torch's ``FlopCounterMode`` counts them (2 per multiply-add; matmuls,
    convolutions and attention only)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
