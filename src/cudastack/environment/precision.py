"""Training precision modes: fp32, tf32, and autocast to bf16 or fp16 (with loss scaling).

Environment side: standard library and torch only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from cudastack.environment.context import Context

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
    set_tf32(torch, tf32)
    if mode == "amp_fp16":
        if not ctx.is_cuda:
            ctx.skip("amp_fp16 training needs a GPU: CPU autocast in fp16 is a slow fallback")
        return Autocast(torch, ctx.device.type, torch.float16)
    if mode == "amp_bf16":
        # Skips on a GPU whose bf16 would be emulated (before compute capability 8.0).
        return Autocast(torch, ctx.device.type, ctx.dtype("bf16"))
    return Autocast(torch, ctx.device.type, None)


def cpu_has_bf16_kernels(torch: Any) -> bool:
    """Whether oneDNN, which runs torch's CPU convolutions and matmuls, has bf16 kernels for this
    CPU (x86: from AVX-512 or AVX2-VNNI-2 on; Arm: its bf16 extension). Without them bf16 runs a
    reference fallback: a 256^2 bf16 matmul about 50x (one thread), a ResNet-18 training step
    about 5x fp32's time on an AVX2-only EPYC. True where this torch cannot tell (the probe is
    torch's own, used by its tests; older builds may lack it), so a case runs rather than skips
    on a guess."""
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if probe is None:
        return True
    try:
        return bool(probe())
    except RuntimeError:  # an operator this build registered without a CPU kernel
        return True


# torch >= 2.9 sets fp32 math per backend and operator: fp32_precision "ieee" or "tf32" ("none":
# as its parent, torch.backends.cudnn for the CUDA operators, then torch.backends). There, the
# allow_tf32 flags and get_float32_matmul_precision warn, or raise once the new switches were
# used, so the harness reads and writes only the API this torch has.


def _new_tf32_api(torch: Any) -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(conv, "fp32_precision")


def _switches(torch: Any) -> dict[str, Any]:
    """torch >= 2.9's switches that set_tf32 and set_float32_matmul_precision change."""
    found = {"matmul": torch.backends.cuda.matmul, "cudnn_conv": torch.backends.cudnn.conv}
    mkldnn_matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if hasattr(mkldnn_matmul, "fp32_precision"):
        found["mkldnn_matmul"] = mkldnn_matmul
    return found


def set_tf32(torch: Any, on: bool) -> None:
    """TF32 math for fp32 matmuls (cuBLAS) and cuDNN convolutions, on or off."""
    if _new_tf32_api(torch):
        value = "tf32" if on else "ieee"
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def tf32_flags(torch: Any) -> dict[str, Any]:
    """The fp32 math settings as this torch keeps them, for restore_tf32_flags."""
    if _new_tf32_api(torch):
        switches = _switches(torch)
        return {
            "tf32_api": "fp32_precision",
            **{f"{name}_fp32_precision": s.fp32_precision for name, s in switches.items()},
        }
    return {
        "tf32_api": "allow_tf32",
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def restore_tf32_flags(torch: Any, saved: dict[str, Any]) -> None:
    """Put back what tf32_flags read: the worker does it after every case."""
    if saved["tf32_api"] == "fp32_precision":
        for name, switch in _switches(torch).items():
            switch.fp32_precision = saved[f"{name}_fp32_precision"]
        return
    # First: before torch 2.9 it sets the matmul flag as well.
    torch.set_float32_matmul_precision(saved["float32_matmul_precision"])
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_allow_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn_allow_tf32"]


def tf32_enabled(torch: Any) -> dict[str, bool]:
    """Whether fp32 matmuls and cuDNN convolutions may use TF32 now."""
    if not _new_tf32_api(torch):
        flags = tf32_flags(torch)
        return {"matmul": flags["matmul_allow_tf32"], "cudnn_conv": flags["cudnn_allow_tf32"]}
    parents = [
        getattr(torch.backends.cudnn, "fp32_precision", "none"),
        getattr(torch.backends, "fp32_precision", "none"),
    ]

    def resolve(value: str) -> bool:
        for v in (value, *parents):
            if v != "none":
                return bool(v == "tf32")
        return False  # none set anywhere: IEEE fp32

    return {
        "matmul": resolve(torch.backends.cuda.matmul.fp32_precision),
        "cudnn_conv": resolve(torch.backends.cudnn.conv.fp32_precision),
    }


def tf32_record(torch: Any) -> dict[str, Any]:
    """env.json's account: the settings, and whether matmuls and convolutions may use TF32."""
    on = tf32_enabled(torch)
    return {
        **tf32_flags(torch),
        "matmul_allow_tf32": on["matmul"],
        "cudnn_allow_tf32": on["cudnn_conv"],
    }
