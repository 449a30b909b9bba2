# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Does the memory give context? The paper's token ablation (FINE, Table 3) as one command.

Trains FINE with ``memory="none"`` (nnFormer-equivalent), ``"window"`` (+ window tokens), ``"released"`` (what the
official code computes), ``"full"`` (+ volume tokens, the paper's design) and ``"full"`` with a per-scan memory
(``full+scan``), and the peers a user would train instead (``dynunet``: MONAI's DynUNet as nnU-Net's 3d_fullres plan;
``swinunetr``: SwinUNETR(48), the Model Zoo's BTCV network) under identical budgets (iterations, crops per
iteration, loss, optimizer, seed, data), through the MONAI bundle's
``train.json``, evaluates the final model of each on the held-out cases with ``evaluate.json`` (per-organ Dice and
HD95 in mm), and writes into ``--out``:

- ``results.csv``: one row per (variant, subset of held-out cases, seed, config, organ) with Dice, HD95 (mm), the
  voxels of the organ predicted as its twin (right/left kidney, right/left adrenal, liver/spleen), the voxels
  predicted as the organ or its twin (for the pair's Dice regardless of side) and the wall time;
- ``summary.md``: the command, the machine, the settings and one table per variant (mean +- std over seeds);
- ``ablation.png``: bar charts of the mean Dice, the context organs' Dice and the twin swaps per config.

Without ``--dataset_dir`` it runs on the built-in phantom (``monai_fine.data.phantom``), at CPU scale by default:
small crops (32x32x16 voxels of 3 mm on a 96x96x64 volume: a third of the body's width), so that telling the left
and right twins apart, and the liver from the spleen (same intensity), needs to know where the crop lies or what lies
outside it. The CPU run (about 45 min on 2 idle cores)::

    OMP_NUM_THREADS=1 python -m monai_fine context_ablation --jobs 2 --budget_minutes 55

Phantom variants:

- ``normal``: every case has the normal organ arrangement (the position of a crop tells the twins apart);
- ``situs``: half of the training and half of the held-out cases are situs inversus (mirrored arrangement, labels
  keep their meaning: label 2 is the kidney on the liver's side). Position alone is then ambiguous: only what lies
  outside the crop (where the liver is) tells which is which, which is what the per-scan memory can carry.

With ``--dataset_dir`` (e.g. BTCV with ``dataset_0.json``) the same runs use that data, e.g. the paper-size run::

    python -m monai_fine context_ablation --dataset_dir /data/btcv --preset bcv --roi 128 128 64 \\
        --pixdim 0.76 0.76 3.0 --iterations 250000 --epoch_length 250 --device cuda --num_workers 8

See ``benchmarks/README.md`` (section "The context ablation").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_fine.data.phantom import PHANTOM
from monai_fine.labels import BTCV13_ORGANS, BTCV_LABELS, SYNAPSE8_ORGANS
from monai_fine.networks import MEMORY_CONFIGS, PRESETS, MemoryMode
from monai_fine.networks.peers import PEERS, check_roi
from monai_fine.optional import require
from monai_fine.reports import case_name as _case_name
from monai_fine.reports import nanmean as _nanmean
from monai_fine.reports import read_metric_csv as read_raw

__all__ = [
    "CONFIGS",
    "PEER_CONFIGS",
    "ALL_CONFIGS",
    "VARIANTS",
    "config_network",
    "parse_args",
    "bundle_overrides",
    "train_and_evaluate",
    "collect_run",
    "main",
]

# the compared memory configurations (monai_fine.networks.MEMORY_CONFIGS): name -> MemoryMode
CONFIGS: dict[str, MemoryMode] = dict(MEMORY_CONFIGS)
# the peers (monai_fine.networks.peers.PEERS), trained by the same bundle with network_def#arch
PEER_CONFIGS: tuple[str, ...] = tuple(PEERS)
ALL_CONFIGS: tuple[str, ...] = (*CONFIGS, *PEER_CONFIGS)
VARIANTS: dict[str, float] = {"normal": 0.0, "situs": 0.5}  # variant -> default fraction of situs inversus cases
ORGANS: dict[int, str] = {k: BTCV_LABELS[k] for k in BTCV13_ORGANS}  # column class<j> of the CSVs is organ j + 1
SYNAPSE8 = SYNAPSE8_ORGANS
# organs whose label depends on context, and the twin each can be confused with
TWIN: dict[int, int] = {2: 3, 3: 2, 12: 13, 13: 12, 6: 1, 1: 6}
PAIRS: dict[str, tuple[int, int]] = {"kidneys": (2, 3), "adrenals": (12, 13), "liver/spleen": (6, 1)}
CONTEXT_ORGANS = (2, 3, 12, 13, 6, 1)
SHORT = {1: "spleen", 2: "R kidney", 3: "L kidney", 6: "liver", 12: "R adrenal", 13: "L adrenal"}
RESULT_FIELDS = (
    "variant", "subset", "seed", "config", "memory", "scan_memory", "label", "organ", "synapse8", "dice", "hd95_mm",
    "dice_cases", "hd95_cases", "truth_voxels", "to_twin_voxels", "twin_swap", "pred_voxels", "truth_as_pair_voxels",
    "cases", "iterations", "train_minutes", "eval_minutes",
)  # fmt: skip


def config_network(config: str) -> dict[str, Any]:
    """The bundle tunables of a config: ``memory`` and ``scan_memory`` for FINE, ``arch`` for a peer (whose
    ``memory`` the bundle does not use), and the ``memory`` column of the results (``-`` for a peer)."""
    if config in PEER_CONFIGS:
        return {"arch": config, "memory": "-", "scan_memory": False}
    return dict(CONFIGS[config].network_kwargs)


# ------------------------------------------------------------------------------------------------------ arguments
def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m monai_fine context_ablation",
        description="FINE token ablation (paper Table 3): none, window, released, full, full+scan; one budget.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="runs/context_ablation", help="output folder")
    p.add_argument("--dataset_dir", default=None, help="real data (BTCV layout, dataset_0.json); default: phantom")
    p.add_argument("--datalist", default=None, help="datalist JSON (default: DATASET_DIR/dataset_0.json)")
    p.add_argument("--preset", default="tiny", choices=tuple(PRESETS))
    p.add_argument(
        "--roi",
        type=int,
        nargs=3,
        default=None,
        help="crop size (x y z), divisible by the preset stride (tiny 16, bcv 32 32 16); default: "
        "32 32 16 on the phantom, the preset's roi_size (monai_fine.networks.PRESETS) with --dataset_dir",
    )
    p.add_argument(
        "--pixdim",
        type=float,
        nargs=3,
        default=None,
        help="training voxel size in mm; default: the phantom spacing, 0.76 0.76 3.0 with --dataset_dir",
    )
    p.add_argument(
        "--configs",
        type=_csv_list,
        default=list(CONFIGS),
        help="comma-separated, of " + ",".join(ALL_CONFIGS) + " (the peers need a --roi they take: SwinUNETR multiples "
        "of 32, one of them at least 64, e.g. --roi 64 32 32)",
    )
    p.add_argument("--variants", type=_csv_list, default=list(VARIANTS), help="phantom variants: normal,situs")
    p.add_argument("--iterations", type=int, default=1500, help="training iterations per run (same for every config)")
    p.add_argument(
        "--epoch_length",
        type=int,
        default=None,
        help="iterations per epoch (the LR schedule steps per epoch); default 25, 250 for bcv",
    )
    p.add_argument("--num_samples", type=int, default=2, help="crops per scan per iteration")
    p.add_argument(
        "--seeds",
        type=lambda s: [int(v) for v in _csv_list(s)],
        default=[0, 1],
        help="training seeds (the data stay the same)",
    )
    p.add_argument(
        "--optimizer",
        default=None,
        choices=("bundle", "adamw"),
        help="bundle: train.json's SGD (momentum 0.99, nesterov; the paper's recipe); adamw: AdamW "
        "(weight decay 0.01), which learns much faster in a short CPU budget. Default: adamw on the "
        "phantom, bundle with --dataset_dir",
    )
    p.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="default 0.01 for the bundle's SGD, 0.002 for AdamW; the poly schedule decays it to 0",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ...; default: the bundle's (CUDA if available)")
    p.add_argument("--num_workers", type=int, default=None, help="data-loader workers; default 0 on CPU, 4 on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep finished runs (their run_results.csv) and continue interrupted trainings",
    )
    p.add_argument(
        "--budget_minutes",
        type=float,
        default=None,
        help="launch no new run after this many minutes; skipped runs are listed in summary.md",
    )
    # phantom
    p.add_argument("--num_cases", type=int, default=20, help="phantom: labelled cases (training + held-out)")
    p.add_argument("--val_fraction", type=float, default=0.3, help="phantom: fraction of held-out cases")
    p.add_argument("--shape", type=int, nargs=3, default=list(PHANTOM.shape), help="phantom volume size in voxels")
    p.add_argument("--spacing", type=float, nargs=3, default=list(PHANTOM.spacing), help="phantom voxel size in mm")
    p.add_argument(
        "--situs_fraction",
        type=float,
        default=VARIANTS["situs"],
        help="phantom 'situs' variant: fraction of situs inversus cases in each split",
    )
    p.add_argument("--data_seed", type=int, default=0, help="phantom data set seed")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ID=JSON",
        help="extra bundle override, repeatable, e.g. network_def#feature_size=12",
    )
    p.add_argument(
        "--config_override",
        action="append",
        default=[],
        metavar="CONFIG:ID=JSON",
        help="a bundle override for one config only, repeatable, e.g. swinunetr:network_def#feature_size=12 (a "
        "peer's size; an --override of network_def would change FINE too)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="parallel worker processes of 1 thread each (on a small CPU machine, 2 single-threaded "
        "processes on 2 cores do more than one process with 2 threads)",
    )
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_t_start", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    unknown = [c for c in args.configs if c not in ALL_CONFIGS]
    if unknown or not args.configs:
        p.error(f"--configs must be a non-empty subset of {list(ALL_CONFIGS)}, got {args.configs}")
    if args.dataset_dir is None:
        bad = [v for v in args.variants if v not in VARIANTS]
        if bad or not args.variants:
            p.error(f"--variants must be a non-empty subset of {list(VARIANTS)}, got {args.variants}")
    else:
        args.variants = [Path(args.dataset_dir).name or "data"]
    if args.iterations < 1 or args.num_samples < 1 or args.jobs < 1 or not args.seeds:
        p.error("--iterations, --num_samples and --jobs must be >= 1 and --seeds non-empty")
    if args.roi is None:
        if args.dataset_dir is None:
            args.roi = list(PHANTOM.roi_size)
        else:
            args.roi = list(PRESETS[args.preset]["roi_size"])
    if args.pixdim is None:
        args.pixdim = list(args.spacing) if args.dataset_dir is None else [0.76, 0.76, 3.0]
    for peer in (c for c in args.configs if c in PEER_CONFIGS):
        try:
            check_roi(peer, args.roi, args.pixdim)  # the bundle plans DynUNet at pixdim
        except ValueError as err:
            p.error(f"--configs {peer} with --roi {' '.join(map(str, args.roi))}: {err}")
    if args.optimizer is None:
        args.optimizer = "adamw" if args.dataset_dir is None else "bundle"
    if args.learning_rate is None:
        args.learning_rate = 0.002 if args.optimizer == "adamw" else 0.01
    if args.epoch_length is None:
        args.epoch_length = 250 if args.preset == "bcv" else 25
    args.epoch_length = max(1, min(args.epoch_length, args.iterations))
    args.max_epochs = max(1, round(args.iterations / args.epoch_length))
    args.overrides = parse_overrides(p, args.override)
    args.config_overrides = {}
    for item in args.config_override:
        config, sep, rest = item.partition(":")
        if not sep or config not in ALL_CONFIGS:  # one for a config not in --configs is kept and unused (a rerun)
            p.error(f"--config_override needs CONFIG:ID=JSON with CONFIG one of {list(ALL_CONFIGS)}, got {item!r}")
        args.config_overrides.setdefault(config, {}).update(parse_overrides(p, [rest]))
    return args


def parse_overrides(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, Any]:
    """``["ID=JSON", ...]`` (repeated ``--override``) -> bundle overrides; a value that is not JSON stays a string
    (e.g. an expression ``"$..."``). A missing ``=`` is a usage error of ``parser``."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--override needs ID=JSON, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


# ------------------------------------------------------------------------------------------------------------ data
def phantom_data(args: argparse.Namespace, variant: str) -> Path:
    """Write (or reuse, when the settings match) the phantom data set of ``variant`` into ``OUT/data_<variant>``."""
    from monai_fine.data import make_phantom_dataset

    out = Path(args.out).resolve() / f"data_{variant}"
    settings = {
        "num_cases": args.num_cases,
        "seed": args.data_seed,
        "shape": list(args.shape),
        "spacing": list(args.spacing),
        "num_test": 0,
        "val_fraction": args.val_fraction,
        "situs_inversus_fraction": args.situs_fraction if variant == "situs" else 0.0,
    }
    stamp = out / "ablation_data_settings.json"
    if (out / "dataset_0.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return out
    if out.exists():
        shutil.rmtree(out)
    make_phantom_dataset(out, **settings)
    stamp.write_text(json.dumps(settings, indent=2) + "\n")
    return out


def held_out_cases(datalist: dict[str, Any], dataset_dir: Path) -> list[dict[str, Any]]:
    """Held-out cases (``validation``) as ``{"case", "image", "label", "situs"}``, paths resolved."""
    situs = set(datalist.get("situs_inversus", []))
    cases = []
    for item in datalist["validation"]:
        case = _case_name(item["image"])
        cases.append(
            {
                "case": case,
                "image": str((dataset_dir / item["image"]).resolve()),
                "label": str((dataset_dir / item["label"]).resolve()),
                "situs": case in situs,
            }
        )
    return cases


def subsets_of(cases: list[dict[str, Any]]) -> dict[str, list[str]]:
    """``all`` held-out cases, and ``normal`` / ``situs`` when both kinds are among them."""
    out = {"all": [c["case"] for c in cases]}
    situs = [c["case"] for c in cases if c["situs"]]
    normal = [c["case"] for c in cases if not c["situs"]]
    if situs and normal:
        out["normal"], out["situs"] = normal, situs
    return out


# -------------------------------------------------------------------------------------------------------- one run
def bundle_overrides(args: argparse.Namespace, config: str, seed: int, dataset_dir: Path, root: Path) -> dict:
    net = config_network(config)
    o: dict[str, Any] = {
        "bundle_root": str(root),
        "dataset_dir": str(dataset_dir),
        "preset": args.preset,
        "scan_memory": net["scan_memory"],
        "roi_size": list(args.roi),
        "pixdim": list(args.pixdim),
        "seed": seed,
        "num_workers": args.num_workers,
        "resume": bool(args.resume),
    }
    if "arch" in net:
        o["arch"] = net["arch"]
    else:
        o["memory"] = net["memory"]
    if args.datalist:
        o["datalist"] = str(Path(args.datalist).resolve())
    if args.device:
        o["device"] = f"$torch.device('{args.device}')"
    if args.optimizer == "adamw":  # the bundle's optimizer_name tunable (AdamW, weight decay 0.01)
        o["optimizer_name"] = "adamw"
    o.update(args.overrides)
    o.update(args.config_overrides.get(config, {}))
    return o


def train_and_evaluate(args: argparse.Namespace, config: str, seed: int, dataset_dir: Path, root: Path) -> dict:
    """Train one config into ``root`` (its bundle_root), evaluate its final model; returns the wall times."""
    from monai_fine.bundle_tools import run_bundle

    common = bundle_overrides(args, config, seed, dataset_dir, root)
    final = root / "models" / "model_final.pt"
    timing = root / "train_time.json"  # kept, so that a resumed run whose evaluation failed keeps its training time
    t0 = time.time()
    if not (final.is_file() and timing.is_file()):
        run_bundle(
            ["train.json"],
            "train",
            max_epochs=args.max_epochs,
            epoch_length=args.epoch_length,
            val_interval=args.max_epochs + 1,  # no validation during training: the budget is training only
            num_samples=args.num_samples,
            learning_rate=args.learning_rate,
            **{"validate#dataset#cache_rate": 0.0},  # nothing to cache for a validation that never runs
            **common,
        )
    t1 = time.time()
    if not final.is_file():
        raise FileNotFoundError(f"training did not write {final} (see train.json: last_checkpoint#final_filename)")
    if timing.is_file():
        train_minutes = json.loads(timing.read_text())["train_minutes"]
    else:
        train_minutes = (t1 - t0) / 60.0
        timing.write_text(json.dumps({"train_minutes": train_minutes}) + "\n")
    run_bundle(
        ["train.json", "evaluate.json"],
        "eval",
        checkpoint=str(final),  # the final model: no validation ran, so there is no best-validation model.pt
        save_predictions=True,
        output_dir=str(root / "eval"),
        **common,
    )
    return {"train_minutes": train_minutes, "eval_minutes": (time.time() - t1) / 60.0}


def confusion_counts(pred_path: Path, label_path: Path, num_classes: int = 14):
    """``(num_classes, num_classes)`` voxel counts, rows = truth label, columns = predicted label."""
    import nibabel as nib
    import numpy as np

    pred = np.asarray(nib.load(str(pred_path)).dataobj).squeeze().astype(np.int64)
    truth = np.asarray(nib.load(str(label_path)).dataobj).squeeze().astype(np.int64)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred_path} has shape {pred.shape}, its label {truth.shape}")
    idx = truth.clip(0, num_classes - 1) * num_classes + pred.clip(0, num_classes - 1)
    return np.bincount(idx.ravel(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def collect_run(eval_dir: Path, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-subset, per-organ rows of one evaluated run (Dice / HD95 means over the subset's cases, twin swaps)."""
    dice = read_raw(eval_dir / "val_mean_dice_raw.csv")
    hd95 = read_raw(eval_dir / "val_hd95_raw.csv")
    conf = {}
    for c in cases:
        pred = eval_dir / "predictions" / f"{c['case']}_seg.nii.gz"
        conf[c["case"]] = confusion_counts(pred, Path(c["label"])) if pred.is_file() else None
    rows = []
    for subset, names in subsets_of(cases).items():
        for j, label in enumerate(ORGANS):
            d = [dice[n][j] for n in names if n in dice]
            h = [hd95[n][j] for n in names if n in hd95]
            mats = [conf[n] for n in names if conf.get(n) is not None]
            truth = int(sum(m[label].sum() for m in mats)) if mats else 0
            to_twin = int(sum(m[label, TWIN[label]] for m in mats)) if mats and label in TWIN else 0
            pred = int(sum(m[:, label].sum() for m in mats)) if mats else 0
            as_pair = int(sum(m[label, label] + (m[label, TWIN[label]] if label in TWIN else 0) for m in mats))
            rows.append(
                {
                    "subset": subset,
                    "label": label,
                    "organ": ORGANS[label],
                    "synapse8": label in SYNAPSE8,
                    "dice": _nanmean(d),
                    "hd95_mm": _nanmean(h),
                    "dice_cases": sum(1 for v in d if v == v),
                    "hd95_cases": sum(1 for v in h if v == v and not math.isinf(v)),
                    "truth_voxels": truth,
                    "to_twin_voxels": to_twin if label in TWIN else "",
                    "twin_swap": (to_twin / truth if truth else float("nan")) if label in TWIN else "",
                    "pred_voxels": pred if mats else "",
                    "truth_as_pair_voxels": as_pair if mats else "",
                    "cases": len(d),
                }
            )
    return rows


def _add_pair_counts(done: Path, eval_dir: Path, cases: list[dict[str, Any]]) -> None:
    """Fill ``pred_voxels`` and ``truth_as_pair_voxels`` into a finished run's rows written before they existed,
    from its saved predictions (nothing else in the rows changes; without predictions the rows stay as they are)."""
    rows = _read_csv(done)
    if not rows or rows[0].get("pred_voxels") not in (None, ""):
        return
    if not all((eval_dir / "predictions" / f"{c['case']}_seg.nii.gz").is_file() for c in cases):
        return
    fresh = {(r["subset"], str(r["label"])): r for r in collect_run(eval_dir, cases)}
    for r in rows:
        new = fresh.get((r["subset"], str(r["label"])))
        if new is not None:
            r["pred_voxels"], r["truth_as_pair_voxels"] = new["pred_voxels"], new["truth_as_pair_voxels"]
    tmp = done.with_suffix(".tmp")
    _write_csv(tmp, rows)
    os.replace(tmp, done)


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: Sequence[str] = RESULT_FIELDS) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------- aggregation
def _f(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def run_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Scalar metrics of one (variant, subset, seed, config) from its organ rows."""
    by = {int(r["label"]): r for r in rows}
    out = {
        "dice": _nanmean([_f(by[k]["dice"]) for k in ORGANS if k in by]),
        "hd95": _nanmean([_f(by[k]["hd95_mm"]) for k in ORGANS if k in by]),
        "dice8": _nanmean([_f(by[k]["dice"]) for k in SYNAPSE8 if k in by]),
        "hd95_8": _nanmean([_f(by[k]["hd95_mm"]) for k in SYNAPSE8 if k in by]),
        "train_minutes": _f(rows[0]["train_minutes"]) if rows else float("nan"),
        "sec_per_iter": 60.0 * _f(rows[0]["train_minutes"]) / _f(rows[0]["iterations"]) if rows else float("nan"),
    }
    for k in CONTEXT_ORGANS:
        out[f"dice_{k}"] = _f(by[k]["dice"]) if k in by else float("nan")
    for name, (a, b) in PAIRS.items():
        truth = sum(_f(by[k]["truth_voxels"]) for k in (a, b) if k in by)
        swapped = sum(_f(by[k]["to_twin_voxels"]) for k in (a, b) if k in by)
        out[f"swap_{name}"] = swapped / truth if truth > 0 else float("nan")
        # the pair's Dice regardless of side: is the organ found at all (both twins as one label)?
        found = sum(_f(by[k].get("truth_as_pair_voxels")) for k in (a, b) if k in by)
        pred = sum(_f(by[k].get("pred_voxels")) for k in (a, b) if k in by)
        out[f"pair_dice_{name}"] = 2 * found / (truth + pred) if truth + pred > 0 else float("nan")
    return out


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if v == v]
    if not vals:
        return float("nan"), float("nan"), 0
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s, len(vals)


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, tuple[float, float, int]]]:
    """(variant, subset, config) -> metric -> (mean, std over seeds, seeds)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["subset"], r["config"], str(r["seed"])), []).append(r)
    per_seed: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for (variant, subset, config, _), grp in groups.items():
        per_seed.setdefault((variant, subset, config), []).append(run_metrics(grp))
    return {key: {m: _mean_std([s[m] for s in seeds]) for m in seeds[0]} for key, seeds in per_seed.items()}


# --------------------------------------------------------------------------------------------------------- output
def machine_info(device: str | None) -> dict[str, Any]:
    import monai
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    if torch.cuda.is_available() and info["device"].startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(info["device"]))
    return info


def _fmt(ms: tuple[float, float, int], digits: int = 3, pct: bool = False) -> str:
    m, s, n = ms
    if m != m:
        return "n/a"
    scale = 100.0 if pct else 1.0
    d = 1 if pct else digits
    text = f"{m * scale:.{d}f}"
    return text + (f" ± {s * scale:.{d}f}" if n > 1 else "")


SUBSET_TITLE = {
    "all": "all held-out cases",
    "normal": "held-out cases with normal anatomy",
    "situs": "held-out situs inversus cases",
}


def summary_markdown(
    args: argparse.Namespace,
    agg: dict,
    info: dict[str, Any],
    command: str,
    total_minutes: float,
    skipped: list[str],
    failed: list[str],
    data_notes: list[str],
) -> str:
    seeds = ",".join(str(s) for s in args.seeds)
    lines = [
        "# FINE context ablation (memory tokens, paper Table 3)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- machine: {info['cpu']}, {info['cpu_cores']} cores, "
        + (
            f"{info['jobs']} parallel runs of 1 torch thread each"
            if info.get("jobs", 1) > 1
            else f"torch threads {info['torch_threads']} (OMP_NUM_THREADS={info['OMP_NUM_THREADS']})"
        )
        + f", device {info['device']}"
        + (f" ({info['gpu']})" if "gpu" in info else "")
        + f"; python {info['python']}, torch {info['torch']}, monai {info['monai']}",
        f"- total wall time: {total_minutes:.1f} min",
        f"- budget per run: {args.max_epochs * args.epoch_length} iterations ({args.max_epochs} epochs x "
        f"{args.epoch_length}), {args.num_samples} crops of {' x '.join(map(str, args.roi))} voxels per iteration, "
        f"pixdim {' x '.join(f'{p:g}' for p in args.pixdim)} mm, preset `{args.preset}`, "
        f"{'AdamW (weight decay 0.01)' if args.optimizer == 'adamw' else 'the bundle optimizer (SGD)'} lr "
        f"{args.learning_rate:g} with the bundle's poly schedule, no validation during training; the final model "
        "is evaluated",
        f"- training seeds: {seeds} (the data are the same for every seed and config)",
    ]
    for config, o in ((c, o) for c, o in args.config_overrides.items() if c in args.configs):
        lines.append(f"- `{config}` only: " + ", ".join(f"`{k}={json.dumps(v)}`" for k, v in o.items()))
    lines += [f"- {n}" for n in data_notes]
    lines += [
        "",
        "Dice and HD95 (mm) are means over organs of the per-organ mean over held-out cases (13 BTCV organs, and the 8 "
        "Synapse organs). HD95 skips a case where the organ is absent from the prediction or the truth (a missed "
        "organ counts as Dice 0, not in HD95). *Swap* = voxels of one twin predicted as the other "
        "(right kidney as left kidney and vice versa, likewise adrenals, liver/spleen), as a fraction of the pair's "
        "voxels, pooled over cases. *Kidneys, either side*: the Dice of both kidneys taken as one label (is the organ "
        "found, whichever side it is given), pooled over cases. *s / iter*: training wall time per iteration. With "
        "several seeds: mean ± std over seeds.",
    ]
    variants = list(dict.fromkeys(k[0] for k in agg))
    head = (
        "| config | Dice | HD95 mm | Dice Syn8 | HD95 Syn8 | "
        + " | ".join(SHORT[k] for k in CONTEXT_ORGANS)
        + " | kidneys, either side | swap kidneys % | swap adrenals % | swap liver/spleen % | train min | s / iter |"
    )
    for variant in variants:
        for subset in ("all", "normal", "situs"):
            configs = [c for c in ALL_CONFIGS if (variant, subset, c) in agg]
            if not configs:
                continue
            lines += ["", f"## {variant}: {SUBSET_TITLE[subset]}", "", head, "|" + "---|" * (head.count("|") - 1)]
            for c in configs:
                a = agg[(variant, subset, c)]
                cells = [c, _fmt(a["dice"]), _fmt(a["hd95"], 1), _fmt(a["dice8"]), _fmt(a["hd95_8"], 1)]
                cells += [_fmt(a[f"dice_{k}"]) for k in CONTEXT_ORGANS]
                cells += [_fmt(a["pair_dice_kidneys"])]
                cells += [_fmt(a[f"swap_{p}"], pct=True) for p in PAIRS]
                cells += [_fmt(a["train_minutes"], 1), _fmt(a["sec_per_iter"], 3)]
                lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        why = f"over --budget_minutes {args.budget_minutes:g}" if args.budget_minutes is not None else "interrupted"
        lines += ["", f"Not run ({why}): " + ", ".join(skipped)]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed)]
    lines += ["", "![ablation](ablation.png)", ""]
    return "\n".join(lines)


def plot(agg: dict, path: Path, title: str = "") -> None:
    matplotlib = require("matplotlib", "the ablation plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = dict.fromkeys(k[0] for k in agg)
    panels = [(v, s) for v in variants for s in ("all", "situs") if any(k[:2] == (v, s) for k in agg)]
    dice_keys = ["dice"] + [f"dice_{k}" for k in CONTEXT_ORGANS]
    dice_names = ["mean (13)"] + [SHORT[k] for k in CONTEXT_ORGANS]
    swap_keys = [f"swap_{p}" for p in PAIRS]
    fig, axes = plt.subplots(
        len(panels), 2, figsize=(15, 3.8 * len(panels)), squeeze=False, gridspec_kw={"width_ratios": [3, 1.2]}
    )
    colors = plt.get_cmap("tab10")
    for row, (variant, subset) in enumerate(panels):
        configs = [c for c in ALL_CONFIGS if (variant, subset, c) in agg]
        width = 0.8 / max(len(configs), 1)
        for col, (keys, names, scale, ylabel) in enumerate(
            [(dice_keys, dice_names, 1.0, "Dice"), (swap_keys, list(PAIRS), 100.0, "twin swap (% of voxels)")]
        ):
            ax = axes[row][col]
            for i, c in enumerate(configs):
                ms = [agg[(variant, subset, c)][k] for k in keys]
                xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(keys))]
                means = [0.0 if m != m else m * scale for m, _, _ in ms]
                errs = [0.0 if (s != s or n < 2) else s * scale for _, s, n in ms]
                ax.bar(xs, means, width, yerr=errs if any(errs) else None, capsize=2, label=c, color=colors(i))
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels(names, rotation=20)
            ax.set_ylabel(ylabel)
            if col == 0:
                ax.set_ylim(0, 1)
                ax.set_title(f"{variant}: {SUBSET_TITLE[subset]}")
                ax.legend(ncol=len(configs), fontsize=8, loc="upper right")
            else:
                ax.set_ylim(bottom=0)
                ax.set_title("left/right and liver/spleen swaps")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------- main
def run_dir_name(config: str) -> str:
    return config.replace("+", "_")


def task_root(args: argparse.Namespace, variant: str, seed: int, config: str) -> Path:
    return Path(args.out).resolve() / "runs" / variant / f"seed{seed}" / run_dir_name(config)


def tasks_of(args: argparse.Namespace) -> list[tuple[int, str, str]]:
    """(seed, variant, config) in seed-major order: a run cut short by the budget still covers every config."""
    return [(seed, variant, config) for seed in args.seeds for variant in args.variants for config in args.configs]


def _datalist_path(args: argparse.Namespace, dataset_dir: Path) -> Path:
    return Path(args.datalist).resolve() if args.datalist else dataset_dir / "dataset_0.json"


def run_task(
    args: argparse.Namespace, task: tuple[int, str, str], dataset_dir: Path, t_start: float, token: str | None = None
) -> str:
    """Train and evaluate one (seed, variant, config) into its run folder; returns done / reused / claimed /
    skipped / failed. The rows go to ``run_results.csv`` there, a failure to ``run_failed.txt``."""
    seed, variant, config = task
    tag = f"{variant}/seed{seed}/{config}"
    root = task_root(args, variant, seed, config)
    done = root / "run_results.csv"
    cases = held_out_cases(json.loads(_datalist_path(args, dataset_dir).read_text()), dataset_dir)
    if done.is_file():
        print(f"[ablation] {tag}: done before, reusing {done}", flush=True)
        _add_pair_counts(done, root / "eval", cases)
        return "reused"
    if args.budget_minutes is not None and (time.time() - t_start) / 60.0 > args.budget_minutes:
        print(f"[ablation] {tag}: skipped (over --budget_minutes {args.budget_minutes:g})", flush=True)
        return "skipped"
    root.mkdir(parents=True, exist_ok=True)
    if token is not None:  # parallel workers: the first to create the claim file runs the task
        try:
            os.close(os.open(root / f".claim-{token}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return "claimed"
    (root / "run_failed.txt").unlink(missing_ok=True)
    net = config_network(config)
    memory, scan = net["memory"], net["scan_memory"]
    print(
        f"[ablation] {tag}: training {args.max_epochs * args.epoch_length} iterations ("
        + (f"arch={net['arch']}" if "arch" in net else f"memory={memory}, scan_memory={scan}")
        + f"), then evaluating {len(cases)} held-out cases",
        flush=True,
    )
    try:
        times = train_and_evaluate(args, config, seed, dataset_dir, root)
        rows = collect_run(root / "eval", cases)
    except Exception as e:  # one failing config must not lose the others
        (root / "run_failed.txt").write_text(f"{type(e).__name__}: {e}\n")
        print(f"[ablation] {tag}: FAILED {type(e).__name__}: {e}", flush=True)
        return "failed"
    for r in rows:
        r.update(
            variant=variant,
            seed=seed,
            config=config,
            memory=memory,
            scan_memory=scan,
            iterations=args.max_epochs * args.epoch_length,
            **times,
        )
    _write_csv(done, rows)
    m = run_metrics([r for r in rows if r["subset"] == "all"])
    print(
        f"[ablation] {tag}: Dice {m['dice']:.3f}, HD95 {m['hd95']:.1f} mm, kidney swaps "
        f"{100 * m['swap_kidneys']:.1f} %, train {times['train_minutes']:.1f} min, eval "
        f"{times['eval_minutes']:.1f} min",
        flush=True,
    )
    return "done"


def _run_workers(args: argparse.Namespace, argv: list[str], t_start: float) -> None:
    """``--jobs N``: N single-threaded worker processes share the runs (claim files), logs in OUT/worker_<i>.log."""
    import subprocess

    out = Path(args.out).resolve()
    token = f"{os.getpid()}-{int(t_start)}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "monai_fine.experiments.context_ablation",
        *argv,
        "--out",
        str(out),
        "--jobs",
        "1",
        "--threads",
        "1",
        "--resume",
        "--_worker",
        token,
        "--_t_start",
        repr(t_start),
    ]
    procs = []
    for i in range(args.jobs):
        log = open(out / f"worker_{i}.log", "w")  # noqa: SIM115 (closed when its worker ends, below)
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    print(f"[ablation] {args.jobs} workers (1 thread each) running; logs: {out}/worker_*.log", flush=True)
    for proc, log in procs:
        proc.wait()
        log.close()
    for root in (out / "runs").glob(f"*/seed*/*/.claim-{token}"):
        root.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the ablation; returns ``{"results", "summary", "plot", "skipped", "failed", "minutes"}``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    t_start = args._t_start or time.time()
    command = shlex.join(["python", "-m", "monai_fine", "context_ablation", *argv])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.num_workers is None:
        cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        args.num_workers = 4 if cuda else 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks = tasks_of(args)

    if args._worker:  # a worker of --jobs: the parent wrote the data and writes the summary
        datasets = {
            v: (out / f"data_{v}" if args.dataset_dir is None else Path(args.dataset_dir).resolve())
            for v in args.variants
        }
        for task in tasks:
            run_task(args, task, datasets[task[1]], t_start, token=args._worker)
        return {}

    datasets: dict[str, Path] = {}
    data_notes = []
    for variant in args.variants:
        if args.dataset_dir is None:
            datasets[variant] = phantom_data(args, variant)
        else:
            datasets[variant] = Path(args.dataset_dir).resolve()
        dl_path = _datalist_path(args, datasets[variant])
        dl = json.loads(dl_path.read_text())
        cases = held_out_cases(dl, datasets[variant])
        situs = set(dl.get("situs_inversus", []))
        note = f"data `{variant}`: {dl_path}, {len(dl['training'])} training / {len(cases)} held-out cases"
        if args.dataset_dir is None:
            n_situs_tr = sum(_case_name(t["image"]) in situs for t in dl["training"])
            note += (
                f" (phantom {'x'.join(map(str, args.shape))} voxels of {'x'.join(f'{s:g}' for s in args.spacing)} mm, "
                f"seed {args.data_seed}; situs inversus: {n_situs_tr} training, {sum(c['situs'] for c in cases)} "
                "held-out)"
            )
        data_notes.append(note)
    if not args.resume:  # a fresh run: no checkpoint or result of an earlier run is reused
        for seed, variant, config in tasks:
            root = task_root(args, variant, seed, config)
            if root.exists():
                shutil.rmtree(root)

    if args.jobs > 1:
        _run_workers(args, argv, t_start)
    else:
        for task in tasks:
            run_task(args, task, datasets[task[1]], t_start)

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    failed: list[str] = []
    for seed, variant, config in tasks:
        tag = f"{variant}/seed{seed}/{config}"
        root = task_root(args, variant, seed, config)
        if (root / "run_results.csv").is_file():
            rows += _read_csv(root / "run_results.csv")
        elif (root / "run_failed.txt").is_file():
            failed.append(f"{tag}: {(root / 'run_failed.txt').read_text().strip()}")
        else:
            skipped.append(tag)

    results = out / "results.csv"
    _write_csv(results, rows)
    agg = aggregate(rows)
    info = machine_info(args.device)
    info["jobs"] = args.jobs
    total = (time.time() - t_start) / 60.0
    summary = out / "summary.md"
    summary.write_text(summary_markdown(args, agg, info, command, total, skipped, failed, data_notes))
    png = out / "ablation.png"
    if agg:
        plot(
            agg,
            png,
            f"FINE token ablation: {args.max_epochs * args.epoch_length} iterations, "
            f"seeds {','.join(map(str, args.seeds))}, roi {'x'.join(map(str, args.roi))}",
        )
    print(summary.read_text(), flush=True)
    print(f"[ablation] wrote {results}, {summary}" + (f", {png}" if agg else "") + f" in {total:.1f} min", flush=True)
    return {
        "results": results,
        "summary": summary,
        "plot": png if agg else None,
        "skipped": skipped,
        "failed": failed,
        "minutes": total,
    }


if __name__ == "__main__":
    main()
