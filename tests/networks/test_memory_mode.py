# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The memory configurations, defined once and resolved once (monai_fine.networks.blocks.memory_mode)."""

from __future__ import annotations

import pytest
import torch

from monai_fine.networks import MEMORY_CONFIGS, MEMORY_MODES, create_fine, memory_mode
from monai_fine.networks.blocks import FineBlock


def test_the_table_names_every_mode_and_full_with_the_scan_memory():
    assert list(MEMORY_CONFIGS) == [*MEMORY_MODES, "full+scan"]
    for name, mode in MEMORY_CONFIGS.items():
        assert mode.name == name and mode.network_kwargs == {"memory": mode.memory, "scan_memory": name == "full+scan"}
    assert memory_mode("full", scan_memory=True) == MEMORY_CONFIGS["full+scan"]
    assert memory_mode("full+scan") is MEMORY_CONFIGS["full+scan"]


def test_bad_configurations_are_refused_with_the_value():
    with pytest.raises(ValueError, match=r"memory must be one of.*'intended'"):
        memory_mode("intended")
    with pytest.raises(ValueError, match="scan_memory=True needs memory='full', got memory='released'"):
        memory_mode("released", scan_memory=True)
    with pytest.raises(ValueError, match=r"unknown memory parts \['tokens'\]"):
        MEMORY_CONFIGS["full"].without("tokens")
    with pytest.raises(ValueError, match="scan_memory needs V-MSA"):
        MEMORY_CONFIGS["full+scan"].without("volume_attention")


def test_the_network_resolves_the_mode_once_and_hands_the_same_value_down():
    net = create_fine("test", memory="full+scan")
    assert net.mode is MEMORY_CONFIGS["full+scan"] and (net.memory, net.scan_memory) == ("full", True)
    blocks = [m for m in net.modules() if isinstance(m, FineBlock)]
    assert blocks and all(b.mode is net.mode for b in blocks)
    assert all(s.memory_encoder is not None for s in (*net.encoder_stages, *net.decoder_stages))


def test_an_ablation_arm_is_a_constructor_value():
    """``without("volume_attention")`` is ``full`` without V-MSA: the same parameters but the V-MSA norms, and an
    output that differs from ``full`` once a cell has been seen."""
    torch.manual_seed(0)
    full = create_fine("test", memory="full")
    arm = MEMORY_CONFIGS["full"].without("volume_attention")
    assert arm.name == "full, no volume_attention"
    torch.manual_seed(0)
    no_vmsa = create_fine("test", memory=arm)
    assert not any(b.volume_attention for b in no_vmsa.modules() if isinstance(b, FineBlock))
    names = {n for n, _ in full.named_parameters()} - {n for n, _ in no_vmsa.named_parameters()}
    assert names and all(".norm_volume." in n for n in names)
    no_vmsa.load_state_dict(full.state_dict(), strict=False)
    box = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 1.0]]])
    full.memory_visits.fill_(1)
    no_vmsa.memory_visits.fill_(1)
    x = torch.randn(1, 1, 32, 32, 16)
    assert (full.eval()(x, box) - no_vmsa.eval()(x, box)).abs().max() > 1e-6


def test_stage_memory_drops_the_memory_at_chosen_stages():
    net = create_fine("test", memory="full", stage_memory=["full", "full", "none", "none"])
    assert [s.volume_tokens is not None for s in net.encoder_stages] == [True, True, False, False]
    assert [s.volume_tokens is not None for s in net.decoder_stages] == [False, True, True]  # levels 2, 1, 0
    assert net(torch.randn(1, 1, 32, 32, 16)).shape == (1, 14, 32, 32, 16)
    with pytest.raises(ValueError, match="one entry per stage"):
        create_fine("test", stage_memory=["full"])


def test_the_bundle_docs_table_lists_the_memory_configurations():
    """The bundle's README documents exactly the configurations of the table, each with its two tunables."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "bundle" / "docs" / "README.md").read_text()
    rows = {}
    for line in text[text.index("**Memory configurations**") :].splitlines()[5:]:
        if not line.startswith("|"):
            break
        name, memory, scan = (c.strip(" `") for c in line.strip("|").split("|")[:3])
        rows[name] = {"memory": memory, "scan_memory": scan == "true"}
    assert rows == {name: mode.network_kwargs for name, mode in MEMORY_CONFIGS.items()}
