# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Global switches of ``monai_fine``.

``MONAI_FINE_FUSED_ATTN=0`` in the environment turns the fused attention kernel
(``torch.nn.functional.scaled_dot_product_attention``) off everywhere; the manual path computes the same function.
"""

from __future__ import annotations

import os

__all__ = ["use_fused_attn", "set_fused_attn"]

_USE_FUSED_ATTN = os.environ.get("MONAI_FINE_FUSED_ATTN", "1").lower() not in ("0", "false", "no")


def use_fused_attn() -> bool:
    """Whether attention modules built with ``use_flash_attention=None`` use the fused SDPA kernel."""
    return _USE_FUSED_ATTN


def set_fused_attn(enable: bool = True) -> None:
    """Set the default used by attention modules created afterwards."""
    global _USE_FUSED_ATTN
    _USE_FUSED_ATTN = bool(enable)
