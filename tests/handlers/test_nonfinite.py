# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""NonFiniteLossGuard on MONAI's SupervisedTrainer: a NaN/inf loss stops the run before the optimizer step, with an
error naming the batch's case files."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedTrainer

from monai_fine.handlers import NonFiniteLossGuard


def _trainer(bad_iteration: int, bad_value: float, with_names: bool = True):
    torch.manual_seed(0)
    items = []
    for i in range(4):
        meta = {"filename_or_obj": f"/data/imagesTr/case_{i}.nii.gz"} if with_names else {}
        items.append({"image": MetaTensor(torch.rand(1, 6, 6, 4), meta=meta), "label": torch.rand(1, 6, 6, 4)})
    net = torch.nn.Conv3d(1, 1, 3, padding=1)
    weights: list[torch.Tensor] = []

    def loss(pred, label):
        value = torch.nn.functional.mse_loss(pred, label)
        weights.append(net.weight.detach().clone())  # the weights this batch's loss saw
        return value * bad_value if trainer.state.iteration == bad_iteration else value

    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, network=net, loss_function=loss,
        train_data_loader=DataLoader(Dataset(items), batch_size=2, shuffle=False),
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5),
    )  # fmt: skip
    NonFiniteLossGuard().attach(trainer)
    return trainer, net, weights


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_a_non_finite_loss_stops_before_the_step_naming_the_cases(bad_value):
    trainer, net, weights = _trainer(bad_iteration=2, bad_value=bad_value)
    with pytest.raises(FloatingPointError) as err:
        trainer.run()
    message = str(err.value)
    assert "non-finite training loss" in message and "epoch 1, iteration 2" in message
    assert "/data/imagesTr/case_2.nii.gz, /data/imagesTr/case_3.nii.gz" in message and "case_0" not in message
    assert torch.equal(net.weight.detach(), weights[1])  # the bad batch's optimizer step was not taken
    assert not torch.equal(weights[0], weights[1])  # (the good batch's step was)


def test_finite_losses_train_undisturbed():
    trainer, net, _ = _trainer(bad_iteration=0, bad_value=math.nan)
    trainer.run()
    assert trainer.state.iteration == 2 and torch.isfinite(net.weight).all()


def test_without_file_metadata_the_error_says_so():
    trainer, _, _ = _trainer(bad_iteration=1, bad_value=math.nan, with_names=False)
    with pytest.raises(FloatingPointError, match="<unknown: no file metadata in the batch>"):
        trainer.run()
