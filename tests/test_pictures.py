# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The demo's pictures: the overlay (two views, an organ legend in the overlay's colours) and the training curve
(the scalars a real bundle training logged to TensorBoard, drawn as logged)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_common import workflow
from matplotlib.image import imread

from monai_fine.data import make_phantom_dataset
from monai_fine.labels import BTCV_LABELS
from monai_fine.reports import label_colours, overlay_png, read_scalars, training_png

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _case(tmp_path: Path, affine: np.ndarray = AFFINE, flip: bool = False) -> list[Path]:
    """A black image (below the HU window), truth = spleen + liver blocks, prediction = liver + pancreas blocks."""
    shape = (40, 32, 20)
    image = np.full(shape, -1000, np.int16)
    truth, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    truth[4:14, 4:14, 6:16], truth[22:36, 10:26, 8:14] = 1, 6
    pred[22:36, 10:26, 8:14], pred[4:12, 18:28, 8:12] = 6, 11
    paths = []
    for name, data in [("image", image), ("truth", truth), ("pred", pred)]:
        aff = affine
        if flip:  # the same volume stored in another orientation (all axes reversed)
            n = np.asarray(shape) - 1
            reverse = np.eye(4)
            reverse[:3, :3], reverse[:3, 3] = -np.eye(3), n
            data, aff = np.ascontiguousarray(data[::-1, ::-1, ::-1]), affine @ reverse
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data, aff), str(paths[-1]))
    return paths


def _pixels_near(png: np.ndarray, rgb: np.ndarray, tol: float = 2.5 / 255) -> int:
    return int(np.count_nonzero(np.all(np.abs(png[..., :3] - rgb) <= tol, axis=-1)))


def test_overlay_legend_names_the_organs_in_the_colours_drawn(tmp_path):
    image, truth, pred = _case(tmp_path)
    drawn = overlay_png(image, truth, pred, tmp_path / "overlay.png", alpha=0.55)
    # the slices with the most ground-truth foreground: z 8..13 hold both organs, y 10..13 too
    assert drawn["slices"] == {"axial": 8, "coronal": 10}
    colours = label_colours()
    assert [(label, organ) for label, organ, _ in drawn["legend"]] == [(1, "spleen"), (6, "liver"), (11, "pancreas")]
    assert [organ for _, organ, _ in drawn["legend"]] == [BTCV_LABELS[i] for i in (1, 6, 11)]
    png = imread(tmp_path / "overlay.png")
    for label, _, rgba in drawn["legend"]:
        assert np.allclose(rgba, colours[label])
        # on the black image an organ's voxels are alpha x its colour; its legend patch is the colour itself
        assert _pixels_near(png, 0.55 * colours[label, :3]) > 200, label
        assert _pixels_near(png, colours[label, :3]) > 20, label
    assert _pixels_near(png, 0.55 * colours[2, :3]) == 0  # no right kidney drawn
    assert len({tuple(c) for c in colours[1:, :3]}) == 13  # 13 distinct organ colours


def test_overlay_is_the_same_whatever_the_file_orientation(tmp_path):
    (tmp_path / "ras").mkdir()
    (tmp_path / "flipped").mkdir()
    a = overlay_png(*_case(tmp_path / "ras"), tmp_path / "ras.png")
    b = overlay_png(*_case(tmp_path / "flipped", flip=True), tmp_path / "flipped.png")
    assert a == b
    assert np.array_equal(imread(tmp_path / "ras.png"), imread(tmp_path / "flipped.png"))


def test_overlay_refuses_volumes_of_different_shapes(tmp_path):
    image, truth, _ = _case(tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), AFFINE), str(tmp_path / "small.nii.gz"))
    with pytest.raises(ValueError, match=r"prediction \(8, 8, 8\)"):
        overlay_png(image, truth, tmp_path / "small.nii.gz", tmp_path / "x.png")


def _event_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """An independent reading of the event files: TensorBoard's raw event loader, no accumulator."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = (
                    float(tensor_util.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                )
                out.setdefault(value.tag, []).append((int(event.step), number))
    return out


@pytest.mark.slow
def test_training_png_draws_the_loss_and_dice_a_bundle_training_logged(tmp_path):
    data = tmp_path / "phantom"
    make_phantom_dataset(data, num_cases=4, seed=3, shape=(48, 48, 32), spacing=(4.0, 4.0, 4.0), num_test=0,
                         val_fraction=0.25)  # fmt: skip
    root = tmp_path / "run"
    wf = workflow(["train.json"], "train", bundle_root=str(root), dataset_dir=str(data), max_epochs=3, epoch_length=2,
                  val_interval=1)  # fmt: skip
    wf.run()
    last_loss = float(wf.parser.get_parsed_content("train#trainer").state.output[0]["loss"])
    wf.finalize()
    log_dir = root / "eval" / "tensorboard"
    logged = _event_scalars(log_dir)
    np.testing.assert_allclose(read_scalars(log_dir)["train_loss"], logged["train_loss"], rtol=1e-6)
    loss, dice = logged["train_loss"], logged["val_mean_dice"]
    assert [s for s, _ in loss] == [1, 2, 3, 4, 5, 6] and [s for s, _ in dice] == [1, 2, 3]
    assert loss[-1][1] == pytest.approx(last_loss)  # the trainer's last loss is the last point

    drawn = training_png(log_dir, tmp_path / "training.png", epoch_length=2)
    np.testing.assert_allclose(drawn["loss_iteration"], [[s / 2 for s, _ in loss], [v for _, v in loss]], rtol=1e-6)
    means = [(loss[2 * e][1] + loss[2 * e + 1][1]) / 2 for e in range(3)]
    np.testing.assert_allclose(drawn["loss_epoch"], [[1, 2, 3], means], rtol=1e-6)
    np.testing.assert_allclose(drawn["dice"], [[1, 2, 3], [v for _, v in dice]], rtol=1e-6)
    assert imread(tmp_path / "training.png").shape[:2] == (440, 1210)


def test_training_png_without_event_files_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no TensorBoard event files in {tmp_path}"):
        training_png(tmp_path, tmp_path / "t.png", epoch_length=2)
