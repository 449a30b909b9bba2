# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Engine helpers: how a training batch reaches a FINE network, and the data loader (and its workers) that brings it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from monai.data import DataLoader, MetaTensor, ThreadDataLoader
from monai.engines import PrepareBatchExtraInput

__all__ = ["PrepareScanBatch", "data_loader", "default_num_workers", "one_view_per_scan", "plain"]


def default_num_workers(
    device: str | torch.device,
    cpu_count: int | None = None,
    max_workers: int = 4,
    cache_device: str | torch.device = "cpu",
) -> int:
    """Data-loader workers for training on ``device`` with ``cpu_count`` cores (default ``os.cpu_count()``).

    On CPU the training step's threads already use every core, and each worker process takes cores from them; the
    bundle's random transforms are a crop and intensity changes of a cached volume (milliseconds), so below 8 cores
    no worker (0: the transforms run in the training process) is faster, and above that one worker per 8 cores is
    enough. On an accelerator the host cores are free for loading: ``cpu_count - 1`` workers, at most ``max_workers``;
    but with the cached volumes on the accelerator (``cache_device``) none: the crops run there, and worker processes
    cannot take its tensors.
    """
    if torch.device(cache_device).type != "cpu":
        return 0
    cores = max(1, int(cpu_count or os.cpu_count() or 1))
    if torch.device(device).type == "cpu":
        return 0 if cores < 8 else min(max_workers, cores // 8)
    return min(max_workers, cores - 1)


def data_loader(
    dataset: Any,
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
    thread: bool = False,
    cache_device: str | torch.device = "cpu",
    **kwargs: Any,
) -> DataLoader:
    """The bundle's data loader: MONAI's ``DataLoader``, or with ``thread`` its ``ThreadDataLoader`` (the random
    transforms of the next batch run in a background thread while the current one trains: MONAI's fast-training
    recipe with the cached volumes on the accelerator, where workers cannot take them).

    Args:
        dataset, batch_size, shuffle, num_workers, kwargs: as for ``torch.utils.data.DataLoader``.
        thread: ``ThreadDataLoader`` (with ``num_workers 0``, the batches are made in its thread).
        cache_device: where the dataset's cached volumes live (the bundle's ``cache_device``); off the CPU the loader
            must have no worker processes.

    Raises:
        ValueError: ``num_workers > 0`` with the cache on an accelerator (worker processes cannot share its tensors).
    """
    if torch.device(cache_device).type != "cpu" and int(num_workers) > 0:
        raise ValueError(
            f"num_workers must be 0 when the cached volumes are on {cache_device} (cache_device): worker processes "
            f"cannot take accelerator tensors; got num_workers {num_workers}. Set num_workers 0 (thread_loader true "
            "overlaps the random crops with training instead)."
        )
    loader = ThreadDataLoader if thread else DataLoader
    return loader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=int(num_workers), **kwargs)


def plain(value: Any) -> Any:
    """``value`` as a plain ``torch.Tensor`` when it is a ``MetaTensor`` (same storage, no copy), else unchanged.

    A ``MetaTensor`` runs every operation through its ``__torch_function__`` (metadata bookkeeping): in the network,
    the loss and their backward that is a fixed cost per operation that the training step does not need.
    """
    return value.as_tensor() if isinstance(value, MetaTensor) else value


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
    scan views (:py:class:`monai_fine.transforms.ScanViewd`), one view per scan with ``scan_index`` mapping crops to
    views (from the data's ``scan_id``), so the network writes its scan memory once per scan
    (:py:meth:`monai_fine.networks.FINE.forward`).

    Everything it returns is a plain ``torch.Tensor`` (:func:`plain`): the network and the loss need no metadata, and
    a ``MetaTensor`` would make each of their operations pay its dispatch. The bundle's training batches are plain
    already (:class:`monai_fine.transforms.PlainTensord` ends the crops' transforms, keeping the file names in
    ``image_meta_dict``); a batch of ``MetaTensor`` items keeps its metadata in ``engine.state.batch``.

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
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, label, args, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        image, label, args = plain(image), plain(label), tuple(plain(a) for a in args)
        extra = {k: plain(v) for k, v in extra.items()}
        if self.view_key in batchdata:
            views, boxes, index = one_view_per_scan(
                batchdata[self.view_key], batchdata.get(self.view_box_key), batchdata.get(self.scan_id_key)
            )
            extra["scan_view"] = plain(views).to(device=device, non_blocking=non_blocking, **kwargs)
            if boxes is not None:
                extra["scan_view_box"] = boxes.to(device=device, non_blocking=non_blocking)
            extra["scan_index"] = index.to(device=device, non_blocking=non_blocking)
        return image, label, args, extra
