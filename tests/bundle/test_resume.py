# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Crash-safe, exact resume of the training bundle, with real ``python -m monai.bundle run`` subprocesses.

A seeded run is killed with SIGKILL (once between checkpoints, once while a checkpoint is being written), resumed
with the same command, and must end with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bundle_common import max_abs_diff, small_phantom

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
CONFIGS = BUNDLE / "configs"

# tiny network, tiny crops; 3 training cases with epoch_length 2, so the loader iterator spans epoch boundaries
ARGS = {
    "preset": "test",
    "roi_size": "[32,32,16]",
    "pixdim": "[4.0,4.0,4.0]",
    "num_samples": "2",
    "num_workers": "0",
    "cache_rate": "0.0",
    "device": "$torch.device('cpu')",
    "max_epochs": "3",
    "epoch_length": "2",
    "val_interval": "1",
    "learning_rate": "0.05",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return small_phantom(tmp_path_factory.mktemp("phantom"))


def command(root: Path, data: Path, **extra: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "train.json"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--bundle_root",
        str(root),
        "--dataset_dir",
        str(data),
    ]
    for k, v in {**ARGS, **extra}.items():
        cmd += [f"--{k}", v]
    return cmd


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    e["PYTHONPATH"] = str(BUNDLE.parent) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run(root: Path, data: Path, **extra: str) -> str:
    proc = subprocess.run(command(root, data, **extra), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "model_final.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    run(root, data_dir)
    return root


def ckpt(root: Path, epoch: int) -> Path:
    return root / "models" / f"last_checkpoint_epoch={epoch}.pt"


def kill_after_checkpoint(root: Path, data: Path, epoch: int = 1) -> subprocess.Popen:
    """Start the training and SIGKILL it as soon as checkpoint ``epoch`` exists."""
    proc = subprocess.Popen(command(root, data), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not ckpt(root, epoch).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc


@pytest.mark.slow
def test_kill_between_checkpoints_resumes_exactly(reference, data_dir, tmp_path):
    root = tmp_path / "killed"
    proc = kill_after_checkpoint(root, data_dir)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt(root, 1).exists() and not ckpt(root, 2).exists(), "the kill did not land between checkpoints 1 and 2"
    assert not (root / "models" / "model_final.pt").exists()
    log = run(root, data_dir)  # the same command resumes
    assert not ckpt(root, 1).exists() and ckpt(root, 2).exists() and ckpt(root, 3).exists()  # keep the last 2
    diff = max_abs_diff(final_weights(root), final_weights(reference))
    assert diff <= 1e-6, (diff, log[-2000:])
    best, best_ref = (torch.load(r / "models" / "model.pt", weights_only=False) for r in (root, reference))
    assert max_abs_diff(best, best_ref) <= 1e-6  # the resumed run remembered the best metric


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_resumes_exactly(reference, data_dir, tmp_path):
    root = tmp_path / "killed"
    hook = {"MONAI_FINE_PAUSE_BEFORE_REPLACE": "120", "MONAI_FINE_PAUSE_MATCH": "last_checkpoint_epoch=2"}
    proc = subprocess.Popen(
        command(root, data_dir), env=env(**hook), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:  # the saver prints "PAUSE <path>" once the temporary file is complete
        lines.append(line)
        if line.startswith("PAUSE "):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(line.startswith("PAUSE ") for line in lines), "".join(lines[-30:])
    models = root / "models"
    temps = [p for p in models.iterdir() if ".tmp-" in p.name]
    assert temps and not ckpt(root, 2).exists() and ckpt(root, 1).exists()
    # a corrupt newer checkpoint (e.g. a bad copy) is skipped with a warning naming it, and set aside
    ckpt(root, 9).write_bytes(b"not a checkpoint")
    log = run(root, data_dir)
    assert "last_checkpoint_epoch=9.pt" in log and "could not be loaded" in log
    assert (models / "last_checkpoint_epoch=9.pt.unreadable").exists()
    assert not [p for p in models.iterdir() if ".tmp-" in p.name]  # stale temporary files are cleaned up
    diff = max_abs_diff(final_weights(root), final_weights(reference))
    assert diff <= 1e-6, (diff, log[-2000:])


@pytest.mark.slow
def test_resume_false_from_the_command_line_starts_over(reference, data_dir, tmp_path):
    """``--resume false`` is the string 'false' through Python Fire: it must not resume."""
    import shutil

    root = tmp_path / "again"
    shutil.copytree(reference, root)
    before = final_weights(root)
    run(root, data_dir, resume="false", max_epochs="1")
    after = final_weights(root)
    assert max_abs_diff(before, after) > 1e-4  # a new 1-epoch training, not the finished 3-epoch run
    assert ckpt(root, 1).exists() and (root / "models" / "previous_run_1" / "last_checkpoint_epoch=3.pt").exists()


def _train_in_process(root: Path, data: Path, **override):
    import ast

    from monai.bundle import ConfigWorkflow

    def value(v: str):  # what Python Fire would make of the command-line string
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v

    args = {k: value(v) for k, v in ARGS.items()}
    args.update(override)
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        bundle_root=str(root),
        dataset_dir=str(data),
        **args,
    )
    wf.initialize()
    return wf


def _error_text(err) -> str:
    return str(err.value) + str(err.value.__cause__) + str(getattr(err.value.__cause__, "__cause__", ""))


def test_non_finite_loss_stops_before_the_weights_change(data_dir, tmp_path):
    import json
    import shutil

    import nibabel as nib
    import numpy as np

    data = tmp_path / "nan"
    shutil.copytree(data_dir, data)
    bad = data / json.loads((data / "dataset_0.json").read_text())["training"][1]["image"]
    img = nib.load(bad)
    nib.save(nib.Nifti1Image(np.full(img.shape, np.nan, np.float32), img.affine), str(bad))
    root = tmp_path / "run"
    wf = _train_in_process(root, data, check_data="false", max_epochs=1, epoch_length=None)
    network = wf.parser.get_parsed_content("network")
    with pytest.raises(Exception) as err:
        wf.run()
    text = _error_text(err)
    assert "non-finite training loss" in text and bad.name in text, text
    after = network.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    models = root / "models"
    assert not (models / "model.pt").exists() and not (models / "model_final.pt").exists()
    # the check that --check_data false skipped names the file up front
    with pytest.raises(Exception) as err:
        _train_in_process(tmp_path / "run2", data, max_epochs=1)
    assert bad.name in _error_text(err) and "NaN" in _error_text(err)


def test_empty_validation_list_and_broken_json_are_named(data_dir, tmp_path):
    import json
    import shutil

    data = tmp_path / "d"
    shutil.copytree(data_dir, data)
    listing = json.loads((data / "dataset_0.json").read_text())
    (data / "dataset_0.json").write_text(json.dumps({**listing, "validation": []}))
    with pytest.raises(Exception) as err:
        _train_in_process(tmp_path / "r", data)
    assert "'validation' list of" in _error_text(err) and "dataset_0.json is empty" in _error_text(err)
    (data / "dataset_0.json").write_text(json.dumps(listing)[:-5])
    with pytest.raises(Exception) as err:
        _train_in_process(tmp_path / "r", data)
    assert "dataset_0.json: not valid JSON" in _error_text(err)
    assert not (tmp_path / "r" / "models").exists()


# ------------------------------------------------------------------------------------------------- preemption
# 4 iterations an epoch, so that a signal can land in the middle of one
PREEMPT = {"max_epochs": "2", "epoch_length": "4"}


@pytest.fixture(scope="module")
def preempt_reference(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preempt_reference")
    run(root, data_dir, **PREEMPT)
    return root


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_and_the_same_command_resumes_exactly(preempt_reference, data_dir, tmp_path):
    root = tmp_path / "preempted"
    proc = subprocess.Popen(
        command(root, data_dir, **PREEMPT), env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:  # StatsHandler logs "Epoch: 1/2, Iter: 2/4 -- train_loss: ..." after each iteration
        lines.append(line)
        if "Epoch: 1/2, Iter: 2/4" in line:
            break
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)  # by its PID, as SLURM and the kubelet do
    rest, _ = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    log = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert took < 30, took
    models = root / "models"
    mid = [p.name for p in models.iterdir() if "_iter=" in p.name]
    assert len(mid) == 1 and mid[0].startswith("last_checkpoint_epoch=0_iter="), sorted(models.iterdir())
    assert f"training stopped by SIGTERM; checkpoint written: {models / mid[0]}" in log
    assert not (models / "model_final.pt").exists() and not [p for p in models.iterdir() if ".tmp-" in p.name]
    log = run(root, data_dir, **PREEMPT)  # the same command resumes in the middle of epoch 1
    assert f"resumed from {models / mid[0]}" in log
    assert "Epoch: 1/2, Iter: 1/4" not in log  # the iterations done before the signal are not redone
    assert not (models / mid[0]).exists()  # superseded by the epoch-end checkpoints
    diff = max_abs_diff(final_weights(root), final_weights(preempt_reference))
    assert diff <= 1e-6, (diff, log[-2000:])


# ------------------------------------------------------------------------------------------------- full disk
def _file_size_limit(limit: int):
    """``preexec_fn`` of a child whose writes beyond ``limit`` bytes fail with EFBIG, as on a full disk (Python
    ignores SIGXFSZ, so the write returns the error instead of killing the process)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_write_that_fails_while_checkpointing_loses_nothing_and_the_rerun_resumes_exactly(
    reference, data_dir, tmp_path
):
    import hashlib

    root = tmp_path / "full"
    models = root / "models"
    kill_after_checkpoint(root, data_dir)
    assert ckpt(root, 1).exists() and not ckpt(root, 2).exists()
    digest = hashlib.sha256(ckpt(root, 1).read_bytes()).hexdigest()
    # a limit between model.pt and a checkpoint: the resumed run writes model.pt, then fails on checkpoint 2
    limit = ((reference / "models" / "model.pt").stat().st_size + ckpt(reference, 2).stat().st_size) // 2
    failed = subprocess.run(
        command(root, data_dir),
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        preexec_fn=_file_size_limit(limit),
    )
    text = failed.stdout + failed.stderr
    assert failed.returncode != 0, text[-3000:]
    # the error names the file and the cause (not torch's "unexpected pos 11804352 vs 11804244")
    errors = [line for line in text.splitlines() if line.startswith("monai_fine.data.io.WriteFailedError: ")]
    assert errors and f"[Errno 27] could not write {ckpt(root, 2)}: File too large" in errors[-1], text[-3000:]
    assert not ckpt(root, 2).exists() and not [p for p in models.iterdir() if ".tmp-" in p.name]
    assert hashlib.sha256(ckpt(root, 1).read_bytes()).hexdigest() == digest  # the previous checkpoint is intact
    torch.load(models / "model.pt", weights_only=True)  # complete
    log = run(root, data_dir)  # space freed: the same command resumes from checkpoint 1
    diff = max_abs_diff(final_weights(root), final_weights(reference))
    assert diff <= 1e-6, (diff, log[-2000:])
