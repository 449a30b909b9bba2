# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``python -m monai_fine <command>``: thin wrappers over the MONAI bundle workflows and the data tools.

Commands: ``phantom``, ``datalist``, ``check``, ``train``, ``evaluate``, ``infer``, ``verify``, ``demo``. Bundle
commands take any bundle id as an override (``--max_epochs 5``, ``--preset tiny``, ``--dataset_dir DIR``).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

from monai_fine.data import check, datalist, phantom

__all__ = ["bundle_dir", "run_bundle", "train", "evaluate", "infer", "verify", "demo", "COMMANDS"]


def bundle_dir() -> Path:
    """The MONAI bundle folder: ``$MONAI_FINE_BUNDLE`` or ``bundle/`` beside the package."""
    path = Path(os.environ.get("MONAI_FINE_BUNDLE", Path(__file__).resolve().parents[1] / "bundle"))
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"MONAI bundle not found at {path} (set MONAI_FINE_BUNDLE to the bundle folder).")
    return path


def run_bundle(configs: list[str], workflow_type: str, **override: Any) -> Any:
    """Run ``configs`` (file names in ``bundle/configs``) as a MONAI ``ConfigWorkflow`` with id overrides."""
    from monai.bundle import ConfigWorkflow

    cfg = bundle_dir() / "configs"
    override.setdefault("bundle_root", str(bundle_dir()))
    workflow = ConfigWorkflow(
        config_file=[str(cfg / c) for c in configs],
        meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )
    workflow.initialize()
    out = workflow.run()
    workflow.finalize()
    return out


def train(**override: Any) -> None:
    """Train with ``bundle/configs/train.json``; e.g. ``--dataset_dir /data/btcv --preset bcv``."""
    run_bundle(["train.json"], "train", **override)


def evaluate(**override: Any) -> None:
    """Evaluate ``models/model.pt`` (per-case, per-organ Dice and HD95 in mm, CSVs in ``output_dir``)."""
    run_bundle(["train.json", "evaluate.json"], "eval", **override)


def infer(**override: Any) -> None:
    """Segment every ``dataset_dir/imagesTs/*.nii.gz`` into ``output_dir`` (input grid and affine)."""
    run_bundle(["inference.json"], "infer", **override)


def verify(**override: Any) -> str:
    """``monai.bundle verify_net_in_out`` on the inference config (network input/output against the metadata)."""
    from monai.bundle import verify_net_in_out

    cfg = bundle_dir() / "configs"
    verify_net_in_out(
        net_id="network_def", meta_file=str(cfg / "metadata.json"), config_file=str(cfg / "inference.json"), **override
    )
    return "verify_net_in_out: passed"


def _read_raw(path: Path) -> list[list[float]]:
    with open(path) as f:
        rows = list(csv.reader(f))
    return [[float(v) for v in r[1:-1]] for r in rows[1:]]


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def organ_table(eval_dir: str | Path, protocol: str = "btcv13", prefix: str = "val") -> list[dict[str, Any]]:
    """Per-organ mean Dice and HD95 (mm) over cases from the evaluation CSVs written by ``MetricsSaver``."""
    from monai_fine.metrics import BTCV_LABELS, PROTOCOLS

    eval_dir = Path(eval_dir)
    # metric names of bundle/configs/evaluate.json
    dice_name, hd95_name = {"btcv13": ("mean_dice", "hd95"), "synapse8": ("synapse8_dice", "synapse8_hd95")}[protocol]
    dice = _read_raw(eval_dir / f"{prefix}_{dice_name}_raw.csv")
    hd95 = _read_raw(eval_dir / f"{prefix}_{hd95_name}_raw.csv")
    rows = []
    for j, label in enumerate(PROTOCOLS[protocol]):
        rows.append(
            {
                "label": label,
                "organ": BTCV_LABELS[label],
                "dice": _nanmean([r[j] for r in dice]),
                "hd95_mm": _nanmean([r[j] for r in hd95]),
                "cases": len(dice),
            }
        )
    return rows


def _overlay_png(image: Path, truth: Path, pred: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np

    img, lab, seg = (np.asarray(nib.load(str(p)).dataobj) for p in (image, truth, pred))
    z = int(np.argmax((lab > 0).sum(axis=(0, 1))))
    cmap = plt.get_cmap("tab20", 14)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (title, mask) in zip(axes, [("image", None), ("ground truth", lab), ("prediction", seg)]):
        ax.imshow(np.clip(img[:, :, z].T, -175, 250), cmap="gray", origin="lower")
        if mask is not None:
            m = np.ma.masked_equal(mask[:, :, z].T, 0)
            ax.imshow(m, cmap=cmap, vmin=0, vmax=13, alpha=0.55, origin="lower", interpolation="nearest")
        ax.invert_xaxis()  # radiological view: the patient's right on the viewer's left
        ax.set_title(f"{title} (axial slice {z})")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def demo(
    out: str = "fine_demo",
    num_cases: int = 24,
    seed: int = 0,
    max_epochs: int = 45,
    epoch_length: int = 100,
    preset: str = "tiny",
    memory: str = "full",
    scan_memory: bool = False,
    num_samples: int = 2,
    optimizer_name: str = "adamw",
    learning_rate: float = 0.002,
    num_workers: int = 2,
    device: str | None = None,
    shape: tuple[int, int, int] = (96, 96, 64),
    roi_size: tuple[int, int, int] = (32, 32, 16),
    crop_sampler: str = "classes",
) -> str:
    """Phantom -> training through the bundle -> evaluation on held-out cases -> inference; prints a table.

    Writes into ``out``: ``data/`` (the phantom in BTCV layout), ``models/`` (checkpoints), ``eval/`` (MetricsSaver
    CSVs and the held-out predictions), ``predictions/`` (segmentations of ``data/imagesTs``), ``metrics.csv``
    (per-organ Dice and HD95) and ``overlay.png`` (image, truth, prediction of one held-out case).

    Args:
        out: output folder (created; an existing one is reused, its checkpoints resume training).
        num_cases: labelled phantom cases (20 % held out for evaluation), plus 2 unlabelled test cases.
        seed: phantom and training seed.
        max_epochs, epoch_length: training length (iterations = max_epochs x epoch_length).
        preset, memory, scan_memory, num_samples: bundle tunables.
        optimizer_name, learning_rate: the demo trains with AdamW (lr 2e-3): in a CPU budget of minutes the paper's
            SGD recipe (the bundle default) did not leave the all-background solution on the phantom.
        num_workers: data-loader workers.
        device: e.g. ``"cpu"`` or ``"cuda:0"``; default CUDA if available.
        shape: phantom volume size in voxels (3 mm isotropic).
        roi_size: training crop / inference window (voxels of 3 mm).
        crop_sampler: ``"classes"`` (every organ equally often at a crop centre, so the small organs are learned in
            minutes) or ``"posneg"`` (the bundle default, foreground/background 2:1).
    """
    from monai_fine.bools import as_bool

    scan_memory = as_bool(scan_memory, "scan_memory")  # `--scan_memory false` arrives as the string 'false'
    t0 = time.time()
    out_dir = Path(out).resolve()
    data_dir = out_dir / "data"
    if not (data_dir / "dataset_0.json").is_file():
        phantom(str(data_dir), num_cases=num_cases, seed=seed, num_test=2, shape=tuple(shape))
    common: dict[str, Any] = dict(
        bundle_root=str(out_dir),
        dataset_dir=str(data_dir),
        preset=preset,
        memory=memory,
        scan_memory=scan_memory,
        pixdim=[3.0, 3.0, 3.0],
        num_workers=num_workers,
        seed=seed,
    )
    common["roi_size"] = [int(r) for r in roi_size]
    if device is not None:
        common["device"] = f"$torch.device('{device}')"
    print(f"[demo] training {preset} FINE (memory={memory}, scan_memory={scan_memory}) on {data_dir}", flush=True)
    run_bundle(
        ["train.json"],
        "train",
        max_epochs=max_epochs,
        epoch_length=epoch_length,
        val_interval=max_epochs,
        num_samples=num_samples,
        crop_sampler=crop_sampler,
        optimizer_name=optimizer_name,
        learning_rate=learning_rate,
        **common,
    )
    t_train = time.time() - t0
    print("[demo] evaluating the held-out cases", flush=True)
    run_bundle(["train.json", "evaluate.json"], "eval", save_predictions=True, **common)
    print("[demo] segmenting data/imagesTs", flush=True)
    run_bundle(["inference.json"], "infer", output_dir=str(out_dir / "predictions"), **common)

    rows = organ_table(out_dir / "eval")
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"{'label':>5}  {'organ':<24} {'Dice':>6} {'HD95 mm':>8}"]
    lines += [f"{r['label']:>5}  {r['organ']:<24} {r['dice']:6.3f} {r['hd95_mm']:8.1f}" for r in rows]
    mean_dice = _nanmean([r["dice"] for r in rows])
    mean_hd = _nanmean([r["hd95_mm"] for r in rows])
    lines.append(f"{'':>5}  {'mean (13 organs)':<24} {mean_dice:6.3f} {mean_hd:8.1f}")
    syn = organ_table(out_dir / "eval", protocol="synapse8")
    lines.append(
        f"{'':>5}  {'mean (Synapse 8 organs)':<24} {_nanmean([r['dice'] for r in syn]):6.3f} "
        f"{_nanmean([r['hd95_mm'] for r in syn]):8.1f}"
    )
    import json

    validation = json.loads((data_dir / "dataset_0.json").read_text())["validation"]
    case = Path(validation[0]["image"]).name.replace(".nii.gz", "")
    _overlay_png(
        data_dir / validation[0]["image"],
        data_dir / validation[0]["label"],
        out_dir / "eval" / "predictions" / f"{case}_seg.nii.gz",
        out_dir / "overlay.png",
    )
    table = "\n".join(lines)
    print(f"\n[demo] held-out phantom cases: {rows[0]['cases']}; training {t_train / 60:.1f} min, total {(time.time() - t0) / 60:.1f} min")
    print(table)
    print(f"[demo] wrote {out_dir / 'metrics.csv'}, {out_dir / 'overlay.png'}, {out_dir / 'predictions'}")
    return f"mean Dice {mean_dice:.3f}, mean HD95 {mean_hd:.1f} mm"


COMMANDS = {
    "phantom": phantom,
    "datalist": datalist,
    "check": check,
    "train": train,
    "evaluate": evaluate,
    "infer": infer,
    "verify": verify,
    "demo": demo,
}
