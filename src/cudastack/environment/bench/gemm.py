"""GEMM throughput: C = A @ B on square n x n matrices per dtype, in TFLOP/s (2 n^3 FLOP a call)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from cudastack.environment.context import Context, Metric

KIND = "kernel"
HEADLINE = "tflops"
CEILING = "{dtype}"  # % of achievable: of the best large GEMM in the case's dtype
PARAMS = {"dtype": ["fp32", "tf32", "fp16", "bf16", "fp8"], "n": [1024, 4096, 8192]}
PROFILES = {
    "smoke": {"n": [256]},
    "quick": {"dtype": ["fp32", "bf16"], "n": [512, 1024]},
    "full": {"n": [1024, 2048, 4096, 8192, 16384]},
}

# Relative tolerance per dtype against an fp64 reference; the absolute part scales with sqrt(n),
# the typical size of an entry of a product of two standard-normal matrices.
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 5e-2, "fp8": 5e-2}
CHECK_ROWS = 128  # checking a slab of rows is enough to catch a wrong kernel, and cheap


def _check(ctx: Context, out: Tensor, a: Tensor, b: Tensor, dtype: str, n: int) -> None:
    rows = min(n, CHECK_ROWS)
    ref = a[:rows].double() @ b.double()
    tol = TOLERANCE[dtype]
    ctx.check_close(out[:rows], ref, rtol=tol, atol=tol * math.sqrt(n))


def flops(n: int) -> int:
    # One multiply-add per (row, column, inner index) triple, 2 FLOPs each: shared by every dtype
    # so the fp8 path, which only a GPU reaches, reports the count the CPU-tested path does.
    return 2 * n**3


def nbytes(n: int, in_size: int, out_size: int) -> int:
    # The least memory traffic of a call: A and B (``in_size`` bytes an element) read once, C
    # (``out_size``) written once. ``gbps`` is this count over the time: the traffic no kernel
    # can avoid (one that reads its tiles from memory more than once moves more than it says).
    return n * n * (2 * in_size + out_size)


def _fp8(ctx: Context, n: int) -> list[Metric]:
    torch = ctx.torch
    ctx.require_cuda("fp8 GEMM")
    if ctx.capability() < (8, 9) or not hasattr(torch, "_scaled_mm"):
        ctx.skip(
            f"fp8 GEMM needs compute capability 8.9+ and torch._scaled_mm; "
            f"this GPU is {'.'.join(map(str, ctx.capability()))}"
        )
    a = ctx.randn(n, n, dtype=torch.float8_e4m3fn)
    # _scaled_mm wants its second operand column-major: the transpose of a row-major matrix is.
    b = ctx.randn(n, n, dtype=torch.float8_e4m3fn).t()
    one = torch.ones((), device=ctx.device)

    def call() -> Tensor:
        return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    _check(ctx, call(), a, b, "fp8", n)
    return ctx.measure(call, flops=flops(n), nbytes=nbytes(n, 1, 2), peak="fp8")  # bf16 out


def run(ctx: Context, dtype: str, n: int) -> list[Metric]:
    from cudastack.environment.precision import set_tf32

    torch = ctx.torch
    if dtype == "fp8":
        return _fp8(ctx, n)
    dt = ctx.dtype(dtype)
    # TF32 is a math mode of fp32 storage; the worker restores the flags after the case.
    set_tf32(torch, dtype == "tf32")
    a, b = ctx.randn(n, n, dtype=dt), ctx.randn(n, n, dtype=dt)
    out = torch.empty(n, n, dtype=dt, device=ctx.device)

    def call() -> Tensor:
        return torch.mm(a, b, out=out)

    _check(ctx, call(), a, b, dtype, n)
    size = a.element_size()
    return ctx.measure(call, flops=flops(n), nbytes=nbytes(n, size, size), peak=dtype)
