# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Is the trained memory used? Evaluate a trained FINE with parts of its memory switched off at inference.

For a model trained by ``context_ablation.py`` (or the bundle), segments the held-out cases three ways and reports
per-organ Dice for each:

- ``as trained``: the model as it is;
- ``no volume memory``: the visit record cleared, so every volume token is masked (V-MSA skipped, G-MSA sees only
  window tokens): the prediction without the volume-token memory;
- ``no scan memory`` (models trained with ``scan_memory``): one inference pass without the per-scan memory.

If removing a part changes nothing, the network learned not to rely on it.

    python -m monai_fine memory_probe --run runs/context_ablation/runs/situs/seed0/full_scan \\
        --data runs/context_ablation/data_situs --memory full --scan_memory
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from monai_fine.bundle_tools import bundle_dir
from monai_fine.data.io import torch_load
from monai_fine.data.phantom import PHANTOM
from monai_fine.inferers import FINEInferer
from monai_fine.labels import BTCV13_ORGANS, BTCV_LABELS
from monai_fine.metrics import compute_organ_dice
from monai_fine.networks import PRESETS

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict:
    """Run the probe (``argv``: the command-line options); returns condition -> per-organ Dice."""
    p = argparse.ArgumentParser(
        prog="python -m monai_fine memory_probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", default=None, help="bundle_root of a trained run (models/model_final.pt)")
    p.add_argument(
        "--view_probe",
        action="store_true",
        help="also: can a linear classifier tell situs inversus cases from normal ones by their scan view (the whole "
        "scan at the crop size, what the scan memory is written from)? Needs no --run",
    )
    p.add_argument("--data", required=True, help="dataset_dir with dataset_0.json")
    p.add_argument("--preset", default="tiny", choices=tuple(PRESETS))
    p.add_argument("--memory", default="full")
    p.add_argument("--scan_memory", action="store_true")
    p.add_argument("--roi", type=int, nargs=3, default=list(PHANTOM.roi_size))
    p.add_argument("--pixdim", type=float, nargs=3, default=list(PHANTOM.spacing))
    p.add_argument("--split", default="validation")
    args = p.parse_args(argv)
    if args.run is None and not args.view_probe:
        p.error("--run is required (or --view_probe alone)")

    parser = ConfigParser()
    parser.read_config(str(bundle_dir() / "configs" / "train.json"))
    parser.update(
        {
            "preset": args.preset,
            "memory": args.memory,
            "scan_memory": args.scan_memory,
            "roi_size": args.roi,
            "pixdim": args.pixdim,
            "dataset_dir": args.data,
            "device": "$torch.device('cpu')",
        }
    )
    preprocess = parser.get_parsed_content("validate#preprocessing")
    datalist = json.loads((Path(args.data) / "dataset_0.json").read_text())
    results: dict = {}
    if args.view_probe:
        results["view_probe"] = view_probe(datalist, Path(args.data), preprocess, args.roi)
        print(
            f"scan view probe: situs inversus told from normal in {results['view_probe']['accuracy']:.3f} of "
            f"{results['view_probe']['cases']} cases (leave-one-case-out ridge classifier on the {args.roi} views; "
            "0.5 = chance)"
        )
        if args.run is None:
            return results
    net = parser.get_parsed_content("network_def")
    ckpt = torch_load(Path(args.run) / "models" / "model_final.pt")
    net.load_state_dict(ckpt.get("model", ckpt))
    net.eval()
    items = datalist[args.split]
    cases = [
        preprocess({k: str(Path(args.data) / v) for k, v in item.items() if k in ("image", "label")}) for item in items
    ]
    visits = net.memory_visits.clone()

    conditions = {"as trained": (True, args.scan_memory)}
    if args.memory == "full":
        conditions["no volume memory"] = (False, False)
    if args.scan_memory:
        conditions["no scan memory"] = (True, False)
    for name, (memory_on, scan_on) in conditions.items():
        net.memory_visits.copy_(visits if memory_on else torch.zeros_like(visits))
        inferer = FINEInferer(args.roi, sw_batch_size=8, overlap=0.5, scan_memory=scan_on)
        dice = []
        with torch.no_grad():
            for case in cases:
                pred = inferer(case["image"][None], net).argmax(1)
                onehot = lambda t: torch.nn.functional.one_hot(t.long(), 14).permute(0, 4, 1, 2, 3)  # noqa: E731
                dice.append(compute_organ_dice(onehot(pred), onehot(case["label"][None, 0]), BTCV13_ORGANS))
        dice = torch.cat(dice)
        results[name] = torch.nanmean(dice, dim=0)
    header = "| organ | " + " | ".join(results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]
    for j, label in enumerate(BTCV13_ORGANS):
        lines.append(f"| {BTCV_LABELS[label]} | " + " | ".join(f"{float(v[j]):.3f}" for v in results.values()) + " |")
    lines.append("| mean | " + " | ".join(f"{float(torch.nanmean(v)):.3f}" for v in results.values()) + " |")
    print(f"run {args.run} ({len(cases)} {args.split} cases)")
    print("\n".join(lines))
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in results.items()}


def view_probe(datalist: dict, root: Path, preprocess, roi) -> dict:
    """Leave-one-case-out accuracy of a ridge classifier telling the ``situs_inversus`` cases of ``datalist`` (all
    splits) from the others by their scan view (:py:func:`monai_fine.transforms.scan_view`, the preprocessed image at
    the crop size ``roi``). 1.0: the view shows the arrangement; 0.5: it does not, linearly."""
    from monai_fine.experiments.context_benchmark import ridge_cv_accuracy
    from monai_fine.reports import case_name
    from monai_fine.transforms import scan_view

    situs = set(datalist.get("situs_inversus", []))
    items = [it for split in ("training", "validation") for it in datalist.get(split, [])]
    if not situs or len(situs) == len(items):
        raise ValueError(
            f"the view probe needs situs inversus and normal cases; {root} has {len(situs)} of {len(items)}."
        )
    views, target = [], []
    for it in items:
        case = preprocess({k: str(root / it[k]) for k in ("image", "label")})
        views.append(scan_view(case["image"].as_tensor()[None].float(), roi).reshape(-1))
        target.append(int(case_name(it["image"]) in situs))
    accuracy = ridge_cv_accuracy(torch.stack(views), target, list(range(len(items))))
    return {"accuracy": accuracy, "cases": len(items), "situs_cases": sum(target)}


if __name__ == "__main__":
    main()
