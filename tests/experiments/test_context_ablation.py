# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The context ablation (``python -m monai_fine context_ablation``, :py:mod:`monai_fine.experiments.context_ablation`)
end to end on a minimal budget (a few iterations, a tiny network, 4 small cases); the experiments' CLI entry points."""

from __future__ import annotations

import csv
import math
import runpy
import sys
from pathlib import Path

import pytest

from monai_fine.experiments import context_ablation


@pytest.fixture(scope="module")
def ablation():
    return context_ablation


# a tiny network, small crops and a small phantom keep every run at seconds on a CPU
MINIMAL = [
    "--variants", "situs", "--seeds", "0", "--iterations", "2", "--epoch_length", "1", "--roi", "32", "32", "16",
    "--num_cases", "5", "--val_fraction", "0.4", "--shape", "48", "48", "32", "--spacing", "4", "4", "4",
    "--device", "cpu", "--num_workers", "0",
    "--preset", "test",
]  # fmt: skip


@pytest.mark.slow
def test_context_ablation_end_to_end(ablation, tmp_path):
    configs = list(ablation.CONFIGS)
    out = tmp_path / "ablation"
    res = ablation.main(["--out", str(out), "--configs", ",".join(configs), *MINIMAL])
    assert not res["failed"] and not res["skipped"]

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # 2 held-out cases, one of them situs inversus: subsets all / normal / situs
    assert {r["subset"] for r in rows} == {"all", "normal", "situs"}
    for subset in ("all", "normal", "situs"):
        for config in configs:
            labels = sorted(int(r["label"]) for r in rows if r["subset"] == subset and r["config"] == config)
            assert labels == list(range(1, 14)), (subset, config)
    for r in rows:
        dice, hd95 = float(r["dice"]), float(r["hd95_mm"])
        assert math.isnan(dice) or 0.0 <= dice <= 1.0, r
        assert math.isnan(hd95) or hd95 >= 0.0, r
        assert r["iterations"] == "2" and r["variant"] == "situs" and r["seed"] == "0"
        assert float(r["train_minutes"]) >= 0.0 and float(r["eval_minutes"]) > 0.0
        if int(r["label"]) in ablation.TWIN:
            swap = float(r["twin_swap"])
            assert math.isnan(swap) or 0.0 <= swap <= 1.0
            assert int(r["to_twin_voxels"]) <= int(r["truth_voxels"])
    all_rows = [r for r in rows if r["subset"] == "all"]
    assert all(int(r["cases"]) == 2 for r in all_rows)
    # the phantom's held-out cases contain both kidneys: the swap counts see their voxels
    assert all(int(r["truth_voxels"]) > 0 for r in all_rows if r["label"] in ("2", "3"))

    # the scan-memory config trained with memory "full" and a per-scan memory, the others without
    scan = {r["config"]: (r["memory"], r["scan_memory"]) for r in rows}
    assert scan["full+scan"] == ("full", "True") and scan["none"] == ("none", "False")
    assert (out / "runs" / "situs" / "seed0" / "full_scan" / "models" / "model_final.pt").is_file()
    assert len(list((out / "runs" / "situs" / "seed0" / "none" / "eval" / "predictions").glob("*_seg.nii.gz"))) == 2

    md = (out / "summary.md").read_text()
    for config in configs:
        assert f"| {config} |" in md
    for text in ("machine:", "torch", "monai", "--iterations 2", "situs inversus cases"):
        assert text in md
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --resume reuses finished runs: no training or evaluation, same numbers
    res2 = ablation.main(["--out", str(out), "--configs", "none,full+scan", "--resume", *MINIMAL])
    assert res2["minutes"] < res["minutes"]
    with open(out / "results.csv") as f:
        again = list(csv.DictReader(f))
    assert {r["config"] for r in again} == {"none", "full+scan"}
    before = {(r["subset"], r["config"], r["label"]): r["dice"] for r in rows}
    assert all(before[(r["subset"], r["config"], r["label"])] == r["dice"] for r in again)


def test_budget_skips_runs_and_arguments(ablation, tmp_path, capsys):
    out = tmp_path / "budget"
    res = ablation.main(["--out", str(out), "--configs", "none,window", "--budget_minutes", "0", *MINIMAL])
    # the budget is checked before each launch: with 0 minutes nothing runs, and the summary says so
    assert res["skipped"] == ["situs/seed0/none", "situs/seed0/window"]
    assert "Not run (over --budget_minutes 0)" in (out / "summary.md").read_text()
    with pytest.raises(SystemExit):
        ablation.parse_args(["--configs", "none,bogus"])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--configs", "full+scan", "--num_samples", "0"])
    assert (
        ablation.parse_args(["--configs", "full+scan", "--num_samples", "1"]).num_samples == 1
    )  # the scan view writes
    # a roi a peer cannot take is refused before the first run, naming the roi it can take
    with pytest.raises(SystemExit):
        ablation.parse_args(["--configs", "full,swinunetr", "--roi", "32", "32", "32"])
    assert "the nearest larger is [64, 32, 32]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # DynUNet's plan at 3 mm halves every axis 3 times: 36 is not divisible by 8
        ablation.parse_args(["--configs", "full,dynunet", "--roi", "36", "32", "32"])
    assert "must be divisible by the plan's total stride (8, 8, 8)" in capsys.readouterr().err
    args = ablation.parse_args(["--configs", "full,swinunetr", "--roi", "64", "32", "32",
                                "--config_override", "swinunetr:network_def#feature_size=12"])  # fmt: skip
    assert args.roi == [64, 32, 32]
    # a per-config override reaches that config's bundle only (a peer's size, not FINE's)
    o = {c: ablation.bundle_overrides(args, c, 0, Path("/d"), Path("/r")) for c in ("full", "swinunetr")}
    assert o["swinunetr"]["network_def#feature_size"] == 12 and "network_def#feature_size" not in o["full"]
    with pytest.raises(SystemExit):
        ablation.parse_args(["--configs", "full", "--config_override", "swin:network_def#feature_size=12"])
    assert "CONFIG one of ['none'," in capsys.readouterr().err
    # phantom defaults: small crops, AdamW; real data: the paper's crop, spacing and the bundle's SGD recipe
    args = ablation.parse_args(["--iterations", "600"])
    assert args.max_epochs * args.epoch_length == 600 and args.roi == [32, 32, 16] and args.pixdim == [3.0, 3.0, 3.0]
    assert args.optimizer == "adamw" and args.learning_rate == 0.002
    args = ablation.parse_args(["--dataset_dir", "/data/btcv", "--preset", "bcv", "--iterations", "250000"])
    assert args.roi == [128, 128, 64] and args.pixdim == [0.76, 0.76, 3.0] and args.epoch_length == 250
    assert args.max_epochs == 1000 and args.optimizer == "bundle" and args.learning_rate == 0.01
    assert args.variants == ["btcv"]
    o = ablation.bundle_overrides(args, "full+scan", 3, Path("/data/btcv"), Path("/tmp/r"))
    assert (o["memory"], o["scan_memory"], o["seed"], o["preset"]) == ("full", True, 3, "bcv") and "optimizer" not in o


@pytest.mark.slow
def test_parallel_workers(ablation, tmp_path):
    # --jobs 2: two single-threaded worker processes share the runs; the parent collects them into one summary
    out = tmp_path / "jobs"
    argv = ["--out", str(out), "--configs", "none,full", *MINIMAL, "--iterations", "1", "--jobs", "2"]
    res = ablation.main(argv)
    assert not res["failed"] and not res["skipped"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["config"] for r in rows} == {"none", "full"} and len(rows) == 2 * 3 * 13
    assert (out / "worker_0.log").is_file() and (out / "worker_1.log").is_file()
    assert not list(out.glob("runs/*/*/*/.claim-*"))
    assert "2 parallel runs of 1 torch thread each" in (out / "summary.md").read_text()


@pytest.mark.parametrize("command, option", [("context_ablation", "--budget_minutes"), ("memory_probe", "--run")])
def test_experiments_are_reachable_from_the_cli(command, option, monkeypatch, capsys):
    """``python -m monai_fine <command> --help``, run in-process through the package's ``__main__``."""
    monkeypatch.setattr(sys, "argv", ["monai_fine", command, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("monai_fine", run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"python -m monai_fine {command}" in out and option in out


def test_view_probe_classifies_every_case_and_refuses_data_without_situs_cases(tmp_path):
    """``memory_probe --view_probe``: on phantom scans where half are situs inversus, the leave-one-case-out probe of
    the scan views classifies every case once (8 cases this small are too few to expect an accuracy: the 24-case,
    full-size measurement is in docs/results.md); a data set without situs inversus cases is refused by name."""
    from monai_fine.data import make_phantom_dataset
    from monai_fine.experiments import memory_probe

    situs = make_phantom_dataset(tmp_path / "situs", num_cases=8, seed=3, shape=(48, 48, 32), spacing=(4.0, 4.0, 4.0),
                                 num_test=0, val_fraction=0.25, situs_inversus_fraction=0.5).parent  # fmt: skip
    out = memory_probe.main(["--data", str(situs), "--view_probe", "--pixdim", "4", "4", "4"])["view_probe"]
    assert out["cases"] == 8 and out["situs_cases"] == 4
    assert out["accuracy"] * 8 == round(out["accuracy"] * 8)  # a fraction of the 8 held-out cases
    normal = make_phantom_dataset(tmp_path / "normal", num_cases=3, seed=3, shape=(48, 48, 32), spacing=(4.0, 4.0, 4.0),
                                  num_test=0, val_fraction=0.34).parent  # fmt: skip
    with pytest.raises(ValueError, match=r"needs situs inversus and normal cases; .* has 0 of 3"):
        memory_probe.main(["--data", str(normal), "--view_probe", "--pixdim", "4", "4", "4"])


@pytest.mark.slow
def test_peers_train_and_evaluate_through_the_same_bundle(ablation, tmp_path):
    """``--configs full,dynunet,swinunetr``: the peers go through the same train.json / evaluate.json (the bundle's
    ``arch``), their weights record what they are (SwinUNETR at the size ``--config_override`` gives it, FINE
    untouched), and their rows carry the same metrics; a finished run written
    before the pair counts existed gets them from its saved predictions on ``--resume``."""
    from monai_fine.bundle_tools import read_network_config

    out = tmp_path / "peers"
    argv = ["--out", str(out), "--configs", "full,dynunet,swinunetr", *MINIMAL, "--roi", "64", "32", "32",
            "--shape", "64", "48", "32", "--config_override", "swinunetr:network_def#feature_size=12"]  # fmt: skip
    res = ablation.main(argv)
    assert not res["failed"] and not res["skipped"], res
    runs = out / "runs" / "situs" / "seed0"
    for arch in ("dynunet", "swinunetr"):
        record = read_network_config(runs / arch / "models" / "model_final.pt")
        assert record["arch"] == arch and record["roi_size"] == [64, 32, 32]
    assert read_network_config(runs / "swinunetr" / "models" / "model_final.pt")["feature_size"] == 12
    assert "arch" not in read_network_config(runs / "full" / "models" / "model_final.pt")
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["config"], r["memory"]) for r in rows} == {("full", "full"), ("dynunet", "-"), ("swinunetr", "-")}
    for r in rows:
        assert 0 <= int(r["truth_as_pair_voxels"]) <= int(r["truth_voxels"])
    md = (out / "summary.md").read_text()
    assert "| dynunet |" in md and "| swinunetr |" in md and "s / iter" in md and "kidneys, either side" in md

    done = runs / "dynunet" / "run_results.csv"
    with open(done) as f:
        before = list(csv.DictReader(f))
    with open(done, "w", newline="") as f:  # as written before the pair counts existed
        w = csv.DictWriter(f, fieldnames=[k for k in before[0] if k not in ("pred_voxels", "truth_as_pair_voxels")],
                           extrasaction="ignore")  # fmt: skip
        w.writeheader()
        w.writerows(before)
    ablation.main([*argv, "--configs", "dynunet", "--resume"])
    with open(done) as f:
        assert list(csv.DictReader(f)) == before
