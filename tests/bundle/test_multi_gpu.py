# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Multi-GPU overlays under ``torchrun``, run on CPU with the gloo backend and two processes.

Training: every rank trains on its own shard of the training cases and validates its own shard of the validation
cases (disjoint, together all of them), and only rank 0 writes checkpoints. Evaluation: the ranks split the cases
and rank 0 writes one metrics CSV with every case once.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_fine.data import make_phantom_dataset
from monai_fine.distributed import init_distributed

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
SMALL = [
    "--preset", "test", "--roi_size", "[32,32,16]", "--pixdim", "[4.0,4.0,4.0]", "--num_workers", "0",
    "--cache_rate", "0",
]  # fmt: skip
SHARD = re.compile(r"rank (\d)/2 (\w+) epoch (\d+) cases: (\[.*\])")


def _torchrun(configs: list[str], *args: str, cwd: Path) -> str:
    files = "[" + ",".join(f"'{CONFIGS / c}'" for c in configs) + "]"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", files, "--meta_file", str(CONFIGS / "metadata.json"),
        "--logging_file", str(CONFIGS / "logging.conf"), *SMALL, *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU even on a GPU machine
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _shards(log: str) -> dict[tuple[str, int], dict[int, list[str]]]:
    shards: dict[tuple[str, int], dict[int, list[str]]] = {}
    for rank, name, epoch, cases in SHARD.findall(log):
        shards.setdefault((name, int(epoch)), {})[int(rank)] = json.loads(cases.replace("'", '"'))
    return shards


@pytest.mark.slow
def test_torchrun_two_ranks_on_cpu_train_and_evaluate(tmp_path):
    data = tmp_path / "data"
    make_phantom_dataset(
        data, num_cases=7, seed=3, shape=(48, 48, 32), spacing=(4.0, 4.0, 4.0), num_test=0, val_fraction=0.43
    )
    items = json.loads((data / "dataset_0.json").read_text())
    train_cases = sorted(Path(i["image"]).name for i in items["training"])
    val_cases = sorted(Path(i["image"]).name for i in items["validation"])
    assert len(train_cases) == 4 and len(val_cases) == 3  # 3 validation cases: an uneven split over 2 ranks
    root = tmp_path / "bundle"

    # each rank gets its own checkpoint folder, so that a write by rank 1 would show
    log = _torchrun(
        ["train.json", "multi_gpu_train.json"], "--bundle_root", str(root), "--dataset_dir", str(data),
        "--ckpt_dir", "$@bundle_root + '/models_rank' + os.environ['RANK']", "--max_epochs", "2", "--val_interval", "1",
        "--num_samples", "1", "--progress", "False", cwd=tmp_path,
    )  # fmt: skip
    shards = _shards(log)
    for epoch in (1, 2):
        for name, cases in (("train", train_cases), ("validate", val_cases)):
            per_rank = shards[(name, epoch)]
            assert set(per_rank) == {0, 1}, (name, epoch, per_rank)
            assert not set(per_rank[0]) & set(per_rank[1]), (name, epoch, per_rank)  # disjoint shards
            assert sorted(per_rank[0] + per_rank[1]) == cases, (name, epoch, per_rank)  # together: every case once
    assert shards[("train", 1)] != shards[("train", 2)]  # DistributedSampler reshuffles every epoch (set_epoch)
    assert len(re.findall(r"Epoch\[\d\] Metrics -- val_mean_dice", log)) == 2  # validation stats from rank 0 only

    rank0, rank1 = root / "models_rank0", root / "models_rank1"
    assert {p.name for p in rank0.iterdir()} == {
        "model.pt",
        "model_final.pt",
        "last_checkpoint_epoch=1.pt",
        "last_checkpoint_epoch=2.pt",  # keep_checkpoints 2
    }
    assert not rank1.exists()
    state = torch.load(rank0 / "model.pt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel
    from monai_fine.bundle_tools import load_network

    load_network(rank0 / "model.pt")  # strict: rebuilt from the recorded arguments, loads into a single-process net
    assert len(list((root / "eval" / "tensorboard").glob("events.out.tfevents.*"))) == 2  # rank 0's writers only

    # evaluation of rank 0's best model over both ranks: one CSV row per validation case
    log = _torchrun(
        ["train.json", "evaluate.json", "multi_gpu_evaluate.json"], "--bundle_root", str(root),
        "--dataset_dir", str(data), "--ckpt_dir", "$@bundle_root + '/models_rank0'", cwd=tmp_path,
    )  # fmt: skip
    per_rank = _shards(log)[("evaluate", 1)]
    assert not set(per_rank[0]) & set(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == val_cases
    with open(root / "eval" / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))[1:]
    assert sorted(Path(r[0]).name for r in rows) == val_cases


def test_init_distributed_refuses_to_run_without_torchrun(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match=r"torchrun.*LOCAL_RANK"):
        init_distributed()
