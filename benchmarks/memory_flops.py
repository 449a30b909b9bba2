# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Where the memory's FLOPs go: what a ``full`` training step adds to a ``none`` step, stage by stage, at each crop,
counted by torch's ``FlopCounterMode`` and from the closed form of the block (an independent check of each other).

The closed form, per block of a stage with ``C`` channels, ``nW`` windows of ``N`` positions (padding included),
``T`` window tokens per window, ``V`` volume tokens and MLP hidden size ``H``, in multiply-adds of one forward:

- V-MSA over the ``V`` volume tokens: ``4 V C^2 + 2 V^2 C`` (qkv and output projections, ``QK^T`` and ``AV``);
- G-MSA over ``S = nW T + V`` tokens: ``4 S C^2 + 2 S^2 C``;
- W-MSA, the window tokens' share: ``4 nW T C^2 + 2 nW ((N + T)^2 - N^2) C``;
- MLP of the window tokens: ``2 nW T C H``.

A training step counts 3 times the forward (input and weight gradients), FLOPs = 2 x multiply-adds, with two
exceptions: the window tokens' MLP in a stage's last block, where it runs as its own call (stages with at least
``8 C`` visual tokens), counts once, since its output is never read (a stage returns only the visual tokens) and
autograd runs no backward for it; and the fused attention kernel of V-MSA and G-MSA recomputes ``QK^T`` in its
backward, one more ``V^2 C`` and ``S^2 C`` per block. None of the terms depends on the crop but ``nW``; at a small
crop the V-MSA and G-MSA of the deep stages (``C`` up to 1536 with ``fine_bcv``) are a fixed cost beside a handful of
visual tokens.

    python -m benchmarks.memory_flops                                  # fine_bcv, the sweep's three crops
    python -m benchmarks.memory_flops --preset tiny --rois 64x64x32 128x128x64
"""

from __future__ import annotations

import argparse
import math

from benchmarks.common import (
    SWEEP_ROIS,
    fine_model,
    markdown_table,
    parse_roi,
    register_cpu_sdpa_flops,
    roi_str,
    stage_inputs,
)

__all__ = ["closed_form_extra", "main", "markdown", "stage_flops"]


def closed_form_extra(
    shape: tuple[int, ...],
    depth: int,
    window_size: int,
    window_tokens: int,
    volume_tokens: int,
    mlp_hidden: int,
    fused_memory_attention: bool = True,
) -> int:
    """Training-step FLOPs that ``full`` adds to ``none`` in one stage (the module docstring's closed form).

    Args:
        shape: ``(B, X, Y, Z, C)`` the stage's visual tokens.
        depth: blocks of the stage.
        window_size: nominal window edge (clipped to the stage size, the stage padded to whole windows).
        window_tokens: ``T``.
        volume_tokens: ``V`` (the stage's memory size).
        mlp_hidden: MLP hidden channels.
        fused_memory_attention: V-MSA and G-MSA (boolean masks) run the fused kernel, whose backward recomputes the
            attention scores; W-MSA (a float bias with a gradient) runs the plain path in both modes.
    """
    from monai_fine.networks.blocks.window import window_geometry

    B, X, Y, Z, C = shape
    geom = window_geometry((X, Y, Z), window_size)
    nW, N, T, V, H = geom.num_windows, geom.window_volume, window_tokens, volume_tokens, mlp_hidden
    S = nW * T + V

    def attention(L: int) -> int:  # one self-attention over L tokens
        return 4 * L * C * C + 2 * L * L * C

    block = attention(V) + attention(S) + 4 * nW * T * C * C + 2 * nW * ((N + T) ** 2 - N**2) * C
    mlp = 2 * nW * T * C * H
    macs = depth * (block + mlp)
    separate_mlp = X * Y * Z >= 8 * C  # FineBlock._feed_forward: its own call, whose last-block output is dead
    train_macs = 3 * macs - (2 * mlp if separate_mlp else 0)
    if fused_memory_attention:  # the fused kernel's backward recomputes QK^T (FlopCounterMode counts it)
        train_macs += depth * (V * V * C + S * S * C)
    return 2 * B * train_macs


def stage_flops(preset: str, roi: tuple[int, int, int]) -> list[dict]:
    """Per FINE stage at ``roi`` (batch 1, the benchmark's inputs): training-step FLOPs of ``none`` and ``full``
    counted by ``FlopCounterMode``, and the closed-form extra; the last row is the whole step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from monai_fine.networks.blocks.window import window_geometry

    register_cpu_sdpa_flops()
    counted: dict[str, dict[str, int]] = {}
    for mode in ("none", "full"):
        torch.manual_seed(0)
        net, loss_fn, kwargs = fine_model(preset, mode, roi)
        x = torch.randn(1, 1, *roi)
        label = torch.randint(0, 14, (1, 1, *roi)).float()
        if mode == "full":
            shapes = stage_inputs(net.eval(), x, kwargs)
        net.train()
        with FlopCounterMode(display=False, depth=3) as counter:
            loss_fn(net(x, **kwargs), label).backward()
        counted[mode] = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    rows = []
    for name, shape in shapes.items():  # net is the "full" network
        stage = net.get_submodule(name)
        blk = stage.blocks[0]
        extra = closed_form_extra(
            shape, len(stage.blocks), stage.window_size, stage.num_window_tokens, stage.memory_size,
            blk.mlp.fc1.out_features, blk.attn.fused_attn,
        )  # fmt: skip
        key = f"{type(net).__name__}.{name}"
        none, full = counted["none"].get(key, 0), counted["full"].get(key, 0)
        windows = window_geometry(tuple(shape[1:4]), stage.window_size).num_windows
        rows.append(
            {"stage": name, "tokens": "x".join(map(str, shape[1:4])), "channels": shape[4], "windows": windows,
             "memory_tokens": stage.memory_size, "none": none, "full": full, "counted_extra": full - none,
             "closed_form_extra": extra}
        )  # fmt: skip
    none, full = counted["none"]["Global"], counted["full"]["Global"]
    rows.append(
        {"stage": "step", "tokens": "", "channels": None, "windows": None, "memory_tokens": None, "none": none,
         "full": full, "counted_extra": full - none, "closed_form_extra": sum(r["closed_form_extra"] for r in rows)}
    )  # fmt: skip
    return rows


def markdown(preset: str, roi: tuple[int, int, int], rows: list[dict]) -> str:
    step = rows[-1]["none"]
    header = ["stage", "tokens", "C", "windows", "volume tokens", "none GFLOPs", "full GFLOPs", "extra counted",
              "extra closed form", "extra / stage's none", "extra / none step"]  # fmt: skip
    cells = [
        [
            r["stage"],
            r["tokens"],
            str(r["channels"] or ""),
            str(r["windows"] or ""),
            str(r["memory_tokens"] or ""),
            f"{r['none'] / 1e9:.2f}",
            f"{r['full'] / 1e9:.2f}",
            f"{r['counted_extra'] / 1e9:.3f}",
            f"{r['closed_form_extra'] / 1e9:.3f}",
            f"{r['counted_extra'] / r['none'] if r['none'] else math.nan:.3f}",
            f"{r['counted_extra'] / step:.4f}",
        ]
        for r in rows
    ]
    title = f"fine_{preset} at {roi_str(roi)}, batch 1: training-step GFLOPs (FlopCounterMode) and what `full` adds"
    return "\n".join([title, "", *markdown_table(header, cells)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", choices=("bcv", "tiny"), default="bcv", help="a preset of monai_fine.networks.PRESETS"
    )
    parser.add_argument("--rois", nargs="+", type=parse_roi, default=list(SWEEP_ROIS), metavar="XxYxZ")
    args = parser.parse_args(argv)
    for roi in args.rois:
        rows = stage_flops(args.preset, tuple(roi))
        print(markdown(args.preset, tuple(roi), rows), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
