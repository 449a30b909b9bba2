# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``monai_fine.engines``: how many loader workers the bundle takes, and what its ``prepare_batch`` hands the
network."""

from __future__ import annotations

import torch
from monai.data import MetaTensor

from monai_fine.engines import PrepareScanBatch, default_num_workers


def test_default_num_workers_leaves_a_small_cpu_to_the_training_threads():
    # on CPU the training step's threads use every core: no worker below 8 cores, then one per 8, at most 4
    assert [default_num_workers("cpu", cpu_count=c) for c in (1, 2, 4, 7, 8, 16, 64)] == [0, 0, 0, 0, 1, 2, 4]
    # on an accelerator the host cores are free for loading: all but one, at most max_workers
    assert [default_num_workers("cuda:0", cpu_count=c) for c in (1, 2, 4, 16)] == [0, 1, 3, 4]
    assert default_num_workers(torch.device("cuda", 1), cpu_count=64, max_workers=8) == 8
    assert 0 <= default_num_workers("cpu") <= 4  # the machine's own core count


def test_prepare_scan_batch_hands_plain_tensors_and_keeps_the_batch_metadata():
    image = MetaTensor(torch.rand(2, 1, 8, 8, 4), meta={"filename_or_obj": ["a.nii.gz", "a.nii.gz"]})
    label = MetaTensor(torch.randint(0, 3, (2, 1, 8, 8, 4)).float())
    roi_box = MetaTensor(torch.rand(2, 2, 3))
    views = MetaTensor(torch.rand(2, 1, 8, 8, 4))
    batch = {"image": image, "label": label, "roi_box": roi_box, "scan_view": views, "scan_id": torch.tensor([7, 7])}
    x, y, args, kwargs = PrepareScanBatch()(batch, torch.device("cpu"))
    for t in (x, y, *args, *kwargs.values()):
        assert type(t) is torch.Tensor, type(t)  # no MetaTensor dispatch in the network and the loss
    assert x.data_ptr() == image.data_ptr() and torch.equal(y, label.as_tensor())  # no copy on the same device
    assert kwargs["scan_view"].shape == (1, 1, 8, 8, 4) and kwargs["scan_index"].tolist() == [0, 0]
    assert isinstance(batch["image"], MetaTensor) and batch["image"].meta["filename_or_obj"] == ["a.nii.gz"] * 2
