# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Per-organ Dice and HD95 (in millimetres) for BTCV / Synapse multi-organ CT, with explicit evaluation protocols.

The label sets (``protocol="btcv13"`` / ``"synapse8"``) and the BTCV label table live in
:py:mod:`monai_fine.labels` (re-exported here).

Two empty-mask rules are defined, selected with ``empty=``:

- ``"nan"`` (FINE / nnU-Net): Dice is NaN when prediction and ground truth are both empty; HD95 is NaN when either
  of them is empty. Means over cases skip NaNs (nanmean).
- ``"synapse"`` (nnFormer ``inference_synapse.py``): Dice is 1 when both are empty; HD95 is 0 when either is empty.
  No NaN is ever produced, so the nanmean over cases is the plain mean.

In both rules Dice is 0 when exactly one of the two masks is empty.

HD95 is the symmetric 95th-percentile Hausdorff distance as computed by MONAI
(:py:func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``) and by medpy ``hd95``:

1. the surface of a binary mask ``M`` is ``M & ~binary_erosion(M)``, erosion with the face-connected (6-neighbour in
   3D) structuring element and voxels outside the image counted as background, so foreground voxels on the image
   border belong to the surface;
2. each directed distance set holds, for every surface voxel of one mask, the Euclidean distance in millimetres
   (voxel indices scaled by the spacing) to the nearest *surface* voxel of the other mask;
3. HD95 is the larger of the two directed 95th percentiles (linear interpolation between order statistics, as
   ``numpy.percentile`` / ``torch.quantile``), not the percentile of the pooled distances.

Inputs are binarised one-hot tensors ``(B, C, *spatial)`` where ``C`` counts the background channel, so channel ``i``
is label ``i``; a non-zero value is foreground. A single-channel label map ``(B, 1, *spatial)`` is also accepted when
one of the requested labels is >= 1.

Voxel spacing (for HD95 in millimetres) comes from MONAI: an explicit ``spacing`` goes through
:py:func:`monai.metrics.utils.prepare_spacing`; otherwise it is read by :py:func:`spacing_from_meta`, i.e.
:py:func:`monai.data.utils.affine_to_spacing` of the ground truth's affine (what ``MetaTensor.pixdim`` returns).

Arguments shared by the functions and classes below (documented once here):

- ``labels``: channel / label indices to score, mutually exclusive with ``protocol``, see
  :py:func:`monai_fine.labels.resolve_labels`;
- ``protocol``: ``"btcv13"`` (the default when ``labels`` is None) or ``"synapse8"``;
- ``empty``: the empty-mask rule above, ``"nan"`` or ``"synapse"``;
- ``reduction``: ``"mean"`` (mean over organs of the per-organ nanmean over cases; MONAI's ``"mean"`` averages over
  channels first, which differs when values are NaN), ``"mean_batch"`` (per-organ nanmean over cases) or ``"none"``
  (the ``(cases, labels)`` values), see :py:func:`reduce_organ_metric`;
- ``spacing``: voxel size in mm along the array axes: one number, one number per spatial axis, or one such entry per
  batch item (:py:func:`monai.metrics.utils.prepare_spacing`); e.g. ``1.0`` reports voxel units as nnFormer does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.metrics import CumulativeIterationMetric, compute_hausdorff_distance
from monai.metrics.utils import prepare_spacing

from monai_fine.labels import BTCV13_ORGANS, BTCV_LABELS, PROTOCOLS, SYNAPSE8_ORGANS, organ_names, resolve_labels

__all__ = [
    "BTCV_LABELS",
    "BTCV13_ORGANS",
    "SYNAPSE8_ORGANS",
    "PROTOCOLS",
    "EMPTY_RULES",
    "REDUCTIONS",
    "resolve_labels",
    "organ_names",
    "spacing_from_meta",
    "compute_organ_dice",
    "compute_organ_hd95",
    "reduce_organ_metric",
    "OrganDiceMetric",
    "HausdorffDistance95Metric",
]

EMPTY_RULES: tuple[str, ...] = ("nan", "synapse")
REDUCTIONS: tuple[str, ...] = ("mean", "mean_batch", "none")

# a spacing argument: one number (isotropic), one number per spatial axis, or one such entry per batch item
SpacingLike = float | Sequence[float] | Sequence[float | Sequence[float]]


def _check_empty(empty: str) -> str:
    if empty not in EMPTY_RULES:
        raise ValueError(f"unknown empty-mask rule {empty!r}; expected one of {list(EMPTY_RULES)}.")
    return empty


def _affine_spacing(affine: Any) -> tuple[float, ...]:
    """:py:func:`monai.data.utils.affine_to_spacing` of one ``(N+1, N+1)`` affine, as a tuple of floats."""
    a = torch.as_tensor(affine, dtype=torch.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"expected a square (N+1, N+1) affine of one image, got shape {tuple(a.shape)}.")
    return tuple(float(v) for v in affine_to_spacing(a, r=a.shape[0] - 1, suppress_zeros=False))


def spacing_from_meta(t: MetaTensor | Mapping[str, Any]) -> tuple[float, ...]:
    """Voxel spacing in millimetres, one value per array axis, from an image's metadata.

    MONAI's :py:func:`~monai.data.utils.affine_to_spacing` of the affine (what ``MetaTensor.pixdim`` returns): the
    spacing of axis ``j`` is the norm of column ``j`` of the linear part (so flips, rotations and axis permutations
    are handled). When there is no affine, ``pixdim[1:4]`` (NIfTI header convention) is used.

    Note:
        A :py:class:`~monai.data.MetaTensor` created without an affine carries MONAI's default identity affine,
        which reads as 1 mm isotropic; this function cannot tell it apart from a genuine 1 mm image.

    Args:
        t: a :py:class:`~monai.data.MetaTensor` of one image (not a collated batch), or its meta dictionary.

    Raises:
        ValueError: when neither an affine nor a pixdim is available, or the affine is batched.
    """
    if isinstance(t, MetaTensor):
        meta: Mapping[str, Any] = t.meta
        affine = t.affine
    elif isinstance(t, Mapping):
        meta, affine = t, t.get("affine")
    else:
        raise ValueError(
            f"cannot read the voxel spacing from a {type(t).__name__}: expected a MetaTensor or a meta dict "
            "with 'affine' or 'pixdim'. Pass an explicit spacing instead."
        )
    if affine is not None:
        return _affine_spacing(affine)
    pixdim = meta.get("pixdim")
    if pixdim is not None:
        p = np.asarray(pixdim, dtype=np.float64).reshape(-1)
        if p.shape[0] < 4:
            raise ValueError(f"pixdim must have at least 4 entries (NIfTI layout), got {pixdim}.")
        return tuple(float(v) for v in p[1:4])
    raise ValueError("metadata has neither 'affine' nor 'pixdim', so the voxel spacing is unknown.")


def _organ_masks(x: torch.Tensor, labels: Sequence[int], name: str) -> torch.Tensor:
    """Boolean masks ``(B, L, *spatial)`` of ``labels`` from a one-hot ``(B, C, ...)`` or label-map ``(B, 1, ...)``."""
    if x.ndim < 3:
        raise ValueError(f"{name} must be (B, C, *spatial) with at least one spatial axis, got shape {tuple(x.shape)}.")
    if x.shape[1] == 1 and max(labels) >= 1:
        return torch.stack([x[:, 0] == i for i in labels], dim=1)
    if max(labels) >= x.shape[1]:
        raise ValueError(
            f"labels {tuple(labels)} need {max(labels) + 1} one-hot channels, but {name} has shape {tuple(x.shape)}."
        )
    return x[:, list(labels)] != 0


def _prepare(
    y_pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, labels: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    labels = resolve_labels(labels=labels)
    y_pred_t = torch.as_tensor(y_pred)
    y_t = torch.as_tensor(y)
    if isinstance(y_pred_t, MetaTensor):
        y_pred_t = y_pred_t.as_tensor()
    if isinstance(y_t, MetaTensor):
        y_t = y_t.as_tensor()
    if y_pred_t.ndim != y_t.ndim or y_pred_t.shape[0] != y_t.shape[0] or y_pred_t.shape[2:] != y_t.shape[2:]:
        raise ValueError(
            f"y_pred and y must have the same batch and spatial shape, got y_pred {tuple(y_pred_t.shape)} "
            f"and y {tuple(y_t.shape)}."
        )
    if y_pred_t.shape[1] != y_t.shape[1] and 1 not in (y_pred_t.shape[1], y_t.shape[1]):
        raise ValueError(
            f"y_pred and y must have the same number of channels (or one of them be a 1-channel label map), "
            f"got y_pred {tuple(y_pred_t.shape)} and y {tuple(y_t.shape)}."
        )
    return _organ_masks(y_pred_t, labels, "y_pred"), _organ_masks(y_t, labels, "y"), labels


def compute_organ_dice(
    y_pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, labels: Sequence[int], empty: str = "nan"
) -> torch.Tensor:
    """Dice of each requested label for each case: ``2 |P & T| / (|P| + |T|)``.

    Args:
        y_pred: binarised one-hot prediction ``(B, C, *spatial)`` (or label map ``(B, 1, *spatial)``).
        y: binarised one-hot ground truth, same batch and spatial shape as ``y_pred``.
        labels, empty: see the module docstring (e.g. ``labels=BTCV13_ORGANS``, ``empty="nan"``).

    Returns:
        float32 tensor ``(B, len(labels))``, on ``y_pred``'s device.

    Raises:
        ValueError: on shape mismatch, labels outside the channel range or an unknown ``empty`` rule.
    """
    _check_empty(empty)
    p, t, _ = _prepare(y_pred, y, labels)
    dims = tuple(range(2, p.ndim))
    inter = (p & t).sum(dim=dims, dtype=torch.float64)
    denom = p.sum(dim=dims, dtype=torch.float64) + t.sum(dim=dims, dtype=torch.float64)
    both_empty_value = float("nan") if empty == "nan" else 1.0
    dice = torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1.0), torch.full_like(denom, both_empty_value))
    return dice.float()


def _per_item_spacing(spacing: SpacingLike, batch_size: int, spatial_dims: int) -> list[tuple[float, ...]]:
    """One ``spatial_dims``-tuple of positive floats per batch item, via MONAI's ``prepare_spacing``."""
    if spacing is None:
        raise ValueError("spacing is required to compute HD95 in millimetres, got None.")
    if isinstance(spacing, (torch.Tensor, np.ndarray)):
        spacing = np.asarray(spacing.detach().cpu() if isinstance(spacing, torch.Tensor) else spacing).tolist()
    try:
        items = prepare_spacing(spacing, batch_size, spatial_dims)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"spacing must be a number, {spatial_dims} numbers, or one of those per batch item "
            f"(batch size {batch_size}), got {spacing}."
        ) from e
    out = []
    for s in items:
        s = (s,) * spatial_dims if isinstance(s, (int, float)) else tuple(s)
        if len(s) != spatial_dims or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in s):
            raise ValueError(f"each spacing must be {spatial_dims} positive finite numbers, got {s} (from {spacing}).")
        out.append(tuple(float(v) for v in s))
    return out


def compute_organ_hd95(
    y_pred: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    labels: Sequence[int],
    spacing: SpacingLike,
    empty: str = "nan",
) -> torch.Tensor:
    """Symmetric 95th-percentile Hausdorff distance (HD95) in millimetres of each requested label for each case.

    HD95 is ``max(P95(d(S_pred -> S_true)), P95(d(S_true -> S_pred)))`` where ``S`` are mask surfaces and ``d`` the
    Euclidean distances, scaled by ``spacing``, from each surface voxel to the nearest surface voxel of the other
    mask (see the module docstring). Computed by :py:func:`monai.metrics.compute_hausdorff_distance` with
    ``percentile=95`` on each non-empty pair.

    Args:
        y_pred: binarised one-hot prediction ``(B, C, *spatial)`` (or label map ``(B, 1, *spatial)``).
        y: binarised one-hot ground truth, same batch and spatial shape as ``y_pred``.
        labels, spacing, empty: see the module docstring.

    Returns:
        float32 tensor ``(B, len(labels))`` in millimetres, on ``y_pred``'s device.

    Raises:
        ValueError: on shape mismatch, a bad ``spacing``, labels outside the channel range or an unknown ``empty``.
    """
    _check_empty(empty)
    p, t, labels = _prepare(y_pred, y, labels)
    batch_size, spatial_dims = p.shape[0], p.ndim - 2
    spacings = _per_item_spacing(spacing, batch_size, spatial_dims)
    empty_value = float("nan") if empty == "nan" else 0.0
    out = torch.full((batch_size, len(labels)), empty_value, dtype=torch.float32)
    for b in range(batch_size):
        for j in range(len(labels)):
            pb, tb = p[b, j], t[b, j]
            if not (bool(pb.any()) and bool(tb.any())):
                continue
            with warnings.catch_warnings():
                # MONAI 1.5-1.6 passes its own deprecated `always_return_as_numpy` argument internally
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
                hd = compute_hausdorff_distance(
                    pb[None, None], tb[None, None], include_background=True, percentile=95.0, spacing=spacings[b]
                )
            out[b, j] = float(hd.reshape(-1)[0])
    return out.to(p.device)


def reduce_organ_metric(values: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reduce per-case, per-organ values ``(N, L)``; NaNs are skipped.

    Args:
        values: ``(N, L)`` metric of N cases and L organs.
        reduction: ``"mean"``: mean over organs of the per-organ nanmean over cases (a scalar; organs with no
            defined value in any case are skipped, NaN if none is defined); ``"mean_batch"``: the per-organ
            nanmean over cases, ``(L,)``; ``"none"``: ``values`` unchanged.

    Raises:
        ValueError: for an unknown ``reduction`` or values that are not 2D.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {list(REDUCTIONS)}.")
    if values.ndim != 2:
        raise ValueError(f"expected per-case, per-organ values of shape (N, L), got {tuple(values.shape)}.")
    if reduction == "none":
        return values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_organ = torch.nanmean(values.double(), dim=0)
        if reduction == "mean_batch":
            return per_organ.float()
        return torch.nanmean(per_organ).float()


class _OrganMetric(CumulativeIterationMetric):
    """Shared label / protocol / empty-rule / reduction handling; the buffer holds ``(cases, labels)``."""

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        protocol: str | None = None,
        empty: str = "nan",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.labels = resolve_labels(labels, protocol)
        self.empty = _check_empty(empty)
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {list(REDUCTIONS)}.")
        self.reduction = reduction

    @property
    def class_names(self) -> list[str]:
        """Organ names in the order of :attr:`labels` (the column order of the buffer and of saved CSVs)."""
        return organ_names(self.labels)

    def aggregate(self, reduction: str | None = None) -> torch.Tensor:
        """Reduce the buffered ``(cases, labels)`` values, see :py:func:`reduce_organ_metric`."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("no values to aggregate: call the metric on some data first.")
        return reduce_organ_metric(data, reduction or self.reduction)


class OrganDiceMetric(_OrganMetric):
    """Cumulative per-case, per-organ Dice, see :py:func:`compute_organ_dice`.

    Args:
        labels, protocol, empty, reduction: see the module docstring.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("y (the ground truth) is required to compute Dice.")
        return compute_organ_dice(y_pred, y, self.labels, empty=self.empty)


class HausdorffDistance95Metric(_OrganMetric):
    """Cumulative per-case, per-organ HD95 in millimetres, see :py:func:`compute_organ_hd95`.

    The spacing of each case is, in order of precedence: the ``spacing`` keyword of the call, the ``spacing`` given
    here, or :py:func:`spacing_from_meta` of the ground-truth ``MetaTensor`` of that case. A plain tensor without
    either raises a
    ``ValueError``: the metric never falls back to 1 mm on its own. A ``MetaTensor`` whose affine is the identity
    (MONAI's default when no affine was set) triggers a warning, since it reads as 1 mm.

    Args:
        labels, protocol, empty, reduction: see the module docstring.
        spacing: fixed spacing (module docstring) used for every case instead of the metadata.
    """

    def __init__(self, *args: Any, spacing: float | Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if spacing is not None:
            _per_item_spacing(spacing, 1, len(spacing) if isinstance(spacing, Sequence) else 1)
        self.spacing = spacing

    def _spacing_of(self, y: Any, batch_size: int) -> list[tuple[float, ...]]:
        """Spacing of each item of ``y`` from its metadata (a batched MetaTensor gives one per item)."""
        if not isinstance(y, MetaTensor):
            raise ValueError(
                f"cannot compute HD95 in mm: the label is a {type(y).__name__} without metadata, so its voxel "
                "spacing is unknown. Pass MetaTensor labels (with an affine) or give an explicit spacing."
            )
        affine = y.affine
        affines = [affine] if affine.ndim == 2 else list(affine)
        if any(torch.equal(a.cpu().double(), torch.eye(a.shape[-1], dtype=torch.float64)) for a in affines):
            warnings.warn(
                "label MetaTensor has an identity affine (MONAI's default when none was set): HD95 assumes 1 mm "
                "voxels. Set the affine or an explicit spacing if that is wrong.",
                stacklevel=3,
            )
        if len(affines) == 1:
            return [spacing_from_meta(y)] * batch_size
        if len(affines) != batch_size:
            raise ValueError(f"label has {len(affines)} affines for a batch of {batch_size}.")
        return [spacing_from_meta({"affine": a}) for a in affines]

    def _compute_list(self, y_pred: Any, y: Any = None, **kwargs: Any) -> torch.Tensor:
        """Compute a list of channel-first items one by one, each with its own spacing."""
        if y is None or len(y_pred) != len(y):
            raise ValueError(
                f"y_pred and y must be lists of the same length, got {len(y_pred)} and {None if y is None else len(y)}."
            )
        spacing = kwargs.get("spacing", self.spacing)
        if spacing is not None:
            spacings = _per_item_spacing(spacing, len(y), y[0].ndim - 1) if len(y) else []
        else:
            spacings = [self._spacing_of(item, 1)[0] for item in y]
        rows = [
            compute_organ_hd95(p.detach()[None], t.detach()[None], self.labels, spacing=s, empty=self.empty)
            for p, t, s in zip(y_pred, y, spacings)
        ]
        return torch.cat(rows, dim=0)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("y (the ground truth) is required to compute HD95.")
        spacing = kwargs.get("spacing", self.spacing)
        if spacing is None:
            spacing = self._spacing_of(y, y.shape[0])
        return compute_organ_hd95(y_pred, y, self.labels, spacing=spacing, empty=self.empty)
