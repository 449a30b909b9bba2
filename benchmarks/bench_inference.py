# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Whole-scan inference cost on the host: seconds, peak RSS, windows, FLOPs and the fraction of the fp32 matmul peak.

Every run is a fresh subprocess that runs the bundle's own inference pipeline (``bundle/configs/inference.json``:
LoadImaged -> Orientationd -> Spacingd -> ScaleIntensityRanged -> FINE sliding window -> argmax -> Invertd ->
SaveImaged) on a real NIfTI CT-like scan written to a temporary folder, with a randomly initialised ``model.pt``
(``model_scan.pt`` with
scan memory) of the
chosen preset (timing and memory do not depend on the weights). Reported per (scan size, one pass / ``two``: with
``scan_memory``, the scan view's write pass, then the windows reading it):

- ``seconds``: wall time of ``evaluator.run()`` (load, preprocess, windows, post-process, save);
- ``peak_rss_gib``: the subprocess's resident-set high-water mark (``VmHWM``; not ``ru_maxrss``, which on Linux
  inherits the parent's high-water mark), the whole process included;
- ``windows``: network calls x batch, counted by a forward hook (with scan memory the scan view counts as one);
- ``gflops``: forward FLOPs of one window (``torch.utils.flop_counter.FlopCounterMode``) x windows;
- ``peak_fraction``: achieved GFLOP/s over the fp32 matmul peak measured in the same run (best of 2048^3 matmuls).

    python -m benchmarks.bench_inference --preset tiny               # 3 sizes up to 512x512x200 at 0.76x0.76x3 mm
    python -m benchmarks.bench_inference --preset bcv --overlap 0.5 --out benchmarks/results
    python -m benchmarks.bench_inference --quick                     # a seconds-long smoke run

Writes ``bench_inference_<preset>.csv`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, counted_flops, matmul_peak_gflops, platform_cpu, proc_status_kib, write_csv

__all__ = ["FIELDS", "main", "overrides", "parse_sizes", "peak_rss_bytes", "write_scan"]

CONFIGS = REPO_ROOT / "bundle" / "configs"
DEFAULT_SIZES = "128x128x50,256x256x100,512x512x200"
FIELDS = (
    "preset", "size", "spacing", "pass", "overlap", "roi", "seconds", "peak_rss_gib", "windows", "gflops_window",
    "gflops", "gflops_per_s", "matmul_peak_gflops_per_s", "peak_fraction", "threads", "torch", "machine", "status",
)  # fmt: skip


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """``"128x128x50,512x512x200"`` -> ``[(128, 128, 50), (512, 512, 200)]``."""
    sizes = []
    for part in text.split(","):
        dims = tuple(int(d) for d in part.lower().split("x"))
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"--sizes: expected XxYxZ, got {part!r}")
        sizes.append(dims)
    return sizes


def write_scan(path: Path, size: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0) -> None:
    """An int16 CT-like volume: an ellipsoidal 'body' of soft tissue with noise in air, LPS-style affine."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, s) for s in size)]
    r2 = sum(((g - s / 2) / (s / 2.4)) ** 2 for g, s in zip(grids, size))
    data = np.where(r2 < 1, 40, -1000).astype(np.int16)
    data += rng.integers(-30, 30, size=size, dtype=np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))


#: the window of each preset (the ``tiny`` preset's own crop is smaller: this benchmark keeps 64x64x32)
ROI = {"bcv": [128, 128, 64], "tiny": [64, 64, 32]}


def overrides(preset: str, quick: bool) -> dict:
    """The bundle overrides of the inference runs (``--quick``: the ``test`` preset, the smallest FINE)."""
    base = {"preset": preset, "num_workers": 0, "device": "$torch.device('cpu')", "sw_batch_size": 2,
            "roi_size": ROI[preset]}  # fmt: skip
    if quick:
        base.update({"preset": "test", "roi_size": [32, 32, 16]})
    return base


def child(args: argparse.Namespace) -> None:
    """One measured inference run in this (fresh) process; prints ``RESULT {json}``."""
    from monai.bundle import ConfigWorkflow

    work = Path(args.work)
    over = json.loads(args.overrides)
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(work),
        datalist=[str(work / "scan.nii.gz")],
        output_dir=str(work / "out"),
        scan_memory=args.scan_memory,
        overlap=args.overlap,
        pixdim=list(args.spacing),
        checkpoint=str(work / "models" / ("model_scan.pt" if args.scan_memory else "model.pt")),
        **over,
    )
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    roi = tuple(wf.parser.get_parsed_content("roi_size"))
    windows = [0]
    network.register_forward_pre_hook(lambda m, a: windows.__setitem__(0, windows[0] + int(a[0].shape[0])))
    if hasattr(network, "write_scan_memory"):  # the scan view's pass is not a forward call: count it too
        write = network.write_scan_memory

        def counted_write(view, *rest, **kwargs):
            windows[0] += int(view.shape[0])
            return write(view, *rest, **kwargs)

        network.write_scan_memory = counted_write
    t0 = time.perf_counter()
    wf.run()
    seconds = time.perf_counter() - t0
    wf.finalize()
    peak = peak_rss_bytes()
    print(
        "RESULT "
        + json.dumps({"seconds": seconds, "peak_rss": peak, "windows": windows[0], "roi": "x".join(map(str, roi))}),
        flush=True,
    )


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark: ``VmHWM`` of ``/proc/self/status`` (Linux), else ``ru_maxrss``.

    ``ru_maxrss`` is not used on Linux: the kernel carries the parent's high-water mark across ``fork``/``exec`` into
    the child's, so a child started by a parent that held 4 GiB reports at least that much.
    """
    try:
        return proc_status_kib("VmHWM") * 1024
    except (OSError, ValueError):
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def window_flops(model, roi) -> int:
    """Forward FLOPs of one window, counted in the parent process (so the children's peak RSS is the pipeline's)."""
    import torch

    model.eval()
    box = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    # (not under no_grad: there the counter's module tracker asserts)
    return counted_flops(lambda: model(torch.zeros(1, 1, *roi), roi_box=box))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "bcv"], default="tiny")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated XxYxZ (default {DEFAULT_SIZES})")
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.76, 0.76, 3.0], help="mm, also the pixdim")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument(
        "--passes", default="one,two", help="one (single pass), two (scan_memory: scan view + one pass), or both"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 40x36x24 at 4 mm, a 12-feature tiny network")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--scan_memory", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    return parser


def _save_models(work: Path, over: dict, passes: list[str]) -> int:
    """Random weights of the network (and of its scan-memory form) into ``work/models``; returns the FLOPs of one
    window."""
    import torch

    from monai_fine.networks import create_fine

    (work / "models").mkdir()
    preset, roi = over["preset"], over["roi_size"]
    model = create_fine(preset, 1, 14, roi_size=roi, deep_supervision=True)
    torch.save(model.state_dict(), work / "models" / "model.pt")
    if "two" in passes:  # a scan-memory net has its memory encoder: its own random weights
        scan_model = create_fine(preset, 1, 14, roi_size=roi, deep_supervision=True, memory="full+scan")
        torch.save(scan_model.state_dict(), work / "models" / "model_scan.pt")
        del scan_model
    return window_flops(model, roi)


def _measure(args, work: Path, over: dict, size, p: str, flops_window: int, peak_gflops: float) -> dict:
    """One inference run (scan ``size``, pass ``p``) in a fresh child process: its row."""
    import torch

    cmd = [sys.executable, "-m", "benchmarks.bench_inference", "--child", "--work", str(work), "--overlap",
           str(args.overlap), "--scan_memory", str(int(p == "two")), "--overrides", json.dumps(over),
           "--spacing", *map(str, args.spacing)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    row = {"preset": args.preset, "size": "x".join(map(str, size)), "spacing": "x".join(map(str, args.spacing)),
           "pass": p, "overlap": args.overlap, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform_cpu(), "matmul_peak_gflops_per_s": round(peak_gflops, 1)}  # fmt: skip
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not result:
        row["status"] = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        return row
    r = json.loads(result[-1][len("RESULT ") :])
    gflops = flops_window * r["windows"] / 1e9
    row.update({"roi": r["roi"], "seconds": round(r["seconds"], 2), "peak_rss_gib": round(r["peak_rss"] / 2**30, 3),
                "windows": r["windows"], "gflops_window": round(flops_window / 1e9, 3), "gflops": round(gflops, 1),
                "gflops_per_s": round(gflops / r["seconds"], 1),
                "peak_fraction": round(gflops / r["seconds"] / peak_gflops, 3), "status": "ok"})  # fmt: skip
    return row


def _write(args, rows: list[dict], peak_gflops: float) -> None:
    """``bench_inference_<preset>.csv`` and ``.md`` into ``--out``."""
    import torch

    out = Path(args.out)
    stem = out / f"bench_inference_{args.preset}{'_quick' if args.quick else ''}"
    write_csv(stem.with_suffix(".csv"), FIELDS, rows)
    cols = ["size", "pass", "seconds", "peak_rss_gib", "windows", "gflops", "gflops_per_s", "peak_fraction", "status"]
    lines = [f"Whole-scan inference, preset `{args.preset}`, spacing {args.spacing} mm, overlap {args.overlap}, "
             f"{torch.get_num_threads()} threads, fp32 matmul peak {peak_gflops:.1f} GFLOP/s (measured in this run).",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> list[dict]:
    args = _parser().parse_args(argv)
    if args.child:
        child(args)
        return []
    if args.quick:
        args.sizes, args.spacing = "40x36x24", [4.0, 4.0, 4.0]
    sizes = parse_sizes(args.sizes)
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    if not set(passes) <= {"one", "two"}:
        raise ValueError(f"--passes: expected one and/or two, got {args.passes!r}")
    peak_gflops = matmul_peak_gflops(512 if args.quick else 2048)
    over = overrides(args.preset, args.quick)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        work = Path(tmp)
        flops_window = _save_models(work, over, passes)
        for size in sizes:
            write_scan(work / "scan.nii.gz", size, tuple(args.spacing))
            for p in passes:
                rows.append(_measure(args, work, over, size, p, flops_window, peak_gflops))
                print(json.dumps(rows[-1]), flush=True)
    _write(args, rows, peak_gflops)
    return rows


if __name__ == "__main__":
    main()
