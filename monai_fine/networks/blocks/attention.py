# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Multi-head self-attention with a fused (SDPA) and a manual path that compute the same function.

On the CPU a float mask that takes a gradient (a learned bias: W-MSA's relative positions) runs the manual path even
where the fused one is chosen: SDPA's CPU kernel takes no gradient for a mask, so it would fall back to its unfused
math path, which does the same products with more kernels (two scalings, a softmax that checks for empty rows).

:class:`AttentionRecorder` is an opt-in probe for analysis (:py:mod:`monai_fine.memory_map`): while one is active,
every :class:`Attention` call also computes its softmax weights explicitly and stores them. With no recorder active the
forward only checks an empty list (eager) and traces to the same graph as before (``torch.compile`` guards on it,
``torch.jit.script`` compiles the probe as unused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_fine.config import use_fused_attn

__all__ = ["Attention", "AttentionRecorder", "resolve_attn_mask"]

_RECORDERS: list[AttentionRecorder] = []  # the active recorders, innermost last


def resolve_attn_mask(bias: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Merge an additive bias and a boolean mask into the one tensor both attention paths take.

    Args:
        bias: additive logits bias broadcastable to ``(B, heads, L_q, L_k)``, or None.
        mask: bool, ``True`` = may attend, broadcastable to ``(B, heads, L_q, L_k)``, or None.

    Returns:
        None, the bool mask (no bias), or a float tensor with ``-inf`` where the mask forbids attention.
    """
    if mask is None:
        return bias
    if mask.dtype != torch.bool:
        raise TypeError(f"attention masks are bool (True = may attend), got dtype {mask.dtype}.")
    if bias is None:
        return mask
    return bias.masked_fill(~mask, float("-inf"))


class AttentionRecorder:
    """Context manager that stores the softmax weights of every :class:`Attention` call made while it is active.

    ``records`` holds, in call order, ``(module, weights)`` with ``weights`` the detached ``(B, heads, L_q, L_k)``
    probabilities (masked keys exactly 0; before dropout). They are computed explicitly from the call's own ``q``,
    ``k`` and mask, and ``weights @ v`` is checked against the output the module computed (the fused kernel or the
    manual path), so a recording is of the very function the network ran. For analysis only: it costs a second
    attention product per call and keeps every weight tensor; use it in eval mode (with attention dropout in training
    the weights stored are the pre-dropout ones and the check is skipped).

    Args:
        atol: tolerance of the ``weights @ v`` check (float32 on CPU agrees to ~1e-6); half-precision outputs
            (autocast) get at least 8 units in the last place of their largest value.

    Raises:
        RuntimeError: (on a recorded call) the explicit weights do not reproduce the module's output.
    """

    def __init__(self, atol: float = 1e-4) -> None:
        self.atol = float(atol)
        self.records: list[tuple[nn.Module, torch.Tensor]] = []

    def __enter__(self) -> AttentionRecorder:
        _RECORDERS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _RECORDERS.remove(self)


def _sdpa_falls_back(x: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether SDPA would run its unfused math path for a fused-kernel call: a CPU float mask that takes a gradient."""
    return (
        attn_mask is not None
        and attn_mask.dtype != torch.bool
        and attn_mask.requires_grad
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
    )


class Attention(nn.Module):
    """Multi-head self-attention over ``(B, L, C)`` tokens (timm vocabulary)."""

    __constants__ = ["fused_attn"]  # TorchScript constant (a ``Final[bool]`` annotation is unreadable under PEP 563)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_flash_attention: bool | None = None,
    ) -> None:
        """
        Args:
            dim: token channels.
            num_heads: attention heads; must divide ``dim``.
            qkv_bias: bias in the fused qkv projection.
            attn_drop: dropout on the attention weights (training only).
            proj_drop: dropout after the output projection.
            use_flash_attention: use ``F.scaled_dot_product_attention``; None takes
                :func:`monai_fine.config.use_fused_attn`.

        Raises:
            ValueError: ``dim`` is not divisible by ``num_heads``.
        """
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn() if use_flash_attention is None else bool(use_flash_attention)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: ``(B, L, C)`` tokens.
            attn_mask: from :func:`resolve_attn_mask`: bool (True = may attend) or additive float, broadcastable
                to ``(B, heads, L, L)``.

        Returns:
            ``(B, L, C)``.
        """
        B, L, C = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn and not _sdpa_falls_back(x, attn_mask):
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                attn = (
                    attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn + attn_mask
                )
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        if not torch.jit.is_scripting():
            self._record(q, k, v, attn_mask, x)
        x = x.transpose(1, 2).reshape(B, L, C)
        return self.proj_drop(self.proj(x))

    @torch.jit.unused
    def _record(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, out: torch.Tensor
    ) -> None:
        """Store this call's softmax weights in the active :class:`AttentionRecorder` (nothing when none is)."""
        if not _RECORDERS:
            return
        recorder = _RECORDERS[-1]
        with torch.no_grad():
            logits = (q.float() * self.scale) @ k.float().transpose(-2, -1)
            if attn_mask is not None:
                if attn_mask.dtype == torch.bool:
                    logits = logits.masked_fill(~attn_mask, float("-inf"))
                else:
                    logits = logits + attn_mask.float()
            weights = logits.softmax(dim=-1)
            if not (self.training and self.attn_drop.p > 0):
                err = float((weights @ v.float() - out.float()).abs().max())
                tol = recorder.atol
                if out.dtype in (torch.float16, torch.bfloat16):  # autocast: the kernel rounded to half precision
                    tol = max(tol, 8 * torch.finfo(out.dtype).eps * max(float(v.abs().max()), 1.0))
                if not err <= tol:  # also catches NaN
                    raise RuntimeError(
                        f"recorded attention weights do not reproduce the attention output (max error {err:.3g} > "
                        f"{tol:g}, fused={self.fused_attn})."
                    )
        recorder.records.append((self, weights))
