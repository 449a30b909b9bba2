# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Config mistakes fail before any work, with the config id, the value and what is allowed (docs/reliability.md).

Each test builds the real bundle workflow (``ConfigWorkflow`` of ``train.json`` / ``inference.json``) with one
mistake and checks where it stops and what it says; the table in ``docs/reliability.md`` lists them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bundle_common import workflow

from monai_fine.bundle_tools import CONFIG_BUFFER, _encode, create_network, read_network_config
from monai_fine.data import make_phantom_dataset

TRAIN = {"max_epochs": 1, "epoch_length": 1, "val_interval": 1}
TINY = {"preset": "test", "roi_size": [32, 32, 16]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(out, num_cases=3, seed=2, shape=(40, 40, 24), spacing=(4.0, 4.0, 4.0), num_test=0,
                         val_fraction=0.34)  # fmt: skip
    return out


def _text(err: pytest.ExceptionInfo) -> str:
    parts, e = [], err.value
    while e is not None:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def _refused_at_initialize(root: Path, data: Path, **override) -> str:
    """The message of a training workflow that fails while it is initialised (before the trainer runs)."""
    with pytest.raises(Exception) as err:
        workflow(["train.json"], "train", bundle_root=str(root), dataset_dir=str(data), **{**TRAIN, **override})
    models = root / "models"
    assert not models.exists() or not any(models.iterdir()), sorted(models.iterdir())  # nothing written
    return _text(err)


def _weights(root: Path, **kw) -> Path:
    path = root / "models" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save(create_network(**{**TINY, **kw}).state_dict(), path)
    return path


@pytest.mark.parametrize(
    "override, message",
    [
        ({"preset": "huge"}, "preset must be one of ['bcv', 'test', 'tiny'], got 'huge'."),
        ({"memory": "fulll"}, "memory must be one of ('none', 'window', 'released', 'full'), got 'fulll'."),
        ({"crop_sampler": "random"}, "crop_sampler must be one of ['posneg', 'classes'], got 'random'."),
        ({"roi_size": [30, 32, 16]}, ("roi_size must be 3 positive multiples of the network stride [16, 16, 16] "
                                      "(patch_size [2, 2, 2] x 2**3 for preset 'test'), got [30, 32, 16]; the nearest "
                                      "larger size it takes is [32, 32, 16].")),
        ({"roi_size": [32, 32]}, "roi_size must be 3 positive multiples of the network stride"),
        ({"scan_memory": "maybe"}, "scan_memory must be a boolean (true/True/1 or false/False/0), got 'maybe'"),
        ({"sw_batch_size": 0}, "sw_batch_size must be a positive integer (windows per batch), got 0."),
    ],
)  # fmt: skip
def test_a_bad_value_is_refused_before_work_naming_the_id(data_dir, tmp_path, override, message):
    assert message in _refused_at_initialize(tmp_path, data_dir, **override)


def test_weights_of_another_configuration_are_refused_naming_the_id(data_dir, tmp_path):
    """Training into a folder whose ``model.pt`` is another network: refused, not silently rebuilt as the weights."""
    weights = _weights(tmp_path, memory="full", scan_memory=False)
    before = weights.read_bytes()
    with pytest.raises(Exception) as err:
        workflow(
            ["train.json"], "train", bundle_root=str(tmp_path), dataset_dir=str(data_dir), scan_memory=True, **TRAIN
        )
    text = _text(err)
    assert f"the weights in {weights} are of another network configuration" in text
    assert "scan_memory=True, the weights have False" in text
    assert weights.read_bytes() == before and sorted(p.name for p in weights.parent.iterdir()) == ["model.pt"]
    # the same for inference: a 14-class model.pt asked to give 5 classes
    with pytest.raises(Exception) as err:
        workflow(["inference.json"], "infer", bundle_root=str(tmp_path), num_classes=5, datalist=[],
                 output_dir=str(tmp_path / "out")).parser.get_parsed_content("network_def")  # fmt: skip
    assert "num_classes=5, the weights have 14" in _text(err)


def test_without_overrides_the_ids_follow_the_recorded_network(tmp_path):
    """What MONAI Label does (no overrides): memory, scan_memory and num_classes come from the weights' record."""
    _weights(tmp_path, memory="window", out_channels=6)
    wf = workflow(["inference.json"], "infer", bundle_root=str(tmp_path), datalist=[], output_dir=str(tmp_path / "o"))
    parser = wf.parser
    assert parser.get_parsed_content("memory") == "window" and parser.get_parsed_content("num_classes") == 6
    assert parser.get_parsed_content("scan_memory") is False
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))  # strict


def test_scan_memory_weights_recorded_before_the_centred_read_keep_their_read(tmp_path):
    """Scan-memory weights recorded before ``scan_read``/``scan_write`` existed were trained with the mean read and an
    every-stage write: they are rebuilt so (same outputs, strict load, the record kept as it was), while a new
    scan-memory network records its (centred) read."""
    old = create_network(**TINY, scan_memory=True, scan_read="mean", scan_write="all").eval()
    state = old.state_dict()
    legacy = {k: v for k, v in read_network_config_from(state).items() if k not in ("scan_read", "scan_write")}
    state[CONFIG_BUFFER] = _encode(legacy)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    rebuilt = create_network(path, **TINY, scan_memory=True).eval()
    rebuilt.load_state_dict(torch.load(path, weights_only=True))  # strict: the record is stored back unchanged
    assert rebuilt.scan_read == "mean" and "scan_read" not in read_network_config(path)
    x, view = torch.randn(1, 1, 32, 32, 16), torch.randn(1, 1, 32, 32, 16)
    box = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 1.0, 1.0]]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, box, scan_view=view), old(x, box, scan_view=view), rtol=0, atol=0)
    new = create_network(**TINY, scan_memory=True)
    assert new.scan_read == "centred" and read_network_config_from(new.state_dict())["scan_read"] == "centred"
    with pytest.raises(ValueError, match="network_def#scan_read='centred', the weights have 'mean'"):
        create_network(path, **TINY, scan_memory=True, scan_read="centred")


def read_network_config_from(state: dict) -> dict:
    import json

    return json.loads(bytes(state[CONFIG_BUFFER].tolist()).decode("utf-8"))


@pytest.mark.slow
def test_a_crop_larger_than_a_training_image_is_padded(data_dir, tmp_path):
    """``roi_size`` above an image's size: ``SpatialPadd`` pads the image to the crop, the training runs (documented
    in docs/reliability.md; MONAI's croppers alone would refuse)."""
    wf = workflow(["train.json"], "train", bundle_root=str(tmp_path), dataset_dir=str(data_dir), roi_size=[48, 48, 32],
                  **TRAIN)  # fmt: skip
    item = wf.parser.get_parsed_content("train#dataset")[0]  # images of 40 x 40 x 24 voxels
    crops = item if isinstance(item, list) else [item]
    assert all(tuple(c["image"].shape[1:]) == (48, 48, 32) for c in crops)
    boxes = torch.stack([torch.as_tensor(c["roi_box"]) for c in crops])
    assert bool(((boxes[:, 0] < 0) | (boxes[:, 1] > 1)).any())  # the crop covers padding outside the volume
    wf.run()
    assert (tmp_path / "models" / "model_final.pt").is_file()
