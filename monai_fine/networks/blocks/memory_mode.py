# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""The memory configurations of FINE, defined once.

A :class:`MemoryMode` is what a network, a stage and a block read about the memory: which token sets exist and
which attentions run. :data:`MEMORY_CONFIGS` names the configurations that experiments, benchmarks and the bundle
compare (``none``, ``window``, ``released``, ``full``, ``full+scan``); :func:`memory_mode` resolves a name once, in
:py:class:`monai_fine.networks.FINE`'s constructor, and the frozen value is passed down, so no module below compares
mode strings.

A configuration is two bundle tunables, ``memory`` (the mode) and ``scan_memory`` (the per-scan memory written by
the scan view, on top of ``full``): :attr:`MemoryMode.network_kwargs` gives them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["MemoryMode", "MEMORY_MODES", "MEMORY_CONFIGS", "memory_mode"]


@dataclass(frozen=True)
class MemoryMode:
    """A memory configuration, resolved.

    Attributes:
        name: its name in :data:`MEMORY_CONFIGS` (or a descriptive name for an ablation arm).
        memory: the network's ``memory`` argument it stands for (``"none"``, ``"window"``, ``"released"``,
            ``"full"``).
        window_tokens: window tokens join W-MSA (all modes but ``"none"``).
        volume_tokens: the stage holds learned volume tokens (``"released"``, ``"full"``).
        volume_attention: V-MSA over all seen volume tokens first in every block (``"full"``).
        global_attention: pre-norm residual G-MSA before W-MSA (``"window"``, ``"full"``).
        released_global_attention: the official code's G-MSA after the MLP, without norm or residual, its output
            replacing the window tokens, in all blocks of a stage but the last (``"released"``).
        scan_memory: the per-scan memory: a scan-view pass writes what the crops read (needs ``volume_attention``).
    """

    name: str
    memory: str
    window_tokens: bool
    volume_tokens: bool
    volume_attention: bool
    global_attention: bool
    released_global_attention: bool
    scan_memory: bool = False

    def __post_init__(self) -> None:
        if self.scan_memory and not self.volume_attention:
            raise ValueError(f"scan_memory needs V-MSA (memory='full'); configuration {self.name!r} has none.")
        if self.volume_attention and not self.volume_tokens:
            raise ValueError(f"V-MSA needs volume tokens; configuration {self.name!r} has none.")
        if (self.global_attention or self.released_global_attention or self.volume_tokens) and not self.window_tokens:
            raise ValueError(f"G-MSA and volume tokens need window tokens; configuration {self.name!r} has none.")

    @property
    def norm_window_tokens(self) -> bool:
        """Window tokens are normalised before W-MSA (all but the official code's ``"released"``)."""
        return not self.released_global_attention

    @property
    def network_kwargs(self) -> dict[str, object]:
        """The :py:class:`~monai_fine.networks.FINE` keywords (and bundle tunables) of this configuration."""
        return {"memory": self.memory, "scan_memory": self.scan_memory}

    def without(self, *parts: str) -> MemoryMode:
        """This configuration with attentions switched off (an ablation arm built at construction), e.g.
        ``MEMORY_CONFIGS["full"].without("volume_attention")``; ``parts`` name boolean fields."""
        fields = {f.name for f in dataclasses.fields(self) if f.type in (bool, "bool")}
        unknown = set(parts) - fields
        if unknown:
            raise ValueError(f"unknown memory parts {sorted(unknown)}; choose from {sorted(fields)}.")
        name = f"{self.name}, no " + ", no ".join(parts) if parts else self.name
        return dataclasses.replace(self, name=name, **dict.fromkeys(parts, False))


def _mode(name: str, memory: str, scan_memory: bool = False) -> MemoryMode:
    return MemoryMode(
        name=name,
        memory=memory,
        window_tokens=memory != "none",
        volume_tokens=memory in ("released", "full"),
        volume_attention=memory == "full",
        global_attention=memory in ("window", "full"),
        released_global_attention=memory == "released",
        scan_memory=scan_memory,
    )


#: The network's ``memory`` modes.
MEMORY_MODES = ("none", "window", "released", "full")

#: The compared configurations by name: the four modes and ``full+scan`` (``full`` with the per-scan memory).
MEMORY_CONFIGS: dict[str, MemoryMode] = {
    **{m: _mode(m, m) for m in MEMORY_MODES},
    "full+scan": _mode("full+scan", "full", scan_memory=True),
}


def memory_mode(memory: str | MemoryMode = "full", scan_memory: bool = False) -> MemoryMode:
    """Resolve a ``memory`` argument (a mode of :data:`MEMORY_MODES`, a name of :data:`MEMORY_CONFIGS` such as
    ``"full+scan"``, or a :class:`MemoryMode`) and ``scan_memory`` into one :class:`MemoryMode`.

    Raises:
        ValueError: an unknown name, or ``scan_memory=True`` with a mode other than ``"full"``, naming the value.
    """
    if isinstance(memory, MemoryMode):
        mode = memory
    elif memory in MEMORY_CONFIGS:
        mode = MEMORY_CONFIGS[memory]
    else:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}.")
    if scan_memory and not mode.scan_memory:
        if not mode.volume_attention:
            raise ValueError(f"scan_memory=True needs memory='full', got memory={mode.memory!r}.")
        mode = dataclasses.replace(
            mode, name="full+scan" if mode.name == "full" else mode.name + "+scan", scan_memory=True
        )
    return mode
