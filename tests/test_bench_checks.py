"""The benches' reference checks: a wrong kernel is refused, rounding-sized error is not."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from test_known_flops import PROFILE, bench

from cudastack.environment.context import CheckFailed, Context, Skip

pytestmark = pytest.mark.integration


def context(peaks: dict[str, float] | None = None) -> Context:
    return Context(torch, torch.device("cpu"), PROFILE, peaks)


def nudged(fn: Callable[..., Any], error: Callable[[Any], Any]) -> Callable[..., Any]:
    """A faulty kernel: ``fn``, plus ``error(result)`` on every result not in fp64.

    The benches compute their references in fp64, so only the kernel under test is faulty."""

    def faulty(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if result.dtype == torch.float64:
            return result
        wrong = result + error(result.detach())
        if "out" in kwargs and kwargs["out"] is not None:
            return kwargs["out"].copy_(wrong)
        return wrong

    return faulty


def off_by(ratio: float, rtol: float, atol: float) -> Callable[[Any], Any]:
    """An error of ``ratio`` times the documented tolerance ``atol + rtol * |value|``."""
    return lambda value: ratio * (atol + rtol * value.abs())


# Errors just beyond a tolerance, in one of its two parts: each is refused on its own, and a
# check whose tolerance were twice as wide in that part would accept it everywhere.
BEYOND = {"absolute": (1.5, 0.9), "relative": (0.9, 1.5)}


def beyond(part: str, rtol: float, atol: float) -> Callable[[Any], Any]:
    """An error past the tolerance in ``part``: 1.5x that part, 0.9x the other."""
    to_abs, to_rel = BEYOND[part]
    return lambda value: to_abs * atol + to_rel * rtol * value.abs()


def pct_of_peak(metrics: list[Any]) -> list[float]:
    return next(m.values for m in metrics if m.name == "pct_of_peak")


def rate(metrics: list[Any], name: str) -> list[float]:
    return next(m.values for m in metrics if m.name == name)


# --- gemm: fp32 tolerance 1e-4 relative, plus 1e-4 * sqrt(n) absolute (an entry's typical size).


GEMM_N = 64
GEMM_RTOL, GEMM_ATOL = 1e-4, 1e-4 * GEMM_N**0.5


def test_gemm_accepts_error_within_its_tolerance(monkeypatch):
    monkeypatch.setattr(torch, "mm", nudged(torch.mm, off_by(0.5, GEMM_RTOL, GEMM_ATOL)))
    assert rate(bench("gemm").run(context(), "fp32", GEMM_N), "tflops")


@pytest.mark.parametrize("part", list(BEYOND))
def test_gemm_refuses_error_beyond_its_tolerance(monkeypatch, part):
    monkeypatch.setattr(torch, "mm", nudged(torch.mm, beyond(part, GEMM_RTOL, GEMM_ATOL)))
    with pytest.raises(CheckFailed, match="output differs from reference"):
        bench("gemm").run(context(), "fp32", GEMM_N)


def test_gemm_checks_only_a_slab_of_rows(monkeypatch):
    # Checking every row of a 16384-square product in fp64 would cost more than timing it: the
    # check reads the first CHECK_ROWS rows, so a fault below them goes unseen by design.
    gemm = bench("gemm")
    n = gemm.CHECK_ROWS + 16

    def below_slab(value: Any) -> Any:
        error = torch.zeros_like(value)
        error[gemm.CHECK_ROWS :] = 1e3
        return error

    monkeypatch.setattr(torch, "mm", nudged(torch.mm, below_slab))
    assert rate(gemm.run(context(), "fp32", n), "tflops")


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_gemm_multiplies_matrices_of_its_dtype(monkeypatch, dtype):
    seen = []
    mm = torch.mm

    def recording(a: Any, b: Any, **kwargs: Any) -> Any:
        seen.append((a.dtype, b.dtype))
        return mm(a, b, **kwargs)

    monkeypatch.setattr(torch, "mm", recording)
    bench("gemm").run(context(), dtype, 16)
    want = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert seen and set(seen) == {(want, want)}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gemm_rates_against_the_peak_of_its_dtype(dtype):
    # Peaks of 1 and 1000 TFLOP/s: only the one named after the case's dtype gives its percent.
    peaks = {dtype: 1.0, "fp32" if dtype != "fp32" else "bf16": 1000.0}
    metrics = bench("gemm").run(context(peaks), dtype, 16)
    assert pct_of_peak(metrics) == pytest.approx([100 * v for v in rate(metrics, "tflops")])


def test_gemm_writes_every_call_into_one_output_buffer(monkeypatch):
    # A fresh n x n product each call would time the allocator too: past glibc's mmap threshold
    # (frozen at 128 KiB by the harness) every call maps and page-faults new memory, 11-35 %
    # of a 1-thread fp32 gemm at n = 256-1024 on a CPU. The bench allocates its output once.
    outs, n = [], 32
    mm = torch.mm

    def recording(a: Any, b: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        outs.append(None if out is None else (out.data_ptr(), tuple(out.shape)))
        return mm(a, b, **kwargs)

    monkeypatch.setattr(torch, "mm", recording)
    bench("gemm").run(context(), "fp32", n)
    assert len(outs) > 1 and outs[0] is not None and set(outs) == {outs[0]}
    assert outs[0][1] == (n, n)


def test_gemm_fp8_on_cpu_is_a_skip_naming_fp8():
    with pytest.raises(Skip, match="fp8 GEMM needs an NVIDIA GPU"):
        bench("gemm").run(context(), "fp8", 16)


# --- elementwise: fp32 tolerance 1e-4 relative, plus 1e-4 of an output's typical size absolute:
# 1 / cols for softmax's probabilities, 1 for layer norm's and GELU's outputs.

ROWS, COLS = 8, 50
KERNELS = {
    "softmax": (torch, "softmax"),
    "layer_norm": (torch.nn.functional, "layer_norm"),
    "gelu": (torch.nn.functional, "gelu"),
}
TYPICAL = {"softmax": 1 / COLS, "layer_norm": 1.0, "gelu": 1.0}


def fault(monkeypatch: pytest.MonkeyPatch, op: str, error: Callable[[Any], Any]) -> None:
    owner, name = KERNELS[op]
    monkeypatch.setattr(owner, name, nudged(getattr(owner, name), error))


@pytest.mark.parametrize("op", list(KERNELS))
def test_elementwise_accepts_error_within_its_tolerance(monkeypatch, op):
    fault(monkeypatch, op, off_by(0.5, 1e-4, 1e-4 * TYPICAL[op]))
    assert rate(bench("elementwise").run(context(), op, "fp32", ROWS, COLS), "gbps")


@pytest.mark.parametrize("part", list(BEYOND))
@pytest.mark.parametrize("op", list(KERNELS))
def test_elementwise_refuses_error_beyond_its_tolerance(monkeypatch, op, part):
    fault(monkeypatch, op, beyond(part, 1e-4, 1e-4 * TYPICAL[op]))
    with pytest.raises(CheckFailed, match="output differs from reference"):
        bench("elementwise").run(context(), op, "fp32", ROWS, COLS)


def test_elementwise_checks_only_a_slab_of_rows(monkeypatch):
    # As gemm: rows are independent, and an fp64 copy of every row would cost more than the op.
    elementwise = bench("elementwise")

    def below_slab(value: Any) -> Any:
        error = torch.zeros_like(value)
        error[elementwise.CHECK_ROWS :] = 1e3
        return error

    fault(monkeypatch, "gelu", below_slab)
    metrics = elementwise.run(context(), "gelu", "fp32", elementwise.CHECK_ROWS + 4, 8)
    assert rate(metrics, "gbps")


def test_elementwise_ops_compute_their_textbook_formulas():
    apply = bench("elementwise")._apply
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    weight, bias = (torch.randn(10, generator=gen, dtype=torch.float64) for _ in "wb")
    # Softmax along a row: exponentials over their row's sum.
    softmax = x.exp() / x.exp().sum(dim=1, keepdim=True)
    assert torch.allclose(apply(torch, "softmax", x, weight, bias), softmax)
    # Layer norm of a row: mean 0 and (biased) variance 1 with eps 1e-5 added, then scaled by the
    # weight and shifted by the bias, entry by entry.
    mean, var = x.mean(dim=1, keepdim=True), x.var(dim=1, unbiased=False, keepdim=True)
    layer_norm = (x - mean) / (var + 1e-5).sqrt() * weight + bias
    assert torch.allclose(apply(torch, "layer_norm", x, weight, bias), layer_norm)
    # GELU, the exact form: x times the standard normal CDF of x.
    gelu = x * 0.5 * (1 + torch.erf(x / 2**0.5))
    assert torch.allclose(apply(torch, "gelu", x, weight, bias), gelu)


@pytest.mark.parametrize("op", list(KERNELS))
def test_elementwise_rates_against_the_memory_peak(op):
    # A memory-bound op is rated against the bandwidth peak, not a dtype's compute peak.
    metrics = bench("elementwise").run(context({"mem": 1.0, "fp32": 1000.0}), op, "fp32", 4, 8)
    # gbps against a peak of 1 GB/s: the percent is 100x the rate.
    assert pct_of_peak(metrics) == pytest.approx([100 * v for v in rate(metrics, "gbps")])


# --- conv: fp32 tolerance 1e-4 relative, plus 1e-4 * sqrt(products summed) absolute: c_in k^2
# for the output, c_out k^2 for the input gradient; the weight gradient sums batch * side^2
# products and gets 1e-3 (both parts).

LAYER = (3, 5, 3, 1, 9)  # in channels, out channels, kernel, stride, input side: output side 9
BATCH = 2
C_IN, C_OUT, K, SIDE = 3, 5, 3, 9
TOLERANCE = {
    "output": (1e-4, 1e-4 * (C_IN * K * K) ** 0.5),
    "input gradient": (1e-4, 1e-4 * (C_OUT * K * K) ** 0.5),
    "weight gradient": (1e-3, 1e-3 * (BATCH * SIDE * SIDE) ** 0.5),
}


def run_conv(
    peaks: dict[str, float] | None = None,
    direction: str = "fwd_bwd",
    layout: str = "nchw",
    benchmark: bool = False,
    dtype: str = "fp32",
) -> list[Any]:
    conv = bench("conv")
    conv.LAYERS["tiny"] = LAYER  # this module object is this call's own
    return conv.run(context(peaks), "tiny", direction, layout, benchmark, dtype, BATCH)


class GradientError(torch.autograd.Function):
    """The identity forward; backward adds ``error(gradient)`` to the gradient passing through."""

    @staticmethod
    def forward(ctx: Any, x: Any, error: Callable[[Any], Any]) -> Any:
        ctx.error = error
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        return grad + ctx.error(grad), None


def conv_fault(monkeypatch: pytest.MonkeyPatch, what: str, error: Callable[[Any], Any]) -> None:
    """A conv2d whose ``what`` (output, input or weight gradient) is off by ``error``."""
    conv2d = torch.nn.functional.conv2d

    def faulty(x: Any, w: Any, *args: Any) -> Any:
        if x.dtype == torch.float64:
            return conv2d(x, w, *args)
        if what == "output":
            return nudged(conv2d, error)(x, w, *args)
        if what == "input gradient":
            x = GradientError.apply(x, error)
        else:
            w = GradientError.apply(w, error)
        return conv2d(x, w, *args)

    monkeypatch.setattr(torch.nn.functional, "conv2d", faulty)


@pytest.mark.parametrize("what", list(TOLERANCE))
def test_conv_accepts_error_within_its_tolerance(monkeypatch, what):
    conv_fault(monkeypatch, what, off_by(0.5, *TOLERANCE[what]))
    assert rate(run_conv(), "tflops")


@pytest.mark.parametrize("part", list(BEYOND))
@pytest.mark.parametrize("what", list(TOLERANCE))
def test_conv_refuses_error_beyond_its_tolerance_naming_the_tensor(monkeypatch, what, part):
    conv_fault(monkeypatch, what, beyond(part, *TOLERANCE[what]))
    with pytest.raises(CheckFailed, match=rf"^{what} differs from reference"):
        run_conv()


def test_conv_forward_accepts_error_within_the_output_tolerance(monkeypatch):
    conv_fault(monkeypatch, "output", off_by(0.5, *TOLERANCE["output"]))
    assert rate(run_conv(direction="fwd"), "tflops")


@pytest.mark.parametrize("part", list(BEYOND))
def test_conv_forward_refuses_error_beyond_the_output_tolerance(monkeypatch, part):
    conv_fault(monkeypatch, "output", beyond(part, *TOLERANCE["output"]))
    with pytest.raises(CheckFailed, match=r"^output differs from reference"):
        run_conv(direction="fwd")


@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_conv_rates_against_the_peak_of_its_dtype(direction):
    metrics = run_conv({"fp32": 1.0, "bf16": 1000.0}, direction)
    assert pct_of_peak(metrics) == pytest.approx([100 * v for v in rate(metrics, "tflops")])


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_conv_runs_on_tensors_of_its_dtype_and_layout(monkeypatch, direction, layout):
    conv2d, grad = torch.nn.functional.conv2d, torch.autograd.grad
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    seen = []

    def conv_recording(x: Any, w: Any, *args: Any) -> Any:
        if x.dtype != torch.float64:  # not the fp64 reference
            seen.append((x.dtype, w.dtype, x.is_contiguous(memory_format=fmt)))
            seen.append(w.is_contiguous(memory_format=fmt))
        return conv2d(x, w, *args)

    def grad_recording(outputs: Any, inputs: Any, grad_outputs: Any) -> Any:
        if grad_outputs.dtype != torch.float64:
            seen.append(("grad", grad_outputs.dtype, grad_outputs.is_contiguous(memory_format=fmt)))
        return grad(outputs, inputs, grad_outputs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", conv_recording)
    monkeypatch.setattr(torch.autograd, "grad", grad_recording)
    run_conv(direction=direction, layout=layout, dtype="bf16")
    # A 3x3 filter of 3 channels is contiguous in channels_last too only if the layout was
    # asked for: (out, in, k, k) strides differ between the formats for in > 1 and k > 1.
    want = {(torch.bfloat16, torch.bfloat16, True), True}
    if direction == "fwd_bwd":
        want.add(("grad", torch.bfloat16, True))
    assert set(seen) == want


def test_conv_benchmark_flag_on_cpu_is_a_skip_naming_cudnn():
    with pytest.raises(Skip, match=r"^cudnn\.benchmark only changes cuDNN's algorithm choice"):
        run_conv(benchmark=True)


def test_conv_fp16_backward_on_cpu_is_a_skip_naming_the_slow_kernel():
    with pytest.raises(Skip, match=r"^fp16 conv backward on cpu is a slow fallback kernel"):
        run_conv(dtype="fp16")
