# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Memory map: how much one crop's prediction draws on each memory cell of the whole scan (the paper's Fig. 4).

    python -m monai_fine memory_map --image CT.nii.gz --weights model.pt --center 256,250,60 --out map.png

**The path in the code.** In a ``"full"`` :class:`~monai_fine.networks.FINE` every block of every stage runs, in this
order (:class:`~monai_fine.networks.blocks.transformer.FineBlock`), each as a residual ``t <- t + attention(t)``:

1. V-MSA: every volume token attends to all seen volume tokens (the all-volume attention; keys ``volume_keys``;
   skipped when no cell was ever seen, ``volume_gate = 0``);
2. G-MSA: ``[window tokens; volume tokens]`` attend to all window tokens and the volume tokens of the cells the crop
   intersects (``global_keys``); the window tokens and the *intersecting* volume tokens are updated (``write``);
3. W-MSA: each window's ``[window tokens; visual tokens]`` attend to each other (shifted windows in odd blocks);
4. the MLP (no mixing between tokens).

So a volume token anywhere in the scan reaches the crop's pixels as
``visual <-(W-MSA)- window tokens <-(G-MSA)- intersecting volume tokens <-(V-MSA)- every volume token``, within one
block and again in every later block and stage.

**The rollout** (Abnar & Zuidema, "Quantifying attention flow in transformers", 2020) composes these attentions
along the forward. Every token ``t`` carries a row ``R[t]`` of shares over the *sources*: source 0, "the crop" (its
patch-embedded voxels and the learned window tokens), and one source per volume token (cell x token per cell). A
stage starts with its volume token ``j`` = source ``j`` and its window tokens = the crop; the visual tokens carry
their rows over from the previous stage. An attention with head-averaged weights ``A`` updates the rows of the tokens
it writes as ::

    R[t] <- r R[t] + (1 - r) sum_u A[t, u] R[u]          (r = ``residual``, 0.5 as in Abnar & Zuidema)

(V-MSA rows of all volume tokens, G-MSA rows of the window and the intersecting volume tokens, W-MSA rows of each
window's tokens; masked keys have weight 0). Between stages, patch merging averages the rows of the 2 x 2 x 2 tokens it
merges, patch expanding copies a row to its 2 x 2 x 2 children, and the U-Net skip is an equal-weight average of the
upsampled and the skipped rows. Every row stays a distribution (sums to 1). The crop's **memory share** is the mean
over the final visual tokens of their total mass on volume tokens; its **memory map** is that mass per cell (the
tokens of a cell summed), divided by the memory share so that it sums to 1 over the cells. ``residual = 0`` composes
the bare attention matrices.

Not in the map: the scan-memory option's context vector (the mean of the encoded cells added to every visual token,
not an attention), and where each volume token's *content* came from (the learned token, or with ``scan_memory`` what
the scan view wrote there): the map says which cells' tokens the crop reads, not what they hold.

**The crop.** ``--center`` is a voxel index ``x,y,z`` of the *input* image as stored (what a viewer such as 3D Slicer
or ITK-SNAP shows; ``--grid preprocessed`` takes indices of the preprocessed grid instead). The image is preprocessed
as ``bundle/configs/inference.json`` does (its ``preprocessing``: RAS orientation, spacing to ``pixdim``, HU window),
the centre mapped to the preprocessed grid through the two affines, and the crop is the network's ``roi_size`` window
centred there, shifted inside the volume where it would cross a border (as a sliding window would lie) and padded at
the far end along an axis the volume is shorter than. Its ``roi_box`` is traced from the crop's MONAI history, the
frame of :py:mod:`monai_fine.transforms.location`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_fine.networks.blocks.attention import AttentionRecorder
from monai_fine.networks.blocks.window import window_layout, window_partition, window_reverse
from monai_fine.optional import require

__all__ = [
    "MemoryMap",
    "attention_rollout",
    "crop_at",
    "crop_memory_map",
    "draw_memory_map",
    "memory_map_png",
    "parse_center",
    "record_attention",
]


@dataclass
class MemoryMap:
    """The memory map of one crop (see the module docstring).

    Attributes:
        cells: ``(gx, gy, gz)`` float64, the crop's memory attention per cell, summing to 1 (all 0 when the crop's
            memory share is 0).
        memory_share: the share of the crop's final tokens' rollout mass that lies on volume tokens (the rest is the
            crop itself).
        sources: ``(1 + V,)`` the mean rollout row of the crop's final tokens: the crop, then every volume token.
    """

    cells: np.ndarray
    memory_share: float
    sources: np.ndarray


def record_attention(
    net: torch.nn.Module, x: torch.Tensor, roi_box: torch.Tensor, scan_summary: Any = None
) -> tuple[torch.Tensor, list[tuple[torch.nn.Module, torch.Tensor]]]:
    """One eval forward of ``net`` on a single crop ``x`` ``(1, C, *roi)`` with its attention weights recorded.

    Returns:
        the logits and the :class:`~monai_fine.networks.blocks.attention.AttentionRecorder` records, in call order.

    Raises:
        ValueError: a batch of more than one crop, or a network in training mode.
    """
    if x.shape[0] != 1:
        raise ValueError(f"the memory map is of one crop: x needs batch size 1, got shape {tuple(x.shape)}.")
    if net.training:  # a training-mode forward would mark the crop's cells visited and drop attention weights
        raise ValueError("record the attention of a network in eval mode (call net.eval() first).")
    with torch.no_grad(), AttentionRecorder() as recorder:
        logits = net(x, roi_box, scan_summary=scan_summary)
    return logits, recorder.records


def _pop(records: list, expected: torch.Size | tuple, what: str) -> torch.Tensor:
    """The next record, head-averaged, checked to be the attention the walk expects."""
    if not records:
        raise RuntimeError(f"the recorded forward has fewer attention calls than the network's {what}.")
    _, weights = records.pop(0)
    if tuple(weights.shape[-2:]) != tuple(expected):
        raise RuntimeError(
            f"{what}: expected attention weights over {tuple(expected)} tokens, got {tuple(weights.shape)}."
        )
    return weights.mean(1).double().cpu()  # (B, L_q, L_k), heads averaged


def _stage_rollout(stage, rx: torch.Tensor, records: list, write: torch.Tensor, gate: float, r: float) -> torch.Tensor:
    """Roll the rows ``rx`` ``(X, Y, Z, S)`` of the visual tokens through one :class:`FineStage` (``"full"``)."""
    X, Y, Z, S = rx.shape
    geom = window_layout((X, Y, Z), stage.window_size, stage.num_window_tokens, rx.device).geom
    T, nW, V = stage.num_window_tokens, geom.num_windows, stage.memory_size
    rw = torch.zeros(nW * T, S, dtype=rx.dtype, device=rx.device)
    rw[:, 0] = 1.0  # the learned window tokens: part of "the crop"
    rv = torch.zeros(V, S, dtype=rx.dtype, device=rx.device)
    rv[torch.arange(V), 1 + torch.arange(V)] = 1.0  # volume token j is source 1 + j
    for b, blk in enumerate(stage.blocks):
        name = f"block {b} of a stage at {(X, Y, Z)}"
        if blk.volume_attention:
            a = _pop(records, (V, V), f"V-MSA of {name}")[0]
            if gate:
                rv = r * rv + (1 - r) * a @ rv
        if blk.global_attention:
            a = _pop(records, (nW * T + V, nW * T + V), f"G-MSA of {name}")[0]
            out = a @ torch.cat([rw, rv])
            rw = r * rw + (1 - r) * out[: nW * T]
            rv = torch.where(write, r * rv + (1 - r) * out[nW * T :], rv)  # only the intersecting cells are written
        a = _pop(records, (T + geom.window_volume,) * 2, f"W-MSA of {name}")  # (nW, L, L)
        seq = window_partition(rx[None], geom, blk.shifted, rw.view(1, nW, T, S))[0]  # (nW, T + N, S)
        out = a @ seq
        rw = r * rw + (1 - r) * out[:, :T].reshape(nW * T, S)
        rx = r * rx + (1 - r) * window_reverse(out[None, :, T:], geom, blk.shifted)[0]
    return rx


def attention_rollout(
    net: torch.nn.Module, records: list, x_shape: Sequence[int], roi_box: torch.Tensor, residual: float = 0.5
) -> MemoryMap:
    """The :class:`MemoryMap` of a crop from its forward's recorded attention (see the module docstring).

    Args:
        net: the ``"full"`` FINE that ran the forward (eval mode).
        records: :func:`record_attention`'s records of that forward (consumed in order; all must be used).
        x_shape: the crop's shape ``(1, C, X, Y, Z)``.
        roi_box: ``(1, 2, 3)`` the crop's box.
        residual: ``r`` of the rollout, in ``[0, 1)``.

    Raises:
        ValueError: ``residual`` out of range, a network that is not ``"full"`` or is in training mode.
        RuntimeError: the records do not match the network's attention calls.
    """
    if not 0.0 <= residual < 1.0:
        raise ValueError(f"residual must lie in [0, 1), got {residual}.")
    if getattr(net, "memory", None) != "full":
        raise ValueError(
            f"the memory map needs a FINE with memory='full', got memory={getattr(net, 'memory', None)!r}."
        )
    if net.training:  # memory_context would mark the crop's cells visited
        raise ValueError("roll out the attention of a network in eval mode (call net.eval() first).")
    records = list(records)
    device = net.memory_visits.device
    ctx = net.memory_context(torch.as_tensor(roi_box).to(device), 1, device)
    write = ctx.write[0].to(torch.bool).cpu()  # (V, 1)
    gate = float(ctx.volume_gate)
    S = 1 + net.memory_size
    spatial = [int(s) // p for s, p in zip(x_shape[2:], net.patch_size)]
    rx = torch.zeros(*spatial, S, dtype=torch.float64)
    rx[..., 0] = 1.0
    skips = []
    for i, stage in enumerate(net.encoder_stages):
        rx = _stage_rollout(stage, rx, records, write, gate, residual)
        skips.append(rx)
        if i < net.num_stages - 1:  # patch merging: the mean of the 2 x 2 x 2 merged rows
            X, Y, Z, _ = rx.shape
            rx = rx.reshape(X // 2, 2, Y // 2, 2, Z // 2, 2, S).mean(dim=(1, 3, 5))
    for j, stage in enumerate(net.decoder_stages):
        up = rx.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)  # patch expanding
        rx = 0.5 * (up + skips[net.num_stages - 2 - j])
        rx = _stage_rollout(stage, rx, records, write, gate, residual)
    if records:
        raise RuntimeError(f"{len(records)} recorded attention calls left over after the network's last stage.")
    sources = rx.reshape(-1, S).mean(0)
    per_cell = sources[1:].reshape(net.num_cells, net.num_volume_tokens).sum(-1)
    share = float(per_cell.sum())
    cells = (per_cell / share if share > 0 else per_cell).reshape(net.memory_grid)
    return MemoryMap(cells.numpy(), share, sources.numpy())


def crop_memory_map(
    net: torch.nn.Module, x: torch.Tensor, roi_box: torch.Tensor, scan_summary: Any = None, residual: float = 0.5
) -> MemoryMap:
    """Record one forward of the crop ``x`` ``(1, C, *roi)`` with box ``roi_box`` ``(1, 2, 3)`` and roll it out."""
    _, records = record_attention(net, x, roi_box, scan_summary)
    return attention_rollout(net, records, x.shape, roi_box, residual)


def parse_center(center: str | Sequence[Any]) -> tuple[int, int, int]:
    """``"x,y,z"`` (or a sequence of three, what the command line makes of ``--center 1,2,3``) as three ints.

    Raises:
        ValueError: not three integers, naming the value.
    """
    parts = center.replace(" ", "").strip("()[]").split(",") if isinstance(center, str) else list(center)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or any(v != int(v) for v in values):
        raise ValueError(f"--center must be three integer voxel indices x,y,z, got {center!r}.")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _check_inside(center: Sequence[int], shape: Sequence[int], grid: str) -> None:
    if any(not 0 <= c < s for c, s in zip(center, shape)):
        allowed = " x ".join(f"[0, {s - 1}]" for s in shape)
        raise ValueError(
            f"--center {tuple(center)} is outside the {grid} grid: voxel indices x,y,z must lie in {allowed} "
            f"(shape {tuple(int(s) for s in shape)})."
        )


def crop_at(img: torch.Tensor, center: Sequence[int], roi_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``roi_size`` crop of the preprocessed ``img`` ``(C, X, Y, Z)`` centred at voxel ``center`` (shifted inside
    the volume, padded at the far end where the volume is shorter) and its ``(2, 3)`` ``roi_box``."""
    from monai.transforms import SpatialCrop, SpatialPad

    from monai_fine.transforms.location import crop_box_from_meta

    size = [int(s) for s in img.shape[1:]]
    start = [min(max(int(c) - int(r) // 2, 0), max(s - int(r), 0)) for c, r, s in zip(center, roi_size, size)]
    stop = [min(b + int(r), s) for b, r, s in zip(start, roi_size, size)]
    crop = SpatialCrop(roi_start=start, roi_end=stop)(img)
    crop = SpatialPad([int(r) for r in roi_size], method="end")(crop)
    return crop, crop_box_from_meta(crop)


def _input_shape(path: str) -> tuple[int, ...] | None:
    """The spatial shape in the file's header (NIfTI), without reading the voxels; None for other formats."""
    if not str(path).endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    return tuple(int(s) for s in nib.load(str(path)).shape[:3])


def _preprocessing(pixdim: Sequence[float] | None, hu_window: Sequence[float] | None):
    """The ``preprocessing`` of ``bundle/configs/inference.json`` (with ``pixdim``/``hu_window`` overrides)."""
    from monai.bundle import ConfigParser

    from monai_fine.bundle_tools import bundle_dir

    parser = ConfigParser()
    parser.read_config(str(bundle_dir() / "configs" / "inference.json"))
    if pixdim is not None:
        parser["pixdim"] = [float(p) for p in pixdim]
    if hu_window is not None:
        parser["hu_window"] = [float(h) for h in hu_window]
    return parser.get_parsed_content("preprocessing"), parser["pixdim"], parser["hu_window"]


def _to_preprocessed(img, center: Sequence[int]) -> tuple[int, int, int]:
    """An input-grid voxel index as the nearest voxel of the preprocessed ``img`` (through the two affines)."""
    original = np.asarray(img.meta["original_affine"], dtype=np.float64)
    world = original @ np.array([*center, 1.0])
    index = np.linalg.solve(np.asarray(img.affine, dtype=np.float64), world)[:3]
    size = img.shape[1:]
    return tuple(int(min(max(round(float(i)), 0), s - 1)) for i, s in zip(index, size))  # type: ignore[return-value]


def draw_memory_map(
    image: np.ndarray,
    cells: np.ndarray,
    start: Sequence[int],
    stop: Sequence[int],
    center: Sequence[int],
    out: str | os.PathLike,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> None:
    """Axial and coronal slices of ``image`` ``(X, Y, Z)`` (RAS, voxel size ``spacing``) through ``center``, the
    per-cell map ``cells`` ``(gx, gy, gz)`` over them with each cell's value written in it, the cell grid, and the crop
    ``[start, stop)`` outlined in blue (as in the paper's Fig. 4); written as a PNG."""
    matplotlib = require("matplotlib", "the memory-map picture")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    size = image.shape
    index = [np.minimum(((np.arange(s) + 0.5) / s * g).astype(int), g - 1) for s, g in zip(size, cells.shape)]
    heat = cells[np.ix_(*index)]  # the cell value at every voxel
    vmax = max(float(cells.max()), 1e-12)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    views = [("axial", 2, (0, 1)), ("coronal", 1, (0, 2))]
    for ax, (name, cut, (h, v)) in zip(axes, views):
        take = [slice(None)] * 3
        take[cut] = int(center[cut])
        aspect = float(spacing[v]) / float(spacing[h])
        ax.imshow(image[tuple(take)].T, cmap="gray", origin="lower", interpolation="nearest", aspect=aspect)
        shown = ax.imshow(heat[tuple(take)].T, cmap="inferno", alpha=0.45, vmin=0, vmax=vmax, origin="lower",
                          interpolation="nearest", aspect=aspect)  # fmt: skip
        gh, gv = cells.shape[h], cells.shape[v]
        for k in range(1, gh):
            ax.axvline(k * size[h] / gh - 0.5, color="white", lw=0.5, alpha=0.6)
        for k in range(1, gv):
            ax.axhline(k * size[v] / gv - 0.5, color="white", lw=0.5, alpha=0.6)
        cell_of_cut = min(int((int(center[cut]) + 0.5) / size[cut] * cells.shape[cut]), cells.shape[cut] - 1)
        for i in range(gh):
            for j in range(gv):
                at = [0, 0, 0]
                at[h], at[v], at[cut] = i, j, cell_of_cut
                ax.text((i + 0.5) * size[h] / gh - 0.5, (j + 0.5) * size[v] / gv - 0.5, f"{cells[tuple(at)]:.2f}",
                        color="white", fontsize=8, ha="center", va="center", alpha=0.9)  # fmt: skip
        ax.add_patch(Rectangle((start[h] - 0.5, start[v] - 0.5), stop[h] - start[h], stop[v] - start[v], fill=False,
                               edgecolor="#2f6bff", lw=2.0))  # fmt: skip
        ax.plot([center[h]], [center[v]], "+", color="#2f6bff", ms=10)
        ax.set_xlim(-0.5, size[h] - 0.5)
        ax.set_ylim(-0.5, size[v] - 0.5)
        ax.invert_xaxis()  # radiological view: the patient's right on the viewer's left
        ax.set_title(f"{name} slice {'xyz'[cut]} = {int(center[cut])}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label="share of the crop's memory attention per cell")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def memory_map_png(
    image: str,
    weights: str,
    center: str | Sequence[int],
    out: str = "memory_map.png",
    grid: str = "input",
    residual: float = 0.5,
    pixdim: Sequence[float] | None = None,
    hu_window: Sequence[float] | None = None,
    roi_size: Sequence[int] | None = None,
    device: str = "cpu",
) -> str:
    """Draw where the crop at ``center`` reads the scan's memory (the paper's Fig. 4; see
    :py:mod:`monai_fine.memory_map`).

    Args:
        image: a CT volume MONAI's ``LoadImage`` reads (NIfTI, ...).
        weights: a ``model.pt`` of a ``memory="full"`` FINE (loaded with :func:`monai_fine.bundle_tools.load_network`).
        center: ``x,y,z`` voxel index of the crop centre on ``grid``.
        out: the PNG to write.
        grid: ``"input"`` (indices of the image as stored) or ``"preprocessed"`` (of the RAS, resampled grid).
        residual: the rollout's residual weight ``r`` (0.5; 0 composes the bare attention matrices).
        pixdim, hu_window: override ``inference.json``'s (the spacing and HU window the model was trained with).
        roi_size: the crop size (default: the network's ``roi_size``).
        device: where the network runs.

    Returns:
        a one-line summary (memory share, brightest cell; ``python -m monai_fine`` prints it after the per-cell
        values).

    Raises:
        ValueError: a bad ``center`` or ``grid``, a centre outside the image, a network that is not ``"full"`` or
            that has seen no memory cell in training; checked before the forward (the centre on the input grid,
            before the image or the weights are loaded).
        FileNotFoundError: ``image`` or ``weights`` missing.
    """
    from monai_fine.bundle_tools import load_network, read_network_config
    from monai_fine.transforms.scan_view import scan_view_and_box

    c = parse_center(center)
    if grid not in ("input", "preprocessed"):
        raise ValueError(f"--grid must be 'input' or 'preprocessed', got {grid!r}.")
    for path, what in ((image, "image"), (weights, "weights")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} not found: {path}")
    if grid == "input" and (shape := _input_shape(image)) is not None:
        _check_inside(c, shape, "input image's")
    recorded = read_network_config(weights)
    if recorded.get("memory", "full") != "full":
        raise ValueError(
            f"the memory map needs a network with memory='full'; {weights} has memory={recorded['memory']!r}."
        )
    net = load_network(weights, device=device, **recorded)  # the record itself: no "differs from the config" warning
    if net.memory != "full":
        raise ValueError(f"the memory map needs a network with memory='full'; {weights} has memory={net.memory!r}.")
    if not bool((net.memory_visits > 0).any()):
        raise ValueError(
            f"{weights} has seen no memory cell in training (memory_visits all 0): every volume token is masked, the "
            "crop reads no memory, there is nothing to map."
        )
    roi = tuple(int(r) for r in (roi_size or net.roi_size))
    preprocess, pixdim, hu_window = _preprocessing(pixdim, hu_window)
    img = preprocess({"image": image})["image"]
    if grid == "input":
        _check_inside(c, img.meta["spatial_shape"], "input image's")
        c = _to_preprocessed(img, c)
    else:
        _check_inside(c, img.shape[1:], "preprocessed image's")
    crop, box = crop_at(img, c, roi)
    dev = torch.device(device)
    memory = None
    if net.scan_memory:  # the scan view writes the memory the crop reads, as in FINEInferer
        view, view_box = scan_view_and_box(img, roi)
        memory = net.write_scan_memory(view[None].to(dev), view_box[None].to(dev))
    x = crop.as_tensor()[None].float().to(dev)
    result = crop_memory_map(net, x, box[None], memory, residual)
    size = np.array(img.shape[1:])
    start = np.round(box[0].numpy() * size).astype(int)
    stop = np.round(box[1].numpy() * size).astype(int)
    best = tuple(int(i) for i in np.unravel_index(int(result.cells.argmax()), result.cells.shape))
    summary = (
        f"crop centre {c} (preprocessed grid, pixdim {list(pixdim)}), roi {roi}: memory share "
        f"{result.memory_share:.3f}; brightest cell {best} with {result.cells.max():.3f} of it"
    )
    title = (
        f"FINE memory map of the crop at {c} (preprocessed grid, {roi} voxels of {list(pixdim)} mm)\n"
        f"memory share {result.memory_share:.3f} of the crop's attention rollout; cells: its split over the memory"
    )
    draw_memory_map(img[0].numpy(), result.cells, start, stop, c, out, spacing=pixdim, title=title)
    print("per-cell share (x rows, y columns" + (", z slices)" if result.cells.shape[2] > 1 else ")"))
    for k in range(result.cells.shape[2]):
        print("\n".join("  " + " ".join(f"{v:.3f}" for v in row) for row in result.cells[:, :, k]))
    print(f"wrote {Path(out).resolve()}")
    return summary
