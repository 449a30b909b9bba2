# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Sliding-window inference that tells every window where it lies in the full volume.

Built on MONAI's ``sliding_window_inference(..., with_coord=True)``: for every window the predictor gets the list of
slices it was cut with, which :class:`FINEInferer` turns into the window's ``roi_box`` (``[start, stop)`` per
spatial axis as fractions of the volume given to the inferer; windows over MONAI's padding of volumes smaller than
``roi_size`` get values outside [0, 1], exactly like padded training crops). With ``scan_memory=True`` it runs two
passes: the first writes every window's volume-token updates into a per-scan memory, the second segments every
window while reading it, so a voxel's prediction can use image content anywhere in the scan.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, sliding_window_inference
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = ["FINEInferer", "window_roi_boxes"]


def window_roi_boxes(
    unravel_slice: Sequence[Sequence[slice]], image_size: Sequence[int], pad_before: Sequence[int], device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``roi_box (n, 2, 3)`` and batch index ``(n,)`` of the windows MONAI's sliding window passes with_coord.

    Args:
        unravel_slice: per window ``[batch slice, channel slice, spatial slices...]`` in padded coordinates.
        image_size: spatial size of the unpadded volume.
        pad_before: padding MONAI added before each spatial axis (volumes smaller than the roi).
    """
    size = torch.tensor([float(s) for s in image_size])
    before = torch.tensor([float(p) for p in pad_before])
    starts = torch.tensor([[float(s.start) for s in sl[2:]] for sl in unravel_slice]) - before
    stops = torch.tensor([[float(s.stop) for s in sl[2:]] for sl in unravel_slice]) - before
    boxes = torch.stack([starts / size, stops / size], dim=1).to(device=device, dtype=torch.float32)
    batch = torch.tensor([sl[0].start for sl in unravel_slice], dtype=torch.long, device=device)
    return boxes, batch


def _unwrap(network: Callable) -> Callable:
    return getattr(network, "module", network)  # DataParallel / DistributedDataParallel


def _accepts(network: Callable, name: str) -> bool:
    """Whether the (unwrapped) network's forward takes the keyword ``name``."""
    fn = getattr(_unwrap(network), "forward", network)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class FINEInferer(Inferer):
    """Sliding-window inferer giving each window its ``roi_box`` (and, optionally, a shared per-scan memory).

    Called as ``inferer(inputs, network, *args, **kwargs)`` (how MONAI engines and MONAI Label call inferers);
    extra arguments go to the network. A network whose ``forward`` has no ``roi_box`` argument is run as MONAI's
    plain sliding window would run it.

    Args:
        roi_size: window size (the training crop size).
        sw_batch_size: windows per network call.
        overlap: window overlap per axis.
        mode: blending, ``"gaussian"`` (default) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window.
        padding_mode, cval: padding of volumes smaller than ``roi_size``.
        sw_device: device the windows and the network run on; ``device``: where the output is stitched (e.g.
            ``"cpu"`` for large scans).
        progress: tqdm progress bar.
        scan_memory: two passes (write the per-scan memory, then segment while reading it). Needs a network
            with ``new_scan_memory`` (``monai_fine.networks.FINE(memory="full")``); costs about 2x one pass.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.5,
        mode: str = "gaussian",
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: str = "constant",
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        scan_memory: bool = False,
    ) -> None:
        super().__init__()
        self.roi_size = ensure_tuple_rep(roi_size, 3)
        if any(int(r) < 1 for r in self.roi_size):
            raise ValueError(f"roi_size must be positive, got {self.roi_size}.")
        self.sw_kwargs = dict(
            roi_size=self.roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=mode,
            sigma_scale=sigma_scale,
            padding_mode=padding_mode,
            cval=cval,
            sw_device=sw_device,
            device=device,
            progress=progress,
        )
        self.scan_memory = scan_memory

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """
        Args:
            inputs: ``(B, C, X, Y, Z)`` preprocessed volumes.
            network: the model; gets ``(windows, roi_box=..., [scan_id=..., scan_memory=...], *args, **kwargs)``.

        Returns:
            ``(B, out_channels, X, Y, Z)`` stitched logits.
        """
        if inputs.ndim != 5:
            raise ValueError(f"FINEInferer expects (B, C, X, Y, Z) volumes, got shape {tuple(inputs.shape)}.")
        if not _accepts(network, "roi_box"):
            if self.scan_memory:
                raise ValueError("scan_memory=True needs a network whose forward takes roi_box and scan_memory.")
            return sliding_window_inference(inputs, predictor=lambda w: network(w, *args, **kwargs), **self.sw_kwargs)
        image_size = tuple(int(s) for s in inputs.shape[2:])
        pad_before = tuple(max(r - s, 0) // 2 for r, s in zip(self.roi_size, image_size))

        def predictor(memory, write: bool):
            def run(win: torch.Tensor, unravel_slice) -> torch.Tensor:
                boxes, batch = window_roi_boxes(unravel_slice, image_size, pad_before, device=win.device)
                extra = {} if memory is None else {"scan_id": batch, "scan_memory": memory}
                out = network(win, *args, roi_box=boxes, **extra, **kwargs)
                if write:  # the write pass only fills the memory; stitch a cheap placeholder
                    return torch.zeros(win.shape[0], 1, *win.shape[2:], device=win.device, dtype=win.dtype)
                return out

            return run

        memory = None
        if self.scan_memory:
            new_memory = getattr(_unwrap(network), "new_scan_memory", None)
            if new_memory is None:
                raise ValueError(
                    f"scan_memory=True needs a network with new_scan_memory(); {type(_unwrap(network)).__name__} has none."
                )
            memory = new_memory(inputs.shape[0])
            sliding_window_inference(inputs, predictor=predictor(memory, True), with_coord=True, **self.sw_kwargs)
            memory.set_mode("read")
        return sliding_window_inference(inputs, predictor=predictor(memory, False), with_coord=True, **self.sw_kwargs)
