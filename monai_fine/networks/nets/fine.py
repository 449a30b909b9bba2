# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""FINE: Full resolutIoN mEmory transformer.

Themyr et al., "Full Contextual Attention for Multi-resolution Transformers in Semantic Segmentation" / "Memory
transformers for full context and high-resolution 3D medical segmentation", MLMI 2022, https://arxiv.org/abs/2210.05313
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_fine.config import is_eager
from monai_fine.networks.blocks.memory import ScanSummary, check_roi_box, intersecting_cells
from monai_fine.networks.blocks.memory_mode import MemoryMode, memory_mode
from monai_fine.networks.blocks.patch import PatchEmbed3d, PatchExpand3d, PatchMerging3d
from monai_fine.networks.blocks.transformer import FineStage, MemoryContext

#: Which stages a scan view writes (:py:class:`FINE` ``scan_write``).
SCAN_WRITES = ("all", "encoder")


def _plain(t):
    """A ``torch.Tensor`` subclass (MONAI's MetaTensor) as a plain tensor view, still in the autograd graph."""
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) and type(t) is not torch.Tensor else t


__all__ = ["FINE", "PRESETS", "create_fine"]


class FINE(nn.Module):
    """FINE 3D Swin U-Net with window tokens and a volume-token memory (Themyr et al., MLMI 2022, arXiv:2210.05313)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        patch_size: Sequence[int] = (2, 2, 2),
        window_size: int = 4,
        memory: str | MemoryMode = "full",
        memory_grid: Sequence[int] = (4, 4, 1),
        num_window_tokens: int = 1,
        num_volume_tokens: int = 1,
        scan_memory: bool = False,
        scan_read: str = "centred",
        scan_write: str = "encoder",
        share_memory_attention: bool = True,
        deep_supervision: bool = False,
        use_checkpoint: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_flash_attention: bool | None = None,
        stage_memory: Sequence[str | MemoryMode] | None = None,
        roi_size: Sequence[int] | None = None,
        spatial_dims: int = 3,
    ) -> None:
        """
        Args:
            in_channels: input channels.
            out_channels: output channels (classes incl. background).
            feature_size: channels of the first stage; stage ``i`` has ``feature_size * 2**i``.
            depths: blocks per encoder stage; decoder stage ``i`` has ``depths[i]`` blocks too.
            num_heads: attention heads per stage; each must divide its stage's channels.
            patch_size: patch-embedding stride per axis (entries 1, 2 or 4).
            window_size: attention window edge (per axis, clipped to the stage size).
            memory: ``"none"`` (backbone only, nnFormer-equivalent), ``"window"`` (+ window tokens, W-MSA and
                G-MSA), ``"released"`` (what the official code computes: window tokens + intersecting learned volume
                tokens, no V-MSA) or ``"full"`` (the paper's design: V-MSA over all seen volume tokens, G-MSA,
                W-MSA in every block; unseen volume tokens masked); also a name of
                :data:`~monai_fine.networks.blocks.memory_mode.MEMORY_CONFIGS` (``"full+scan"``) or a
                :class:`~monai_fine.networks.blocks.memory_mode.MemoryMode` (an ablation arm, e.g.
                ``MEMORY_CONFIGS["full"].without("volume_attention")``). Resolved once into ``self.mode``.
            memory_grid: volume-token cells per axis ``(gx, gy, gz)`` over the whole volume; the paper keeps the
                memory constant along z (``gz = 1``).
            num_window_tokens: window tokens per window (``Nv`` in the paper).
            num_volume_tokens: volume tokens per cell (``Nw`` in the paper); a stage holds
                ``memory_size = cells x num_volume_tokens`` volume tokens.
            scan_memory: the net is trained and run with a per-scan memory: a pass over the whole scan at the crop size
                (the scan view) writes what every crop then reads (see :meth:`forward`,
                :py:mod:`monai_fine.transforms.scan_view`, ``docs/design.md`` section 5); adds a memory encoder per
                stage (``FineStage.memory_encoder``). Needs ``memory="full"``.
            scan_write: which stages the scan view writes: ``"encoder"`` (the write pass runs the encoder only, and
                each decoder stage reads what the encoder stage of its level wrote: two thirds of the write pass's
                FLOPs at the `tiny` preset) or ``"all"`` (every stage writes its own slot; the first design).
            scan_read: how a crop reads the scan memory besides its volume tokens: ``"centred"`` (the scan's context
                vector, the mean encoded cell, plus the memory re-centred on the crop, ``CentredMemoryRead``: slot
                ``d`` holds what lies ``d`` cells from the crop; both added to every visual token) or ``"mean"`` (the
                context vector alone: the first design, kept for its weights and for comparison). See
                ``docs/design.md`` section 5.
            stage_memory: a memory configuration per encoder stage (the decoder stage of the same level takes its
                encoder stage's), for ablations that drop the memory at some stages; default ``memory`` everywhere.
            share_memory_attention: G-MSA and V-MSA reuse each block's W-MSA projections (own LayerNorms); False
                gives them their own projections (about +50 % parameters, as in the official code).
            deep_supervision: in training mode also return the two lower decoder stages' logits.
            use_checkpoint: gradient checkpointing of every block in training.
            mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: transformer hyperparameters.
            use_flash_attention: fused SDPA attention; None takes ``monai_fine.config.use_fused_attn()``.
            roi_size: the crop size the net is meant for (exposed as ``self.roi_size``; checked for divisibility).
            spatial_dims: must be 3.

        Raises:
            ValueError: an argument out of range, naming it and its value.
        """
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"FINE is 3D only, got spatial_dims={spatial_dims}.")
        mode = memory_mode(memory, scan_memory)
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) < 2 or len(num_heads) != len(depths):
            raise ValueError(f"depths {depths} and num_heads {num_heads} need the same length >= 2.")
        if len(patch_size) != 3 or len(memory_grid) != 3 or min(memory_grid) < 1:
            raise ValueError(
                f"patch_size {tuple(patch_size)} and memory_grid {tuple(memory_grid)} need 3 entries >= 1."
            )
        if window_size < 1 or num_window_tokens < 0 or num_volume_tokens < 1:
            raise ValueError(
                f"window_size ({window_size}) >= 1, num_window_tokens ({num_window_tokens}) >= 0 and "
                f"num_volume_tokens ({num_volume_tokens}) >= 1 are required."
            )
        stage_modes = [mode] * len(depths) if stage_memory is None else [memory_mode(m) for m in stage_memory]
        if len(stage_modes) != len(depths):
            raise ValueError(f"stage_memory needs one entry per stage ({len(depths)}), got {len(stage_modes)}.")
        if any(m.window_tokens for m in stage_modes) and num_window_tokens < 1:
            raise ValueError(f"memory={mode.name!r} needs num_window_tokens >= 1, got {num_window_tokens}.")
        dims = [feature_size * 2**i for i in range(len(depths))]
        for d, h in zip(dims, num_heads):
            if d % h:
                raise ValueError(
                    f"stage channels ({d}) must be divisible by num_heads ({h}); feature_size={feature_size}."
                )

        self.in_channels, self.out_channels = in_channels, out_channels
        self.patch_size = tuple(int(p) for p in patch_size)
        self.num_stages = len(depths)
        self.dims = tuple(dims)
        # the memory configuration, resolved once; the stages and blocks get it (or their stage's) as a frozen value
        self.mode = mode
        self.memory = mode.memory  # the constructor argument it stands for (what checkpoints record)
        self.memory_grid = tuple(int(g) for g in memory_grid)
        self.num_volume_tokens = num_volume_tokens  # per cell
        self.num_cells = self.memory_grid[0] * self.memory_grid[1] * self.memory_grid[2]
        self.memory_size = self.num_cells * num_volume_tokens  # volume tokens per stage
        self.scan_memory = mode.scan_memory
        if scan_write not in SCAN_WRITES:
            raise ValueError(f"scan_write must be one of {SCAN_WRITES}, got {scan_write!r}.")
        self.scan_write = scan_write
        self.scan_read = scan_read
        self.deep_supervision = deep_supervision
        self.stride = tuple(p * 2 ** (self.num_stages - 1) for p in self.patch_size)
        self.roi_size = None if roi_size is None else tuple(int(r) for r in roi_size)
        if self.roi_size is not None:
            self._check_spatial(self.roi_size)

        # visit count per memory cell; cells never visited in training stay masked (saved in checkpoints)
        self.register_buffer("memory_visits", torch.zeros(self.num_cells))
        stage_kwargs = {
            "window_size": window_size,
            "num_window_tokens": num_window_tokens,
            "memory_size": self.memory_size,
            "use_checkpoint": use_checkpoint,
            "scan_read": scan_read,
            "memory_grid": self.memory_grid,
            "share_memory_attention": share_memory_attention,
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "drop": drop_rate,
            "attn_drop": attn_drop_rate,
            "use_flash_attention": use_flash_attention,
        }
        self.patch_embed = PatchEmbed3d(in_channels, feature_size, self.patch_size)
        enc_dpr = _linspace(drop_path_rate, sum(depths))
        dec_dpr = _linspace(drop_path_rate, sum(depths[:-1]))[::-1]
        self.encoder_stages = nn.ModuleList()
        self.encoder_norms = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i in range(self.num_stages):
            dpr = enc_dpr[sum(depths[:i]) : sum(depths[: i + 1])]
            self.encoder_stages.append(
                FineStage(dims[i], depths[i], num_heads[i], mode=stage_modes[i], drop_path=dpr, **stage_kwargs)
            )
            self.encoder_norms.append(nn.LayerNorm(dims[i]))
            if i < self.num_stages - 1:  # no down-sampling after the bottleneck (dead in the official code)
                self.downsamples.append(PatchMerging3d(dims[i]))
        self.upsamples = nn.ModuleList()
        self.decoder_stages = nn.ModuleList()
        start = 0
        for i in reversed(range(self.num_stages - 1)):  # decoder stage for level i, deepest first
            dpr = dec_dpr[start : start + depths[i]]
            start += depths[i]
            self.upsamples.append(PatchExpand3d(dims[i]))
            self.decoder_stages.append(
                FineStage(dims[i], depths[i], num_heads[i], mode=stage_modes[i], drop_path=dpr, **stage_kwargs)
            )
        self.decoder_norm = nn.LayerNorm(dims[0])
        self.head = nn.ConvTranspose3d(dims[0], out_channels, kernel_size=self.patch_size, stride=self.patch_size)
        # deep-supervision heads on decoder levels 1 and 2 (1/2 and 1/4 resolution)
        self.ds_heads = (
            nn.ModuleList(
                nn.ConvTranspose3d(dims[lvl], out_channels, kernel_size=self.patch_size, stride=self.patch_size)
                for lvl in range(1, min(3, self.num_stages - 1))
            )
            if deep_supervision
            else None
        )
        self.apply(self._init_weights)
        for stage in (*self.encoder_stages, *self.decoder_stages):  # PyTorch's default init: unit-scale offsets
            for part in (stage.memory_encoder, stage.scan_reader):  # (std 0.02 would bury the scan's content)
                for m in part.modules() if part is not None else ():
                    if isinstance(m, nn.Linear):
                        m.reset_parameters()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def stage_dims(self) -> list[int]:
        """Channels of every stage in forward order (encoder, then decoder)."""
        return [*self.dims, *self.dims[-2::-1]]  # decoder stages: levels num_stages - 2, ..., 0

    def scan_slot(self, stage: int) -> int:
        """The scan-memory slot that stage ``stage`` (forward order: encoder, then decoder) reads: its own, or with
        ``scan_write="encoder"`` a decoder stage reads the encoder stage of its level."""
        if self.scan_write == "encoder" and stage >= self.num_stages:
            return 2 * self.num_stages - 2 - stage  # decoder stage j = stage - num_stages is level num_stages - 2 - j
        return stage

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exclude from weight decay (memory tokens, position tables)."""
        return {n for n, _ in self.named_parameters() if n.endswith(("_tokens", "relative_position_bias_table"))}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in (*self.encoder_stages, *self.decoder_stages):
            stage.use_checkpoint = enable

    @staticmethod
    def check_roi_box(roi_box: torch.Tensor) -> torch.Tensor:
        """Validate ``roi_box`` values on the host (shape, finite, ``stop > start``); see
        :func:`~monai_fine.networks.blocks.memory.check_roi_box`. :py:class:`~monai_fine.transforms.CropLocationd` and
        :py:class:`~monai_fine.inferers.FINEInferer` check the boxes they make (on the host, before they reach a
        device); the forward checks boxes it receives on the CPU in eager mode. Call it where other boxes are made.

        Raises:
            ValueError: naming the bad values.
        """
        return check_roi_box(roi_box)

    def memory_context(
        self, roi_box: torch.Tensor | None, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> MemoryContext:
        """The masks every stage's memory attention reads, built once per forward (no host synchronisation).

        Args:
            roi_box: ``(B, 2, 3)`` on ``device``, or None (the whole volume).

        In training mode this also marks the cells of the inputs as visited (``memory_visits``), before attending; a
        scan-view pass counts too (see :meth:`write_scan_memory`).
        """
        if not self.mode.volume_tokens:
            return MemoryContext(roi_box=roi_box)
        cells = intersecting_cells(roi_box, self.memory_grid, batch_size, validate=False, device=device)
        if self.training:
            with torch.no_grad():
                self.memory_visits += cells.sum(0).to(self.memory_visits.dtype)
        tokens = self.num_volume_tokens

        def per_token(mask: torch.Tensor) -> torch.Tensor:  # (..., cells) -> (..., cells x tokens per cell)
            return mask.unsqueeze(-1).expand(*mask.shape, tokens).reshape(*mask.shape[:-1], -1)

        if not self.mode.global_attention:  # "released": every intersecting cell, no V-MSA, no write
            return MemoryContext(visible=per_token(cells), roi_box=roi_box)
        seen = self.memory_visits > 0
        visible = per_token(cells & seen)
        any_seen = seen.any()
        return MemoryContext(
            visible=visible,
            write=visible.to(dtype).unsqueeze(-1),
            volume_keys=per_token(seen | ~any_seen).view(1, 1, 1, -1),
            volume_gate=any_seen.to(dtype),
            roi_box=roi_box,
        )

    def _check_spatial(self, spatial: Sequence[int]) -> None:
        if len(spatial) != 3 or any(s % d for s, d in zip(spatial, self.stride)):
            raise ValueError(
                f"spatial size {tuple(spatial)} must have 3 entries divisible by the network stride {self.stride} "
                f"(patch_size {self.patch_size} x 2**{self.num_stages - 1})."
            )

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"FINE expects (B, C, X, Y, Z) input, got shape {tuple(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input has {x.shape[1]} channels, the network expects in_channels={self.in_channels}.")
        self._check_spatial(tuple(x.shape[2:]))

    def _inputs(self, x: torch.Tensor, roi_box: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` and ``roi_box`` as the forward passes use them: plain tensors (eager), checked, the box normalised
        once onto ``x``'s device."""
        if is_eager():
            # a MONAI MetaTensor (what MONAI's transforms and inferers hand over) would route each of the forward's
            # thousands of operations through its Python ``__torch_function__`` (32 % of the demo's training time,
            # py-spy); the logits carry no metadata (the inferers give the stitched output the input's)
            x, roi_box = _plain(x), _plain(roi_box)
            self._check_input(x)
            if roi_box is not None and torch.as_tensor(roi_box).device.type == "cpu":
                check_roi_box(roi_box)  # host values, no device synchronisation; see check_roi_box
        if roi_box is not None:
            roi_box = torch.as_tensor(roi_box).to(x.device)
        return x, roi_box

    def forward(
        self,
        x: torch.Tensor,
        roi_box: torch.Tensor | None = None,
        scan_index: torch.Tensor | None = None,
        scan_summary: ScanSummary | None = None,
        scan_view: torch.Tensor | None = None,
        scan_view_box: torch.Tensor | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x``; with a scan memory, reading what the scan view of each sample's scan wrote.

        Args:
            x: ``(B, C_in, X, Y, Z)``.
            roi_box: ``(B, 2, 3)`` ``[start, stop)`` of each crop per spatial axis as fractions of the preprocessed
                full volume (may leave [0, 1] over padding); None means the input is the whole volume. Its values are
                checked (finite, ``stop > start``) in eager mode when it is on the CPU; see :meth:`check_roi_box`.
            scan_index: ``(B,)`` ints, each sample's slot: its scan's index in ``scan_view`` or in ``scan_summary``
                (not the data's ``scan_id``). Default: slot 0 (one scan), or sample ``i`` -> view ``i`` when
                ``scan_view`` has B items.
            scan_summary: what :meth:`write_scan_memory` wrote for the scans; the forward segments ``x`` reading it.
            scan_view: ``(S, C_in, *roi)`` the whole scan of each of S scans at the crop size
                (:py:func:`monai_fine.transforms.scan_view`): the forward first writes the scan memory from these
                views (:meth:`write_scan_memory`, gradients flow through it), then segments ``x`` reading it. The
                training form of what :py:class:`monai_fine.inferers.FINEInferer` does with ``scan_memory=True``.
            scan_view_box: ``(S, 2, 3)`` box of each view (its whole volume; None: ``[0, 1]^3``).

        Returns:
            ``(B, out_channels, X, Y, Z)`` logits; in training mode with deep supervision a list
            ``[full, 1/2, 1/4 resolution]`` as MONAI's ``DeepSupervisionLoss`` takes.
        """
        x, roi_box = self._inputs(x, roi_box)
        B = x.shape[0]
        if scan_view is not None:
            if scan_summary is not None:
                raise ValueError("give scan_view (the scan memory is written from it) or scan_summary, not both.")
            if scan_index is None and scan_view.shape[0] not in (1, B):
                raise ValueError(
                    f"scan_index is needed to map {B} crops to {scan_view.shape[0]} scan views (one per scan)."
                )
            if scan_index is None and scan_view.shape[0] == B:
                scan_index = torch.arange(B, device=x.device)
            scan_summary = self.write_scan_memory(scan_view, scan_view_box)
        if scan_summary is not None:
            if not self.mode.volume_attention:
                raise ValueError(f"a scan memory needs memory='full', this net has memory={self.memory!r}.")
            scan_index = self._slots(scan_summary, scan_index, B, x.device)
        ctx = self.memory_context(roi_box, B, x.device, self._memory_dtype(x))
        return self._forward(x, ctx._replace(scan_read=scan_summary, scan_index=scan_index))

    def _memory_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype of the memory masks and the scan summary: the volume tokens' (``x``'s when there are none)."""
        tokens = next((s.volume_tokens for s in self.encoder_stages if s.volume_tokens is not None), None)
        return x.dtype if tokens is None else tokens.dtype

    @staticmethod
    def _slots(summary: ScanSummary, scan_index: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if scan_index is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        scan_index = _plain(torch.as_tensor(scan_index))  # a MetaTensor index would make every read a MetaTensor
        if is_eager() and scan_index.device.type == "cpu":
            summary.check_index(scan_index)
        return scan_index.to(device).long().reshape(-1)

    def write_scan_memory(self, scan_view: torch.Tensor, scan_view_box: torch.Tensor | None = None) -> ScanSummary:
        """The scan memory's only writer: one network pass over whole-scan views, without heads, that pools every
        stage's visual tokens into the memory cells of each view's scan.

        In training mode the pass counts as a visit of the cells its view covers (all of them, for the whole-scan
        view): every cell's learned volume tokens take part in it and get its gradient, so with a scan memory no cell
        stays unseen after the first iteration (``docs/design.md``, "the scan memory").

        Args:
            scan_view: ``(S, C_in, *roi)`` one view per scan (:py:func:`monai_fine.transforms.scan_view`).
            scan_view_box: ``(S, 2, 3)`` each view's box; None: the whole volume ``[0, 1]^3``.

        Returns:
            the :class:`~monai_fine.networks.blocks.memory.ScanSummary`: view ``s`` wrote slot ``s``.

        Raises:
            ValueError: the network has no V-MSA (``memory`` other than ``"full"``).
        """
        if not self.mode.volume_attention:
            raise ValueError(f"a scan memory needs memory='full', this net has memory={self.memory!r}.")
        S = scan_view.shape[0]
        if scan_view_box is None:
            scan_view_box = torch.tensor([[0.0] * 3, [1.0] * 3], device=scan_view.device).expand(S, 2, 3)
        scan_view, scan_view_box = self._inputs(scan_view, scan_view_box)
        dtype = self._memory_dtype(scan_view)
        summary = ScanSummary(S, self.memory_grid, self.num_volume_tokens, self.stage_dims, scan_view.device, dtype)
        ctx = self.memory_context(scan_view_box, S, scan_view.device, dtype)
        ctx = ctx._replace(scan_write=summary, scan_index=torch.arange(S, device=scan_view.device))
        self._forward(scan_view, ctx, heads=False)
        return summary

    def _forward(self, x: torch.Tensor, ctx: MemoryContext, heads: bool = True):
        x = self.patch_embed(x)  # (B, X', Y', Z', C)
        skips = []
        for i, stage in enumerate(self.encoder_stages):
            x = stage(x, ctx, i)
            skips.append(self.encoder_norms[i](x))
            if i < self.num_stages - 1:
                x = self.downsamples[i](skips[-1])
        if ctx.scan_write is not None and self.scan_write == "encoder":
            return None  # the write pass: the encoder stages wrote everything the decoder stages read
        x = skips[-1]
        levels = []
        for j, (up, stage) in enumerate(zip(self.upsamples, self.decoder_stages)):
            x = up(x) + skips[self.num_stages - 2 - j]
            x = stage(x, ctx, self.scan_slot(self.num_stages + j))
            levels.append(x)
        if not heads:
            return None
        out = self.head(self.decoder_norm(x).permute(0, 4, 1, 2, 3))
        if self.deep_supervision and self.training:
            lower = levels[-2::-1]  # decoder levels 1, 2, ...
            return [out] + [h(t.permute(0, 4, 1, 2, 3)) for h, t in zip(self.ds_heads, lower)]
        return out


def _linspace(stop: float, n: int) -> list[float]:
    return [stop * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


#: Preset settings, one entry per preset: every keyword of :py:class:`FINE` that the preset fixes, including
#: ``roi_size`` (the training crop / sliding-window size the preset is sized for). Adding a preset is one entry;
#: the bundle configs, the CLI, the tests, the experiments and the benchmarks read them from here
#: (``PRESETS[@preset]['roi_size']``, :func:`create_fine`).
PRESETS: dict[str, dict] = {
    # the paper's BCV size, for its 64x128x128 z-first crop
    "bcv": {"feature_size": 192, "num_heads": (6, 12, 24, 48), "patch_size": (4, 4, 2), "drop_path_rate": 0.2,
                "depths": (2, 2, 2, 2), "window_size": 4, "memory_grid": (4, 4, 1), "roi_size": (128, 128, 64)},
    # what the README's demo trains on CPU (on the phantom protocol, monai_fine.data.PHANTOM)
    "tiny": {"feature_size": 24, "num_heads": (1, 2, 4, 8), "patch_size": (2, 2, 2),
                 "depths": (2, 2, 2, 2), "window_size": 4, "memory_grid": (4, 4, 1), "roi_size": (32, 32, 16)},
    # the smallest network with every part of FINE, for tests and quick experiments (seconds per training)
    "test": {"feature_size": 12, "num_heads": (1, 2, 2, 4), "patch_size": (2, 2, 2),
                 "depths": (2, 2, 2, 2), "window_size": 4, "memory_grid": (4, 4, 1), "roi_size": (32, 32, 16)},
}  # fmt: skip


def create_fine(preset: str = "bcv", in_channels: int = 1, out_channels: int = 14, **kwargs) -> FINE:
    """Build a preset of :data:`PRESETS` by name with keyword overrides: the one way to build a configured FINE
    (the bundle's ``network_def`` calls it through ``monai_fine.bundle_tools.create_network``).

    Args:
        preset: a key of :data:`PRESETS` (``"bcv"``, ``"tiny"``, ``"test"``).
        in_channels: input channels.
        out_channels: output channels (classes, background included).
        kwargs: :py:class:`FINE` keywords overriding the preset's (``roi_size=None`` keeps the preset's).

    Raises:
        ValueError: for an unknown ``preset``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    cfg = dict(PRESETS[preset])
    cfg.update({k: v for k, v in kwargs.items() if not (k == "roi_size" and v is None)})
    cfg["roi_size"] = tuple(int(r) for r in cfg["roi_size"])
    return FINE(in_channels, out_channels, **cfg)
