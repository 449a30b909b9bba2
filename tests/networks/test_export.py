# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Exports keep the memory: TorchScript trace and ONNX (onnxruntime) with the ``roi_box`` input, parity vs eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_fine.networks import FINE, create_fine, export_onnx, trace_fine

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# crops in different memory cells of a 4x4x1 grid: the exported graph must route each to its own cells
BOXES = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 1.0]], [[0.6, 0.1, 0.0], [0.9, 0.3, 1.0]]])


def trained_tiny(**kw) -> FINE:
    """A tiny ``full`` network whose memory has seen two regions (so V-MSA and G-MSA are active when exported)."""
    torch.manual_seed(0)
    net = create_fine("test", 1, 4, memory="full", **kw)
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 32, 32, 16), torch.tensor([[[0, 0, 0], [0.25, 0.25, 1.0]], [[0.5, 0.5, 0], [1, 1, 1.0]]]))
    with torch.no_grad():  # give the tokens weight, so that a wrongly routed memory shows in the logits
        for name, p in net.named_parameters():
            if name.endswith("volume_tokens"):
                p.mul_(50.0)
    return net.eval()


def _assert_parity(got: np.ndarray, expected: torch.Tensor, what: str, atol: float = 2e-5) -> None:
    expected = expected.detach().numpy()
    diff = float(np.abs(got - expected).max())
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    assert agree == 1.0, f"{what}: argmax agrees on {agree:.6f} of voxels (max abs diff {diff:.3g})"


@pytest.mark.parametrize("size", [(32, 32, 16), (48, 32, 16)], ids=str)
def test_trace_with_roi_box_matches_eager(size):
    net = trained_tiny()
    traced = trace_fine(net, size)
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        expected = net(x, BOXES)
        got = traced(x, BOXES)
        _assert_parity(got.numpy(), expected, f"torch.jit.trace at {size}")
        # the box is an input of the graph, not a constant: swapping the boxes changes the result (by far more than
        # the parity tolerance) as in eager
        swapped = BOXES.flip(0)
        assert (net(x, swapped) - expected).abs().max() > 10 * 2e-5
        _assert_parity(traced(x, swapped).numpy(), net(x, swapped), f"torch.jit.trace at {size}, other boxes")


@pytest.mark.parametrize("size", [(32, 32, 16), (48, 32, 16)], ids=str)
def test_onnx_with_roi_box_matches_eager(size, tmp_path):
    net = trained_tiny()
    path = export_onnx(net, tmp_path / "fine.onnx", size)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "roi_box"]
    x = torch.randn(2, 1, *size)  # exported with batch 1: the batch axis is dynamic
    for boxes in (BOXES, BOXES.flip(0)):
        got = session.run(None, {"x": x.numpy(), "roi_box": boxes.numpy()})[0]
        with torch.no_grad():
            _assert_parity(got, net(x, boxes), f"onnxruntime at {size}")


def test_onnx_without_roi_box_matches_eager(tmp_path):
    """What ``monai.bundle onnx_export`` builds: the network gets only ``x`` (the whole volume)."""
    net = trained_tiny()
    path = export_onnx(net, tmp_path / "fine_x.onnx", roi_box=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        _assert_parity(session.run(None, {"x": x.numpy()})[0], net(x), "onnxruntime, x only")


@pytest.mark.slow
def test_onnx_dynamo_exporter_matches_eager(tmp_path):
    # two stages: the torch.export-based exporter takes minutes on the 4-stage tiny network on 2 cores
    torch.manual_seed(0)
    net = FINE(1, 3, feature_size=8, depths=(2, 2), num_heads=(1, 2), memory="full", roi_size=(16, 16, 8)).train()
    with torch.no_grad():
        net(torch.randn(2, 1, 16, 16, 8), BOXES)
    net.eval()
    path = export_onnx(net, tmp_path / "fine_dynamo.onnx", dynamo=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 16, 16, 8)
    boxes = torch.cat([BOXES, BOXES[:1]])
    with torch.no_grad():
        _assert_parity(session.run(None, {"x": x.numpy(), "roi_box": boxes.numpy()})[0], net(x, boxes), "dynamo ONNX")
