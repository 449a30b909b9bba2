# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Inference and evaluation failures that name the case: :class:`CaseErrorReporter` re-raises an exception of a run
with the source file of the case being processed (:func:`batch_case_names` reads it from the batch metadata)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_fine.data.io import WriteFailedError, take_write_failure

__all__ = ["CaseErrorReporter", "batch_case_names"]


def batch_case_names(batch: Any, key: str = "image") -> list[str]:
    """The distinct source file names of a (collated) batch, read from the MetaTensor metadata; ``[]`` if unknown."""
    if isinstance(batch, Mapping):
        batch = [batch]
    names: list[str] = []
    for item in batch if isinstance(batch, (list, tuple)) else []:
        if not isinstance(item, Mapping):
            continue
        image = item.get(key)
        meta = getattr(image, "meta", None) or item.get(f"{key}_meta_dict") or {}
        files = meta.get("filename_or_obj", [])
        for f in [files] if isinstance(files, (str, Path)) else list(files):
            if str(f) not in names:
                names.append(str(f))
    return names


class CaseErrorReporter:
    """Re-raise an exception of an inference/evaluation run with the name of the case being processed.

    Args:
        data: the dataset's item list (used when the failure happens while loading, before a batch exists; the
            loader must not shuffle and have ``batch_size=1``).
        image_key: key of the image path in the items and the batch.
    """

    def __init__(self, data: Sequence[Any] | None = None, image_key: str = "image") -> None:
        self.data, self.image_key = list(data or []), image_key

    def attach(self, engine: Any) -> None:
        """Register first among the ``EXCEPTION_RAISED`` handlers (MONAI's ``StatsHandler`` re-raises as is)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)
        handlers = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED)
        if handlers and len(handlers) > 1:
            handlers.insert(0, handlers.pop())

    def __call__(self, engine: Any, e: Exception) -> None:
        if getattr(e, "_names_its_case", False):  # Ignite fires EXCEPTION_RAISED again from run(): already named
            raise e
        names = batch_case_names(engine.state.batch, self.image_key) if engine.state.batch is not None else []
        if not names and self.data:
            index = engine.state.iteration if engine.state.batch is None else engine.state.iteration - 1
            if 0 <= index < len(self.data):
                item = self.data[index]
                names = [str(item[self.image_key] if isinstance(item, Mapping) else item)]
        where = ", ".join(names) if names else "<unknown case>"
        failure = take_write_failure()
        if failure is not None:  # MONAI's SaveImage hid it behind "cannot find a suitable writer"
            err: Exception = WriteFailedError(
                failure.errno, f"failed on case {where}: {failure.strerror}", failure.filename
            )
        else:
            err = RuntimeError(f"failed on case {where}: {type(e).__name__}: {e}")
        err._names_its_case = True
        raise err from e
