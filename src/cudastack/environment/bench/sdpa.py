"""Attention throughput: scaled_dot_product_attention per backend, fwd and fwd+bwd, in TFLOP/s."""

from __future__ import annotations

import math
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from cudastack.environment.context import Context, Metric

KIND = "kernel"
HEADLINE = "tflops"
CEILING = "{dtype}"  # % of achievable: of the best large GEMM in the case's dtype
PARAMS = {
    "backend": ["flash", "efficient", "cudnn", "math"],
    "direction": ["fwd", "fwd_bwd"],
    "causal": [False, True],
    "dtype": ["bf16"],
    "batch": [4],
    "heads": [16],
    "seq": [4096],
    "head_dim": [128],
}
PROFILES = {
    "smoke": {"batch": [1], "heads": [2], "seq": [128], "head_dim": [64]},
    "quick": {"dtype": ["fp32"], "batch": [1], "heads": [8], "seq": [512], "head_dim": [64]},
    "full": {"dtype": ["bf16", "fp16", "fp32"], "seq": [1024, 4096]},
}

# Our names -> torch.nn.attention.SDPBackend members (CUDNN_ATTENTION exists from torch 2.3).
BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}
# How torch heads its per-backend warnings when no allowed kernel fits ("... not used because:").
WARNING_HEADS = {"flash": "flash attention", "efficient": "memory efficient", "cudnn": "cudnn"}
# What sdpa raises when no allowed backend can run: CUDA builds, then CPU builds.
NO_KERNEL = ("No available kernel", "No viable backend")

# Tolerance relative to the reference's RMS (absolute) and to each element (relative). A wrong
# kernel (mask, scale, normalisation) errs by O(1) of the RMS; fused kernels round P to the
# input dtype before P @ V, and the math backend of older torch rounds the scores as well, so
# bf16 needs a few percent. Gradients get twice as much: backward rounds P and dS before two more
# matmuls and sums with atomics in any order.
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}
CHECK_HEADS = 2  # heads are independent: checking a few of the first batch entry is enough


def _reference(torch: ModuleType, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """softmax(Q K^T / sqrt(d)) V written out, with the causal mask aligned top-left as sdpa's."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _check(ctx: Context, actual: Tensor, expected: Tensor, tol: float, what: str) -> None:
    rms = float(expected.detach().pow(2).mean().sqrt())
    ctx.check_close(actual, expected, rtol=tol, atol=tol * rms, what=what)


def _unavailable(
    ctx: Context, backend: str, caught: list[warnings.WarningMessage], exc: Exception
) -> str:
    """Why torch refused the backend: the reasons it warned under that backend's heading."""
    reasons, heading = [], ""
    for w in caught:
        text = str(w.message).split("(Triggered internally")[0].strip()
        if text.endswith("not used because:"):
            heading = text.lower()
        elif heading.startswith(WARNING_HEADS[backend]) and text:
            reasons.append(text)
    # Without per-backend warnings (CPU builds), torch's own first sentence says enough.
    detail = "; ".join(reasons) or str(exc).strip().split(". ")[0].rstrip(".")
    return f"no {backend} SDPA kernel for this case on {ctx.device.type}: {detail}"


def run(
    ctx: Context,
    backend: str,
    direction: str,
    causal: bool,
    dtype: str,
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
) -> list[Metric]:
    torch = ctx.torch
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        ctx.skip(f"torch.nn.attention.sdpa_kernel needs torch 2.2+; this is {torch.__version__}")
    if not hasattr(SDPBackend, BACKENDS[backend]):
        ctx.skip(f"torch {torch.__version__} has no {backend} SDPA backend")
    dt = ctx.dtype(dtype)
    bwd = direction == "fwd_bwd"
    q, k, v = (ctx.randn(batch, heads, seq, head_dim, dtype=dt, requires_grad=bwd) for _ in "qkv")
    grad_out = ctx.randn(batch, heads, seq, head_dim, dtype=dt)

    def forward() -> Tensor:
        return sdpa(q, k, v, is_causal=causal)

    def call() -> Any:  # the output, or its three input gradients
        out = forward()
        return torch.autograd.grad(out, (q, k, v), grad_out) if bwd else out

    # Two matmuls (Q K^T and P V) of 2*S*S*D FLOP each per head. Causal needs only the lower
    # triangle, counted as half (the diagonal's extra 1/(2S) is ignored, as flash-attention's
    # benchmarks count). Backward is 2.5x forward (five matmuls, Q K^T recomputed), so
    # forward+backward is 3.5x forward.
    flops = 4 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0)
    # The least memory traffic: Q, K and V read once and the output written once, four tensors
    # of batch x heads x seq x head_dim; forward+backward also reads the output's gradient and
    # writes dQ, dK and dV: eight. (A fused kernel also keeps one softmax statistic a row, a
    # small share, left out; the causal mask halves the FLOPs but not one tensor.)
    nbytes = (8 if bwd else 4) * batch * heads * seq * head_dim * q.element_size()
    # Restricting sdpa to one backend is the point of the case; the restriction covers timing.
    with sdpa_kernel([getattr(SDPBackend, BACKENDS[backend])]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = forward()
            except RuntimeError as exc:
                if not any(s in str(exc) for s in NO_KERNEL):
                    raise
                ctx.skip(_unavailable(ctx, backend, caught, exc))
        tol = TOLERANCE[dtype]
        sl = (slice(0, 1), slice(0, CHECK_HEADS))
        ref_in = [t.detach()[sl].double().requires_grad_(bwd) for t in (q, k, v)]
        ref = _reference(torch, ref_in[0], ref_in[1], ref_in[2], causal)
        _check(ctx, out[sl], ref, tol, "output")
        if bwd:
            grads = torch.autograd.grad(out, (q, k, v), grad_out)
            refs = torch.autograd.grad(ref, ref_in, grad_out[sl].double())
            for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
                _check(ctx, g[sl], r, 2 * tol, f"gradient {name}")
        del out
        return ctx.measure(call, flops=flops * (3.5 if bwd else 1.0), nbytes=nbytes, peak=dtype)
