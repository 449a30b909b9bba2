# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The context-only task has the property it claims: what decides the twins' labels never shares a crop with them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_fine.data.context_task import context_gap, make_context_case, make_context_dataset

ROI_X = 32  # the benchmark's crop and window width along x (y and z crops cover the whole 32 x 16)


@pytest.mark.parametrize("rule", ["side", "xor"])
@pytest.mark.parametrize("seed", range(8))
def test_every_crop_holding_a_twin_is_identical_under_both_labellings(seed, rule):
    img0, lab0 = make_context_case(seed, 0, rule=rule)
    img1, lab1 = make_context_case(seed, 1, rule=rule)
    twins = np.isin(lab0, (1, 2))
    assert np.array_equal(twins, np.isin(lab1, (1, 2)))  # the same twins...
    assert np.array_equal(lab0[twins], 3 - lab1[twins])  # ...with the labels swapped
    assert not np.array_equal(img0, img1)  # the scans differ (the marker's side)
    X = img0.shape[0]
    holding = 0
    for start in range(-ROI_X + 1, X):  # every crop position along x, padding included
        sl = slice(max(start, 0), max(start + ROI_X, 0))
        if twins[sl].any():
            holding += 1
            assert np.array_equal(img0[sl], img1[sl]), start  # identical content: no crop-only model can tell
            assert not np.isin(lab0[sl], 3).any() and not np.isin(lab1[sl], 3).any()
    assert holding > 40
    assert context_gap(lab0) >= ROI_X and context_gap(lab1) >= ROI_X
    # the marker is visible in the whole scan: its side is the y half it lies in
    ys = np.nonzero((lab0 == 3).any(axis=(0, 2)))[0], np.nonzero((lab1 == 3).any(axis=(0, 2)))[0]
    assert ys[0].max() < img0.shape[1] / 2 <= ys[1].min()


def test_position_alone_is_uninformative_and_dataset_layout(tmp_path):
    path = make_context_dataset(tmp_path, num_train=4, num_val=2, seed=1)
    dl = json.loads(path.read_text())
    assert len(dl["training"]) == 4 and len(dl["validation"]) == 2 and dl["labels"]["3"] == "marker"
    left = []
    for item in dl["training"]:
        lab = np.asarray(nib.load(tmp_path / item["label"]).dataobj)
        img = nib.load(tmp_path / item["image"])
        assert img.shape == lab.shape == (160, 32, 16) and np.allclose(img.header.get_zooms(), 3.0)
        left.append(int(np.bincount(lab[:40].ravel(), minlength=4)[1:3].argmax()) + 1)  # label of the left twin
    assert sorted(left) == [1, 1, 2, 2]  # each label sits on the left in half the training cases
    with pytest.raises(ValueError, match="side must be 0 or 1"):
        make_context_case(0, 2)
    with pytest.raises(ValueError, match="rule must be one of"):
        make_context_case(0, 1, rule="and")
    _, side_rule = make_context_case(0, 1, rule="side")
    _, xor_rule = make_context_case(0, 1, rule="xor")
    assert set(np.unique(side_rule[:40])) == {0, 2} and set(np.unique(side_rule[120:])) == {0, 2}  # both twins
    assert set(np.unique(xor_rule[:40])) == {0, 2} and set(np.unique(xor_rule[120:])) == {0, 1}
