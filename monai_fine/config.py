# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Global switches of ``monai_fine``.

``MONAI_FINE_FUSED_ATTN=0`` in the environment turns the fused attention kernel
(``torch.nn.functional.scaled_dot_product_attention``) off everywhere; the manual path computes the same function.
"""

from __future__ import annotations

import os

import torch

__all__ = ["is_eager", "use_fused_attn", "set_fused_attn"]

_USE_FUSED_ATTN = os.environ.get("MONAI_FINE_FUSED_ATTN", "1").lower() not in ("0", "false", "no")


def use_fused_attn() -> bool:
    """Whether attention modules built with ``use_flash_attention=None`` use the fused SDPA kernel."""
    return _USE_FUSED_ATTN


def set_fused_attn(enable: bool = True) -> None:
    """Set the default used by attention modules created afterwards."""
    global _USE_FUSED_ATTN
    _USE_FUSED_ATTN = bool(enable)


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)  # torch < 2.3: never


def is_eager() -> bool:
    """True outside ``torch.jit`` tracing/scripting and ``torch.compile``/``torch.export`` tracing: where a module may
    read values on the host or pick a kernel by hand."""
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or _is_compiling())
