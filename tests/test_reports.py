# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""``monai_fine.reports`` reads the CSVs MONAI's MetricsSaver writes for evaluate.json's metric names."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ignite.engine import Engine
from metrics.references import SPACING, affine_for, one_hot, perturb, random_label_map, ref_table
from monai.data import MetaTensor
from monai.handlers import MetricsSaver, from_engine

from monai_fine.handlers import HausdorffDistance95, OrganDice
from monai_fine.labels import BTCV_LABELS, PROTOCOLS
from monai_fine.reports import format_organ_table, nanmean, organ_table, read_metric_csv


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_organ_table_from_metrics_saver_csvs(tmp_path):
    rng = np.random.default_rng(3)
    cases = []
    for i in range(3):
        true_lm = random_label_map(rng, (1, 2, 6, 11) if i % 2 == 0 else (1, 3, 6, 8))
        pred_lm = perturb(rng, true_lm)
        meta = {"filename_or_obj": f"/data/case_{i}.nii.gz"}
        cases.append(
            {
                "pred": MetaTensor(one_hot(pred_lm), affine=affine_for(SPACING), meta=dict(meta)),
                "label": MetaTensor(one_hot(true_lm), affine=affine_for(SPACING), meta=dict(meta)),
                "lm": (pred_lm, true_lm),
            }
        )
    engine = Engine(lambda engine, batch: batch)
    out = from_engine(["pred", "label"])
    for name, handler in {
        "val_mean_dice": OrganDice(protocol="btcv13", output_transform=out),
        "val_hd95": HausdorffDistance95(protocol="btcv13", output_transform=out),
        "val_synapse8_dice": OrganDice(protocol="synapse8", output_transform=out),
        "val_synapse8_hd95": HausdorffDistance95(protocol="synapse8", output_transform=out),
    }.items():
        handler.attach(engine, name)
    MetricsSaver(
        save_dir=str(tmp_path),
        metrics="*",
        metric_details="*",
        batch_transform=lambda batch: [c["label"].meta for c in batch],
    ).attach(engine)
    engine.run([cases], max_epochs=1)

    raw = read_metric_csv(tmp_path / "val_hd95_raw.csv")
    assert list(raw) == ["case_0", "case_1", "case_2"] and all(len(v) == 13 for v in raw.values())
    for protocol in ("btcv13", "synapse8"):
        labels = PROTOCOLS[protocol]
        refs = [ref_table(*c["lm"], labels, SPACING, "nan") for c in cases]
        rows = organ_table(tmp_path, protocol=protocol)
        assert [r["label"] for r in rows] == list(labels) and [r["organ"] for r in rows] == [
            BTCV_LABELS[i] for i in labels
        ]
        with warnings.catch_warnings():  # organs absent from every case: all-NaN columns
            warnings.simplefilter("ignore", RuntimeWarning)
            dice_ref = np.nanmean(np.stack([d for d, _ in refs]), axis=0)
            hd_ref = np.nanmean(np.stack([h for _, h in refs]), axis=0)
        np.testing.assert_allclose([r["dice"] for r in rows], dice_ref, rtol=1e-5)
        np.testing.assert_allclose([r["hd95_mm"] for r in rows], hd_ref, rtol=1e-4)
        assert all(r["cases"] == 3 for r in rows)
    table = format_organ_table(organ_table(tmp_path), organ_table(tmp_path, protocol="synapse8"))
    assert "mean (13 organs)" in table and "mean (Synapse 8 organs)" in table and "spleen" in table


def test_nanmean_skips_nan_and_inf():
    assert nanmean([1.0, float("nan"), 3.0, float("inf")]) == 2.0
    assert np.isnan(nanmean([float("nan")]))
