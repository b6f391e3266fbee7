"""Training precision modes: fp32, tf32, and autocast to bf16 or fp16 (with loss scaling).

Environment side: standard library and torch only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from .context import Context

MODES = ("fp32", "tf32", "amp_bf16", "amp_fp16")


@dataclass(frozen=True)
class Autocast:
    """How a training step runs its forward pass and applies its gradients in one mode."""

    torch: Any
    device_type: str
    dtype: Any  # autocast's dtype, or None for full fp32 math

    def context(self) -> Any:
        if self.dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device_type, dtype=self.dtype)

    def new_scaler(self) -> Any:
        """A GradScaler for fp16, whose small range would underflow gradients; one per model,
        since a scale carried over from another model's steps would be that model's, not this
        one's (and under DDP every rank must start from the same scale). None otherwise."""
        if self.dtype is not self.torch.float16:
            return None
        amp = self.torch.amp
        if hasattr(amp, "GradScaler"):
            return amp.GradScaler("cuda")
        return self.torch.cuda.amp.GradScaler()  # torch before 2.3


def autocast(ctx: Context, mode: str) -> Autocast:
    """Set the math flags for ``mode`` (the worker restores them after the case); skip a mode
    this device lacks."""
    torch = ctx.torch
    if mode not in MODES:
        raise ValueError(f"unknown precision {mode!r}; known: {', '.join(MODES)}")
    tf32 = mode == "tf32"
    if tf32:
        ctx.dtype("tf32")  # skips where TF32 does not exist
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if mode == "amp_fp16":
        if not ctx.is_cuda:
            ctx.skip("amp_fp16 training needs a GPU: CPU autocast in fp16 is a slow fallback")
        return Autocast(torch, ctx.device.type, torch.float16)
    if mode == "amp_bf16":
        if ctx.is_cuda and not torch.cuda.is_bf16_supported():
            ctx.skip("amp_bf16 needs a GPU with bfloat16 support (compute capability 8.0+)")
        return Autocast(torch, ctx.device.type, torch.bfloat16)
    return Autocast(torch, ctx.device.type, None)
