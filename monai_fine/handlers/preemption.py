# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Preemption-safe training: on SIGTERM, finish the iteration, write a mid-epoch checkpoint, exit with a message.

Clusters and spot instances stop a job with a signal and a grace period before ``SIGKILL`` (SLURM ``--signal``,
Kubernetes ``terminationGracePeriodSeconds``, default 30 s). Without a handler, Python dies at once and the work since
the last epoch-end checkpoint is lost. :class:`PreemptionHandler` turns the signal into a flag; at the end of the
iteration in flight the trainer writes ``<prefix>_checkpoint_epoch=<E>_iter=<k>.pt`` through its
:class:`~monai_fine.handlers.ResumableCheckpointSaver` (atomic; model, optimizer, scheduler, RNG, the loader's
position), stops, and :meth:`PreemptionHandler.exit_if_preempted` ends the process with ``128 + signal`` (143 for
SIGTERM), so that a scheduler sees a terminated job and requeues or restarts it. The same command resumes in the
middle of that epoch and ends with the weights of an uninterrupted run.

A signal that arrives during validation lets the validation finish (its metrics and ``model.pt`` decide the best
model), then the epoch-end checkpoint is written and the run stops: the grace period must cover one validation
(``docs/reliability.md``).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import torch

from monai_fine.handlers.checkpoint import checkpoint_name

__all__ = ["PreemptionHandler"]

logger = logging.getLogger(__name__)


def _signal_number(sig: str | int) -> signal.Signals:
    try:
        return signal.Signals(sig) if isinstance(sig, int) else signal.Signals[str(sig).upper()]
    except (KeyError, ValueError):
        names = sorted(s.name for s in signal.Signals)
        raise ValueError(f"preemption_signals: unknown signal {sig!r}; use names such as {names[:6]}...") from None


class PreemptionHandler:
    """Stop the trainer cleanly on a signal, with a mid-epoch checkpoint, and exit with ``128 + signal``.

    In ``train.json``::

        "preemption": {"_target_": "monai_fine.handlers.PreemptionHandler",
                       "checkpoint": "@train#last_checkpoint", "signals": ["SIGTERM"]},
        "initialize": [..., "$@train#last_checkpoint.attach(@train#trainer)",
                       "$@train#preemption.attach(@train#trainer)", ...],
        "run": ["$@train#trainer.run()", "$@train#preemption.exit_if_preempted()"]

    Attach it after the checkpoint saver, so that at an epoch end the saver's checkpoint comes first.

    The handlers are installed when the trainer starts and the previous ones are put back when it ends; outside the
    main thread (where Python cannot install signal handlers) the handler does nothing and says so. In a distributed
    run every rank stops after the same iteration: the flag is reduced over the process group at each iteration's end
    (one small ``all_reduce``), and rank 0 writes the checkpoint.

    Args:
        checkpoint: the trainer's :class:`~monai_fine.handlers.ResumableCheckpointSaver`.
        signals: the signal names (or numbers) that mean "stop now", e.g. ``["SIGTERM", "SIGUSR1"]``.
    """

    def __init__(self, checkpoint: Any, signals: Sequence[str | int] = ("SIGTERM",)) -> None:
        self.checkpoint = checkpoint
        self.signals = [_signal_number(s) for s in signals]
        self.received: signal.Signals | None = None
        self.saved: Any = None
        self._previous: dict[signal.Signals, Any] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        for event in (Events.COMPLETED, Events.TERMINATE, Events.EXCEPTION_RAISED):
            engine.add_event_handler(event, self._restore)

    # ------------------------------------------------------------------------------------------- signal handling
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
            print(
                f"received {self.received.name}: finishing the current iteration, then writing a checkpoint and "
                "stopping",
                file=sys.stderr,
                flush=True,
            )

    def _install(self, engine: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("preemption handler not installed: training runs outside the main thread")
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore(self, engine: Any, *args: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _stop_requested(self) -> bool:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return self.received is not None
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([0 if self.received is None else int(self.received)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops after the same iteration
        if self.received is None and int(flag.item()):
            self.received = signal.Signals(int(flag.item()))
        return self.received is not None

    # ------------------------------------------------------------------------------------------------- events
    def _iteration_completed(self, engine: Any) -> None:
        state = engine.state
        if state.epoch_length and state.iteration % state.epoch_length == 0:
            return  # the epoch's last iteration: the epoch end (validation, scheduler, checkpoint) comes first
        if self._stop_requested():
            self.saved = self.checkpoint.save(engine, mid_epoch=True)
            engine.terminate(skip_completed=True)

    def _epoch_completed(self, engine: Any) -> None:
        if not self._stop_requested():
            return
        if engine.state.max_epochs is not None and engine.state.epoch >= engine.state.max_epochs:
            logger.warning(f"{self.received.name} at the last epoch's end: the training completes as usual")
            self.received = None  # nothing left to resume: model_final.pt is written and the process exits 0
            return
        saver = self.checkpoint
        self.saved = saver.save_dir / checkpoint_name(saver.file_prefix, engine.state.epoch)
        if not self.saved.is_file():  # the saver writes every save_interval epochs only
            self.saved = saver.save(engine)
        engine.terminate(skip_completed=True)

    def exit_if_preempted(self) -> None:
        """End the process with ``128 + signal`` and a message when a signal stopped the training; else nothing.

        Raises:
            SystemExit: after a preemption, with the exit status of a process ended by that signal.
        """
        if self.received is None:
            return
        message = (
            f"training stopped by {self.received.name}; checkpoint written: {self.saved}. "
            "Run the same command to resume from it."
        )
        logger.warning(message)
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(128 + int(self.received))
