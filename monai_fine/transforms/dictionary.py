# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Dictionary-based wrappers of the monai_fine array transforms (:py:mod:`monai_fine.transforms.array`), and
:class:`PathSafeSpacingd`, MONAI's ``Spacingd`` made safe for the string entries MONAI Label adds."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Spacingd

from monai_fine.transforms.array import ArgmaxUint8, CropLocation
from monai_fine.transforms.location import scan_id_from_meta
from monai_fine.transforms.scan_view import scan_view_and_box

__all__ = [
    "CropLocationd", "CropLocationD", "CropLocationDict", "ScanViewd", "ScanViewD", "ScanViewDict",
    "ArgmaxUint8d", "ArgmaxUint8D", "ArgmaxUint8Dict", "PathSafeSpacingd", "PathSafeSpacingD", "PathSafeSpacingDict",
    "PlainTensord", "PlainTensorD", "PlainTensorDict",
]  # fmt: skip


class CropLocationd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`monai_fine.transforms.CropLocation`: write each crop's location in
    its full volume, and an id of that volume, into the data dictionary.

    ``d[roi_box_key]`` is the float32 ``(2, S)`` ``roi_box`` in the frame defined in
    :py:mod:`monai_fine.transforms.location` (the same frame :py:class:`monai_fine.inferers.FINEInferer` gives its
    windows). After ``list_data_collate`` the batch holds ``(B, 2, S)`` boxes and ``(B,)`` scan ids; the
    ``num_samples`` crops of one scan share the id.

    Place it after the crop (``RandCropByPosNegLabeld``, ``RandSpatialCropd``, ...) and any flip/``Rotate90``
    augmentation, and before transforms a box cannot follow (``RandAffined``, ``RandZoomd``, ``Resized``, ...).
    The history must survive caching: ``CacheDataset`` keeps it, ``PersistentDataset`` only with
    ``track_meta=True`` (its default stores plain tensors, and the box would then silently refer to the cached,
    already padded volume).

    Args:
        keys: keys of the corresponding items; the location is read from the first one present (a MetaTensor).
            See also: :py:class:`monai.transforms.MapTransform`
        roi_box_key: key the ``(2, S)`` box is written to.
        scan_id_key: key the int64 scalar scan id is written to (``zlib.crc32`` of ``meta["filename_or_obj"]``
            masked to 31 bits; without a filename, of the reference volume's size and affine). ``None``: not
            written.
        allow_missing_keys: don't raise exception if key is missing.

    Raises:
        KeyError: when ``roi_box_key`` or ``scan_id_key`` already exists in the data.
        ValueError: when the crop cannot be traced back to its reference volume (see
            :py:func:`monai_fine.transforms.location.crop_box_from_meta`).

    Example::

        keys = ["image", "label"]
        train_transforms = Compose([
            LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=(1.5, 1.5, 2.0)),
            RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(96, 96, 96), num_samples=4),
            RandFlipd(keys, prob=0.1, spatial_axis=0),
            CropLocationd(keys="image"),  # writes "roi_box" (2, 3) and "scan_id" ()
        ])
    """

    backend = CropLocation.backend

    def __init__(
        self,
        keys: KeysCollection,
        roi_box_key: str = "roi_box",
        scan_id_key: str | None = "scan_id",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.locator = CropLocation()
        self.roi_box_key = roi_box_key
        self.scan_id_key = scan_id_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            for key_to_add in (self.roi_box_key, self.scan_id_key):
                if key_to_add is not None and key_to_add in d:
                    raise KeyError(f"Crop location data with key {key_to_add} already exists.")
            d[self.roi_box_key] = self.locator(d[key])
            if self.scan_id_key is not None:
                d[self.scan_id_key] = scan_id_from_meta(d[key])
            break  # the location is read from the first key present
        return d


CropLocationD = CropLocationDict = CropLocationd


class ScanViewd(MapTransform):
    """
    Write the scan view of a whole preprocessed volume, and its ``roi_box``, into the data dictionary (see
    :py:mod:`monai_fine.transforms.scan_view`): what a FINE network with ``scan_memory`` writes its per-scan memory
    from, in training as :py:class:`monai_fine.inferers.FINEInferer` does at inference.

    Place it after the deterministic preprocessing (orientation, spacing, intensity scaling; it is cached with them)
    and before the random crops: ``RandCropByPosNegLabeld`` and the other croppers copy keys they do not crop into
    every crop's dictionary, so each crop carries its scan's view. :py:class:`monai_fine.engines.PrepareScanBatch`
    then gives the network one view per scan.

    Args:
        keys: the image key(s); the view is made from the first one present.
        spatial_size: the view's size, the network's crop size (``roi_size``).
        view_key: key of the plain float32 ``(C, *spatial_size)`` view.
        box_key: key of the float32 ``(2, S)`` box of the whole volume in its reference frame.
        allow_missing_keys: don't raise exception if key is missing.

    Raises:
        KeyError: when ``view_key`` or ``box_key`` already exists in the data.
        ValueError: when the volume cannot be traced to its reference (see
            :py:func:`monai_fine.transforms.location.trace_crop`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        view_key: str = "scan_view",
        box_key: str = "scan_view_box",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.view_key, self.box_key = view_key, box_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            for key_to_add in (self.view_key, self.box_key):
                if key_to_add in d:
                    raise KeyError(f"Scan view data with key {key_to_add} already exists.")
            d[self.view_key], d[self.box_key] = scan_view_and_box(d[key], self.spatial_size)
            break
        return d


ScanViewD = ScanViewDict = ScanViewd


class ArgmaxUint8d(MapTransform):
    """Dictionary-based wrapper of :py:class:`monai_fine.transforms.ArgmaxUint8`: channel argmax straight into a
    ``uint8`` label map, slab by slab along the last axis.

    Equal to ``AsDiscreted(argmax=True, dtype=torch.uint8)`` but without the full-size ``int64`` index volume that
    ``torch.argmax`` returns (0.4 GB for 512 x 512 x 200). Metadata and applied operations of a ``MetaTensor`` are
    kept, so ``Invertd`` can follow.

    Args:
        keys: keys of ``(C, X, Y, Z)`` tensors, ``C <= 256``.
        slab: slices along the last axis per step.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: more than 256 channels (naming the key).
    """

    backend = ArgmaxUint8.backend

    def __init__(self, keys: KeysCollection, slab: int = 8, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.argmax = ArgmaxUint8(slab)

    @property
    def slab(self) -> int:
        return self.argmax.slab

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] > 256:
                raise ValueError(f"ArgmaxUint8d: {d[key].shape[0]} channels do not fit uint8 labels ({key}).")
            d[key] = self.argmax(d[key])
        return d


ArgmaxUint8D = ArgmaxUint8Dict = ArgmaxUint8d


class PathSafeSpacingd(Spacingd):
    """:class:`monai.transforms.Spacingd` that leaves non-dictionary ``<key>_*`` entries alone.

    Since MONAI 1.6, ``Spacingd`` updates every ``<key>_*`` entry of the data with the image metadata; MONAI Label adds
    ``image_path`` (a string) and inference fails with ``AttributeError: 'str' object has no attribute 'update'``.
    The entries are set aside during the call and put back unchanged. It takes ``Spacingd``'s arguments.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{k}_" for k in self.keys)
        aside = {
            k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)
        }
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


PathSafeSpacingD = PathSafeSpacingDict = PathSafeSpacingd


class PlainTensord(MapTransform):
    """The items as plain ``torch.Tensor`` for collation, with the metadata entries that handlers still read.

    The last transform of a training item, after :class:`CropLocationd` has read the crop's location from the
    ``MetaTensor`` history: nothing downstream of it needs the rest. A batch of plain tensors is collated, decollated
    by MONAI's engines and fed to the network without MONAI's per-item and per-operation metadata bookkeeping (at the
    demo's size that bookkeeping is about a millisecond an iteration, ``docs/benchmarks.md``). The entries of
    ``keep_meta`` go to ``d[f"{key}_meta_dict"]``, MONAI's layout for the metadata of a plain tensor, where
    :func:`monai_fine.handlers.batch_case_names` finds the case's file name for an error that names the case.

    Args:
        keys: keys of the items to convert (``MetaTensor`` or plain tensors; a plain tensor is left as it is).
        keep_meta: metadata entries kept, when present (default: the source file name).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        KeyError: when ``f"{key}_meta_dict"`` already exists in the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        keep_meta: Sequence[str] = ("filename_or_obj",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.keep_meta = tuple(keep_meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if not isinstance(value, MetaTensor):
                continue
            meta_key = f"{key}_meta_dict"
            if meta_key in d:
                raise KeyError(f"PlainTensord: data with key {meta_key} already exists.")
            kept = {k: value.meta[k] for k in self.keep_meta if k in value.meta}
            if kept:
                d[meta_key] = kept
            d[key] = value.as_tensor()
        return d


PlainTensorD = PlainTensorDict = PlainTensord
