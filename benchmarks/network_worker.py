# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``bench_network``'s measurements inside one worker process: one configuration (:func:`run_worker`) or the
interleaved training steps of several memory modes at one crop (:func:`run_paired`).

A worker is ``python -m benchmarks.bench_network --worker JSON``, started by the driver in a fresh interpreter so that
one model's allocations cannot pollute the next one's memory peak.
"""

from __future__ import annotations

import importlib

from benchmarks.common import (
    PeakMemory,
    build_model,
    counted_flops,
    interleaved_times,
    register_cpu_sdpa_flops,
    set_tf32,
    timed_calls,
    train_step,
)

__all__ = ["run_paired", "run_worker"]

# the forward keywords of the scan-memory row that make it a two-pass forward (the scan view's write pass first)
SCAN_KWARGS = ("scan_index", "scan_view")


def _setup(cfg: dict):
    """Threads, seed, FLOP formulas and TF32 as ``cfg`` asks; returns ``(device, sync)``. MONAI and ``monai_fine``
    are imported here, before the memory baseline is taken."""
    import torch

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    for module in ("monai", "torch.utils.flop_counter", "monai_fine.config"):  # imported before the baseline
        importlib.import_module(module)
    register_cpu_sdpa_flops()
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        set_tf32(cfg["tf32"])
    return device, sync


def _describe(cfg: dict, net, mem: PeakMemory, device) -> dict:
    """Parameters (and what the memory modes add to ``none``), machine and versions of one worker's row."""
    import monai
    import torch

    from monai_fine.config import use_fused_attn

    named = dict(net.named_parameters())

    def count(*parts: str) -> int:
        return sum(p.numel() for n, p in named.items() if any(part in n for part in parts))

    cuda = device.type == "cuda"
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "params_tokens": count("window_tokens", "volume_tokens"),  # what the memory modes add to "none":
        "params_memory_norms": count("norm_global", "norm_volume"),
        "params_memory_attn": count("attn_global", "attn_volume"),  # 0 with share_memory_attention=True
        "device_name": torch.cuda.get_device_name(device) if cuda else cfg["cpu_name"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "fused_attn": use_fused_attn() if cfg["model"] == "fine" else False,
        "tf32": cfg["tf32"] if cuda else None,
        "mem_baseline_mb": round(mem.baseline, 1),
        "mem_method": mem.method,
    }


def _inference(res: dict, net, x, fwd_kwargs: dict, warmup: int, steps: int, sync, threads) -> None:
    """Eval mode, no grad: one FLOP-counted forward, ``warmup - 1`` untimed ones, ``steps`` timed ones (the
    scan-memory row: the scan view's write pass, then the crops; and the same crops in one ordinary pass)."""
    import torch

    net.eval().requires_grad_(False)
    one_pass_kwargs = {k: v for k, v in fwd_kwargs.items() if k not in SCAN_KWARGS}
    with torch.no_grad():
        res["gflops_fwd"] = counted_flops(lambda: net(x, **fwd_kwargs)) / 1e9
        for _ in range(warmup - 1):
            net(x, **fwd_kwargs)
        res["infer_times"], res["infer_waits"] = timed_calls(lambda: net(x, **fwd_kwargs), steps, sync, threads)
        if "scan_index" in fwd_kwargs:  # the same crops in one ordinary pass
            res["gflops_fwd_one_pass"] = counted_flops(lambda: net(x, **one_pass_kwargs)) / 1e9
            res["infer_one_pass_times"] = timed_calls(lambda: net(x, **one_pass_kwargs), steps, sync, threads)[0]


def run_worker(cfg: dict) -> dict:
    """Measure one configuration in this process (called in a fresh subprocess by the driver)."""
    import torch

    device, sync = _setup(cfg)
    mem = PeakMemory(device)  # baseline before the model exists
    net, loss_fn, fwd_kwargs, to_loss = build_model(cfg)
    net = net.to(device)
    fwd_kwargs = {k: v.to(device) for k, v in fwd_kwargs.items()}
    B = cfg["batch"]
    x = torch.randn(B, 1, *cfg["roi"], device=device)
    label = torch.randint(0, 14, (B, 1, *cfg["roi"]), device=device).float()
    warmup, steps = max(1, cfg["warmup"]), cfg["steps"]
    res = _describe(cfg, net, mem, device)
    cpu_threads = None if device.type == "cuda" else res["threads"]  # CPU runs also measure waits for a core

    mem.start()
    _inference(res, net, x, fwd_kwargs, warmup, steps, sync, cpu_threads)
    res["infer_peak_mb"] = mem.stop()
    if cfg["flops_only"]:
        return res

    # training step: forward, DiceCE (deep supervision for FINE), backward, SGD step
    net.train().requires_grad_(True)
    step = train_step(net, loss_fn, fwd_kwargs, x, label, to_loss)
    mem.start()
    res["gflops_train_step"] = counted_flops(step) / 1e9
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
    times = interleaved_times(steps, cfg["pairs"], "reverse", sync)
    return {"paired_times": times, "threads": torch.get_num_threads()}
