# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Context-only benchmark: can a model decide labels that only content outside every crop and window determines?

The data (:py:mod:`monai_fine.data.context_task`, generated into ``OUT/data``): two locally identical twins at the
ends of a long volume, and a marker in the middle whose side (low or high y) decides the twins' label (``--rule
side``: both twins ``twin_a`` or both ``twin_b``; ``--rule xor``: which twin is ``twin_a``). No
training crop or sliding window holding a twin reaches the marker, so ``none`` and ``full`` (a learned memory shared
by all patients) can only guess; ``full+scan`` writes a per-scan memory from the whole scan and can read the marker's
side in every window.

Every (config, seed) trains through the bundle's ``train.json`` at the same budget and is evaluated on the held-out
cases with :py:class:`monai_fine.inferers.FINEInferer` (with its scan memory for ``full+scan``, and once more without
it, and with its memory written from the same case with the marker on the other side: the memory probes).
``OUT/results.csv`` has one row per config and seed: the *swap rate* (twin voxels predicted as
the other twin, over the twin voxels given either twin's label, all held-out cases pooled; chance is about 0.5), Dice
per label, the probe's swap
rate, training minutes and seconds per iteration, and for ``full+scan`` the linear probes of :func:`linear_probes` (is
the marker's side in the scan view, in the context vector a twin's crop reads, in the features at the twin; is the
twin's label). ``OUT/summary.md`` gives mean ± std over seeds, ``OUT/context_benchmark.png`` the swap rates and the
label probe per config and seed. ``--resume`` keeps the finished runs of ``OUT`` (each
has its ``result.json``) and runs the rest::

    python -m monai_fine context_benchmark --out runs/context_benchmark               # 3 configs x 3 seeds, CPU
    python -m monai_fine context_benchmark --out DIR --dataset_dir DATA                # own data, same label layout
    python -m monai_fine context_benchmark --out runs/context_benchmark --resume      # after a stop: the rest

``--dataset_dir`` takes any data set with ``dataset_0.json`` (``training``/``validation``) and labels 0 background,
1 and 2 the twins, 3 the marker (or more classes with ``--num_classes``; the swap rate is always between labels 1
and 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_fine.data.io import torch_load
from monai_fine.experiments.context_ablation import _fmt, _mean_std, machine_info, parse_overrides
from monai_fine.networks import MEMORY_CONFIGS, MemoryMode

__all__ = ["CONFIGS", "parse_args", "evaluate_run", "main"]

# the compared memory configurations (of monai_fine.networks.MEMORY_CONFIGS)
CONFIGS: dict[str, MemoryMode] = {name: MEMORY_CONFIGS[name] for name in ("none", "full", "full+scan")}
FIELDS = (
    "config", "seed", "memory", "scan_memory", "swap_rate", "swap_rate_scan_off", "memory_swap_flips", "twin_found",
    "dice_twin_a", "dice_twin_b",
    "dice_marker", "twin_voxels", "cases", "iterations", "train_minutes", "seconds_per_iteration", "eval_minutes",
    "probe_view", "probe_context", "probe_context_label", "probe_twin", "probe_twin_label",
)  # fmt: skip


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m monai_fine context_benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/context_benchmark", help="output folder")
    p.add_argument(
        "--dataset_dir", default=None, help="own data (dataset_0.json; labels 1, 2 twins); default: generated"
    )
    p.add_argument("--configs", type=_csv_list, default=list(CONFIGS), help="of " + ",".join(CONFIGS))
    p.add_argument("--seeds", type=lambda s: [int(v) for v in _csv_list(s)], default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=800, help="training iterations per run")
    p.add_argument("--epoch_length", type=int, default=50)
    p.add_argument("--num_samples", type=int, default=2, help="crops per scan per iteration")
    p.add_argument("--learning_rate", type=float, default=2e-3, help="AdamW, the bundle's poly schedule")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--roi", type=int, nargs=3, default=[32, 32, 16])
    p.add_argument("--num_classes", type=int, default=4)
    p.add_argument("--num_train", type=int, default=12, help="generated data: training cases")
    p.add_argument("--num_val", type=int, default=8, help="generated data: held-out cases")
    p.add_argument("--shape", type=int, nargs=3, default=[160, 32, 16], help="generated data: volume size")
    p.add_argument("--spacing", type=float, nargs=3, default=[3.0, 3.0, 3.0], help="mm, also the training pixdim")
    p.add_argument("--data_seed", type=int, default=0)
    p.add_argument(
        "--rule",
        default="side",
        choices=("side", "xor"),
        help="generated data: twins' label = the marker's side (both twins), or side XOR end (harder)",
    )
    p.add_argument("--jobs", type=int, default=1, help="parallel runs of 1 torch thread each")
    p.add_argument("--threads", type=int, default=None, help="torch threads of a run")
    p.add_argument("--override", action="append", default=[], metavar="ID=JSON", help="extra bundle override")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs in --out (each has runs/<config>/seed<k>/result.json) and run the others; "
        "without it an --out that holds finished runs is refused",
    )
    p.add_argument("--_runs", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad or not args.configs or not args.seeds or args.iterations < 1 or args.jobs < 1:
        p.error(
            f"--configs a subset of {list(CONFIGS)} (got {args.configs}), --seeds non-empty, --iterations and "
            "--jobs >= 1"
        )
    args.epoch_length = max(1, min(args.epoch_length, args.iterations))
    args.max_epochs = max(1, round(args.iterations / args.epoch_length))
    args.overrides = parse_overrides(p, args.override)
    return args


def _data(args: argparse.Namespace) -> Path:
    if args.dataset_dir is not None:
        return Path(args.dataset_dir).resolve()
    from monai_fine.data.context_task import make_context_dataset

    out = Path(args.out).resolve() / "data"
    if not (out / "dataset_0.json").is_file():
        make_context_dataset(out, args.num_train, args.num_val, args.data_seed, args.shape, args.spacing, args.rule)
    return out


def _run_dir(args: argparse.Namespace, config: str, seed: int) -> Path:
    return Path(args.out).resolve() / "runs" / config.replace("+", "_") / f"seed{seed}"


def overrides(args: argparse.Namespace, config: str, seed: int, data: Path) -> dict[str, Any]:
    memory, scan = CONFIGS[config].memory, CONFIGS[config].scan_memory
    o = {
        "bundle_root": str(_run_dir(args, config, seed)), "dataset_dir": str(data), "preset": args.preset,
        "memory": memory, "scan_memory": scan, "roi_size": list(args.roi), "pixdim": list(args.spacing),
        "num_classes": args.num_classes, "hu_window": [-100, 350], "seed": seed, "num_workers": 0,
        "device": "$torch.device('cpu')", "num_samples": args.num_samples, "optimizer_name": "adamw",
        "learning_rate": args.learning_rate, "resume": False, "cache_rate": 1.0, "progress": False,
        "tensorboard": False,
    }  # fmt: skip
    o.update(args.overrides)
    return o


def confusion(pred, truth, num_classes: int):
    """``(num_classes, num_classes)`` voxel counts, rows = truth, columns = prediction."""
    import torch

    idx = truth.long().clamp(0, num_classes - 1) * num_classes + pred.long().clamp(0, num_classes - 1)
    return torch.bincount(idx.reshape(-1), minlength=num_classes**2).reshape(num_classes, num_classes)


def load_run(args: argparse.Namespace, config: str, seed: int, data: Path):
    """The final model of a (config, seed) run in eval mode, and the bundle's validation preprocessing."""
    from monai.bundle import ConfigParser

    from monai_fine.bundle_tools import bundle_dir

    root = _run_dir(args, config, seed)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir() / "configs" / "train.json"))
    parser.update(overrides(args, config, seed, data))
    parser.update({"network_checkpoint": str(root / "models" / "model_final.pt")})
    net = parser.get_parsed_content("network_def")
    state = torch_load(root / "models" / "model_final.pt")
    net.load_state_dict(state.get("model", state))
    return net.eval(), parser.get_parsed_content("validate#preprocessing")


def evaluate_run(args: argparse.Namespace, config: str, seed: int, data: Path, loaded=None) -> dict[str, float]:
    """Segment the held-out cases with the run's final model; swap rate and Dice (with and without scan memory)."""
    import torch

    from monai_fine.inferers import FINEInferer

    net, preprocess = loaded or load_run(args, config, seed, data)  # loaded: load_run's answer, reused
    items = json.loads((data / "dataset_0.json").read_text())["validation"]
    n = args.num_classes
    conditions = {"as_trained": CONFIGS[config].scan_memory}
    if CONFIGS[config].scan_memory:
        conditions["scan_off"] = False
    out: dict[str, float] = {}
    for name, scan in conditions.items():
        inferer = FINEInferer(args.roi, sw_batch_size=4, overlap=0.5, scan_memory=scan)
        total = torch.zeros(n, n, dtype=torch.long)
        with torch.no_grad():
            for item in items:
                case = preprocess({k: str(data / item[k]) for k in ("image", "label")})
                pred = inferer(case["image"][None], net).argmax(1)[0]
                total += confusion(pred, case["label"][0], n)
        twins = int(total[1].sum() + total[2].sum())
        decided = int(total[1, 1] + total[1, 2] + total[2, 1] + total[2, 2])  # twin voxels given one of the twin labels
        swap = float(total[1, 2] + total[2, 1]) / decided if decided else float("nan")
        if name == "as_trained":
            out["swap_rate"], out["twin_voxels"], out["cases"] = swap, twins, len(items)
            out["twin_found"] = decided / twins if twins else float("nan")
            for k, label in ((1, "twin_a"), (2, "twin_b"), (3, "marker")):
                if k < n:
                    tp, fp, fn = total[k, k], total[:, k].sum() - total[k, k], total[k].sum() - total[k, k]
                    out[f"dice_{label}"] = float(2 * tp) / max(float(2 * tp + fp + fn), 1.0)
        else:
            out["swap_rate_scan_off"] = swap
    if CONFIGS[config].scan_memory and args.dataset_dir is None:
        out["memory_swap_flips"] = memory_swap_flips(args, net, preprocess)
    return out


class _ViewFrom:
    """``net``, but its scan memory is written from ``view`` instead of the input's own scan view."""

    def __init__(self, net, view):
        self.net, self.view = net, view

    def write_scan_memory(self, scan_view, scan_view_box=None):
        return self.net.write_scan_memory(self.view.to(scan_view), scan_view_box)

    def __call__(self, *args, **kwargs):
        return self.net(*args, **kwargs)


def memory_swap_flips(args: argparse.Namespace, net, preprocess, pairs: int = 4) -> float:
    """Causal probe of the scan memory: segment a generated case whose marker is on one side while the memory is
    written from its twin case with the marker on the other side (identical crops, see
    :py:mod:`monai_fine.data.context_task`). Returns the fraction of twin voxels, labelled as a twin both times,
    whose twin label flips; 1.0 means the twins' labels follow the memory alone, 0.0 that the memory is ignored."""
    import tempfile

    import nibabel as nib
    import numpy as np
    import torch

    from monai_fine.data.context_task import make_context_case
    from monai_fine.inferers import FINEInferer
    from monai_fine.transforms import scan_view

    inferer = FINEInferer(args.roi, sw_batch_size=4, overlap=0.5, scan_memory=True)
    flips = total = 0
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for k in range(pairs):
            cases = []
            for side in (0, 1):
                image, label = make_context_case(900_000 + k, side, args.shape, args.rule)
                for name, arr in (("image", image), ("label", label)):
                    nib.save(nib.Nifti1Image(arr, np.diag([*args.spacing, 1.0])), f"{tmp}/{name}{side}.nii.gz")
                cases.append(preprocess({"image": f"{tmp}/image{side}.nii.gz", "label": f"{tmp}/label{side}.nii.gz"}))
            img0, twins = cases[0]["image"][None], torch.isin(cases[0]["label"][0], torch.tensor([1, 2]))
            own = inferer(img0, net).argmax(1)[0]
            other = inferer(img0, _ViewFrom(net, scan_view(cases[1]["image"][None], args.roi))).argmax(1)[0]
            both = twins & torch.isin(own, torch.tensor([1, 2])) & torch.isin(other, torch.tensor([1, 2]))
            flips += int((own[both] != other[both]).sum())
            total += int(both.sum())
    return flips / total if total else float("nan")


def ridge_cv_accuracy(features, target, groups, ridge: float = 1.0) -> float:
    """Leave-one-group-out accuracy of a linear (ridge) classifier of binary ``target`` from ``features``.

    Per fold the features are standardised on the training rows (constant features drop out), a ridge regression of
    ``2 target - 1`` is fitted in its kernel form (``ridge`` times the feature count is the penalty, so it does not
    depend on the width) and the held-out rows are classified by the sign of the fit.

    Args:
        features: ``(n, d)`` float.
        target: ``(n,)`` 0/1.
        groups: ``(n,)`` ints; rows of one group are held out together (both sides of one generated pair).

    Returns:
        the fraction of rows classified correctly when held out (0.5: no linear information).
    """
    import torch

    x = torch.as_tensor(features, dtype=torch.float64).reshape(len(target), -1)
    y = torch.as_tensor(target, dtype=torch.float64) * 2 - 1
    groups = torch.as_tensor(groups)
    correct = 0
    for g in torch.unique(groups):
        test = groups == g
        xtr, xte, ytr = x[~test], x[test], y[~test]
        mu, sd = xtr.mean(0), xtr.std(0)
        sd = torch.where(sd > 1e-8, sd, torch.full_like(sd, float("inf")))
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        gram = xtr @ xtr.T + ridge * x.shape[1] * torch.eye(len(xtr), dtype=x.dtype)
        alpha = torch.linalg.solve(gram, ytr - ytr.mean())
        score = xte @ (xtr.T @ alpha) + ytr.mean()
        correct += int(((score > 0) == (y[test] > 0)).sum())
    return correct / len(target)


def linear_probes(args: argparse.Namespace, net, preprocess, pairs: int = 16) -> dict[str, Any]:
    """Where the marker's side is, and is not, in a trained scan-memory model: linear probes on generated pairs.

    ``pairs`` generated cases, each drawn with the marker on both sides (identical but for the marker, see
    :func:`monai_fine.data.context_task.make_context_case`), give ``2 pairs`` scans; every probe is a leave-one-pair-out
    ridge classifier (:func:`ridge_cv_accuracy`; 0.5 is no linear information, 1.0 all held-out scans right):

    - ``probe_view``: the side from the scan view's voxels (what the write pass sees);
    - ``probe_context`` (and per stage ``probe_context_stages``): the side from the context vector each twin's
      crop reads (:py:meth:`~monai_fine.networks.blocks.transformer.FineStage.read_scan_memory`), best stage;
    - ``probe_context_label``: the twin's label (what the task asks) from the same context vectors, best stage;
    - ``probe_twin`` and ``probe_twin_label``: the side and the label from the last decoder features (before the
      head) averaged over the twin's voxels, in a crop centred on the twin reading the scan memory.

    The label is ``side`` under the ``side`` rule and ``side XOR end`` under ``xor``.
    """
    import tempfile

    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    from monai_fine.data.context_task import make_context_case
    from monai_fine.transforms import scan_view

    roi = [int(r) for r in args.roi]
    patch = net.patch_size
    stages = [*net.encoder_stages, *net.decoder_stages]
    slots = [net.scan_slot(i) for i in range(len(stages))]  # the memory slot each stage reads
    captured: list[torch.Tensor] = []
    hook = net.decoder_norm.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    view_rows, ctx_rows, twin_rows, side_rows, label_rows, group_rows, twin_groups = [], [], [], [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            for k in range(pairs):
                for side in (0, 1):
                    image, label = make_context_case(800_000 + k, side, args.shape, args.rule)
                    for name, arr in (("image", image), ("label", label)):
                        nib.save(nib.Nifti1Image(arr, np.diag([*args.spacing, 1.0])), f"{tmp}/{name}.nii.gz")
                    case = preprocess({"image": f"{tmp}/image.nii.gz", "label": f"{tmp}/label.nii.gz"})
                    img, lab = case["image"].as_tensor()[None].float(), case["label"].as_tensor()[0]
                    view = scan_view(img, roi)
                    view_rows.append(view.reshape(-1))
                    side_rows.append(side)
                    group_rows.append(k)
                    summary = net.write_scan_memory(view)
                    shape = torch.tensor(lab.shape, dtype=torch.float64)
                    twins = torch.isin(lab, torch.tensor([1, 2]))
                    low_x = (torch.arange(lab.shape[0]) < lab.shape[0] / 2)[:, None, None]
                    for end in (low_x, ~low_x):  # each twin by its end of the volume (both may have one label)
                        where = torch.nonzero(twins & end).double()
                        if not len(where):
                            continue
                        twin = int(lab[tuple(where[0].long())])
                        start = (where.mean(0) - torch.tensor(roi) / 2).round().clamp(min=0)
                        start = torch.minimum(start, shape - torch.tensor(roi)).long()
                        sl = tuple(slice(int(a), int(a) + r) for a, r in zip(start, roi))
                        box = torch.stack([start.double() / shape, (start.double() + torch.tensor(roi)) / shape])
                        box = box.float()[None]
                        idx = torch.zeros(1, dtype=torch.long)
                        ctx = [st.read_scan_memory(summary, k, idx, box)[1][0] for st, k in zip(stages, slots)]
                        captured.clear()
                        net(img[(slice(None), slice(None), *sl)], box, scan_index=idx, scan_summary=summary)
                        feat = captured[-1][0]  # (X', Y', Z', C)
                        mask = F.max_pool3d((twins & end)[sl].float()[None, None], patch, patch)[0, 0] > 0
                        twin_rows.append(feat[mask].mean(0))
                        ctx_rows.append(ctx)  # one (C_stage,) per stage
                        label_rows.append((side, twin - 1))
                        twin_groups.append(k)
    finally:
        hook.remove()
    out: dict[str, Any] = {"probe_pairs": pairs, "probe_twin_crops": len(twin_rows)}
    out["probe_view"] = ridge_cv_accuracy(torch.stack(view_rows), side_rows, group_rows)
    sides = [s for s, _ in label_rows]
    labels = [t for _, t in label_rows]
    contexts = [torch.stack([c[i] for c in ctx_rows]) for i in range(len(stages))]
    per_stage = [ridge_cv_accuracy(c, sides, twin_groups) for c in contexts]
    per_stage_label = [ridge_cv_accuracy(c, labels, twin_groups) for c in contexts]
    out["probe_context"], out["probe_context_stages"] = max(per_stage), [round(a, 3) for a in per_stage]
    out["probe_context_label"] = max(per_stage_label)
    out["probe_context_label_stages"] = [round(a, 3) for a in per_stage_label]
    twin = torch.stack(twin_rows)
    out["probe_twin"] = ridge_cv_accuracy(twin, sides, twin_groups)
    out["probe_twin_label"] = ridge_cv_accuracy(twin, labels, twin_groups)
    return out


def run_one(args: argparse.Namespace, config: str, seed: int, data: Path) -> dict[str, Any]:
    from monai_fine.bundle_tools import run_bundle

    root = _run_dir(args, config, seed)
    result_file = root / "result.json"
    if result_file.is_file():
        row = json.loads(result_file.read_text())
        if CONFIGS[config].scan_memory and args.dataset_dir is None and "probe_view" not in row:
            net, preprocess = load_run(args, config, seed, data)  # a run finished before the probes existed
            row.update(linear_probes(args, net, preprocess))
            result_file.write_text(json.dumps(row, indent=1) + "\n")
        return row
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    iterations = args.max_epochs * args.epoch_length
    run_bundle(
        ["train.json"],
        "train",
        max_epochs=args.max_epochs,
        epoch_length=args.epoch_length,
        val_interval=args.max_epochs + 1,
        **{"validate#dataset#cache_rate": 0.0},
        **overrides(args, config, seed, data),
    )
    train_minutes = (time.time() - t0) / 60
    t1 = time.time()
    row: dict[str, Any] = {
        "config": config,
        "seed": seed,
        "memory": CONFIGS[config].memory,
        "scan_memory": CONFIGS[config].scan_memory,
        "iterations": iterations,
        "train_minutes": round(train_minutes, 2),
        "seconds_per_iteration": round(train_minutes * 60 / iterations, 3),
        "swap_rate_scan_off": "",
        "memory_swap_flips": "",
    }
    loaded = load_run(args, config, seed, data)
    row.update(evaluate_run(args, config, seed, data, loaded))
    if CONFIGS[config].scan_memory and args.dataset_dir is None:
        row.update(linear_probes(args, *loaded))
    row["eval_minutes"] = round((time.time() - t1) / 60, 2)
    result_file.write_text(json.dumps(row, indent=1) + "\n")
    print(
        f"[context] {config} seed {seed}: swap {row['swap_rate']:.3f} (scan off: {row['swap_rate_scan_off']}), "
        f"train {train_minutes:.1f} min",
        flush=True,
    )
    return row


def summary(args: argparse.Namespace, rows: list[dict[str, Any]], command: str, minutes: float) -> str:
    info = machine_info("cpu")
    lines = [
        "# Context-only benchmark",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- machine: {info['cpu']}, {info['cpu_cores']} cores, {args.jobs} parallel run(s); torch {info['torch']}, "
        f"monai {info['monai']}; total {minutes:.1f} min",
        f"- per run: {args.max_epochs * args.epoch_length} iterations of {args.num_samples} crops "
        f"{'x'.join(map(str, args.roi))}, preset `{args.preset}`, AdamW lr {args.learning_rate:g}, seeds "
        f"{','.join(map(str, args.seeds))}",
        "- swap rate: twin voxels predicted as the other twin / twin voxels predicted as either twin (held-out "
        "cases pooled; chance ~0.5); twin found: twin voxels predicted as either twin / twin voxels",
        "",
        "| config | swap rate % | swap, scan memory off % | flips with the other side's memory % | twin found % | "
        "Dice twin_a | Dice twin_b | Dice marker | s/iter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config in args.configs:
        rs = [r for r in rows if r["config"] == config]
        if not rs:
            continue

        def ms(key: str, rs: list[dict[str, Any]] = rs) -> tuple[float, float, int]:
            return _mean_std([float(r[key]) for r in rs if r.get(key) not in ("", None)])

        lines.append(
            f"| {config} | {_fmt(ms('swap_rate'), pct=True)} | {_fmt(ms('swap_rate_scan_off'), pct=True)} | "
            f"{_fmt(ms('memory_swap_flips'), pct=True)} | {_fmt(ms('twin_found'), pct=True)} | "
            f"{_fmt(ms('dice_twin_a'))} | {_fmt(ms('dice_twin_b'))} | {_fmt(ms('dice_marker'))} | "
            f"{_fmt(ms('seconds_per_iteration'))} |"
        )
    probed = [r for r in rows if r.get("probe_view") not in ("", None)]
    if probed:
        lines += [
            "",
            "Linear probes (leave-one-pair-out accuracy %, 50 = no linear information; `linear_probes`): the "
            "marker's side from the scan view, from the context vector a twin's crop reads (best stage), the twin's "
            "label from that context vector, and the side and the label from the last decoder features at the twin.",
            "",
            "| config | side, scan view | side, context vector | label, context vector | side, twin features | "
            "label, twin features |",
            "|---|---|---|---|---|---|",
        ]
        keys = ("probe_view", "probe_context", "probe_context_label", "probe_twin", "probe_twin_label")
        for config in args.configs:
            rs = [r for r in probed if r["config"] == config]
            if rs:
                cells = [_fmt(_mean_std([float(r[k]) for r in rs]), pct=True) for k in keys]
                lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], configs: Sequence[str], path: Path, title: str = "") -> None:
    """``path`` (PNG): per config, the swap rate as trained and with the scan memory off, and the label probe at the
    twin's features (bars: mean over seeds; dots: each seed)."""
    from monai_fine.optional import require

    matplotlib = require("matplotlib", "the context benchmark's plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = (("swap_rate", "swap rate"), ("swap_rate_scan_off", "swap, memory off"),
                ("probe_twin_label", "label probe at the twin"))  # fmt: skip
    configs = [c for c in configs if any(r["config"] == c for r in rows)]
    fig, ax = plt.subplots(figsize=(2.2 + 2.2 * len(configs), 3.6))
    width = 0.8 / len(measures)
    for m, (key, name) in enumerate(measures):
        for i, config in enumerate(configs):
            vals = [100.0 * float(r[key]) for r in rows if r["config"] == config and r.get(key) not in ("", None)]
            vals = [v for v in vals if v == v]
            if not vals:
                continue
            x = i + (m - (len(measures) - 1) / 2) * width
            ax.bar(x, sum(vals) / len(vals), width, color=plt.get_cmap("tab10")(m), label=name if i == 0 else None)
            ax.plot([x] * len(vals), vals, "k.", ms=4)
    ax.axhline(50.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(configs)
    ax.set_ylabel("%")
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 25))
    ax.legend(fontsize=8, loc="upper center", ncol=len(measures))
    ax.set_title(title or "context-only benchmark (dashed: chance)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.time()
    finished = sorted(Path(args.out).resolve().glob("runs/*/seed*/result.json"))
    if finished and not args.resume and args._runs is None:
        raise SystemExit(
            f"context_benchmark: {args.out} already holds {len(finished)} finished run(s) "
            f"({', '.join(str(f.parent.relative_to(Path(args.out).resolve())) for f in finished[:4])}"
            f"{', ...' if len(finished) > 4 else ''}); pass --resume to keep them and run the rest, or choose another "
            "--out."
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    data = _data(args)
    tasks = [(c, s) for s in args.seeds for c in args.configs]
    if args._runs is not None:  # a worker of --jobs
        for item in _csv_list(args._runs):
            config, seed = item.rsplit(":", 1)
            run_one(args, config, int(seed), data)
        return []
    if args.jobs > 1:
        procs = []
        for j in range(args.jobs):
            mine = ",".join(f"{c}:{s}" for c, s in tasks[j :: args.jobs])
            log = open(Path(args.out).resolve() / f"worker_{j}.log", "w")  # noqa: SIM115 (closed when its worker ends)
            cmd = [
                sys.executable,
                "-m",
                "monai_fine",
                "context_benchmark",
                *argv,
                "--jobs",
                "1",
                "--threads",
                "1",
                "--_runs",
                mine,
            ]
            procs.append(
                (
                    subprocess.Popen(
                        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
                    ),
                    log,
                )
            )
        for proc, log in procs:
            proc.wait()
            log.close()
    rows = []
    for config, seed in tasks:
        try:
            rows.append(run_one(args, config, seed, data))
        except Exception as e:  # one failing run must not lose the others
            print(f"[context] {config} seed {seed} FAILED: {type(e).__name__}: {e}", flush=True)
    out = Path(args.out).resolve()
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(FIELDS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    command = "python -m monai_fine context_benchmark " + shlex.join(argv)
    (out / "summary.md").write_text(summary(args, rows, command, (time.time() - t0) / 60))
    print((out / "summary.md").read_text())
    try:
        plot(rows, args.configs, out / "context_benchmark.png", f"rule {args.rule}, {args.iterations} iterations")
    except ImportError as e:  # the CSV and the summary are written: say what the plot needs
        print(f"[context] no plot: {e}", flush=True)
    return rows


if __name__ == "__main__":
    main()
