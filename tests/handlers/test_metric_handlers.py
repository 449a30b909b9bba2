# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the per-organ Dice / HD95 Ignite handlers (real Ignite engines, MONAI MetricsSaver CSVs)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from metrics.references import (
    SPACING,
    affine_for,
    nanmean_of_organs,
    one_hot,
    perturb,
    random_label_map,
    ref_table,
)
from monai.data import MetaTensor
from monai.handlers import MetricsSaver, from_engine

from monai_fine.handlers import HausdorffDistance95, OrganDice
from monai_fine.metrics import BTCV_LABELS, PROTOCOLS

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- Ignite handlers and MetricsSaver


def _case(rng: np.random.Generator, index: int, spacing) -> dict:
    organs = (1, 2, 6, 11) if index % 2 == 0 else (1, 3, 5, 6)
    true_lm = random_label_map(rng, organs)
    pred_lm = perturb(rng, true_lm)
    if index == 1:
        pred_lm[pred_lm == 3] = 0  # an organ missed by the prediction
    meta = {"filename_or_obj": f"case_{index:02d}.nii.gz"}
    return {
        "pred": MetaTensor(one_hot(pred_lm), affine=affine_for(spacing), meta=dict(meta)),
        "label": MetaTensor(one_hot(true_lm), affine=affine_for(spacing), meta=dict(meta)),
        "pred_lm": pred_lm,
        "true_lm": true_lm,
        "spacing": spacing,
    }


def _read_raw_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")  # MetricsSaver's summary of all-NaN organs
def test_handlers_on_engine_with_metrics_saver(tmp_path):
    rng = np.random.default_rng(42)
    spacings = [(0.8, 0.8, 3.0), (0.7, 0.7, 2.5), (0.9, 0.6, 1.5)]
    # 3 iterations of 2 decollated cases each, as a SupervisedEvaluator output (list of dicts)
    batches = [[_case(rng, 2 * i + j, spacings[(2 * i + j) % 3]) for j in range(2)] for i in range(3)]
    cases = [c for b in batches for c in b]

    engine = Engine(lambda engine, batch: batch)
    handlers = {
        "dice": OrganDice(output_transform=from_engine(["pred", "label"])),
        "hd95": HausdorffDistance95(output_transform=from_engine(["pred", "label"])),
        "dice8": OrganDice(protocol="synapse8", empty="synapse", output_transform=from_engine(["pred", "label"])),
        "hd95_8": HausdorffDistance95(
            protocol="synapse8", empty="synapse", output_transform=from_engine(["pred", "label"])
        ),
    }
    for name, handler in handlers.items():
        handler.attach(engine, name)
    MetricsSaver(
        save_dir=str(tmp_path),
        metrics="*",
        metric_details="*",
        batch_transform=lambda batch: [c["label"].meta for c in batch],
        summary_ops=["mean"],
    ).attach(engine)
    engine.run(batches, max_epochs=1)

    for name, protocol, empty, which in [
        ("dice", "btcv13", "nan", 0),
        ("hd95", "btcv13", "nan", 1),
        ("dice8", "synapse8", "synapse", 0),
        ("hd95_8", "synapse8", "synapse", 1),
    ]:
        labels = PROTOCOLS[protocol]
        ref = np.stack([ref_table(c["pred_lm"], c["true_lm"], labels, c["spacing"], empty)[which] for c in cases])
        details = engine.state.metric_details[name]
        assert tuple(details.shape) == (len(cases), len(labels))
        np.testing.assert_allclose(details.numpy(), ref, rtol=1e-4, atol=1e-6)
        assert engine.state.metrics[name] == pytest.approx(nanmean_of_organs(ref), rel=1e-4)
        assert handlers[name].class_names == [BTCV_LABELS[i] for i in labels]

        header, filenames, values = _read_raw_csv(tmp_path / f"{name}_raw.csv")
        assert header == ["filename"] + [f"class{j}" for j in range(len(labels))] + ["mean"]
        assert filenames == [f"case_{i:02d}.nii.gz" for i in range(len(cases))]
        np.testing.assert_allclose(values[:, :-1], ref, rtol=1e-4, atol=1e-4)
        with np.errstate(all="ignore"):
            np.testing.assert_allclose(values[:, -1], np.nanmean(ref, axis=1), rtol=1e-4, atol=1e-4)
        assert (tmp_path / f"{name}_summary.csv").exists()

    # the nan rule really produced NaNs (absent organs) and the synapse rule produced none
    assert torch.isnan(engine.state.metric_details["hd95"]).any()
    assert not torch.isnan(engine.state.metric_details["hd95_8"]).any()
    saved = dict(line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines())
    assert set(saved) == set(handlers)
    assert float(saved["hd95"]) == pytest.approx(engine.state.metrics["hd95"], rel=1e-6)


def test_handler_accepts_dict_of_lists_and_batch_first_metatensors():
    rng = np.random.default_rng(3)
    cases = [_case(rng, i, SPACING) for i in range(2)]
    ref = np.stack([ref_table(c["pred_lm"], c["true_lm"], (1, 6), SPACING, "nan")[1] for c in cases])
    for output in (
        {"pred": [c["pred"] for c in cases], "label": [c["label"] for c in cases]},
        {
            "pred": torch.stack([c["pred"] for c in cases]),
            "label": MetaTensor(torch.stack([c["label"].as_tensor() for c in cases]), affine=affine_for(SPACING)),
        },
    ):
        engine = Engine(lambda engine, batch, output=output: output)
        HausdorffDistance95(labels=[1, 6], output_transform=from_engine(["pred", "label"])).attach(engine, "hd")
        engine.run([0], max_epochs=1)
        np.testing.assert_allclose(engine.state.metric_details["hd"].numpy(), ref, rtol=1e-4)


def test_hd95_handler_reads_spacing_per_case_from_affine():
    y = torch.zeros(2, 4, 4, 6)
    y[1, 1, 1, 1] = 1
    y_pred = torch.roll(y, shifts=1, dims=3)  # one voxel along z
    handler = HausdorffDistance95(labels=[1])
    handler.reset()
    affines = [affine_for((0.8, 0.8, 3.0)), affine_for((1.0, 1.0, 2.0))]
    handler.update(([MetaTensor(y_pred, affine=a) for a in affines], [MetaTensor(y, affine=a) for a in affines]))
    torch.testing.assert_close(handler.metric_fn.get_buffer(), torch.tensor([[3.0], [2.0]]))
