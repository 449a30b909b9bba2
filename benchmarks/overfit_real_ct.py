# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Overfit FINE on one real CT through the bundle: a pipeline check on real geometry, not an accuracy claim.

Trains on ``example_ct.nii.gz`` (122 x 101 x 112, 3 mm, TotalSegmentator silver-standard BTCV labels) and evaluates
on the same scan, so the Dice it reaches says that data loading, orientation, spacing, crop locations, training,
sliding-window inference and the inversion back onto the scan's grid fit together. The scan is one patient; never
read it as generalisation.

    python -m benchmarks.overfit_real_ct --data ../shared/data/totalseg_ct --out runs/overfit_real_ct --iterations 800
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import platform_cpu
from monai_fine.bundle_tools import run_bundle
from monai_fine.reports import organ_table


def _summary(
    argv: list[str], args, epochs: int, minutes: float, rows: list[dict], mean: float, present: int
) -> list[str]:
    """The per-organ table of ``summary.md``."""
    lines = [
        "# Overfitting one real CT (example_ct, train = evaluation scan)",
        "",
        f"Command: `python -m benchmarks.overfit_real_ct {' '.join(argv)}`",
        f"Machine: {platform_cpu()}, torch threads {torch.get_num_threads()}; "
        f"{args.iterations} iterations ({epochs} x {args.epoch_length}), training {minutes:.1f} min",
        "",
        "| label | organ | Dice | HD95 mm |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['label']} | {r['organ']} | {r['dice']:.3f} | {r['hd95_mm']:.1f} |" for r in rows]
    lines.append(f"| | mean over the {present} organs present | {mean:.3f} | |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_ct"))
    parser.add_argument("--out", default="runs/overfit_real_ct")
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--epoch_length", type=int, default=50)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--memory", default="full")
    parser.add_argument("--roi", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--pixdim", type=float, nargs=3, default=[3.0, 3.0, 3.0])
    parser.add_argument("--optimizer_name", default="adamw", choices=("sgd", "adamw"))
    parser.add_argument("--learning_rate", type=float, default=0.002)
    parser.add_argument("--crop_sampler", default="classes", choices=("posneg", "classes"))
    parser.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    data = out / "data"
    (data / "imagesTr").mkdir(parents=True, exist_ok=True)
    (data / "labelsTr").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(args.data) / "example_ct.nii.gz", data / "imagesTr" / "example_ct.nii.gz")
    shutil.copy(Path(args.data) / "example_ct_label_btcv13.nii.gz", data / "labelsTr" / "example_ct.nii.gz")
    item = {"image": "imagesTr/example_ct.nii.gz", "label": "labelsTr/example_ct.nii.gz"}
    (data / "dataset_0.json").write_text(json.dumps({"training": [item], "validation": [item], "test": []}))
    common = {
        "bundle_root": str(out),
        "dataset_dir": str(data),
        "preset": args.preset,
        "memory": args.memory,
        "roi_size": list(args.roi),
        "pixdim": list(args.pixdim),
        "num_workers": 0,
        "seed": args.seed,
        "resume": False,
    }
    epochs = max(1, args.iterations // args.epoch_length)
    t0 = time.time()
    run_bundle(
        ["train.json"],
        "train",
        max_epochs=epochs,
        epoch_length=args.epoch_length,
        val_interval=epochs,
        optimizer_name=args.optimizer_name,
        learning_rate=args.learning_rate,
        crop_sampler=args.crop_sampler,
        **common,
    )
    minutes = (time.time() - t0) / 60
    run_bundle(["train.json", "evaluate.json"], "eval", checkpoint=str(out / "models" / "model_final.pt"), **common)
    rows = organ_table(out / "eval")
    present = [r for r in rows if r["dice"] == r["dice"]]
    mean = sum(r["dice"] for r in present) / len(present)
    lines = _summary(argv, args, epochs, minutes, rows, mean, len(present))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"mean_dice": mean, "minutes": minutes, "rows": rows}


if __name__ == "__main__":
    main()
