# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Readers and tables of the evaluation outputs (``MetricsSaver`` CSVs of ``bundle/configs/evaluate.json``).

Used by the CLI demo and the experiments (:py:mod:`monai_fine.experiments`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_fine.labels import BTCV_LABELS, PROTOCOLS

__all__ = ["EVAL_METRIC_NAMES", "case_name", "nanmean", "read_metric_csv", "organ_table", "format_organ_table", "overlay_png"]

#: protocol -> (Dice, HD95) metric names of ``bundle/configs/evaluate.json`` (CSV ``<prefix>_<name>_raw.csv``)
EVAL_METRIC_NAMES: dict[str, tuple[str, str]] = {
    "btcv13": ("mean_dice", "hd95"),
    "synapse8": ("synapse8_dice", "synapse8_hd95"),
}


def case_name(path: str) -> str:
    """The case name of an image path: the file name without its image extension."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN and inf skipped); NaN when there is none."""
    vals = [v for v in values if v == v and not math.isinf(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def read_metric_csv(path: str | Path) -> dict[str, list[float]]:
    """A ``MetricsSaver`` ``*_raw.csv``: case name -> values of ``class0 .. classN`` (the trailing ``mean`` dropped).

    Column ``class<j>`` is the metric's ``labels[j]`` (see :py:mod:`monai_fine.handlers.metrics`); rows keep the
    file's (the evaluation's) order.
    """
    with open(path) as f:
        rows = list(csv.reader(f))
    ncls = sum(1 for h in rows[0] if h.startswith("class"))
    return {case_name(r[0]): [float(v) for v in r[1 : 1 + ncls]] for r in rows[1:]}


def organ_table(eval_dir: str | Path, protocol: str = "btcv13", prefix: str = "val") -> list[dict[str, Any]]:
    """Per-organ mean Dice and HD95 (mm) over cases from the evaluation CSVs written by ``MetricsSaver``.

    Args:
        eval_dir: the evaluation's ``output_dir``.
        protocol: ``"btcv13"`` or ``"synapse8"`` (:py:mod:`monai_fine.labels`).
        prefix: the metric name prefix (``val`` in ``bundle/configs/evaluate.json``).

    Returns:
        one dict per organ: ``label``, ``organ``, ``dice``, ``hd95_mm`` (nanmean over cases) and ``cases``.
    """
    eval_dir = Path(eval_dir)
    dice_name, hd95_name = EVAL_METRIC_NAMES[protocol]
    dice = list(read_metric_csv(eval_dir / f"{prefix}_{dice_name}_raw.csv").values())
    hd95 = list(read_metric_csv(eval_dir / f"{prefix}_{hd95_name}_raw.csv").values())
    return [
        {
            "label": label,
            "organ": BTCV_LABELS[label],
            "dice": nanmean([r[j] for r in dice]),
            "hd95_mm": nanmean([r[j] for r in hd95]),
            "cases": len(dice),
        }
        for j, label in enumerate(PROTOCOLS[protocol])
    ]


def format_organ_table(rows: list[dict[str, Any]], synapse8_rows: list[dict[str, Any]] | None = None) -> str:
    """A text table of :py:func:`organ_table` rows, with the mean over the organs (and the Synapse 8-organ mean)."""
    lines = [f"{'label':>5}  {'organ':<24} {'Dice':>6} {'HD95 mm':>8}"]
    lines += [f"{r['label']:>5}  {r['organ']:<24} {r['dice']:6.3f} {r['hd95_mm']:8.1f}" for r in rows]
    means = [(f"mean ({len(rows)} organs)", rows)]
    if synapse8_rows is not None:
        means.append(("mean (Synapse 8 organs)", synapse8_rows))
    for title, rs in means:
        dice, hd = nanmean([r["dice"] for r in rs]), nanmean([r["hd95_mm"] for r in rs])
        lines.append(f"{'':>5}  {title:<24} {dice:6.3f} {hd:8.1f}")
    return "\n".join(lines)


def overlay_png(image: str | Path, truth: str | Path, pred: str | Path, out: str | Path) -> None:
    """Image, ground truth and prediction of one case side by side (the axial slice with the most foreground)."""
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
