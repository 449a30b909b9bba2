# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The MONAI bundle end to end: configs, metadata, train -> evaluate -> infer on small NIfTI files, resume, bad data."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_common import CONFIGS, META, assert_largest_components_of, workflow
from monai.bundle import ConfigParser, verify_net_in_out

from monai_fine.data import make_phantom_dataset


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(
        out, num_cases=4, seed=3, shape=(48, 48, 32), spacing=(4.0, 4.0, 4.0), num_test=1, val_fraction=0.25
    )
    return out


def test_configs_parse_and_have_the_workflow_properties(phantom_dir, tmp_path):
    cases = [
        (["train.json"], "train", {}),
        (["train.json", "evaluate.json"], "eval", {"checkpoint": META}),  # any existing file: only parsed here
        (["inference.json"], "infer", {"load_pretrain": False}),
    ]
    for files, kind, extra in cases:
        wf = workflow(files, kind, bundle_root=str(tmp_path), dataset_dir=str(phantom_dir), **extra)
        for tunable in [
            "bundle_root",
            "dataset_dir",
            "preset",
            "memory",
            "scan_memory",
            "roi_size",
            "pixdim",
            "device",
        ]:
            assert tunable in wf.parser.config, (files, tunable)
        assert not wf.check_properties(), files  # MONAI's required and optional workflow properties are all there
    train = ConfigParser.load_config_file(str(CONFIGS / "train.json"))
    for tunable in ["datalist", "output_dir", "num_samples", "max_epochs", "val_interval"]:
        assert tunable in train
    infer = ConfigParser.load_config_file(str(CONFIGS / "inference.json"))
    assert infer["checkpointloader"]["map_location"] == "@device"  # GPU-trained weights load on CPU


def test_metadata():
    meta = json.loads(Path(META).read_text())
    for key in [
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
        "changelog",
        "schema",
    ]:
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
    out = meta["network_data_format"]["outputs"]["pred"]
    assert out["num_channels"] == 14 and len(out["channel_def"]) == 14
    from monai_fine.metrics import BTCV_LABELS

    assert out["channel_def"] == {str(k): v for k, v in BTCV_LABELS.items()}
    assert list(meta["network_data_format"]["inputs"]) == ["image"]


def test_verify_net_in_out_default_network():
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=str(CONFIGS / "inference.json"))


@pytest.mark.slow
def test_train_evaluate_infer_resume(phantom_dir, tmp_path):
    root = tmp_path / "run"
    common = {"bundle_root": str(root), "dataset_dir": str(phantom_dir)}
    wf = workflow(["train.json"], "train", max_epochs=1, epoch_length=2, val_interval=1, **common)
    wf.run()
    wf.finalize()
    models = root / "models"
    assert (models / "model.pt").is_file() and (models / "last_checkpoint_epoch=1.pt").is_file()
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=False)
    assert state["memory_visits"].sum() > 0  # the visit record is in the checkpoint
    # resume: the trainer restarts from the last checkpoint's epoch and iteration; `run training` trains too
    wf = workflow(["train.json"], "train", run_id="training", max_epochs=2, epoch_length=2, val_interval=1, **common)
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert (trainer.state.epoch, trainer.state.iteration) == (1, 2)
    wf.run()
    assert trainer.state.epoch == 2 and (models / "last_checkpoint_epoch=2.pt").is_file()
    wf.finalize()

    # evaluation: per-case, per-organ Dice and HD95 CSVs on the original grid
    wf = workflow(["train.json", "evaluate.json"], "eval", save_predictions=True, **common)
    wf.run()
    wf.finalize()
    val_cases = json.loads((phantom_dir / "dataset_0.json").read_text())["validation"]
    for name, n_organs in [("val_mean_dice", 13), ("val_hd95", 13), ("val_synapse8_dice", 8), ("val_synapse8_hd95", 8)]:
        with open(root / "eval" / f"{name}_raw.csv") as f:
            rows = list(csv.reader(f))
        assert len(rows[0]) == n_organs + 2 and len(rows) == len(val_cases) + 1, name
        values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
        finite = values[np.isfinite(values)]
        if "dice" in name:
            assert ((finite >= 0) & (finite <= 1)).all()
        else:
            assert (finite >= 0).all()
    for case in val_cases:
        pred = nib.load(root / "eval" / "predictions" / Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz"))
        ref = nib.load(phantom_dir / case["image"])
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    # keep_largest_component: the saved predictions are those cut to one component per organ, and the metrics are
    # computed on the cut maps
    lcc = {**common, "output_dir": str(root / "eval_lcc"), "keep_largest_component": True}
    wf = workflow(["train.json", "evaluate.json"], "eval", save_predictions=True, **lcc)
    wf.run()
    wf.finalize()
    dice = {}
    for folder in ("eval", "eval_lcc"):
        with open(root / folder / "val_mean_dice_raw.csv") as f:
            dice[folder] = {r[0]: [float(v) for v in r[1:]] for r in list(csv.reader(f))[1:]}
    for case in val_cases:
        name = Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        raw, kept = (np.asarray(nib.load(root / d / "predictions" / name).dataobj) for d in ("eval", "eval_lcc"))
        assert_largest_components_of(kept, raw)
        truth = np.asarray(nib.load(phantom_dir / case["label"]).dataobj)
        row = next(v for k, v in dice["eval_lcc"].items() if Path(case["image"]).name.split(".")[0] in k)
        for organ, value in zip(range(1, 14), row[:13]):
            p, t = kept == organ, truth == organ
            expected = 2 * (p & t).sum() / (p.sum() + t.sum()) if p.sum() + t.sum() else float("nan")
            assert np.isclose(value, expected, equal_nan=True), (case["image"], organ)

    # inference: every imagesTs file, saved on its own grid with its own affine
    out_dir = tmp_path / "seg"
    wf = workflow(["inference.json"], "infer", output_dir=str(out_dir), **common)
    wf.run()
    wf.finalize()
    for image in sorted((phantom_dir / "imagesTs").glob("*.nii.gz")):
        seg = nib.load(out_dir / image.name.replace(".nii.gz", "_seg.nii.gz"))
        ref = nib.load(image)
        assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
        values = np.unique(np.asarray(seg.dataobj))
        assert values.min() >= 0 and values.max() <= 13


@pytest.mark.slow
def test_real_ct_inference_keeps_shape_and_affine(totalseg_dir, tmp_path):
    """Inference on the real scan (122 x 101 x 112, 3 mm) with resampling to 2 mm in between."""
    data = tmp_path / "data"
    (data / "imagesTs").mkdir(parents=True)
    shutil.copy(totalseg_dir / "example_ct.nii.gz", data / "imagesTs" / "example_ct.nii.gz")
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    net = ConfigParser.load_config_file(str(CONFIGS / "inference.json"))["network_def"]
    from monai_fine.networks import create_fine

    model = create_fine("test", roi_size=(64, 64, 32), deep_supervision=net["deep_supervision"])
    torch.save(model.state_dict(), root / "models" / "model.pt")
    out_dir = tmp_path / "seg"
    wf = workflow(
        ["inference.json"],
        "infer",
        bundle_root=str(root),
        dataset_dir=str(data),
        output_dir=str(out_dir),
        roi_size=[64, 64, 32],
        pixdim=[2.0, 2.0, 3.0],
        overlap=0.25,
    )
    wf.run()
    wf.finalize()
    seg = nib.load(out_dir / "example_ct_seg.nii.gz")
    ref = nib.load(totalseg_dir / "example_ct.nii.gz")
    assert seg.shape == ref.shape == (122, 101, 112)
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4)


def _write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    affine = np.diag([4.0, 4.0, 4.0, 1.0]) if affine is None else affine
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def test_bad_data_fails_before_training(phantom_dir, tmp_path):
    data = tmp_path / "bad"
    shutil.copytree(phantom_dir, data)
    items = json.loads((data / "dataset_0.json").read_text())
    label_path = data / items["training"][0]["label"]
    label = np.asarray(nib.load(label_path).dataobj).copy()
    label[0, 0, 0] = 17
    _write(label_path, label.astype(np.uint8), nib.load(label_path).affine)
    (data / items["training"][1]["image"]).unlink()
    with pytest.raises(Exception) as err:
        workflow(["train.json"], "train", bundle_root=str(tmp_path / "run"), dataset_dir=str(data), max_epochs=1)
    text = str(err.value) + str(err.value.__cause__)
    assert label_path.name in text and "17" in text
    missing = items["training"][1]["image"].split("/")[-1]
    assert missing in text and ("not found" in text.lower() or "missing" in text.lower()), text
    assert not (tmp_path / "run" / "models").exists()  # nothing written


def test_unknown_tunable_values_are_refused(phantom_dir, tmp_path):
    with pytest.raises(Exception) as err:
        workflow(
            ["train.json"], "train", bundle_root=str(tmp_path), dataset_dir=str(phantom_dir), crop_sampler="posnegg"
        )
    assert "crop_sampler must be one of" in str(err.value) + str(err.value.__cause__)
    with pytest.raises(Exception) as err:
        workflow(["train.json"], "train", bundle_root=str(tmp_path), dataset_dir=str(phantom_dir), memory="intended")
    assert "memory must be one of" in str(err.value) + str(err.value.__cause__)


def test_rerun_of_a_finished_training_trains_anew_from_its_weights(phantom_dir, tmp_path):
    """What MONAI Label's repeated ``/train`` needs: resuming a finished run does not train 0 epochs; it trains a new
    run of ``max_epochs`` from the finished run's weights and sets the old checkpoints aside."""
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(phantom_dir)}
    common.update(max_epochs=1, epoch_length=2, val_interval=1)
    wf = workflow(["train.json"], "train", **common)
    wf.run()
    first = torch.load(tmp_path / "models" / "model_final.pt", map_location="cpu", weights_only=False)["model"]
    wf = workflow(["train.json"], "train", **common)
    net = wf.parser.get_parsed_content("network")
    start = {k: v.clone() for k, v in net.state_dict().items()}
    assert all(torch.equal(start[k], first[k]) for k in first)  # the new run starts from the finished run's weights
    wf.run()
    second = torch.load(tmp_path / "models" / "model_final.pt", map_location="cpu", weights_only=False)["model"]
    assert any(not torch.equal(second[k], first[k]) for k in first if first[k].is_floating_point())  # it trained
    assert (tmp_path / "models" / "previous_run_1" / "last_checkpoint_epoch=1.pt").is_file()
    assert (tmp_path / "models" / "last_checkpoint_epoch=1.pt").is_file()


@pytest.mark.slow
def test_scan_memory_trains_from_the_scan_view_and_infers_with_it(phantom_dir, tmp_path):
    """``--scan_memory true``: every training forward gets one scan view per scan (the whole preprocessed volume
    at the crop size, box [0, 1]^3), the crops read it, and validation, evaluation and inference use the same scheme."""
    from monai.transforms import Compose

    from monai_fine.transforms import scan_view

    common = {"bundle_root": str(tmp_path), "dataset_dir": str(phantom_dir), "scan_memory": "true"}
    wf = workflow(["train.json"], "train", max_epochs=1, epoch_length=2, val_interval=1, **common)
    net = wf.parser.get_parsed_content("network")
    calls = []
    net.register_forward_pre_hook(
        lambda m, a, kw: calls.append(dict(kw)) if m.training and "scan_view" in kw else None, with_kwargs=True
    )
    wf.run()
    wf.finalize()
    assert len(calls) == 2  # every training iteration
    for kw in calls:
        assert kw["scan_view"].shape == (1, 1, 32, 32, 16)  # batch_size 1, 2 crops of one scan: one view
        assert kw["scan_index"].tolist() == [0, 0] and kw["roi_box"].shape == (2, 2, 3)
        torch.testing.assert_close(kw["scan_view_box"], torch.tensor([[[0.0] * 3, [1.0] * 3]]))
    # the view is the area-resized preprocessed volume of one of the training cases
    det = Compose(wf.parser.get_parsed_content("train#deterministic_transforms"))
    train = json.loads((phantom_dir / "dataset_0.json").read_text())["training"]
    refs = [scan_view(det({k: str(phantom_dir / v) for k, v in c.items()})["image"], (32, 32, 16)) for c in train]
    assert any(torch.allclose(calls[0]["scan_view"][0], r) for r in refs)
    assert wf.parser.get_parsed_content("validate#inferer").scan_memory is True

    wf = workflow(["train.json", "evaluate.json"], "eval", **common)
    assert wf.parser.get_parsed_content("validate#inferer").scan_memory is True
    wf.run()
    wf.finalize()
    out_dir = tmp_path / "seg"
    wf = workflow(["inference.json"], "infer", output_dir=str(out_dir), **common)
    assert wf.parser.get_parsed_content("inferer").scan_memory is True
    wf.run()
    wf.finalize()
    assert len(list(out_dir.glob("*_seg.nii.gz"))) == len(list((phantom_dir / "imagesTs").glob("*.nii.gz")))


@pytest.mark.parametrize("sampler", ["posneg", "classes"])
def test_cached_crop_indices_give_the_crops_of_indices_computed_per_crop(phantom_dir, tmp_path, sampler):
    """With the volumes cached, the crop sampler reads its voxel indices from the cache: the same crops for the same
    random state as indices computed at every crop, and the indices stay out of the crops (and so of the batch)."""
    crops, caches = {}, {}
    for cached in (True, False):
        wf = workflow(["train.json"], "train", bundle_root=str(tmp_path / str(cached)), dataset_dir=str(phantom_dir),
                      cache_rate=1.0, crop_sampler=sampler, cache_crop_indices=cached)  # fmt: skip
        dataset = wf.parser.get_parsed_content("train#dataset")
        wf.parser.get_parsed_content("train#preprocessing").set_random_state(seed=0)
        crops[cached] = [dataset[i] for i in range(len(dataset))]
        caches[cached] = set(dataset._cache[0])
    indices = {"posneg": {"label_fg_indices", "label_bg_indices"}, "classes": {"label_cls_indices"}}[sampler]
    assert indices <= caches[True] and not indices & caches[False]
    for with_cache, per_crop in zip(crops[True], crops[False]):
        assert len(with_cache) == len(per_crop) == 2  # num_samples crops of one scan
        for a, b in zip(with_cache, per_crop):
            assert set(a) == set(b) and not set(a) & {"label_fg_indices", "label_bg_indices", "label_cls_indices"}
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
            assert torch.equal(torch.as_tensor(a["roi_box"]), torch.as_tensor(b["roi_box"]))


@pytest.mark.parametrize(("sampler", "scan"), [("classes", "false"), ("posneg", "true")])
def test_training_leaves_the_cached_volumes_unchanged(phantom_dir, tmp_path, sampler, scan):
    """The training dataset hands its cached items to the random transforms without a copy (``copy_cache`` false):
    the crops, intensity changes, collation and training steps must never write into them."""
    wf = workflow(["train.json"], "train", bundle_root=str(tmp_path), dataset_dir=str(phantom_dir), cache_rate=1.0,
                  crop_sampler=sampler, scan_memory=scan, max_epochs=2, epoch_length=4, val_interval=2)  # fmt: skip
    dataset = wf.parser.get_parsed_content("train#dataset")
    assert dataset.copy_cache is False
    before = copy.deepcopy(dataset._cache)
    wf.run()
    wf.finalize()
    assert len(before) == len(dataset._cache) > 0
    for was, now in zip(before, dataset._cache):
        assert set(was) == set(now)
        for key, value in was.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, now[key]), key
                if hasattr(value, "applied_operations"):  # no crop recorded on the cached volume itself
                    assert len(value.applied_operations) == len(now[key].applied_operations), key
                    assert value.meta.keys() == now[key].meta.keys(), key
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
                assert all(torch.equal(a, b) for a, b in zip(value, now[key])), key


@pytest.mark.slow
def test_a_peer_trains_and_infers_through_the_unmodified_configs(phantom_dir, tmp_path):
    """``--arch dynunet``: train.json trains nnU-Net's plan with the same loop, loss and crops; inference.json, which
    names no arch (as MONAI Label and a Zoo download run it), rebuilds the peer from the weights and segments every
    test image on its own grid."""
    from monai_fine.bundle_tools import read_network_config
    from monai_fine.networks.peers import PeerNetwork

    common = {"bundle_root": str(tmp_path), "dataset_dir": str(phantom_dir)}
    wf = workflow(["train.json"], "train", max_epochs=1, epoch_length=2, val_interval=1, arch="dynunet", **common)
    assert isinstance(wf.parser.get_parsed_content("network"), PeerNetwork)
    wf.run()
    wf.finalize()
    record = read_network_config(tmp_path / "models" / "model.pt")
    assert record["arch"] == "dynunet" and record["spacing"] == wf.parser.get_parsed_content("pixdim")
    out_dir = tmp_path / "seg"
    wf = workflow(["inference.json"], "infer", output_dir=str(out_dir), **common)
    net = wf.parser.get_parsed_content("network")
    assert isinstance(net, PeerNetwork) and net.arch == "dynunet"
    wf.run()
    wf.finalize()
    for image in sorted((phantom_dir / "imagesTs").glob("*.nii.gz")):
        seg = nib.load(out_dir / image.name.replace(".nii.gz", "_seg.nii.gz"))
        assert seg.shape == nib.load(image).shape
