# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Sliding-window inference that tells every window where it lies in its scan.

:class:`FINEInferer` is MONAI's :py:class:`~monai.inferers.SlidingWindowInferer` run ``with_coord=True``: the
predictor gets the slices of every window and turns them into the window's ``roi_box``, in the frame defined in
:py:mod:`monai_fine.transforms.location` (the frame ``CropLocationd`` gives training crops). With
``scan_memory=True`` it first writes a per-scan memory from the scan view (the whole input at the window size, one
network pass; :py:mod:`monai_fine.transforms.scan_view`), then segments every window while reading it, so a voxel's
prediction can use image content anywhere in the scan, exactly as the network was trained.

:class:`CastStitchInferer` runs such an inferer with the stitched output in half precision, for whole-scan
inference in bounded host memory. MONAI's ``sliding_window_inference`` stitches into a buffer of the input's dtype,
``num_classes`` channels at the full preprocessed size: 14 x 512 x 512 x 200 float32 is 2.9 GB. It hands the inner
inferer the volume in ``float16`` (so the stitching buffer, the count map and the importance map are half precision:
1.5 GB) while every window still runs through the network in ``float32`` and its logits are cast back to ``float16``
for blending. The bundle then takes the argmax on the preprocessed grid (:class:`monai_fine.transforms.ArgmaxUint8d`)
and inverts it with nearest-neighbour interpolation, so no other ``num_classes``-channel volume is ever allocated.

Accuracy trade-off: the input is rounded to float16 (intensities scaled to [0, 1]: a step of <= 2**-11, i.e. 0.2 HU
for the [-175, 250] HU window) and the blended logits carry float16 rounding (relative 2**-11); labels can change only
where two classes' logits are within that rounding. ``dtype="float32"`` restores MONAI's behaviour.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import PytorchPadMode, ensure_tuple_rep, look_up_option

from monai_fine.networks.blocks.memory import check_roi_box
from monai_fine.transforms.location import trace_operations
from monai_fine.transforms.scan_view import scan_view, whole_box

__all__ = ["FINEInferer", "CastStitchInferer", "check_sw_batch_size", "input_frames", "window_roi_boxes"]


def check_sw_batch_size(sw_batch_size: Any) -> int:
    """``sw_batch_size`` (windows per network call) as an int; refused unless a positive integer.

    MONAI's sliding window takes any value and fails only at its first call (``range() arg 3 must not be zero``): in a
    bundle at the first validation, after the training's first epochs. :class:`FINEInferer` checks it when it is
    built.

    Raises:
        ValueError: not a positive integer (``bool`` and ``float`` included).
    """
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive integer (windows per batch), got {sw_batch_size!r}.")
    return sw_batch_size


def input_frames(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each item of a batch lies in its reference volume (:py:mod:`monai_fine.transforms.location`).

    A MetaTensor is traced through its ``applied_operations`` (per item for a collated batch), exactly as
    :py:class:`monai_fine.transforms.CropLocationd` traces a training crop; a plain tensor is its own reference.

    Args:
        inputs: ``(B, C, *spatial)`` volumes.

    Returns:
        ``start (B, S)`` (voxel of the reference volume at the item's index 0) and ``size (B, S)`` (the reference
        volume's size), float64.

    Raises:
        ValueError: when an item's history cannot be traced (the message names the transform).
    """
    batch, spatial = inputs.shape[0], [int(s) for s in inputs.shape[2:]]
    start = torch.zeros(batch, len(spatial), dtype=torch.float64)
    size = torch.tensor([spatial] * batch, dtype=torch.float64)
    if not isinstance(inputs, MetaTensor):
        return start, size
    ops = inputs.applied_operations
    per_item = list(ops) if inputs.is_batch else [ops] * batch
    if len(per_item) != batch:  # e.g. a batch MetaTensor built by hand, without per-item records
        per_item = [[]] * batch
    for b, item_ops in enumerate(per_item):
        try:
            trace = trace_operations(item_ops, spatial)
        except ValueError as e:
            raise ValueError(f"FINEInferer cannot place batch item {b} in its scan: {e}") from e
        start[b], size[b] = trace.start.double(), trace.reference_size.double()
    return start, size


def window_roi_boxes(
    unravel_slice: Sequence[Sequence[slice]], start: torch.Tensor, size: torch.Tensor, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``roi_box (n, 2, S)`` and batch index ``(n,)`` of the windows MONAI's sliding window passes ``with_coord``.

    The boxes are made and checked (:func:`~monai_fine.networks.blocks.memory.check_roi_box`) on the host, then moved
    to ``device``: the check holds on every device and costs no device synchronisation.

    Args:
        unravel_slice: per window ``[batch slice, channel slice, spatial slices...]`` in the coordinates of the
            tensor the sliding window runs over.
        start: ``(B, S)`` voxel of the reference volume at index 0 of each item of that tensor.
        size: ``(B, S)`` size of each item's reference volume.
        device: device of the returned tensors.
    """
    batch = torch.tensor([sl[0].start for sl in unravel_slice], dtype=torch.long)
    lo = torch.tensor([[float(s.start) for s in sl[2:]] for sl in unravel_slice], dtype=torch.float64)
    hi = torch.tensor([[float(s.stop) for s in sl[2:]] for sl in unravel_slice], dtype=torch.float64)
    offset, scale = start[batch], size[batch]
    boxes = check_roi_box(torch.stack([(lo + offset) / scale, (hi + offset) / scale], dim=1).float())
    return boxes.to(device=device), batch.to(device)


def _unwrap(network: Callable) -> Callable:
    return getattr(network, "module", network)  # DataParallel / DistributedDataParallel


class FINEInferer(SlidingWindowInferer):
    """MONAI's sliding-window inferer giving each window its ``roi_box`` (and, optionally, a shared scan memory).

    Called as ``inferer(inputs, network, *args, **kwargs)`` (how MONAI engines and MONAI Label call inferers);
    extra arguments go to the network. Each window's ``roi_box`` is in the frame of
    :py:mod:`monai_fine.transforms.location`: the input's own place in its scan is traced from its
    ``applied_operations`` (so a ``CropForegroundd`` in the preprocessing is accounted for), and volumes smaller
    than ``roi_size`` are padded here, symmetrically as MONAI would (``padding_mode``, ``cval``), with the padding
    reflected in the boxes (values outside [0, 1], as for padded training crops) and removed from the output.

    Args:
        roi_size: window size (the training crop size, e.g. ``network.roi_size``).
        args: :py:class:`monai.inferers.SlidingWindowInferer` arguments (``sw_batch_size``, ``overlap``, ``mode``,
            ``sigma_scale``, ``padding_mode``, ``cval``, ``sw_device``, ``device``, ``progress``, ...), in its
            order. Defaults differ in two: ``overlap=0.5`` and ``mode="gaussian"``.
        pass_roi_box: give the network ``roi_box=`` (and, with ``scan_memory``, ``scan_index=``/``scan_summary=``).
            ``False`` runs the network as MONAI's plain sliding window would (for networks without ``roi_box``,
            e.g. a baseline). A network that does not accept ``roi_box`` with the default ``True`` raises a
            ``TypeError`` naming this switch: the box is never dropped silently.
        scan_memory: write the per-scan memory from the scan view of each input (one network pass at ``roi_size``),
            then segment while reading it. Needs a network with ``write_scan_memory`` (``monai_fine.networks.FINE``
            with ``memory="full"``); costs one window more than a single pass.
        kwargs: further :py:class:`~monai.inferers.SlidingWindowInferer` keywords.

    Raises:
        ValueError: for ``scan_memory=True`` with ``pass_roi_box=False``, a bad ``roi_size`` or ``sw_batch_size``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        *args: Any,
        pass_roi_box: bool = True,
        scan_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        if len(args) < 2:
            kwargs.setdefault("overlap", 0.5)
        if len(args) < 3:
            kwargs.setdefault("mode", "gaussian")
        if kwargs.pop("with_coord", pass_roi_box) != pass_roi_box:
            raise ValueError("FINEInferer sets with_coord from pass_roi_box; do not pass with_coord.")
        roi_size = ensure_tuple_rep(roi_size, 3)
        if any(int(r) < 1 for r in roi_size):
            raise ValueError(f"roi_size must be positive, got {roi_size}.")
        super().__init__(roi_size, *args, with_coord=pass_roi_box, **kwargs)
        check_sw_batch_size(self.sw_batch_size)
        if scan_memory and not pass_roi_box:
            raise ValueError("scan_memory=True needs pass_roi_box=True (the memory is addressed by roi_box).")
        self.pass_roi_box = pass_roi_box
        self.scan_memory = scan_memory

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any):
        """
        Args:
            inputs: ``(B, C, X, Y, Z)`` preprocessed volumes (a MetaTensor keeps its history for the frame).
            network: the model; gets ``(windows, *args, roi_box=..., [scan_index=..., scan_summary=...], **kwargs)``;
                with ``scan_memory`` its ``write_scan_memory(views, view_boxes)`` runs first, once per batch.
            args, kwargs: passed to the network.

        Returns:
            ``(B, out_channels, X, Y, Z)`` stitched logits (a MetaTensor with the input's metadata for one).
        """
        if inputs.ndim != 5:
            raise ValueError(f"FINEInferer expects (B, C, X, Y, Z) volumes, got shape {tuple(inputs.shape)}.")
        # MONAI's sliding window returns a MetaTensor input's output as float32 whatever the input's dtype (it converts
        # to an empty float32 MetaTensor), a full-size copy: run it on the plain tensor and put the metadata back
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if not self.pass_roi_box:
            return self._with_meta(super().__call__(plain, network, *args, **kwargs), inputs)
        start, size = input_frames(inputs)
        view_boxes = torch.stack([whole_box(start[b], size[b], inputs.shape[2:]) for b in range(inputs.shape[0])])
        spatial = [int(s) for s in inputs.shape[2:]]
        before = [max(int(r) - s, 0) // 2 for r, s in zip(self.roi_size, spatial)]
        after = [max(int(r) - s, 0) - b for r, s, b in zip(self.roi_size, spatial, before)]
        volume = plain
        if any(before) or any(after):
            pad = [p for b, a in zip(reversed(before), reversed(after)) for p in (b, a)]  # F.pad: last axis first
            mode = look_up_option(self.padding_mode, PytorchPadMode)
            volume = F.pad(plain, pad=pad, mode=mode, value=self.cval)
            start = start - torch.tensor(before, dtype=torch.float64)

        summary = None
        if self.scan_memory:
            net = _unwrap(network)
            write = getattr(net, "write_scan_memory", None)
            if write is None:
                raise ValueError(
                    f"scan_memory=True needs a network with write_scan_memory(); {type(net).__name__} has none."
                )
            if getattr(net, "scan_memory", True) is False:
                warnings.warn(
                    "FINEInferer(scan_memory=True) with a network built without scan_memory: it has no memory encoder "
                    "and was not trained to read a scan memory, so its output is not what it was trained for.",
                    stacklevel=2,
                )
            device = self.sw_device or inputs.device
            # the unpadded input: its own box, as in training; in the network's dtype (the volume may be stitched in
            # half precision, see CastStitchInferer)
            param = next(iter(net.parameters()), None) if isinstance(net, torch.nn.Module) else None
            views = scan_view(plain, self.roi_size).to(
                device=device, dtype=plain.dtype if param is None else param.dtype
            )
            summary = write(views, check_roi_box(view_boxes.float()).to(device))
        out = super().__call__(volume, self._predictor(network, start, size, summary), *args, **kwargs)
        if volume is not plain:
            crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
            out = out[(slice(None), slice(None), *crop)]
        return self._with_meta(out, inputs)

    @staticmethod
    def _with_meta(out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``out`` (same dtype, no copy) with the metadata of ``inputs`` when that is a MetaTensor."""
        if not isinstance(inputs, MetaTensor):
            return out
        return MetaTensor(out).copy_meta_from(inputs, copy_attr=False)

    @staticmethod
    def _predictor(network: Callable, start: torch.Tensor, size: torch.Tensor, summary: Any) -> Callable:
        """The ``with_coord`` predictor: ``roi_box`` (and the scan summary to read) for every window."""

        def run(win: torch.Tensor, unravel_slice: Sequence[Sequence[slice]], *args: Any, **kwargs: Any):
            boxes, batch = window_roi_boxes(unravel_slice, start, size, device=win.device)
            extra = {} if summary is None else {"scan_index": batch, "scan_summary": summary}
            try:
                out = network(win, *args, roi_box=boxes, **extra, **kwargs)
            except TypeError as e:
                if "roi_box" in str(e):
                    raise TypeError(
                        f"{type(_unwrap(network)).__name__} does not take roi_box ({e}); use "
                        "FINEInferer(..., pass_roi_box=False) for networks without it."
                    ) from e
                raise
            return out

        return run


_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class _CastWindows:
    """Calls ``module`` on float32 windows and returns its output in ``dtype``; ``.module`` exposes the network."""

    def __init__(self, module: Callable[..., torch.Tensor], compute_dtype: torch.dtype, dtype: torch.dtype) -> None:
        self.module, self.compute_dtype, self.dtype = module, compute_dtype, dtype

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.module(x.to(self.compute_dtype), *args, **kwargs)
        return out.to(self.dtype)


class CastStitchInferer(Inferer):
    """Run ``inferer`` with the volume and the stitched output in ``dtype``, the network in the input's dtype.

    Args:
        inferer: the sliding-window inferer, called as ``inferer(inputs, network)`` (e.g. ``FINEInferer``).
        dtype: ``"float16"`` (default), ``"bfloat16"`` or ``"float32"`` (no cast: MONAI's behaviour).

    Raises:
        ValueError: for another ``dtype``.
    """

    def __init__(self, inferer: Inferer, dtype: str = "float16") -> None:
        super().__init__()
        if str(dtype) not in _DTYPES:
            raise ValueError(f"stitch_dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        self.inferer, self.dtype = inferer, _DTYPES[str(dtype)]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if self.dtype == inputs.dtype:
            return self.inferer(inputs, network, *args, **kwargs)
        wrapped = _CastWindows(getattr(network, "module", network), inputs.dtype, self.dtype)
        return self.inferer(inputs.to(self.dtype), wrapped, *args, **kwargs)
