# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""ResumableCheckpointSaver and BestModelSaver on real engines (MONAI's SupervisedTrainer, Ignite's Engine): an
interrupted, resumed training ends in the very state of an uninterrupted one; ``model.pt`` is the best finite one."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, RandFlipd, RandGaussianNoised

from monai_fine.handlers import BestModelSaver, ResumableCheckpointSaver, checkpoint_files, checkpoint_name


def _training(tmp_path, max_epochs: int):
    """A seeded SupervisedTrainer of a Conv3d on 6 random volumes (shuffled, two random transforms), the saver
    attached as in train.json; the same call builds the same run."""
    torch.manual_seed(0)
    items = [{"image": torch.rand(1, 8, 8, 6), "label": torch.rand(1, 8, 8, 6)} for _ in range(6)]
    transform = Compose([RandGaussianNoised("image", prob=0.5, std=0.1), RandFlipd(["image", "label"], prob=0.5)])
    transform.set_random_state(seed=1)
    loader = DataLoader(Dataset(items, transform), batch_size=2, shuffle=True, num_workers=0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader, network=net,
        optimizer=optimizer, loss_function=torch.nn.MSELoss(),
    )  # fmt: skip
    saver = ResumableCheckpointSaver(tmp_path, {"model": net, "optimizer": optimizer}, trainer=trainer, n_saved=2)
    saver.attach()
    return trainer, saver, net, optimizer


def test_resumed_training_ends_exactly_where_the_uninterrupted_one_does(tmp_path):
    reference, _, ref_net, ref_opt = _training(tmp_path / "reference", max_epochs=3)
    reference.run()

    first, _, _, _ = _training(tmp_path / "run", max_epochs=2)  # "interrupted" after 2 epochs
    first.run()
    assert [p.name for _, p in checkpoint_files(tmp_path / "run")] == [checkpoint_name("last", e) for e in (2, 1)]
    torch.manual_seed(123)  # the resumed process starts with other random states
    resumed, saver, net, opt = _training(tmp_path / "run", max_epochs=3)
    assert saver.resume() == tmp_path / "run" / "last_checkpoint_epoch=2.pt"
    assert resumed.state.epoch == 2 and resumed.state.iteration == 6
    resumed.run()
    assert resumed.state.epoch == 3 and resumed.state.iteration == 9
    for a, b in zip(net.state_dict().values(), ref_net.state_dict().values()):
        assert torch.equal(a, b)  # same batches, same augmentations, same optimizer state: bit for bit
    assert torch.equal(
        opt.state_dict()["state"][0]["momentum_buffer"], ref_opt.state_dict()["state"][0]["momentum_buffer"]
    )
    assert [p.name for _, p in checkpoint_files(tmp_path / "run")] == [checkpoint_name("last", e) for e in (3, 2)]
    final = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)
    assert torch.equal(final["model"]["weight"], net.weight.detach())


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_loads(tmp_path):
    first, _, _, _ = _training(tmp_path, max_epochs=2)
    first.run()
    newest = tmp_path / "last_checkpoint_epoch=2.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a crash of another writer
    resumed, saver, _, _ = _training(tmp_path, max_epochs=3)
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*last_checkpoint_epoch=2\.pt"):
        assert saver.resume() == tmp_path / "last_checkpoint_epoch=1.pt"
    assert resumed.state.epoch == 1 and (tmp_path / "last_checkpoint_epoch=2.pt.unreadable").is_file()


def test_no_checkpoint_is_a_fresh_start(tmp_path):
    _, saver, _, _ = _training(tmp_path, max_epochs=1)
    assert saver.resume() is None and saver.loaded_path is None


def test_bad_settings_are_refused_naming_them(tmp_path):
    net = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="n_saved must be >= 1, got 0"):
        ResumableCheckpointSaver(tmp_path, {"model": net}, n_saved=0)
    with pytest.raises(ValueError, match="finished_run must be 'train_anew' or 'stop', got 'again'"):
        ResumableCheckpointSaver(tmp_path, {"model": net}, finished_run="again")
    with pytest.raises(RuntimeError, match=r"needs attach\(trainer\) first"):
        ResumableCheckpointSaver(tmp_path, {"model": net}).resume()


def _validator(metrics: list[float], net: torch.nn.Module, poison_at: int | None = None) -> Engine:
    """An Ignite engine of one iteration an epoch whose epoch ``e`` scores ``metrics[e - 1]``; the weights change
    every epoch (``poison_at``: to NaN at that epoch); best_metric kept as MONAI's evaluators keep it."""

    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)
            if engine.state.epoch == poison_at:
                net.weight.fill_(math.nan)

    engine = Engine(step)
    engine.state.best_metric, engine.state.best_metric_epoch = -1.0, -1

    @engine.on(Events.EPOCH_COMPLETED)
    def compare(engine):  # MONAI's Workflow._compare_metrics, before the saver
        metric = metrics[engine.state.epoch - 1]
        if metric > engine.state.best_metric:
            engine.state.best_metric, engine.state.best_metric_epoch = metric, engine.state.epoch

    return engine


def test_best_model_is_the_best_epochs_weights(tmp_path):
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    engine = _validator([0.2, 0.5, 0.4], net)
    BestModelSaver(tmp_path, net).attach(engine)
    engine.run([0], max_epochs=3)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(saved["weight"]) == 2.0  # epoch 2's weights, not overwritten by the worse epoch 3


def test_non_finite_weights_or_metric_are_never_saved(tmp_path):
    net = torch.nn.Linear(1, 1, bias=False)
    engine = _validator([0.2, 0.5], net, poison_at=2)
    BestModelSaver(tmp_path, net, filename="best.pt").attach(engine)
    with pytest.warns(UserWarning, match="not saving .*best.pt: the network has non-finite weights"):
        engine.run([0], max_epochs=2)
    assert torch.isfinite(torch.load(tmp_path / "best.pt", weights_only=True)["weight"]).all()  # epoch 1's

    net = torch.nn.Linear(1, 1, bias=False)
    engine = _validator([math.inf], net)
    BestModelSaver(tmp_path / "inf", net).attach(engine)
    engine.run([0], max_epochs=1)
    assert not (tmp_path / "inf" / "model.pt").exists()


def test_mid_epoch_checkpoints_sort_between_their_epoch_ends(tmp_path):
    names = ["last_checkpoint_epoch=2.pt", "last_checkpoint_epoch=2_iter=5.pt", "last_checkpoint_epoch=2_iter=12.pt",
             "last_checkpoint_epoch=3.pt", "last_checkpoint_epoch=10_iter=1.pt"]  # fmt: skip
    for name in reversed(names):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for _, p in checkpoint_files(tmp_path)] == names[::-1]
    assert [e for e, _ in checkpoint_files(tmp_path)] == [10, 3, 2, 2, 2]  # epochs done
    assert checkpoint_name("last", 2, 5) == names[1] and checkpoint_name("last", 3) == names[3]


def test_checkpoints_are_ordered_by_number_not_time(tmp_path):
    for epoch in (10, 2, 9):  # written last: 9, so the newest by modification time is not the highest epoch
        (tmp_path / f"last_checkpoint_epoch={epoch}.pt").write_bytes(b"x")
    (tmp_path / ".last_checkpoint_epoch=11.tmp-abc.pt").write_bytes(b"x")
    (tmp_path / "model.pt").write_bytes(b"x")
    assert [e for e, _ in checkpoint_files(tmp_path)] == [10, 9, 2]
