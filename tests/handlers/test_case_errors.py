# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""CaseErrorReporter on a real Ignite engine: a failure while processing or while loading a case names the case;
batch_case_names reads the names from a collated batch."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset, MetaTensor

from monai_fine.handlers import CaseErrorReporter, batch_case_names

FILES = [f"/data/imagesTs/case_{i}.nii.gz" for i in range(3)]


class _Loading(Dataset):
    """Items with a MetaTensor image naming its file; loading item ``bad`` fails."""

    def __init__(self, bad: int | None = None) -> None:
        super().__init__([{"image": f} for f in FILES])
        self.bad = bad

    def __getitem__(self, index):
        if index == self.bad:
            raise OSError(f"cannot read {FILES[index]}")
        return {"image": MetaTensor(torch.zeros(1, 2, 2, 2), meta={"filename_or_obj": FILES[index]})}


def _engine(fail_at: int | None = None) -> Engine:
    def step(engine, batch):
        if engine.state.iteration == fail_at:
            raise ValueError("boom")

    return Engine(step)


def test_a_failure_while_processing_names_the_case_of_the_batch():
    engine = _engine(fail_at=2)
    CaseErrorReporter().attach(engine)
    with pytest.raises(RuntimeError, match=r"^failed on case /data/imagesTs/case_1\.nii\.gz: ValueError: boom$") as e:
        engine.run(DataLoader(_Loading(), batch_size=1))
    # Ignite fires EXCEPTION_RAISED twice (from the iteration loop and from run()): the case is named once
    assert str(e.value).count("failed on case") == 1
    cause = e.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "boom"


def test_a_failure_while_loading_names_the_item_from_the_data_list():
    engine = _engine()
    CaseErrorReporter(data=[{"image": f} for f in FILES]).attach(engine)
    with pytest.raises(RuntimeError, match=r"failed on case /data/imagesTs/case_2\.nii\.gz: OSError: .*cannot read"):
        engine.run(DataLoader(_Loading(bad=2), batch_size=1))


def test_it_runs_before_handlers_that_re_raise():
    """MONAI's StatsHandler re-raises as is; attached earlier, it must not hide the case name."""
    engine = _engine(fail_at=1)

    @engine.on(Events.EXCEPTION_RAISED)
    def reraise(engine, e):
        raise e

    CaseErrorReporter().attach(engine)
    with pytest.raises(RuntimeError, match=r"failed on case /data/imagesTs/case_0\.nii\.gz"):
        engine.run(DataLoader(_Loading(), batch_size=1))


def test_without_a_name_the_case_is_unknown():
    engine = _engine(fail_at=1)
    CaseErrorReporter().attach(engine)
    with pytest.raises(RuntimeError, match=r"failed on case <unknown case>: ValueError: boom"):
        engine.run([{"image": torch.zeros(1)}])


def test_batch_case_names_of_collated_lists_and_meta_dicts():
    batch = next(iter(DataLoader(_Loading(), batch_size=3)))
    assert batch_case_names(batch) == FILES
    assert batch_case_names([batch, batch]) == FILES  # distinct names, in order
    assert batch_case_names({"image": torch.zeros(1), "image_meta_dict": {"filename_or_obj": FILES[0]}}) == FILES[:1]
    assert batch_case_names({"label": torch.zeros(1)}) == [] and batch_case_names(None) == []
