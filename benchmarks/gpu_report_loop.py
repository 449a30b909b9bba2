# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``gpu_report``'s loop section: the bundle's training loop with the GPU recipe against the bare step
(:func:`run_loop`, through :mod:`benchmarks.bench_pipeline`, with and without ``compile``) and whole-scan inference
through ``inference.json`` (:func:`run_bundle_inference`)."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.gpu_report_output import dims

__all__ = ["loop_overrides", "run_bundle_inference", "run_loop"]


def loop_overrides(args, dev, compile_network: bool) -> dict:
    """The GPU recipe (``bundle/docs/README.md``): the volumes cached on the device, the thread loader, AMP with the
    report's dtype, ``compile`` as asked; on the CPU (``--tiny``) the same tunables (AMP then has no effect)."""
    return {
        "cache_device": str(dev.device),
        "thread_loader": True,
        "amp": dev.cuda,
        "amp_dtype": args.amp_dtype,
        "compile": compile_network,
        "progress": False,
        "tensorboard": False,
    }


def run_loop(compile_network: bool, args, dev) -> dict:
    """Bundle iterations of ``fine_bcv`` at the report's crop (``--tiny``: the ``test`` preset) against the bare step
    of the same network, loss and optimizer, interleaved in this process (``bench_pipeline.measure``)."""
    from benchmarks import bench_pipeline as bp

    base = bp.QUICK["fine_bcv"] if args.tiny else bp.SETTINGS["fine_bcv"]
    overrides = {**base["overrides"], **loop_overrides(args, dev, compile_network)}
    if not args.tiny:
        overrides["roi_size"] = list(args.roi)
    cfg = {**base, "overrides": overrides}
    work = Path(tempfile.mkdtemp(prefix="gpu_report_loop_"))
    try:
        t = time.perf_counter()
        res = bp.measure(cfg, args.loop_rounds, args.loop_warmup, str(dev.device), work)
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = bp.summarize("fine_bcv", res)
    ratio = next(r for r in rows if r["measure"] == "bundle/bare")
    bundle = statistics.median(r["total"] for r in res["rows"])
    data = statistics.median(r["data"] for r in res["rows"])
    return {
        "config": f"{'test' if args.tiny else 'fine_bcv'} {dims(overrides['roi_size'])}, compile={compile_network}",
        "compile": compile_network,
        "bundle_s": round(bundle, 4),
        "bare_s": round(statistics.median(res["bare"]), 4),
        "it_per_s": round(1.0 / bundle, 3),
        "data_ms": round(1e3 * data, 2),
        "ratio": ratio["ratio"],
        "low": ratio["low"],
        "high": ratio["high"],
        "rounds": ratio["n"],
        "wall_s": round(wall, 1),
        "status": "ok",
    }


def run_bundle_inference(args, dev) -> dict:
    """``inference.json`` through MONAI's ``ConfigWorkflow`` on one synthetic scan of ``--scan`` voxels at the bundle's
    spacing (read from NIfTI, resampled, windowed, stitched and written back as a NIfTI), with untrained weights."""
    import nibabel as nib
    import numpy as np
    import torch

    from monai_fine.bundle_tools import bundle_workflow

    root = Path(tempfile.mkdtemp(prefix="gpu_report_infer_"))
    try:
        (root / "data" / "imagesTs").mkdir(parents=True)
        rng = np.random.default_rng(0)
        image = rng.normal(0, 200, size=tuple(args.scan)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.diag([0.76, 0.76, 3.0, 1.0])), str(root / "data" / "imagesTs" / "s.nii.gz"))
        preset, roi = ("test", [32, 32, 16]) if args.tiny else ("bcv", list(args.infer_roi))
        wf = bundle_workflow(
            ["inference.json"], "infer", bundle_root=str(root), dataset_dir=str(root / "data"),
            output_dir=str(root / "out"), load_pretrain=False, preset=preset, roi_size=roi,
            device=f"$torch.device('{dev.device}')", amp=dev.cuda, amp_dtype=args.amp_dtype,
            sw_batch_size=args.sw_batch_size, sw_progress=False,
        )  # fmt: skip
        if dev.cuda:
            torch.cuda.reset_peak_memory_stats(dev.device)
        t = time.perf_counter()
        wf.run()
        dev.sync()
        seconds = time.perf_counter() - t
        outputs = sorted((root / "out").rglob("*.nii.gz"))
        if len(outputs) != 1:
            raise RuntimeError(f"inference.json wrote {len(outputs)} segmentations, expected 1")
        seg = nib.load(str(outputs[0]))
        return {
            "config": f"inference.json {preset}, scan {dims(args.scan)}",
            "seconds": round(seconds, 2),
            "peak_mb": round(torch.cuda.max_memory_allocated(dev.device) / 2**20, 1) if dev.cuda else None,
            "output": f"{seg.shape} {seg.get_data_dtype()}",
            "status": "ok" if tuple(seg.shape) == tuple(args.scan) else f"output shape {seg.shape} != {args.scan}",
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
