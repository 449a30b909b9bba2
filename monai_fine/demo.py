# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The CPU demo (``python -m monai_fine demo``): phantom -> training through the bundle -> evaluation on held-out
cases -> inference, with a per-organ table, ``metrics.csv``, ``overlay.png`` and ``training.png``."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_fine.bools import as_bool
from monai_fine.bundle_tools import keep_largest_component_enabled, run_bundle
from monai_fine.data.phantom import PHANTOM, phantom
from monai_fine.inferers import check_sw_batch_size
from monai_fine.reports import case_name, format_organ_table, nanmean, organ_table, overlay_png, training_png

__all__ = ["demo", "demo_overrides"]


def demo(
    out: str = "fine_demo",
    num_cases: int = 24,
    seed: int = 0,
    max_epochs: int = 50,
    epoch_length: int = 100,
    preset: str = "tiny",
    memory: str = "full",
    scan_memory: bool = False,
    num_samples: int = 2,
    optimizer_name: str = "adamw",
    learning_rate: float = 0.001,
    num_workers: int | None = None,
    device: str | None = None,
    shape: tuple[int, int, int] = PHANTOM.shape,
    roi_size: tuple[int, int, int] = PHANTOM.roi_size,
    crop_sampler: str = "classes",
    val_interval: int | None = 10,
    keep_largest_component: bool = True,
    sw_batch_size: int = 8,
) -> str:
    """Phantom -> training through the bundle -> evaluation on held-out cases -> inference; prints a table.

    Writes into ``out``: ``data/`` (the phantom in BTCV layout), ``models/`` (checkpoints), ``eval/`` (MetricsSaver
    CSVs and the held-out predictions), ``predictions/`` (segmentations of ``data/imagesTs``), ``metrics.csv``
    (per-organ Dice and HD95), ``overlay.png`` (image, truth, prediction of one held-out case, axial and coronal,
    with an organ legend) and ``training.png`` (loss and validation Dice per epoch, read from the run's TensorBoard
    events in ``eval/tensorboard``).

    Args:
        out: output folder (created; an existing one is reused, its checkpoints resume training).
        num_cases: labelled phantom cases (20 % held out for evaluation), plus 2 unlabelled test cases.
        seed: phantom and training seed.
        max_epochs, epoch_length: training length (iterations = max_epochs x epoch_length).
        preset, memory, scan_memory, num_samples: bundle tunables.
        optimizer_name, learning_rate: the demo trains with AdamW at lr 1e-3: in a CPU budget of minutes the paper's
            SGD recipe (the bundle default) did not leave the all-background solution on the phantom, and AdamW at
            2e-3 left it late on some seeds (``docs/benchmarks.md``, "The demo in 10 minutes").
        num_workers: data-loader workers; default the bundle's (``monai_fine.engines.default_num_workers``: none on a
            CPU of fewer than 8 cores, where workers would take the training threads' cores).
        device: e.g. ``"cpu"`` or ``"cuda:0"``; default CUDA if available.
        shape: phantom volume size in voxels (``monai_fine.data.PHANTOM``: 3 mm isotropic).
        roi_size: training crop / inference window (voxels of 3 mm; the phantom protocol's, ``PRESETS['tiny']``'s).
        crop_sampler: ``"classes"`` (every organ equally often at a crop centre, so the small organs are learned in
            minutes) or ``"posneg"`` (the bundle default, foreground/background 2:1).
        val_interval: validate (and log the validation Dice for ``training.png``) every this many epochs, default 10
            (5 points of the 50 epochs, the last one included; each validation segments the held-out cases, so a
            denser curve costs that time); ``None``: once, at the end. ``model.pt`` is the best validated epoch.
        keep_largest_component: the held-out evaluation and the test segmentations keep each organ's largest
            connected component (the bundle tunable of ``evaluate.json`` and ``inference.json``, off there by
            default; needs scikit-image, the ``postprocessing`` extra); false: the network's label map as it is.
        sw_batch_size: windows per sliding-window batch in the validation, evaluation and inference (the bundle's
            default, 2, is sized for ``bcv``'s 128x128x64 windows; the demo's 32x32x16 windows go 8 at a time).

    Raises:
        ValueError: ``sw_batch_size`` is not a positive integer (before anything is written).
    """
    scan_memory = as_bool(scan_memory, "scan_memory")  # `--scan_memory false` arrives as the string 'false'
    check_sw_batch_size(sw_batch_size)  # before the phantom is written (the bundle's inferer checks it again)
    # before the training: a missing scikit-image would otherwise stop the demo at its evaluation
    post = {"keep_largest_component": keep_largest_component_enabled(keep_largest_component)}
    t0 = time.time()
    out_dir = Path(out).resolve()
    data_dir = _demo_data(out_dir, num_cases=num_cases, seed=seed, shape=shape)
    common = demo_overrides(
        out_dir,
        data_dir,
        preset=preset,
        memory=memory,
        scan_memory=scan_memory,
        num_workers=num_workers,
        seed=seed,
        roi_size=roi_size,
        device=device,
        sw_batch_size=sw_batch_size,
    )
    print(f"[demo] training {preset} FINE (memory={memory}, scan_memory={scan_memory}) on {data_dir}", flush=True)
    val_interval = max_epochs if val_interval is None else min(int(val_interval), max_epochs)  # at least one validation
    run_bundle(
        ["train.json"],
        "train",
        max_epochs=max_epochs,
        epoch_length=epoch_length,
        val_interval=val_interval,
        num_samples=num_samples,
        crop_sampler=crop_sampler,
        optimizer_name=optimizer_name,
        learning_rate=learning_rate,
        **common,
    )
    t_train = time.time() - t0
    print("[demo] evaluating the held-out cases", flush=True)
    run_bundle(["train.json", "evaluate.json"], "eval", save_predictions=True, **post, **common)
    print("[demo] segmenting data/imagesTs", flush=True)
    run_bundle(["inference.json"], "infer", output_dir=str(out_dir / "predictions"), **post, **common)
    return _demo_report(out_dir, data_dir, t_train=t_train, t_total=time.time() - t0, epoch_length=epoch_length, **post)


def _demo_data(out_dir: Path, num_cases: int, seed: int, shape: Sequence[int]) -> Path:
    """The demo's phantom in BTCV layout (written once, reused when ``out_dir`` already holds it)."""
    data_dir = out_dir / "data"
    if not (data_dir / "dataset_0.json").is_file():
        phantom(str(data_dir), num_cases=num_cases, seed=seed, num_test=2, shape=tuple(shape), spacing=PHANTOM.spacing)
    return data_dir


def demo_overrides(out_dir: Path, data_dir: Path, roi_size: Sequence[int], device: str | None, **tunables: Any) -> dict:
    """Bundle overrides shared by the demo's training, evaluation and inference (phantom spacing 3 mm)."""
    common: dict[str, Any] = {
        "bundle_root": str(out_dir),
        "dataset_dir": str(data_dir),
        "pixdim": list(PHANTOM.spacing),
    }
    common.update({k: v for k, v in tunables.items() if v is not None})  # None: the bundle's default
    common["roi_size"] = [int(r) for r in roi_size]
    if device is not None:
        common["device"] = f"$torch.device('{device}')"
    return common


def _demo_report(
    out_dir: Path, data_dir: Path, t_train: float, t_total: float, epoch_length: int, keep_largest_component: bool
) -> str:
    """Write ``metrics.csv``, ``overlay.png`` and ``training.png``, print the per-organ table; returns the summary."""
    rows = organ_table(out_dir / "eval")
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    case = json.loads((data_dir / "dataset_0.json").read_text())["validation"][0]
    overlay_png(
        data_dir / case["image"],
        data_dir / case["label"],
        out_dir / "eval" / "predictions" / f"{case_name(case['image'])}_seg.nii.gz",
        out_dir / "overlay.png",
    )
    training_png(out_dir / "eval" / "tensorboard", out_dir / "training.png", epoch_length=epoch_length)
    print(
        f"\n[demo] held-out phantom cases: {rows[0]['cases']}; training {t_train / 60:.1f} min, "
        f"total {t_total / 60:.1f} min; "
        + ("largest connected component of each organ kept" if keep_largest_component else "no post-processing")
    )
    print(format_organ_table(rows, organ_table(out_dir / "eval", protocol="synapse8")))
    print(
        f"[demo] wrote {out_dir / 'metrics.csv'}, {out_dir / 'overlay.png'}, {out_dir / 'training.png'}, "
        f"{out_dir / 'predictions'}"
    )
    mean_dice, mean_hd = nanmean([r["dice"] for r in rows]), nanmean([r["hd95_mm"] for r in rows])
    return f"mean Dice {mean_dice:.3f}, mean HD95 {mean_hd:.1f} mm"
