"""Memory-bound ops: softmax, layer norm, GELU on large tensors, in GB/s (bytes read + written)."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from cudastack.environment.context import Context, Metric

KIND = "kernel"
HEADLINE = "gbps"
CEILING = "mem"  # % of achievable: of the best device copy
PARAMS = {
    "op": ["softmax", "layer_norm", "gelu"],
    "dtype": ["fp32", "bf16", "fp16"],
    "rows": [32768],
    "cols": [4096],
}
PROFILES = {
    "smoke": {"dtype": ["fp32", "bf16"], "rows": [64], "cols": [1024]},
    "quick": {"dtype": ["fp32", "bf16"], "rows": [1024]},
    "full": {"cols": [1024, 4096, 16384]},
}

EPS = 1e-5  # layer norm's default
# Relative tolerance per dtype against fp64, plus the same fraction of the output's typical size
# as absolute part (1/cols for softmax's probabilities, 1 for the others). The kernels compute in
# fp32 and round once on output: half an ulp is 3.9e-3 in bf16 and 4.9e-4 in fp16.
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 2e-3}
CHECK_ROWS = 256  # rows are independent: a slab of them is enough to catch a wrong kernel
# FLOPs per element of the input, each operation of the formula counted once (a transcendental,
# exp or erf, as one; per-row work, a handful of operations a row, left out): softmax's max,
# subtract, exp, sum and divide; layer norm's mean (add), variance (subtract, square, add),
# normalisation (subtract, multiply) and affine (multiply, add); GELU's x / sqrt(2), erf, + 1,
# x times and halving. A convention for the roofline (these ops are bound by memory, never by
# FLOPs), not a count any profiler makes: torch's FlopCounterMode counts none of them.
FLOPS_PER_ELEMENT = {"softmax": 5, "layer_norm": 8, "gelu": 5}


def _apply(torch: ModuleType, op: str, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    if op == "softmax":
        return torch.softmax(x, dim=-1)
    if op == "layer_norm":
        return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, EPS)
    return torch.nn.functional.gelu(x)  # the exact (erf) form, torch's default


def run(ctx: Context, op: str, dtype: str, rows: int, cols: int) -> list[Metric]:
    torch = ctx.torch
    dt = ctx.dtype(dtype)
    x = ctx.randn(rows, cols, dtype=dt)
    weight, bias = ctx.randn(cols, dtype=dt), ctx.randn(cols, dtype=dt)

    def call() -> Tensor:
        return _apply(torch, op, x, weight, bias)

    out = call()
    r = min(rows, CHECK_ROWS)
    ref = _apply(torch, op, x[:r].double(), weight.double(), bias.double())
    tol = TOLERANCE[dtype]
    scale = 1 / cols if op == "softmax" else 1.0
    ctx.check_close(out[:r], ref, rtol=tol, atol=tol * scale)
    del out
    # The least traffic the op needs: the input read once and the output written once (layer
    # norm also reads its weight and bias, one row each). A kernel that reads a row twice (a
    # softmax whose row does not fit on chip) shows as a lower rate, which is the point.
    # The L2 flush keeps sizes that fit in L2 honest; it runs outside the timed region.
    itemsize = x.element_size()
    nbytes = 2 * rows * cols * itemsize + (2 * cols * itemsize if op == "layer_norm" else 0)
    flops = FLOPS_PER_ELEMENT[op] * rows * cols
    return ctx.measure(call, flops=flops, nbytes=nbytes, peak="mem")
