# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The peers as the bundle builds them (``network_def#arch``): recorded in their weights like FINE, rebuilt from the
record by a config that does not name them, refused when asked for another network, and fed by the bundle's loop
and inferer (which give every network a ``roi_box``)."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from monai_fine.bundle_tools import create_network, read_network_config
from monai_fine.inferers import FINEInferer
from monai_fine.networks.peers import PeerNetwork, nnunet_plan

ROI = (32, 32, 32)
SPACING = (3.0, 3.0, 3.0)
BOX = torch.tensor([[[0.2, 0.2, 0.2], [0.6, 0.6, 0.6]]])


def small_dynunet(**kwargs):
    kw = {"arch": "dynunet", "roi_size": list(ROI), "spacing": list(SPACING), "base_features": 4, "max_features": 8}
    return create_network(None, in_channels=1, out_channels=3, **{**kw, **kwargs})


def test_dynunet_is_nnunets_plan_for_the_crop_and_trains_with_deep_supervision():
    net = small_dynunet(memory="full", preset="tiny", deep_supervision=True)  # FINE-only tunables are not used
    assert isinstance(net, PeerNetwork) and net.arch == "dynunet" and net.scan_memory is False
    plan = nnunet_plan(ROI, SPACING, base_features=4, max_features=8)
    assert [list(s) for s in net.net.strides] == plan["strides"] and list(net.net.filters) == plan["filters"]
    net.train()
    out = net(torch.randn(1, 1, *ROI), roi_box=BOX)
    assert isinstance(out, list) and len(out) == 1 + plan["deep_supr_num"]
    assert all(o.shape == (1, 3, *ROI) for o in out)
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weight_mode="exp")
    loss(out, torch.randint(0, 3, (1, 1, *ROI))).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, *ROI), roi_box=BOX).shape == (1, 3, *ROI)


def test_weights_rebuild_the_recorded_peer_and_refuse_another_network(tmp_path):
    torch.manual_seed(0)
    net = small_dynunet()
    record = read_network_config(None)
    assert record == {}
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    recorded = read_network_config(path)
    assert recorded["arch"] == "dynunet" and recorded["roi_size"] == list(ROI) and recorded["spacing"] == list(SPACING)
    # a config that names no arch (MONAI Label's network_def, evaluate.json) rebuilds the peer from the record
    again = create_network(path, preset="bcv", out_channels=3, memory="full", roi_size=list(ROI))
    again.load_state_dict(torch.load(path), strict=True)
    x = torch.randn(1, 1, *ROI)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), again.eval()(x))
    with pytest.raises(ValueError, match=r"of arch 'dynunet', the config asks for arch='fine'"):
        create_network(path, arch="fine", out_channels=3)
    with pytest.raises(ValueError, match=r"num_classes=5, the weights have 3"):
        create_network(path, out_channels=5)
    # FINE weights refuse a peer
    fine = create_network(None, preset="test", out_channels=3, roi_size=[32, 32, 16])
    torch.save(fine.state_dict(), tmp_path / "fine.pt")
    with pytest.raises(ValueError, match=r"of arch 'fine', the config asks for arch='swinunetr'"):
        create_network(tmp_path / "fine.pt", arch="swinunetr", out_channels=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "swinunetr", "roi_size": [32, 32, 16]}, r"multiples of 32.*\[32, 32, 16\].*\[64, 32, 32\]"),
        ({"arch": "swinunetr", "roi_size": [32, 32, 32]}, r"one of them at least 64.*\[64, 32, 32\]"),
        ({"arch": "dynunet", "roi_size": list(ROI), "scan_memory": True}, "scan_memory=True needs FINE"),
        ({"arch": "dynunet", "roi_size": list(ROI), "feature_size": 12}, r"takes \['spacing'.*got \['feature_size'\]"),
        ({"arch": "unet", "roi_size": list(ROI)}, r"one of the peers \['dynunet', 'swinunetr'\], got 'unet'"),
        ({"arch": "dynunet"}, r"needs roi_size"),
    ],
)
def test_bad_peer_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_network(None, **kwargs)


def test_swinunetr_through_the_inferer_matches_a_plain_sliding_window():
    """The bundle's inferer gives the peer each window's roi_box; the peer does not use it, so the output is MONAI's
    plain sliding window of the same network."""
    from monai.inferers import SlidingWindowInferer

    torch.manual_seed(0)
    roi = (64, 32, 32)
    net = create_network(None, arch="swinunetr", out_channels=3, roi_size=list(roi), feature_size=12).eval()
    x = torch.randn(1, 1, 72, 36, 32)
    with torch.no_grad():
        ours = FINEInferer(roi, sw_batch_size=2)(x, net)
        plain = SlidingWindowInferer(roi, sw_batch_size=2, overlap=0.5, mode="gaussian")(x, net.net)
    assert torch.allclose(ours, plain, atol=1e-5)
