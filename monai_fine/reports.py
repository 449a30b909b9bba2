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

import numpy as np

from monai_fine.labels import BTCV_LABELS, PROTOCOLS
from monai_fine.optional import require

__all__ = [
    "EVAL_METRIC_NAMES",
    "case_name",
    "format_organ_table",
    "label_colours",
    "nanmean",
    "organ_table",
    "overlay_png",
    "read_metric_csv",
    "read_scalars",
    "training_png",
]

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


def label_colours(num_classes: int = 14) -> np.ndarray:
    """RGBA colour of each label (row ``i`` for label ``i``; row 0, background, is transparent): matplotlib's tab20
    without its two greys, so no organ looks like CT grey. The overlay and its legend both index this table."""
    matplotlib = require("matplotlib", "the organ colours of the overlay picture")

    tab20 = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (14, 15)]
    colours = np.ones((num_classes, 4))
    colours[0] = 0.0
    for label in range(1, num_classes):
        colours[label, :3] = tab20[(label - 1) % len(tab20)]
    return colours


def _canonical(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The volume reoriented to RAS (nibabel's closest canonical) and its voxel size, so the views are the usual ones
    whatever the file's orientation (a DICOM series' prediction is on the series' LPS-like grid)."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3])


def overlay_png(
    image: str | Path, truth: str | Path, pred: str | Path, out: str | Path, alpha: float = 0.55
) -> dict[str, Any]:
    """Image, ground truth and prediction of one case: an axial and a coronal view, with an organ legend.

    Each view is the slice with the most ground-truth foreground (the axial slice ``z``, the coronal slice ``y``), in
    radiological convention (the patient's right on the viewer's left; coronal: superior up), with the voxel aspect
    ratio of the file. Organ colours come from :func:`label_colours`; the legend lists the organs (names of
    :data:`monai_fine.labels.BTCV_LABELS`) present in the truth or the prediction of the case, each with the colour
    its voxels are drawn in.

    Returns:
        ``{"slices": {"axial": z, "coronal": y}, "legend": [(label, organ, rgba), ...]}``: what was drawn.
    """
    matplotlib = require("matplotlib", "the overlay picture")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    (img, zooms), (lab, _), (seg, _) = (_canonical(p) for p in (image, truth, pred))
    if not img.shape[:3] == lab.shape[:3] == seg.shape[:3]:
        raise ValueError(f"image {img.shape}, truth {lab.shape} and prediction {seg.shape} differ in shape")
    lab, seg = lab.astype(np.int64), seg.astype(np.int64)
    colours = label_colours(max(14, int(max(lab.max(), seg.max())) + 1))
    fg = lab > 0
    z, y = int(np.argmax(fg.sum(axis=(0, 1)))), int(np.argmax(fg.sum(axis=(0, 2))))
    sx, sy, sz = zooms
    views = [  # (name, slice index, 2D cut -> rows x columns for imshow, aspect = row spacing / column spacing)
        ("axial", z, lambda v: v[:, :, z].T, sy / sx),
        ("coronal", y, lambda v: v[:, y, :].T, sz / sx),
    ]
    # panel heights follow the views' physical aspect, so the figure holds no empty band (about 3.9 inches per panel
    # width)
    heights = [img.shape[1] * sy / (img.shape[0] * sx), img.shape[2] * sz / (img.shape[0] * sx)]
    legend_in = 0.7
    fig, axes = plt.subplots(
        2, 3, figsize=(12, 3.9 * sum(heights) + 1.0 + legend_in), gridspec_kw={"height_ratios": heights}
    )
    for row, (view, index, cut, aspect) in enumerate(views):
        for ax, (title, mask) in zip(axes[row], [("image", None), ("ground truth", lab), ("prediction", seg)]):
            ax.imshow(np.clip(cut(img), -175, 250), cmap="gray", origin="lower", aspect=aspect)
            if mask is not None:
                rgba = colours[cut(mask)]
                rgba[..., 3] *= alpha
                ax.imshow(rgba, origin="lower", aspect=aspect, interpolation="nearest")
            ax.invert_xaxis()  # radiological view: the patient's right on the viewer's left
            ax.set_title(f"{title} ({view} slice {index})")
            ax.axis("off")
    present = sorted((set(np.unique(lab).tolist()) | set(np.unique(seg).tolist())) - {0})
    legend = [(int(label), BTCV_LABELS.get(int(label), f"label {label}"), tuple(colours[label])) for label in present]
    handles = [Patch(facecolor=rgba, edgecolor="none", label=f"{label} {organ}") for label, organ, rgba in legend]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1), h_pad=1.5)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {"slices": {"axial": z, "coronal": y}, "legend": legend}


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in ``log_dir``: tag -> ``[(step, value), ...]`` in step order.

    Read with TensorBoard's ``EventAccumulator`` (the whole history: no sampling), which also drops the events a
    resumed run overwrote (a step that goes back purges the later ones).

    Raises:
        FileNotFoundError: ``log_dir`` holds no event file.
    """
    events = require("tensorboard.backend.event_processing.event_accumulator", "reading the training curve")
    SCALARS, EventAccumulator = events.SCALARS, events.EventAccumulator

    log_dir = Path(log_dir)
    if not log_dir.is_dir() or not any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir()):
        raise FileNotFoundError(f"no TensorBoard event files in {log_dir}")
    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(int(e.step), float(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}


def training_png(
    log_dir: str | Path,
    out: str | Path,
    epoch_length: int,
    loss_tag: str = "train_loss",
    dice_tag: str = "val_mean_dice",
) -> dict[str, tuple[list[float], list[float]]]:
    """The training curve of a bundle run from its TensorBoard events: loss and validation Dice per epoch.

    ``train.json`` logs ``train_loss`` at every iteration (step = iteration) and ``val_mean_dice`` at every validation
    (step = the trainer's epoch). Left: the loss of each iteration (thin, at ``iteration / epoch_length``) and its mean
    over each epoch (at the epoch). Right: the validation Dice at the epochs validated (``val_interval``).

    Args:
        log_dir: the run's ``tensorboard_dir`` (``<output_dir>/tensorboard``).
        out: the PNG to write.
        epoch_length: iterations per epoch of the run (to place iterations on the epoch axis).
        loss_tag, dice_tag: the scalar tags.

    Returns:
        What was drawn, read back from the plotted lines: ``{"loss_iteration": (x, y), "loss_epoch": (x, y),
        "dice": (x, y)}``.

    Raises:
        FileNotFoundError: no event files; ``ValueError``: the loss tag was not logged.
    """
    matplotlib = require("matplotlib", "the training-curve picture")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if epoch_length < 1:
        raise ValueError(f"epoch_length must be a positive number of iterations, got {epoch_length}")
    scalars = read_scalars(log_dir)
    if loss_tag not in scalars:
        raise ValueError(f"no '{loss_tag}' scalars in {log_dir} (tags: {sorted(scalars)})")
    loss = scalars[loss_tag]
    per_epoch: dict[int, list[float]] = {}
    for step, value in loss:
        per_epoch.setdefault((step - 1) // epoch_length + 1, []).append(value)
    dice = scalars.get(dice_tag, [])
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(
        [s / epoch_length for s, _ in loss],
        [v for _, v in loss],
        lw=0.6,
        alpha=0.45,
        color="tab:blue",
        label="iteration",
        gid="loss_iteration",
    )
    ax_loss.plot(
        list(per_epoch),
        [sum(v) / len(v) for v in per_epoch.values()],
        "o-",
        ms=3,
        color="tab:blue",
        label="epoch mean",
        gid="loss_epoch",
    )
    ax_loss.set(xlabel="epoch", ylabel=loss_tag, title="training loss")
    ax_loss.legend(frameon=False)
    ax_dice.plot([s for s, _ in dice], [v for _, v in dice], "o-", color="tab:green", gid="dice")
    ax_dice.set(xlabel="epoch", ylabel=dice_tag, title="validation Dice (mean over organs)", ylim=(-0.02, 1.02))
    if not dice:
        ax_dice.text(0.5, 0.5, f"no '{dice_tag}' logged", ha="center", transform=ax_dice.transAxes)
    if per_epoch:
        for ax in (ax_loss, ax_dice):
            ax.set_xlim(0, max(per_epoch) + 0.5)
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    drawn = {
        line.get_gid(): ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
        for ax in (ax_loss, ax_dice)
        for line in ax.get_lines()
    }
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn
