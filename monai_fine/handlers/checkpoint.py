# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Checkpoints that survive a crash at any instant and resume a seeded training exactly.

:class:`ResumableCheckpointSaver` replaces MONAI's ``CheckpointSaver`` + ``CheckpointLoader`` pair of the training
bundle:

- **atomic**: every file is written to a temporary file in the same folder, fsync-ed and moved into place with
  ``os.replace`` (:func:`monai_fine.data.io.atomic_write`); the previous checkpoint is removed only after the new one
  is complete, and the last ``n_saved`` are kept.
- **picked by number**: :meth:`ResumableCheckpointSaver.resume` orders ``<prefix>_checkpoint_epoch=<N>.pt`` by ``N``
  (never by modification time), loads the newest one that loads and skips, with a warning naming it, one that does
  not (truncated, corrupt, wrong content), falling back to the previous one.
- **exact**: besides model, optimizer, scheduler, AMP scaler and the trainer's epoch/iteration, a checkpoint holds the
  torch/numpy/python RNG states, the ``R`` state of every ``Randomizable`` transform of the training dataset, the
  torch RNG state from which the current data-loader iterator was created together with the number of batches drawn
  from it, and the validator's best metric and its epoch. On resume the loader iterator is rebuilt from that state and
  advanced to the same position, then every RNG is restored, so the resumed run draws the same crops, augmentations
  and batch order as the uninterrupted one. Checkpoints are written at epoch ends (after validation); a run killed
  between checkpoints restarts from the last one.

:class:`BestModelSaver` writes ``model.pt`` atomically when the validator reports a new best metric, never from
non-finite weights.
"""

from __future__ import annotations

import logging
import math
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, Randomizable

from monai_fine.data.io import TMP_TAG, UnsafeCheckpointError, atomic_write, torch_load, torch_save

__all__ = ["ResumableCheckpointSaver", "BestModelSaver", "checkpoint_files", "checkpoint_name"]

logger = logging.getLogger(__name__)


_CKPT_NAME = r"^{prefix}_checkpoint_epoch=(\d+)(?:_iter=(\d+))?\.pt$"


def checkpoint_name(file_prefix: str, epoch: int, iteration: int = 0) -> str:
    """``<file_prefix>_checkpoint_epoch=<epoch>.pt``: ``epoch`` epochs done; with ``iteration`` > 0 (a mid-epoch
    checkpoint, written on preemption) ``..._epoch=<epoch>_iter=<iteration>.pt``: ``epoch`` epochs and ``iteration``
    iterations of the next one done."""
    return f"{file_prefix}_checkpoint_epoch={epoch}" + (f"_iter={iteration}" if iteration else "") + ".pt"


def checkpoint_files(save_dir: str | Path, file_prefix: str = "last") -> list[tuple[int, Path]]:
    """``(epochs done, path)`` of every checkpoint of :func:`checkpoint_name` in ``save_dir``, newest first.

    Newest means most training done: by epochs, then by the iterations into the next epoch of a mid-epoch checkpoint
    (``epoch=2_iter=5`` is newer than ``epoch=2`` and older than ``epoch=3``); never by modification time.
    """
    pattern = re.compile(_CKPT_NAME.format(prefix=re.escape(file_prefix)))
    found = []
    folder = Path(save_dir)
    if folder.is_dir():
        for p in folder.iterdir():
            m = pattern.match(p.name)
            if m and p.is_file():
                found.append(((int(m.group(1)), int(m.group(2) or 0)), p))
    return [(key[0], p) for key, p in sorted(found, key=lambda x: x[0], reverse=True)]


def _is_mid_epoch(path: Path) -> bool:
    return "_iter=" in path.name


def _randomizables(transform: Any) -> list[Randomizable]:
    """Every ``Randomizable`` object in a (nested) transform, in a fixed order, including wrapped helpers."""
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, Compose):
            for t in obj.transforms:
                visit(t, depth)
            return
        if isinstance(obj, Randomizable) and hasattr(obj, "R"):
            found.append(obj)
        if hasattr(obj, "__dict__"):
            for value in vars(obj).values():
                if isinstance(value, (Randomizable, Compose)):
                    visit(value, depth + 1)
                elif isinstance(value, (list, tuple)):
                    for v in value:
                        if isinstance(v, (Randomizable, Compose)):
                            visit(v, depth + 1)

    visit(transform, 0)
    return found


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(obj: Any) -> Any:
    """The module inside ``DataParallel``/``DistributedDataParallel`` (saved without the ``module.`` prefix, as
    MONAI's ``CheckpointSaver`` does, so the weights load into a single-process network)."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return obj.module if isinstance(obj, wrappers) else obj


def _rank() -> int:
    """This process's rank in an initialised ``torch.distributed`` group, else 0."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if torch.is_floating_point(t))


class ResumableCheckpointSaver:
    """Atomic, numbered, exactly resumable training checkpoints (see the module docstring).

    In ``train.json``::

        "last_checkpoint": {"_target_": "monai_fine.handlers.ResumableCheckpointSaver", "save_dir": "@ckpt_dir",
                            "save_dict": {"model": "@network", "optimizer": "@optimizer",
                                          "lr_scheduler": "@lr_scheduler"},
                            "validator": "@validate#evaluator", "n_saved": 2},
        "initialize": [..., "$@train#last_checkpoint.attach(@train#trainer)",
                       "$@train#last_checkpoint.resume() if @resume else None"]

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save (model, optimizer, scheduler, ...).
        file_prefix: checkpoints are ``<file_prefix>_checkpoint_epoch=<N>.pt``.
        save_interval: save every ``save_interval`` epochs (and always at the last epoch).
        n_saved: how many numbered checkpoints to keep (older ones are removed after a new one is complete).
        final_filename: written when training completes, with ``{name: state_dict}`` of ``save_dict``; ``None``
            disables it.
        trainer: the trainer; when given, :meth:`attach` may be called without it. (In a bundle config list it before
            ``validator`` so the objects are built, and draw their random seeds, in the same order as with MONAI's
            ``CheckpointSaver``.)
        validator: the validation evaluator whose ``best_metric``/``best_metric_epoch`` are saved and restored.
        transform: the training transform whose random states are saved; default the trainer's dataset transform.
        map_location: passed to ``torch.load``.
        finished_run: what :meth:`resume` does when the newest checkpoint ends a run that had reached the trainer's
            ``max_epochs``: ``"train_anew"`` (default) loads only the model weights and trains a new run of
            ``max_epochs`` epochs from them (what MONAI Label's repeated ``/train`` expects; the finished run's
            checkpoints are moved to ``previous_run_<N>/``), ``"stop"`` restores everything and trains nothing.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        file_prefix: str = "last",
        save_interval: int = 1,
        n_saved: int = 2,
        final_filename: str | None = "model_final.pt",
        trainer: Any = None,
        validator: Any = None,
        transform: Any = None,
        map_location: Any = "cpu",
        finished_run: str = "train_anew",
    ) -> None:
        if finished_run not in ("train_anew", "stop"):
            raise ValueError(f"finished_run must be 'train_anew' or 'stop', got {finished_run!r}.")
        self.finished_run = finished_run
        if n_saved < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}.")
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}.")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.file_prefix, self.save_interval, self.n_saved = file_prefix, int(save_interval), int(n_saved)
        self.final_filename, self.validator, self.transform = final_filename, validator, transform
        self.map_location = map_location
        self.engine: Any = None
        self.trainer = trainer
        self.loaded_path: Path | None = None
        self._iter_rng: torch.Tensor | None = None  # torch RNG state the current loader iterator was created from
        self._consumed = 0  # batches drawn from the current loader iterator
        self._pending: dict[str, Any] | None = None  # loader/RNG state to restore when the run starts
        self._already_done = False
        self._set_aside = False

    def _train_anew(self, epoch: int) -> bool:
        """Whether the checkpoint of ``epoch`` ends a finished run that :attr:`finished_run` says to train anew from."""
        max_epochs = self.engine.state.max_epochs
        if self.finished_run != "train_anew" or max_epochs is None or "model" not in self.save_dict:
            return False
        return int(epoch) >= int(max_epochs)

    # ----------------------------------------------------------------------------------------------- attach / events
    def attach(self, engine: Any = None) -> None:
        """Register the handlers on the trainer ``engine`` (default: the ``trainer`` given at construction)."""
        from ignite.engine import Events

        engine = engine if engine is not None else self.trainer
        if engine is None:
            raise ValueError("ResumableCheckpointSaver.attach() needs the trainer engine.")
        self.engine = engine
        if self.transform is None:
            dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
            self.transform = getattr(dataset, "transform", None)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, self._new_iterator)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_drawn)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _new_iterator(self, engine: Any) -> None:
        self._iter_rng, self._consumed = torch.get_rng_state(), 0

    def _epoch_started(self, engine: Any) -> None:
        if getattr(engine, "_dataloader_iter", None) is None:  # Ignite creates the iterator right after this event
            self._new_iterator(engine)

    def _batch_drawn(self, engine: Any) -> None:
        self._consumed += 1

    def _started(self, engine: Any) -> None:
        if self._already_done:
            logger.info(f"training already finished ({self.loaded_path}); nothing to resume.")
            engine.terminate()
            return
        pending, self._pending = self._pending, None
        if pending is None:
            return
        scaler = getattr(engine, "scaler_", None)  # MONAI's trainer creates its GradScaler in run()
        if scaler is not None and pending.get("amp_scaler") is not None:
            scaler.load_state_dict(pending["amp_scaler"])
        if pending.get("rng") is None:  # a checkpoint without RNG state: weights resume, randomness does not
            return
        loader = engine.state.dataloader
        if loader is not None and pending.get("iter_rng") is not None:
            # rebuild the loader iterator exactly as it was created, then advance it to the saved position
            torch.set_rng_state(pending["iter_rng"])
            it = iter(loader)
            consumed = int(pending.get("consumed", 0))
            if getattr(loader, "num_workers", 0) == 0 and hasattr(it, "_next_index"):
                for _ in range(consumed):  # indices only: no loading, transforms' RNG restored below anyway
                    it._next_index()
            else:  # worker processes hold their own RNG: draw the batches so they advance as before
                for _ in range(consumed):
                    next(it)
            engine._dataloader_iter = it  # Ignite then continues with this iterator instead of a new one
            # ... and counts the epoch's iterations from where a mid-epoch checkpoint left it (0 at an epoch end);
            # Ignite sets this itself only when it creates the iterator
            engine._init_iter = engine.state.iteration % engine.state.epoch_length if engine.state.epoch_length else 0
            self._iter_rng, self._consumed = pending["iter_rng"], consumed
        _set_rng_state(pending["rng"])
        states = pending.get("transform_rng") or []
        rands = _randomizables(self.transform)
        if len(states) != len(rands):
            warnings.warn(
                f"{self.loaded_path}: {len(states)} saved transform random states for {len(rands)} random transforms; "
                "the resumed run's augmentations will differ from an uninterrupted run.",
                stacklevel=2,
            )
        for t, s in zip(rands, states):
            t.R.set_state(s)

    def _epoch_completed(self, engine: Any) -> None:
        epoch = engine.state.epoch
        if epoch % self.save_interval == 0 or epoch == engine.state.max_epochs:
            self.save(engine)

    def _completed(self, engine: Any) -> None:
        if self.final_filename and not self._already_done and _rank() == 0:
            state = {k: _unwrap(v).state_dict() for k, v in self.save_dict.items()}
            with atomic_write(self.save_dir / self.final_filename) as tmp:
                torch_save(state, tmp)

    # ------------------------------------------------------------------------------------------------ save / load
    def state(self, engine: Any) -> dict[str, Any]:
        """Everything a checkpoint holds (see the module docstring)."""
        ckpt: dict[str, Any] = {k: _unwrap(v).state_dict() for k, v in self.save_dict.items()}
        ckpt["trainer"] = engine.state_dict()
        scaler = getattr(engine, "scaler_", None)
        if scaler is not None:
            ckpt["amp_scaler"] = scaler.state_dict()
        ckpt["rng"] = _rng_state()
        ckpt["transform_rng"] = [t.R.get_state() for t in _randomizables(self.transform)]
        ckpt["loader"] = {"iter_rng": self._iter_rng, "consumed": self._consumed}
        if self.validator is not None:
            ckpt["best"] = {
                "best_metric": self.validator.state.best_metric,
                "best_metric_epoch": self.validator.state.best_metric_epoch,
            }
        return ckpt

    def save(self, engine: Any, mid_epoch: bool = False) -> Path:
        """Write the checkpoint of the current epoch atomically, then drop the ones beyond ``n_saved``.

        Args:
            engine: the trainer.
            mid_epoch: write ``<prefix>_checkpoint_epoch=<E>_iter=<k>.pt`` (``E`` epochs and ``k`` iterations of the
                current one done) at an iteration's end, as :class:`monai_fine.handlers.PreemptionHandler` does;
                :meth:`resume` continues that epoch at iteration ``k + 1`` with the same batches. An epoch-end
                checkpoint removes the mid-epoch ones it supersedes.

        In a distributed run only rank 0 writes (every rank returns the path).
        """
        state = engine.state
        if mid_epoch:
            done = state.epoch - 1
            name = checkpoint_name(self.file_prefix, done, state.iteration - done * state.epoch_length)
        else:
            name = checkpoint_name(self.file_prefix, state.epoch)
        path = self.save_dir / name
        if _rank() != 0:
            return path
        if self.loaded_path is None and not self._set_aside:
            self._set_aside_previous_run()
        ckpt = self.state(engine)
        with atomic_write(path) as tmp:
            torch_save(ckpt, tmp)
        files = checkpoint_files(self.save_dir, self.file_prefix)
        stale = files[self.n_saved :]
        if not mid_epoch:  # the mid-epoch checkpoints before this epoch end are superseded by it
            stale += [(e, p) for e, p in files[1 : self.n_saved] if _is_mid_epoch(p)]
        for _, old in stale:
            old.unlink(missing_ok=True)
        return path

    def _set_aside_previous_run(self) -> None:
        """A fresh start (no resume) moves an earlier run's numbered checkpoints into ``previous_run_<N>/``."""
        self._set_aside = True
        old = checkpoint_files(self.save_dir, self.file_prefix)
        if not old:
            return
        n = 1
        while (self.save_dir / f"previous_run_{n}").exists():
            n += 1
        folder = self.save_dir / f"previous_run_{n}"
        folder.mkdir(parents=True)
        for _, p in old:
            p.replace(folder / p.name)
        warnings.warn(
            f"training started over (no resume): {len(old)} checkpoint(s) of an earlier run moved to {folder}.",
            stacklevel=2,
        )

    def _remove_stale_temp_files(self) -> None:
        if self.save_dir.is_dir():
            for p in self.save_dir.glob(f".{self.file_prefix}_checkpoint_epoch=*{TMP_TAG}*"):
                p.unlink(missing_ok=True)

    def resume(self) -> Path | None:
        """Load the newest loadable checkpoint of ``save_dir`` into the save_dict objects and the trainer.

        Checkpoints are tried newest epoch first; one that fails to load is skipped with a warning naming it.
        The RNG and data-loader states are restored when the trainer starts.

        Returns:
            The path loaded, or ``None`` when there is none (a fresh start).

        Raises:
            RuntimeError: if :meth:`attach` was not called first.
        """
        if self.engine is None:
            raise RuntimeError("ResumableCheckpointSaver.resume() needs attach(trainer) first.")
        self._remove_stale_temp_files()
        engine = self.engine
        for epoch, path in checkpoint_files(self.save_dir, self.file_prefix):
            try:
                ckpt = torch_load(path, map_location=self.map_location)
                missing = [k for k in [*self.save_dict, "trainer"] if k not in ckpt]
                if missing:
                    raise KeyError(f"missing entries {missing}")
                anew = self._train_anew(epoch)
                for k, obj in self.save_dict.items():
                    if not anew or k == "model":
                        _unwrap(obj).load_state_dict(ckpt[k])
            except UnsafeCheckpointError:  # not a damaged file: somebody put it there; stop, do not fall back
                raise
            except Exception as e:  # truncated/corrupt/foreign file: fall back to the previous checkpoint
                aside = path.with_name(path.name + ".unreadable")
                warnings.warn(
                    f"skipping checkpoint {path}: it could not be loaded ({type(e).__name__}: {e}); renamed to "
                    f"{aside.name}, trying the previous one.",
                    stacklevel=2,
                )
                path.replace(aside)
                continue
            if anew:
                warnings.warn(
                    f"{path}: that run finished (epoch {epoch} of max_epochs {engine.state.max_epochs}); training "
                    "anew from its weights (fresh optimizer, scheduler and epoch count; finished_run='train_anew').",
                    stacklevel=2,
                )
                return path  # loaded_path stays None: the new run's first checkpoint sets the finished run aside
            max_epochs = engine.state.max_epochs
            engine.load_state_dict(ckpt["trainer"])
            if max_epochs is not None:
                engine.state.max_epochs = max(max_epochs, engine.state.epoch)
                self._already_done = engine.state.epoch >= max_epochs
            if self.validator is not None and "best" in ckpt:
                self.validator.state.best_metric = ckpt["best"]["best_metric"]
                self.validator.state.best_metric_epoch = ckpt["best"]["best_metric_epoch"]
            self._pending = {
                "rng": ckpt.get("rng"),
                "transform_rng": ckpt.get("transform_rng"),
                "amp_scaler": ckpt.get("amp_scaler"),
                **(ckpt.get("loader") or {}),
            }
            self.loaded_path = path
            logger.info(f"resumed from {path} (epoch {epoch}, iteration {engine.state.iteration})")
            return path
        return None


class BestModelSaver:
    """Write ``model.pt`` (the network's ``state_dict``) atomically when the validator has a new, finite best metric.

    Attach to the validation evaluator; it acts after MONAI's metric comparison at each evaluation. Weights with a
    NaN/inf entry are never saved (a warning says so).

    Args:
        save_dir: folder of the file.
        network: the model to save.
        filename: file name (``model.pt``).
    """

    def __init__(self, save_dir: str | Path, network: torch.nn.Module, filename: str = "model.pt") -> None:
        self.path = Path(save_dir) / filename
        self.network = network

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        state = engine.state
        if state.best_metric_epoch != state.epoch or _rank() != 0:
            return
        metric = float(state.best_metric)
        if not math.isfinite(metric):
            return
        if not _finite(self.network):
            warnings.warn(f"not saving {self.path}: the network has non-finite weights.", stacklevel=2)
            return
        with atomic_write(self.path) as tmp:
            torch_save(_unwrap(self.network).state_dict(), tmp)
