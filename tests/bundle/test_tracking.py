# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Experiment tracking and progress: MONAI's ``--tracking mlflow``, TensorBoard event files and the progress bars.

The MLflow store and the TensorBoard events are read back with MLflow's own client and tensorboard's event reader,
and their values are compared with what the Ignite engines computed during the same run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_common import workflow
from ignite.engine import Events

from monai_fine.data import make_phantom_dataset

mlflow = pytest.importorskip(
    "mlflow", reason="MLflow is a test dependency: pip install mlflow-skinny sqlalchemy alembic"
)
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(
        out, num_cases=4, seed=3, shape=(48, 48, 32), spacing=(4.0, 4.0, 4.0), num_test=1, val_fraction=0.25
    )
    return out


@pytest.fixture(scope="module")
def tracked_run(phantom_dir, tmp_path_factory):
    """Two short epochs of train.json with ``tracking="mlflow"`` (what ``--tracking mlflow`` does), recording what
    the engines computed so that the tests can compare the logs with it."""
    root = tmp_path_factory.mktemp("tracked")
    wf = workflow(
        ["train.json"],
        "train",
        tracking="mlflow",
        bundle_root=str(root),
        dataset_dir=str(phantom_dir),
        max_epochs=2,
        epoch_length=2,
        val_interval=1,
        sw_progress=True,
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    losses, dice = {}, {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.__setitem__(e.state.iteration, float(e.state.output[0]["loss"]))
    )
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: dice.__setitem__(e.state.epoch, e.state.metrics["val_mean_dice"])
    )
    wf.run()
    wf.finalize()
    return {
        "root": root,
        "losses": losses,
        "dice": dice,
        "output_dir": Path(wf.parser.get_parsed_content("output_dir")),
    }


def test_mlflow_run_has_losses_metrics_params_and_config(tracked_run, tmp_path):
    out = tracked_run["output_dir"]
    db = out / "mlruns.db"
    assert db.is_file(), sorted(p.name for p in out.iterdir())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("monai_experiment")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # trainer and validator log into the same run
    run = runs[0]
    assert run.info.status == "FINISHED"

    # the training loss of every iteration, equal to the engine's loss at that iteration
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert sorted(history) == [1, 2, 3, 4] == sorted(tracked_run["losses"])
    for step, value in tracked_run["losses"].items():
        assert history[step] == pytest.approx(value, rel=1e-6), step
    # the validation Dice of each epoch, equal to the evaluator's
    dice = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_mean_dice")}
    assert dice.keys() == tracked_run["dice"].keys() == {1, 2}
    for epoch, value in tracked_run["dice"].items():
        assert dice[epoch] == pytest.approx(value, rel=1e-6)
    assert all(0.0 <= v <= 1.0 for v in dice.values())
    # parameters of the run and the executed config as an artifact
    assert run.data.params["max_epochs"] == "2" and run.data.params["epoch_length"] == "2"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    configs = [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    assert len(configs) == 1, artifacts
    local = client.download_artifacts(run.info.run_id, configs[0], str(tmp_path))
    config = json.loads(Path(local).read_text())
    assert config["preset"] == "test" and config["max_epochs"] == 2 and config["roi_size"] == [32, 32, 16]


def test_tensorboard_events_hold_training_loss_and_validation_dice(tracked_run):
    log_dir = tracked_run["output_dir"] / "tensorboard"
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert len(files) == 2, files  # one writer for the trainer, one for the validator
    scalars = {}
    for f in files:
        acc = event_accumulator.EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    assert sorted(scalars["train_loss"]) == [1, 2, 3, 4]
    for step, value in tracked_run["losses"].items():
        assert scalars["train_loss"][step] == pytest.approx(value, rel=1e-5)  # float32 in the event file
    assert scalars["val_mean_dice"].keys() == {1, 2}  # at the trainer's epoch
    for epoch, value in tracked_run["dice"].items():
        assert scalars["val_mean_dice"][epoch] == pytest.approx(value, rel=1e-5)


def test_progress_bars_print_and_can_be_switched_off(phantom_dir, tmp_path, capfd):
    import ignite.handlers

    wf = workflow(
        ["train.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(phantom_dir),
        max_epochs=1,
        epoch_length=2,
        val_interval=1,
        sw_progress=True,
        tensorboard=False,
    )
    handlers = wf.parser.get_parsed_content("train#handlers")
    assert sum(isinstance(h, ignite.handlers.ProgressBar) for h in handlers) == 1
    assert wf.parser.get_parsed_content("validate#inferer#progress") is True
    wf.run()
    wf.finalize()
    err = capfd.readouterr().err
    assert "[2/2] 100%|" in err  # ignite's bar over the epoch's iterations ("Epoch [e/E]: " when max_epochs > 1)
    n_windows = len(wf.parser.get_parsed_content("validate#dataset"))  # one sliding-window bar per validation scan
    assert err.count("100%|") >= 1 + n_windows, err[-2000:]
    assert not list(tmp_path.glob("eval/tensorboard/*"))  # `--tensorboard false` writes no event files

    wf = workflow(["train.json"], "train", bundle_root=str(tmp_path), dataset_dir=str(phantom_dir), progress=False)
    handlers = wf.parser.get_parsed_content("train#handlers")
    assert not any(isinstance(h, ignite.handlers.ProgressBar) for h in handlers)
    assert wf.parser.get_parsed_content("validate#inferer#progress") is False
    infer = workflow(
        ["inference.json"],
        "infer",
        bundle_root=str(tmp_path),
        dataset_dir=str(phantom_dir),
        load_pretrain=False,
        sw_progress=False,
    )
    assert infer.parser.get_parsed_content("inferer#progress") is False


def test_mlflow_tracks_evaluation(tracked_run, phantom_dir):
    """``--tracking mlflow`` on train.json + evaluate.json: a second run with the evaluation metrics and config."""
    root = tracked_run["root"]
    wf = workflow(
        ["train.json", "evaluate.json"], "eval", tracking="mlflow", bundle_root=str(root), dataset_dir=str(phantom_dir)
    )
    wf.run()
    wf.finalize()
    out = tracked_run["output_dir"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("monai_experiment").experiment_id])
    assert len(runs) == 2  # the finished training run stays as it was; evaluation opens its own
    run = next(r for r in runs if "val_hd95" in r.data.metrics)
    assert run.info.status == "FINISHED"
    saved = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines())  # MetricsSaver's file
    for name in ["val_mean_dice", "val_hd95", "val_synapse8_dice", "val_synapse8_hd95"]:
        assert run.data.metrics[name] == pytest.approx(float(saved[name]), rel=1e-5), name
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(a.startswith("config_") for a in artifacts), artifacts
