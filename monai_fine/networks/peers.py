# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The networks a user would train instead of FINE, defined once: for the bundle (``arch``: ``"dynunet"`` or
``"swinunetr"``, through :func:`create_peer` and :class:`PeerNetwork`) and the benchmarks (``bench_network.py``,
``gpu_report.py``).

- :func:`swinunetr`: MONAI's ``SwinUNETR(in_channels=1, out_channels=14, feature_size=48)``, the Model Zoo BTCV
  network, with MONAI's defaults.
- :func:`nnunet_dynunet`: MONAI's ``DynUNet`` configured as nnU-Net's ``3d_fullres`` plan for BTCV at a given patch.
- :func:`create_peer`: either of them as the bundle trains, evaluates and serves it (:class:`PeerNetwork`: it takes
  the crop's ``roi_box`` that the bundle's ``prepare_batch`` and ``FINEInferer`` give every network, and returns
  deep supervision as the list ``DeepSupervisionLoss`` takes).

How the nnU-Net plan is derived (read in nnU-Net v2, ``MIC-DKFZ/nnUNet``,
``nnunetv2/experiment_planning/experiment_planners/network_topology.py`` (``get_pool_and_conv_props``) and
``default_experiment_planner.py`` (``ExperimentPlanner``); the deep-supervision weights in
``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py``):

1. Target spacing: BTCV's median spacing, 0.76 x 0.76 x 3.0 mm (x, y, z; the bundle's ``pixdim``).
2. Topology (:func:`nnunet_plan`): starting from the patch and the spacing, nnU-Net repeatedly pools (stride 2) every
   axis that is still at least ``2 * 4`` voxels long (bottleneck edge >= 4, ``UNet_featuremap_min_edge_length``) and
   whose current spacing is within a factor 2 of the smallest current spacing (a single such axis is pooled only
   while it has at least ``3 * 4`` voxels). An axis's convolution kernel is 1 until its spacing comes within a factor
   2 of the smallest spacing, then 3 for good; the bottleneck always gets 3 x 3 x 3. At the paper's crop
   128 x 128 x 64 this gives 6 stages: kernels ``(3,3,1), (3,3,3) x 5``, strides ``(1,1,1), (2,2,1), (2,2,2) x 4``
   (total stride (32, 32, 16), the same as ``fine_bcv``), bottleneck 4 x 4 x 4. nnU-Net picks the patch itself from
   a GPU-memory estimate; here the patch is fixed to the crop being compared, and the plan follows from it.
3. Filters: ``min(32 * 2**stage, 320)`` -> 32, 64, 128, 256, 320, 320; two convolutions per stage in the encoder and
   the decoder; instance norm (affine, eps 1e-5) and leaky ReLU (0.01): ``DynUNet``'s defaults (``res_block=False``).
4. Deep supervision: nnU-Net supervises every decoder output but the lowest one, with weights ``1 / 2**i``
   normalised to sum 1. With 6 stages that is the full resolution plus 3 lower ones: ``deep_supervision=True,
   deep_supr_num=3`` and :func:`ds_loss_weights` ``(3) = [8, 4, 2, 1] / 15``. MONAI's ``DynUNet`` upsamples its lower
   outputs to the full size and stacks them (nnU-Net downsamples the label instead); :func:`ds_outputs` turns that
   stack into the list ``DeepSupervisionLoss`` takes.
5. Training: ``DiceCELoss`` with that deep supervision, SGD (lr 0.01, momentum 0.99, Nesterov, weight decay 3e-5),
   batch 2 (``UNet_min_batch_size``): the recipe the FINE bundle uses too.

Remaining differences from nnU-Net's ``PlainConvUNet``: DynUNet's convolutions have no bias (nnU-Net's do; instance
norm follows each one, so this changes no output) and its transposed convolutions have none either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "BTCV_SPACING",
    "PEERS",
    "PeerNetwork",
    "check_roi",
    "create_peer",
    "ds_loss_weights",
    "ds_outputs",
    "nnunet_dynunet",
    "nnunet_plan",
    "permute_rearrange",
    "swinunetr",
]

BTCV_SPACING = (0.76, 0.76, 3.0)  # mm, x y z: the BTCV median spacing nnU-Net resamples to


def _pooling(patch_size: Sequence[int], spacing: Sequence[float], min_edge: int) -> tuple[list, list]:
    """nnU-Net's pooling steps (module docstring, item 2): the kernel and the stride of every stage but the
    bottleneck, ``strides[0]`` being ``[1, 1, 1]``."""
    dim = len(spacing)
    cur_spacing, cur_size = [float(s) for s in spacing], [float(p) for p in patch_size]
    kernel = [1] * dim
    kernels, strides = [], [[1] * dim]
    while True:
        axes = [a for a in range(dim) if cur_size[a] >= 2 * min_edge]
        if not axes:
            break
        finest = min(cur_spacing[a] for a in axes)
        axes = [a for a in axes if cur_spacing[a] / finest < 2]
        if len(axes) == 1 and cur_size[axes[0]] < 3 * min_edge:
            break
        finest_all = min(cur_spacing)
        kernel = [3 if kernel[a] == 3 or cur_spacing[a] / finest_all < 2 else 1 for a in range(dim)]
        stride = [2 if a in axes else 1 for a in range(dim)]
        for a in axes:
            cur_spacing[a] *= 2
            cur_size[a] = -(-cur_size[a] // 2)
        kernels.append(list(kernel))
        strides.append(stride)
    return kernels, strides


def nnunet_plan(
    patch_size: Sequence[int],
    spacing: Sequence[float] = BTCV_SPACING,
    min_edge: int = 4,
    base_features: int = 32,
    max_features: int = 320,
) -> dict:
    """nnU-Net's 3d_fullres network topology for ``patch_size`` at ``spacing`` (see the module docstring).

    Args:
        patch_size: the patch (crop) in voxels per axis.
        spacing: the target spacing in mm per axis, in the same axis order as ``patch_size``.
        min_edge: the smallest bottleneck edge in voxels (nnU-Net: 4).
        base_features, max_features: filters of the first stage and the cap (nnU-Net 3D: 32 and 320).

    Returns:
        ``{"kernel_size", "strides", "filters", "deep_supr_num", "total_stride"}``: per-stage lists as ``DynUNet``
        takes them (``strides[0]`` is ``[1, 1, 1]``), and the number of lower deep-supervision outputs.

    Raises:
        ValueError: when ``patch_size`` and ``spacing`` differ in length or hold a non-positive value, or when
            ``patch_size`` is not divisible by the total stride the plan needs.
    """
    if len(patch_size) != len(spacing) or min(patch_size) < 1 or min(spacing) <= 0:
        raise ValueError(f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)}: need equal lengths, > 0.")
    dim = len(spacing)
    kernels, strides = _pooling(patch_size, spacing, min_edge)
    kernels.append([3] * dim)  # the bottleneck
    total = [1] * dim
    for s in strides:
        total = [t * v for t, v in zip(total, s)]
    if any(p % t for p, t in zip(patch_size, total)):
        raise ValueError(f"patch_size {tuple(patch_size)} must be divisible by the plan's total stride {tuple(total)}.")
    n = len(strides)
    filters = [min(base_features * 2**i, max_features) for i in range(n)]
    # nnU-Net supervises the decoder outputs above the lowest one: n - 2 lower outputs besides the full one
    return {
        "kernel_size": kernels,
        "strides": strides,
        "filters": filters,
        "deep_supr_num": max(n - 3, 0),
        "total_stride": total,
    }


def ds_loss_weights(deep_supr_num: int) -> list[float]:
    """nnU-Net's deep-supervision weights ``1 / 2**i`` over the full output and ``deep_supr_num`` lower ones,
    normalised to sum 1."""
    raw = [0.5**i for i in range(deep_supr_num + 1)]
    return [w / sum(raw) for w in raw]


def nnunet_dynunet(
    patch_size: Sequence[int],
    in_channels: int = 1,
    out_channels: int = 14,
    deep_supervision: bool = True,
    **plan_kwargs: Any,
):
    """MONAI ``DynUNet`` with nnU-Net's 3d_fullres plan for BTCV at ``patch_size`` (see the module docstring).

    Args:
        patch_size: the crop in voxels (x, y, z).
        in_channels, out_channels: image channels and classes (background included).
        deep_supervision: the plan's deep supervision (nnU-Net's: every decoder output but the lowest); ``False``
            builds the same network without the extra heads.
        plan_kwargs: further arguments of :func:`nnunet_plan` (``spacing``, ``base_features``, ``max_features``;
            the benchmarks' tiny CPU mode uses smaller filters).

    Returns:
        ``(network, plan)``; in training mode the network returns the ``(B, 1 + deep_supr_num, C, ...)`` stack that
        :func:`ds_outputs` splits.
    """
    from monai.networks.nets import DynUNet

    plan = nnunet_plan(patch_size, **plan_kwargs)
    net = DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=plan["kernel_size"],
        strides=plan["strides"],
        upsample_kernel_size=plan["strides"][1:],
        filters=plan["filters"],
        norm_name=("INSTANCE", {"affine": True, "eps": 1e-5}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=deep_supervision and plan["deep_supr_num"] > 0,
        deep_supr_num=max(plan["deep_supr_num"], 1),
        res_block=False,
    )
    return net, plan


def ds_outputs(out):
    """DynUNet's stacked deep-supervision output ``(B, K, C, ...)`` as the list ``[full, lower...]`` that MONAI's
    ``DeepSupervisionLoss`` takes; any other output is returned unchanged."""
    if isinstance(out, torch.Tensor) and out.ndim == 6:
        return list(torch.unbind(out, dim=1))
    return out


def permute_rearrange(x, pattern: str):
    """``einops.rearrange`` for a pure permutation of named axes (``"b c d h w -> b d h w c"``): all that MONAI's
    SwinUNETR asks of einops.

    Raises:
        ValueError: for a pattern that groups, splits or renames axes.
    """
    left, _, right = pattern.partition("->")
    src, dst = left.split(), right.split()
    if "(" in pattern or sorted(src) != sorted(dst) or len(set(src)) != len(src) or len(src) != x.ndim:
        raise ValueError(f"permute_rearrange takes a permutation of the {x.ndim} axes, got {pattern!r}.")
    return x.permute(*[src.index(a) for a in dst])


def swinunetr(in_channels: int = 1, out_channels: int = 14, feature_size: int = 48, use_checkpoint: bool = False):
    """MONAI's ``SwinUNETR`` with its defaults (``feature_size=48``: the Model Zoo BTCV network).

    SwinUNETR moves channels with ``einops.rearrange``, an optional MONAI dependency; where einops is not installed
    (the GPU report's machine has only torch, MONAI, Ignite, nibabel, fire, numpy and scipy), MONAI's module gets
    :func:`permute_rearrange` instead, which computes the same permutations.
    """
    from monai.networks.nets import SwinUNETR, swin_unetr
    from monai.utils import optional_import

    if not optional_import("einops")[1]:
        swin_unetr.rearrange = permute_rearrange
    return SwinUNETR(
        in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, use_checkpoint=use_checkpoint
    )


#: the peers :func:`create_peer` builds, and the arguments each takes besides the channels and ``roi_size``: ``spacing``
#: (the training voxel size in mm, x y z) and the filters plan DynUNet; ``feature_size`` sizes SwinUNETR.
PEERS: dict[str, tuple[str, ...]] = {
    "dynunet": ("spacing", "base_features", "max_features"),
    "swinunetr": ("feature_size",),
}


class PeerNetwork(nn.Module):
    """A peer as the bundle runs it, in place of FINE.

    The bundle's ``prepare_batch`` and :py:class:`monai_fine.inferers.FINEInferer` give every network each crop's
    ``roi_box``; a peer has no location input, so it takes the box and does not use it (that is the difference the
    comparison measures). In training mode a DynUNet's stacked deep-supervision output becomes the list
    ``[full, lower...]`` that ``DeepSupervisionLoss`` takes; in eval mode the network returns its logits.

    Attributes:
        net: the MONAI network.
        arch: its name in :data:`PEERS`.
        roi_size: the crop it was built for.
        scan_memory: ``False`` (a peer has no per-scan memory; read by :py:class:`~monai_fine.inferers.FINEInferer`).
    """

    scan_memory = False

    def __init__(self, net: nn.Module, arch: str, roi_size: Sequence[int]) -> None:
        super().__init__()
        self.net, self.arch, self.roi_size = net, arch, tuple(int(r) for r in roi_size)

    def forward(self, x: torch.Tensor, roi_box: torch.Tensor | None = None) -> torch.Tensor | list[torch.Tensor]:
        out = self.net(x)
        return ds_outputs(out) if self.training else out


def check_roi(arch: str, roi_size: Sequence[int], spacing: Sequence[float] | None = None) -> list[int]:
    """``roi_size`` as ints when the peer ``arch`` takes it as its training crop (checked before any work is done).

    Args:
        arch: a peer of :data:`PEERS`.
        roi_size: the crop (x, y, z).
        spacing: with ``"dynunet"``, the training spacing: the crop is also checked against nnU-Net's plan for it
            (:func:`nnunet_plan`); None leaves that to :func:`nnunet_dynunet`, which plans anyway.

    Raises:
        ValueError: not 3 positive sizes; for ``"swinunetr"`` not multiples of 32 (its 5 halvings) with one of them at
            least 64 (its instance norm at the bottleneck needs more than one voxel), naming the nearest larger roi;
            for ``"dynunet"`` with ``spacing``, a crop the plan's total stride does not divide.
    """
    roi = [int(r) for r in roi_size]
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be 3 positive sizes (x, y, z), got {roi_size!r}.")
    if arch == "swinunetr" and (any(r % 32 for r in roi) or max(roi) < 64):
        ok = [max(-(-r // 32) * 32, 64 if i == 0 and max(roi) <= 32 else 32) for i, r in enumerate(roi)]
        raise ValueError(
            f"SwinUNETR needs roi_size in multiples of 32 (its 5 halvings), one of them at least 64 (its instance "
            f"norm at the bottleneck needs more than one voxel), got {roi}; the nearest larger is {ok}."
        )
    if arch == "dynunet" and spacing is not None:
        nnunet_plan(roi, spacing)
    return roi


def create_peer(
    arch: str,
    roi_size: Sequence[int],
    in_channels: int = 1,
    out_channels: int = 14,
    deep_supervision: bool = True,
    use_checkpoint: bool = False,
    **kwargs: Any,
) -> PeerNetwork:
    """A peer network for the bundle (:func:`monai_fine.bundle_tools.create_network` with ``arch``).

    Args:
        arch: ``"dynunet"`` (nnU-Net's 3d_fullres plan for ``roi_size`` at ``spacing``, :func:`nnunet_dynunet`) or
            ``"swinunetr"`` (:func:`swinunetr`).
        roi_size: the training crop (x, y, z): it decides DynUNet's plan; SwinUNETR needs multiples of 32, one of
            them at least 64.
        in_channels, out_channels: image channels and classes (background included).
        deep_supervision: DynUNet's deep supervision as nnU-Net plans it (SwinUNETR has none).
        use_checkpoint: SwinUNETR's activation checkpointing (DynUNet has none).
        kwargs: the arch's arguments of :data:`PEERS` (``spacing`` default :data:`BTCV_SPACING`; ``feature_size``
            default 48; ``base_features`` 32, ``max_features`` 320).

    Raises:
        ValueError: an unknown ``arch``, an argument the arch does not take (naming the ones it does), a
            ``roi_size`` it cannot take (naming the value and the nearest sizes it can).
    """
    if arch not in PEERS:
        raise ValueError(f"arch must be 'fine' or one of the peers {sorted(PEERS)}, got {arch!r}.")
    unknown = sorted(set(kwargs) - set(PEERS[arch]))
    if unknown:
        raise ValueError(f"arch {arch!r} takes {list(PEERS[arch])} besides the channels and roi_size, got {unknown}.")
    roi = check_roi(arch, roi_size)
    if arch == "swinunetr":
        net = swinunetr(in_channels, out_channels, int(kwargs.get("feature_size", 48)), use_checkpoint=use_checkpoint)
        return PeerNetwork(net, arch, roi)
    spacing = [float(s) for s in kwargs.get("spacing") or BTCV_SPACING]
    plan = {k: int(kwargs[k]) for k in ("base_features", "max_features") if k in kwargs}
    net, _ = nnunet_dynunet(roi, in_channels, out_channels, deep_supervision=deep_supervision, spacing=spacing, **plan)
    return PeerNetwork(net, arch, roi)
