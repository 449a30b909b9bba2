# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""PreemptionHandler on a real Ignite engine: a signal mid-epoch stops after that iteration with a mid-epoch
checkpoint and exit status 143; a signal at the last epoch's end lets the run complete."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from ignite.engine import Engine

from monai_fine.handlers import PreemptionHandler, ResumableCheckpointSaver, checkpoint_files


def _trainer(tmp_path, signal_at: tuple[int, int], max_epochs: int = 2):
    """An engine of 4 iterations an epoch over a real DataLoader that sends itself SIGTERM at ``(epoch, iteration)``
    (iteration counted within the epoch), with the saver and the handler attached as in train.json."""
    net = torch.nn.Linear(2, 1)
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=1)

    def step(engine, batch):
        if (engine.state.epoch, (engine.state.iteration - 1) % 4 + 1) == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler between bytecodes, mid-iteration
        with torch.no_grad():
            net.weight.add_(1.0)
        return 0.0

    engine = Engine(step)
    saver = ResumableCheckpointSaver(tmp_path, {"model": net}, trainer=engine)
    saver.attach(engine)
    handler = PreemptionHandler(saver, signals=["SIGTERM"])
    handler.attach(engine)
    return engine, loader, net, handler


def test_a_signal_mid_epoch_stops_after_that_iteration_with_a_mid_epoch_checkpoint(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    engine, loader, net, handler = _trainer(tmp_path, signal_at=(2, 2))
    start = net.weight.detach().clone()
    engine.run(loader, max_epochs=2)
    assert engine.state.iteration == 6  # epoch 1 (4) + 2 iterations of epoch 2, the one in flight finished
    assert torch.allclose(net.weight.detach(), start + 6)  # and its optimizer step was taken
    names = [p.name for _, p in checkpoint_files(tmp_path)]
    assert names == ["last_checkpoint_epoch=1_iter=2.pt", "last_checkpoint_epoch=1.pt"], names
    assert not (tmp_path / "model_final.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    with pytest.raises(SystemExit) as stop:
        handler.exit_if_preempted()
    assert stop.value.code == 128 + signal.SIGTERM


def test_a_signal_in_the_last_iteration_lets_the_run_complete(tmp_path):
    engine, loader, _, handler = _trainer(tmp_path, signal_at=(2, 4))
    engine.run(loader, max_epochs=2)
    assert engine.state.iteration == 8 and (tmp_path / "model_final.pt").is_file()
    handler.exit_if_preempted()  # nothing to resume: no exit
