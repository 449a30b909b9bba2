# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The GPU recipe's tunables (``cache_device``, ``thread_loader``, ``amp``/``amp_dtype``, ``compile``) of
``train.json``: on the CPU the recipe trains to the same weights as the default path, and its misuses are refused
before any work. The default loop's plain batches and unset gradients train to the weights of MetaTensor batches
and zeroed gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bundle_common import max_abs_diff, small_phantom, workflow
from monai.data import DataLoader, ThreadDataLoader

from monai_fine.engines import data_loader, default_num_workers

# 3 training cases, 2 crops each, 3 epochs of 2 iterations: the loader iterator spans epoch boundaries
SCHEDULE = {"max_epochs": 3, "epoch_length": 2, "val_interval": 1, "learning_rate": 0.05, "cache_rate": 1.0}
# the recipe as a GPU user sets it, on the CPU: the volumes cached on the training device, the thread loader, AMP bf16
RECIPE = {"cache_device": "cpu", "thread_loader": True, "amp": True, "amp_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return small_phantom(tmp_path_factory.mktemp("phantom"))


def _train(root: Path, data: Path, **override):
    """Train through ``train.json``; the final weights, the first kept checkpoint's and the trainer's loader."""
    wf = workflow(["train.json"], "train", bundle_root=str(root), dataset_dir=str(data), **SCHEDULE, **override)
    loader = wf.parser.get_parsed_content("train#trainer").data_loader
    wf.run()
    wf.finalize()
    models = root / "models"
    first = sorted(models.glob("last_checkpoint_epoch=*.pt"))[0]
    load = lambda p: torch.load(p, map_location="cpu", weights_only=False)["model"]  # noqa: E731
    return load(models / "model_final.pt"), load(first), loader


@pytest.mark.slow
def test_the_gpu_recipe_on_the_cpu_trains_to_the_same_weights(data_dir, tmp_path):
    default, _, default_loader = _train(tmp_path / "default", data_dir)
    recipe, earlier, recipe_loader = _train(tmp_path / "recipe", data_dir, **RECIPE)
    assert type(default_loader) is DataLoader and isinstance(recipe_loader, ThreadDataLoader)
    assert max_abs_diff(default, recipe) == 0.0  # the same crops in the same order, the same arithmetic
    assert max_abs_diff(earlier, recipe) > 1e-4  # the weights moved: not a comparison of two untrained networks


# the loop before its plain batches: MetaTensor crops into the collate and the engines, gradients zeroed in place
METATENSOR_LOOP = {
    "train#preprocessing#transforms": "$@train#deterministic_transforms + @train#scan_view_transforms"
    " + [t for t in @train#random_transforms if type(t).__name__ != 'PlainTensord']",
    "train#trainer#optim_set_to_none": False,
}


@pytest.mark.slow
def test_plain_batches_and_unset_gradients_train_to_the_weights_of_the_metatensor_loop(data_dir, tmp_path):
    from monai.data import MetaTensor

    default, earlier, loader = _train(tmp_path / "default", data_dir)
    batch = next(iter(loader))
    assert type(batch["image"]) is torch.Tensor and type(batch["label"]) is torch.Tensor
    assert all(n.endswith(".nii.gz") for n in batch["image_meta_dict"]["filename_or_obj"])  # the guard names cases
    metatensor, _, old_loader = _train(tmp_path / "metatensor", data_dir, **METATENSOR_LOOP)
    assert isinstance(next(iter(old_loader))["image"], MetaTensor)  # the override restored the old loop
    assert max_abs_diff(default, metatensor) == 0.0
    assert max_abs_diff(earlier, default) > 1e-4  # the weights moved


def test_workers_with_the_cache_on_an_accelerator_are_refused():
    with pytest.raises(ValueError, match=r"num_workers must be 0 .* cuda:0 .* got num_workers 2"):
        data_loader([1, 2], num_workers=2, cache_device="cuda:0")  # no GPU needed: refused before any loader exists
    assert default_num_workers("cuda:0", cpu_count=16, cache_device="cuda:0") == 0
    assert default_num_workers("cuda:0", cpu_count=16) == 4  # the cache on the host: workers load it
    assert isinstance(data_loader([1, 2], thread=True), ThreadDataLoader)


def test_an_unknown_amp_dtype_is_named_before_training(data_dir, tmp_path):
    with pytest.raises(Exception) as err:  # MONAI wraps the error of the config's initialize
        workflow(["train.json"], "train", bundle_root=str(tmp_path), dataset_dir=str(data_dir), amp_dtype="half")
    text = str(err.value) + str(err.value.__cause__) + str(getattr(err.value.__cause__, "__cause__", ""))
    assert "amp_dtype" in text and "half" in text and "bfloat16" in text
    assert not (tmp_path / "models").exists()  # nothing written
