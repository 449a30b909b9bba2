# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Export :class:`~monai_fine.networks.FINE` with its memory: TorchScript (trace) and ONNX, ``roi_box`` included.

The exported graph takes ``x`` and, with ``roi_box=True``, the ``(B, 2, 3)`` crop location: which memory cells a crop
reads is computed inside the graph, so the exported network keeps the volume-token memory (the visit record
``memory_visits`` of the trained network is baked in as a constant, as it is in eval mode). The window layout is
specialised to the export size (export once per crop size; ``FINEInferer`` always feeds ``roi_size`` windows); the
batch size is dynamic in ONNX.

Not exported: the scan memory (a Python object filled by the scan view's pass; scan-memory inference stays in
PyTorch) and
``torch.jit.script`` (the forward takes that Python object and keyword arguments TorchScript cannot type; trace it).
``roi_box`` values are not validated inside the graph: check them with
:func:`~monai_fine.networks.blocks.memory.check_roi_box` where they are produced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FINEExportWrapper", "example_inputs", "trace_fine", "export_onnx"]


class FINEExportWrapper(nn.Module):
    """``forward(x[, roi_box])`` of a FINE network in eval mode: positional tensors only, logits only.

    Args:
        network: a :class:`~monai_fine.networks.FINE`.
        roi_box: take ``roi_box`` as a second input (False: the input is the whole volume, ``roi_box=None``).
    """

    def __init__(self, network: nn.Module, roi_box: bool = True) -> None:
        super().__init__()
        self.network = network
        self.with_roi_box = roi_box

    def forward(self, x: torch.Tensor, roi_box: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(x, roi_box if self.with_roi_box else None)


def example_inputs(
    network: nn.Module, roi_size: Sequence[int] | None = None, batch_size: int = 1, roi_box: bool = True
) -> tuple[torch.Tensor, ...]:
    """Random ``x`` of ``roi_size`` (default ``network.roi_size``) and a whole-volume ``roi_box`` on the
    network's device.

    Raises:
        ValueError: no ``roi_size`` given and the network has none.
    """
    size = roi_size if roi_size is not None else getattr(network, "roi_size", None)
    if size is None:
        raise ValueError("roi_size is needed: the network has no roi_size.")
    p = next(network.parameters())
    x = torch.randn(batch_size, network.in_channels, *(int(s) for s in size), device=p.device, dtype=p.dtype)
    if not roi_box:
        return (x,)
    box = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], device=p.device).expand(batch_size, 2, 3).contiguous()
    return x, box


def trace_fine(
    network: nn.Module, roi_size: Sequence[int] | None = None, roi_box: bool = True, batch_size: int = 1
) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the network in eval mode at ``roi_size``, taking ``(x, roi_box)`` (or ``x``).

    The trace runs at the traced spatial size (any batch size, any ``roi_box``); save it with
    ``torch.jit.save``.
    """
    network = network.eval()
    wrapper = FINEExportWrapper(network, roi_box).eval()
    with torch.no_grad():
        return torch.jit.trace(wrapper, example_inputs(network, roi_size, batch_size, roi_box), check_trace=False)


def export_onnx(
    network: nn.Module,
    path: str | os.PathLike,
    roi_size: Sequence[int] | None = None,
    roi_box: bool = True,
    opset_version: int | None = None,
    dynamo: bool = False,
) -> str:
    """Export the network in eval mode to ONNX at ``roi_size`` with inputs ``x`` (and ``roi_box``), output
    ``logits``; the batch axis is dynamic.

    Args:
        network: a :class:`~monai_fine.networks.FINE`.
        path: the ``.onnx`` file to write.
        roi_size: spatial size of ``x`` (default ``network.roi_size``).
        roi_box: export the ``roi_box (B, 2, 3)`` input (False: whole-volume input, as ``monai.bundle onnx_export``
            gives only ``x``).
        opset_version: ONNX opset (default 17 for the TorchScript-based exporter, 18 for the dynamo one).
        dynamo: use the ``torch.export``-based exporter instead of the TorchScript-based one.

    Returns:
        ``str(path)``.
    """
    network = network.eval()
    wrapper = FINEExportWrapper(network, roi_box).eval()
    # batch 2: torch.export specialises a size-1 dimension to a constant
    inputs = example_inputs(network, roi_size, 2 if dynamo else 1, roi_box)
    names = ["x", "roi_box"][: len(inputs)]
    if opset_version is None:
        opset_version = 18 if dynamo else 17
    kwargs: dict = {"input_names": names, "output_names": ["logits"], "opset_version": opset_version, "dynamo": dynamo}
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        kwargs["dynamic_shapes"] = {name: {0: batch} for name in names}
    else:
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in [*names, "logits"]}
    with torch.no_grad():
        torch.onnx.export(wrapper, inputs, str(path), **kwargs)
    return str(path)
