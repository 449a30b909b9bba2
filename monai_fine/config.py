# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Global switches of ``monai_fine``.

``MONAI_FINE_FUSED_ATTN=0`` in the environment turns the fused attention kernel
(``torch.nn.functional.scaled_dot_product_attention``) off everywhere; the manual path computes the same function.
:func:`retain_freed_cpu_memory` keeps freed host memory in the process (the bundle's training does it by default).
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

__all__ = ["is_eager", "use_fused_attn", "set_fused_attn", "retain_freed_cpu_memory"]

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


# glibc's mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = 2**31 - 1
_RETAINED = False


def retain_freed_cpu_memory() -> bool:
    """Keep the memory of freed tensors in the process for the next ones, instead of giving it back to the system.

    glibc's ``malloc`` serves every large block (above 128 KiB to 32 MiB, by its adaptive threshold) with a fresh
    ``mmap`` and unmaps it when it is freed, so the large tensors of each training step are faulted in again, one
    zeroed 4 KiB page at a time: about 800 thousand page faults a ``bcv`` 128x128x64 CPU training step, 10 to 30 %
    of its time (``docs/benchmarks.md``). This sets ``M_MMAP_MAX`` to 0 (every block comes from the heap) and
    ``M_TRIM_THRESHOLD`` to its maximum (the heap is never shrunk), as ``MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment would: a step reuses the memory the previous one freed.

    The process then holds its peak memory until it ends, as PyTorch's CUDA caching allocator holds GPU memory; that
    suits a training process, not a long-lived server. The setting is process-wide, is not undone, and is inherited
    by forked workers. The bundle's ``train.json`` calls this at start unless ``retain_cpu_memory`` is false.

    Returns:
        True when it is in effect (Linux with glibc); False elsewhere, where nothing is changed.
    """
    global _RETAINED
    if _RETAINED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no such parameters)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _RETAINED = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    return _RETAINED
