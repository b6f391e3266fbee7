"""Convolution throughput: conv2d forward and forward+backward on ResNet-50 layers, in TFLOP/s."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from cudastack.environment.context import Context, Metric

KIND = "kernel"
HEADLINE = "tflops"
CEILING = "{dtype}"  # % of achievable: of the best large GEMM in the case's dtype
PARAMS = {
    "layer": ["c2_3x3", "c3_down_1x1_s2", "c4_3x3"],
    "direction": ["fwd", "fwd_bwd"],
    "layout": ["nchw", "channels_last"],
    "benchmark": [False, True],
    "dtype": ["fp32", "tf32", "bf16", "fp16"],
    "batch": [64],
}
# ATen's per-process cuDNN plan cache is keyed without cudnn.benchmark (Conv_v8.cpp,
# run_single_conv): a benchmark=true case after the same shape with false would reuse the
# heuristic plan. Each value of benchmark runs in a worker process of its own.
ISOLATE = ["benchmark"]
PROFILES = {
    "smoke": {"layer": ["c2_3x3"], "dtype": ["bf16"], "batch": [1]},
    "quick": {
        "layer": ["c2_3x3", "c4_3x3"],
        "benchmark": [False],
        "dtype": ["fp32"],
        "batch": [8],
    },
    "full": {
        "layer": [
            "stem_7x7_s2",
            "c2_3x3",
            "c3_3x3_s2",
            "c3_down_1x1_s2",
            "c4_1x1",
            "c4_3x3",
            "c5_3x3",
        ]
    },
}

# ResNet-50 v1.5 layers (stride in the 3x3, as torchvision): in channels, out channels, kernel,
# stride, input height = width. Padding is kernel // 2 and there is no bias (batch norm follows).
LAYERS = {
    "stem_7x7_s2": (3, 64, 7, 2, 224),
    "c2_3x3": (64, 64, 3, 1, 56),
    "c3_3x3_s2": (128, 128, 3, 2, 56),
    "c3_down_1x1_s2": (256, 512, 1, 2, 56),  # the projection shortcut into stage 3
    "c4_1x1": (1024, 256, 1, 1, 14),
    "c4_3x3": (256, 256, 3, 1, 14),
    "c5_3x3": (512, 512, 3, 1, 7),
}

# Relative tolerance per dtype against an fp64 reference, as in gemm; the absolute part scales
# with sqrt(terms summed), the typical size of a sum of that many products of standard normals.
# fp32 leaves room for FFT and Winograd algorithms, which cuDNN may pick and which round more.
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 5e-2}


def _check(
    ctx: Context, actual: Tensor, expected: Tensor, tol: float, terms: int, what: str
) -> None:
    ctx.check_close(actual, expected, rtol=tol, atol=tol * math.sqrt(terms), what=what)


def run(
    ctx: Context,
    layer: str,
    direction: str,
    layout: str,
    benchmark: bool,
    dtype: str,
    batch: int,
) -> list[Metric]:
    from cudastack.environment.precision import set_tf32

    torch = ctx.torch
    conv2d = torch.nn.functional.conv2d
    if benchmark and not ctx.is_cuda:
        ctx.skip("cudnn.benchmark only changes cuDNN's algorithm choice; this run is on cpu")
    bwd = direction == "fwd_bwd"
    if dtype == "fp16" and bwd and not ctx.is_cuda:
        # Its weight gradient takes a fallback path 30-100x slower than bf16's: minutes a case.
        ctx.skip("fp16 conv backward on cpu is a slow fallback kernel, not a rate worth timing")
    dt = ctx.dtype(dtype)
    # TF32 is a math mode of fp32 storage, on by default for cuDNN: fp32 turns it off so fp32
    # means IEEE fp32 as in gemm. The worker restores both flags after the case.
    set_tf32(torch, dtype == "tf32")
    torch.backends.cudnn.benchmark = benchmark
    c_in, c_out, k, stride, size = LAYERS[layer]
    pad = k // 2
    side = (size + 2 * pad - k) // stride + 1
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = ctx.randn(batch, c_in, size, size, dtype=dt).to(memory_format=fmt).requires_grad_(bwd)
    w = ctx.randn(c_out, c_in, k, k, dtype=dt).to(memory_format=fmt).requires_grad_(bwd)

    def forward() -> Tensor:
        return conv2d(x, w, None, stride, pad)

    # 2 FLOP per multiply-add, one per output element and filter tap (groups = 1).
    flops = 2 * batch * c_out * side * side * c_in * k * k
    # The least memory traffic: each input read once, each output written once. Forward reads
    # the input and the filter and writes the output; backward also reads the output's gradient
    # (the output's size) and writes the input's and the filter's (their sizes), so
    # forward+backward moves each of the three sizes twice.
    item = x.element_size()
    once = (batch * c_in * size * size + c_out * c_in * k * k + batch * c_out * side * side) * item
    if not bwd:
        # With benchmark on, this first call is also where cuDNN tries its algorithms.
        out = forward()
        # One image's output depends only on that image: checking the first is enough and cheap.
        ref = conv2d(x[:1].double(), w.double(), None, stride, pad)
        _check(ctx, out[:1], ref, TOLERANCE[dtype], c_in * k * k, "output")
        return ctx.measure(forward, flops=flops, nbytes=once, peak=dtype)

    # The gradient arrives in the layout the forward produced, as it would inside a network.
    grad_out = ctx.randn(batch, c_out, side, side, dtype=dt).to(memory_format=fmt)

    def call() -> tuple[Tensor, ...]:
        # Input gradient (dgrad) and weight gradient (wgrad) are each one convolution of the
        # forward's size, so forward+backward is 3x the forward's FLOPs. The stem's input
        # gradient is not needed in training but is computed here so the rule holds everywhere.
        out = forward()
        return (out, *torch.autograd.grad(out, (x, w), grad_out))

    out, dx, dw = call()
    # wgrad sums over the whole batch, so the reference is the full batch in fp64.
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = conv2d(x64, w64, None, stride, pad)
    dx64, dw64 = torch.autograd.grad(ref, (x64, w64), grad_out.double())
    tol = TOLERANCE[dtype]
    _check(ctx, out, ref, tol, c_in * k * k, "output")
    _check(ctx, dx, dx64, tol, c_out * k * k, "input gradient")
    # wgrad sums N*H*W products (800K for the stem at batch 64): fp32 rounding grows with the
    # count, so fp32 gets 1e-3 there, still far below the O(1) error of a wrong kernel.
    _check(ctx, dw, dw64, max(tol, 1e-3), batch * side * side, "weight gradient")
    del out, dx, dw, x64, w64, ref, dx64, dw64  # the fp64 copies need not stay on the device
    return ctx.measure(call, flops=3 * flops, nbytes=2 * once, peak=dtype)
