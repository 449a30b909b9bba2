# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Engine helpers: how a training batch reaches a FINE network."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines import PrepareBatchExtraInput

__all__ = ["PrepareScanBatch", "one_view_per_scan"]


def one_view_per_scan(
    scan_view: torch.Tensor, scan_view_box: torch.Tensor | None, scan_id: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Keep one scan view per scan of a batch of crops (every crop carries a copy of its scan's view).

    Args:
        scan_view: ``(B, C, *roi)`` the view each crop carries.
        scan_view_box: ``(B, 2, 3)`` their boxes, or None.
        scan_id: ``(B,)`` scan ids (:py:class:`monai_fine.transforms.CropLocationd`); None: every crop is its own scan.

    Returns:
        ``views (S, C, *roi)``, ``boxes (S, 2, 3)`` or None, and ``index (B,)``: crop ``i`` reads view ``index[i]``.
        Views keep the order of first appearance.
    """
    batch = scan_view.shape[0]
    if scan_id is None:
        return scan_view, scan_view_box, torch.arange(batch)
    ids = torch.as_tensor(scan_id).reshape(-1).cpu().tolist()  # a host tensor from the data loader
    if len(ids) != batch:
        raise ValueError(f"{len(ids)} scan ids for {batch} scan views.")
    first: dict[int, int] = {}
    index = [first.setdefault(int(i), len(first)) for i in ids]
    keep = torch.tensor([ids.index(i) for i in first], dtype=torch.long)  # first crop of each scan
    boxes = None if scan_view_box is None else scan_view_box[keep]
    return scan_view[keep], boxes, torch.tensor(index, dtype=torch.long)


class PrepareScanBatch(PrepareBatchExtraInput):
    """``prepare_batch`` of a FINE trainer: the image, the label, each crop's ``roi_box`` and, when the batch holds
    scan views (:py:class:`monai_fine.transforms.ScanViewd`), one view per scan with ``scan_id`` mapping crops to
    views, so the network writes its scan memory once per scan (:py:meth:`monai_fine.networks.FINE.forward`).

    Args:
        roi_box_key, scan_id_key, view_key, view_box_key: keys in the batch dictionary.
    """

    def __init__(
        self,
        roi_box_key: str = "roi_box",
        scan_id_key: str = "scan_id",
        view_key: str = "scan_view",
        view_box_key: str = "scan_view_box",
    ) -> None:
        super().__init__({"roi_box": roi_box_key})
        self.scan_id_key, self.view_key, self.view_box_key = scan_id_key, view_key, view_box_key

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, label, args, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        if self.view_key in batchdata:
            views, boxes, index = one_view_per_scan(
                batchdata[self.view_key], batchdata.get(self.view_box_key), batchdata.get(self.scan_id_key)
            )
            extra["scan_view"] = views.to(device=device, non_blocking=non_blocking, **kwargs)
            if boxes is not None:
                extra["scan_view_box"] = boxes.to(device=device, non_blocking=non_blocking)
            extra["scan_id"] = index.to(device=device, non_blocking=non_blocking)
        return image, label, args, extra
