# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Whole-scan inference in bounded host memory: stitch the sliding-window output in half precision.

MONAI's ``sliding_window_inference`` stitches into a buffer of the input's dtype, ``num_classes`` channels at the
full preprocessed size: 14 x 512 x 512 x 200 float32 is 2.9 GB. :class:`CastStitchInferer` hands the inner inferer
the volume in ``float16`` (so the stitching buffer, the count map and the importance map are half precision: 1.5 GB)
while every window still runs through the network in ``float32`` and its logits are cast back to ``float16`` for
blending. The bundle then takes the argmax on the preprocessed grid and inverts it with nearest-neighbour
interpolation, so no other ``num_classes``-channel volume is ever allocated.

Accuracy trade-off: the input is rounded to float16 (intensities scaled to [0, 1]: a step of <= 2**-11, i.e. 0.2 HU
for the [-175, 250] HU window) and the blended logits carry float16 rounding (relative 2**-11); labels can change only
where two classes' logits are within that rounding. ``dtype="float32"`` restores MONAI's behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import MapTransform

__all__ = ["CastStitchInferer", "ArgmaxUint8d"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class _CastWindows:
    """Calls ``module`` on float32 windows and returns its output in ``dtype``; ``.module`` exposes the network."""

    def __init__(self, module: Callable[..., torch.Tensor], compute_dtype: torch.dtype, dtype: torch.dtype) -> None:
        self.module, self.compute_dtype, self.dtype = module, compute_dtype, dtype

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.module(x.to(self.compute_dtype), *args, **kwargs)
        return None if out is None else out.to(self.dtype)  # (a scan-memory write pass returns None)


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


class ArgmaxUint8d(MapTransform):
    """Channel argmax straight into a ``uint8`` label map, slab by slab along the last axis.

    Equal to ``AsDiscreted(argmax=True, dtype=torch.uint8)`` but without the full-size ``int64`` index volume that
    ``torch.argmax`` returns (0.4 GB for 512 x 512 x 200). Metadata and applied operations of a ``MetaTensor`` are
    kept, so ``Invertd`` can follow.

    Args:
        keys: keys of ``(C, X, Y, Z)`` tensors, ``C <= 256``.
        slab: slices along the last axis per step.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: more than 256 channels.
    """

    def __init__(self, keys: KeysCollection, slab: int = 8, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slab = max(int(slab), 1)

    def __call__(self, data: Any) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if x.shape[0] > 256:
                raise ValueError(f"ArgmaxUint8d: {x.shape[0]} channels do not fit uint8 labels ({key}).")
            raw = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
            out = torch.empty((1, *raw.shape[1:]), dtype=torch.uint8, device=raw.device)
            for z in range(0, raw.shape[-1], self.slab):
                out[..., z : z + self.slab] = raw[..., z : z + self.slab].argmax(0, keepdim=True)
            if isinstance(x, MetaTensor):
                out = MetaTensor(out, meta=x.meta, applied_operations=x.applied_operations)
            d[key] = out
        return d
