"""Achievable ceilings: the best large GEMM per dtype and the best device copy, once a run.

Environment side: standard library and torch only. The worker measures them before its cases
(only the ones its kernel cases name, through their bench's CEILING) and runs each as a case of
the bench ``ceiling`` (``ceiling[what=matmul,dtype=bf16]``: ``tflops``; ``ceiling[what=copy]``:
``gbps``), so a ceiling that cannot run is a skipped or failed row like any other. Context then
states every kernel case's rate as ``pct_of_achievable`` of the ceiling of its peak's name.
"""

# A ceiling is the best sample, not the median: it is what the device was seen to reach, the
# "maximum achievable matmul FLOPS" of stas00's mamf-finder, and noise (a shared machine, a
# clock not yet up) only ever lowers a sample. It is a small sweep, kept short because every run
# with a kernel case pays for it (the test suite runs the worker hundreds of times):
# - matmul: square n x n x n products from random normal inputs, sizes growing until one call
#   takes LONG_CALL_S (bigger sizes only help while the smaller ones are too short to keep
#   every core or SM busy, and each costs 8x the last), the output checked against fp64 first.
# - copy: dst.copy_(src) of a buffer far larger than the last-level cache, counted as bytes read
#   plus written as the data sheets count memory bandwidth. On a CPU, whose timer flushes no
#   cache, a case whose data fits in the cache can run above it: it then measures the cache.
# A CPU run measures fp32 only: other dtypes there have no spec peak, and some (fp16) run on a
# slow fallback path that would cost seconds. On a GPU every dtype the kernel cases name that
# the GPU has hardware for is measured (a dtype it lacks is a skipped row, as for gemm).

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cudastack.contract.schema import CEILING_BENCH
from cudastack.environment import timing
from cudastack.environment.suite import Case

if TYPE_CHECKING:
    from cudastack.environment.context import Context, Metric

BENCH = CEILING_BENCH
# How a worker hands its ceilings to the child workers that run its process groups (ISOLATE),
# so that they are measured once a run, not once a group: JSON, peak name -> value.
ENV = "CUDASTACK_CEILINGS"

MATMUL_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8")
CPU_DTYPES = ("fp32",)
COPY_PEAK = "mem"  # the peak name the copy ceiling stands for: device memory bandwidth

# The sweep stops at the first size whose fastest call is a long one (LONG_CALL_S): up to the
# suite's largest gemm (n=8192 on a CPU, 16384 on a GPU) only where smaller ones are short.
CPU_SIZES = (256, 512, 1024, 2048, 4096, 8192)
GPU_SIZES = (4096, 8192, 16384)
LONG_CALL_S = {"cpu": 0.01, "cuda": 0.02}
# Per size: warm-up, then timed calls until the budget or the most reps (the first two warm-up
# calls are never timed). Many short samples rather than a few: on a shared CPU a call whose
# threads wait for a busy core takes 100x longer, and the best of many finds one that did not.
# A GPU's first ceiling warms up GPU_RAMP_S instead, so its clocks ramp (about a second; later
# sizes and dtypes keep the GPU busy from then on).
CPU_TIMER = timing.TimerSettings(0.0, 0.05, 3, 50, 0.0)
GPU_TIMER = timing.TimerSettings(0.1, 0.2, 5, 20, 0.0)
GPU_RAMP_S = 1.0
# The copy's buffer: twice the last-level cache, so a copy streams through it and finds none
# of its data there from the copy before, within these bounds; on a GPU 1 GiB (H200: ~0.5 ms a
# copy), less on a small GPU.
CPU_COPY_BYTES = (64 * 2**20, 1024 * 2**20)
GPU_COPY_BYTES = 1024 * 2**20
CHECK_ROWS = 16  # a slab of rows checked against fp64 catches a wrong kernel, cheaply
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 5e-2, "fp8": 5e-2}

_ramped: set[str] = set()  # devices whose clocks this process has ramped up already


def cases(names: Sequence[str], device_type: str) -> list[Case]:
    """The ceiling cases to measure for the peak ``names`` the planned kernel cases use: a
    matmul per dtype name this device type measures, then the copy for ``mem``. Other names
    (``h2d``, a precision with no matmul) have no ceiling."""
    dtypes = CPU_DTYPES if device_type == "cpu" else MATMUL_DTYPES
    out = [Case(BENCH, {"what": "matmul", "dtype": d}) for d in names if d in dtypes]
    if COPY_PEAK in names:
        out.append(Case(BENCH, {"what": "copy"}))
    return out


def peak_of(case: Case) -> str:
    """The peak name a ceiling case's value stands for: its dtype, or ``mem`` for the copy."""
    return str(case.params["dtype"]) if case.params["what"] == "matmul" else COPY_PEAK


def declared(case: Case) -> dict[str, str]:
    """What a ceiling case's rows carry as a bench file's declarations would be."""
    return {"kind": "kernel", "headline": "tflops" if case.params["what"] == "matmul" else "gbps"}


def encode(found: dict[str, float]) -> str:
    """Ceilings (peak name -> value) as the text of the ENV variable."""
    return json.dumps(found, sort_keys=True)


def decode(text: str) -> dict[str, float]:
    """The ENV variable's text as ceilings; {} for none or for text that is not what encode
    writes (then the cases state no % of achievable, which is true: none was measured)."""
    try:
        found = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in found.items()
        if isinstance(v, (int, float)) and math.isfinite(v) and v > 0
    }


def run(ctx: Context, what: str, dtype: str = "") -> list[Metric]:
    """Measure one ceiling, as a bench's ``run`` measures a case: ``tflops`` (one value, the
    best sample of the sweep) for ``what='matmul'``, ``gbps`` for ``what='copy'``."""
    from cudastack.environment.context import Metric

    if what == "matmul":
        return [Metric("tflops", "TFLOP/s", "higher", [_matmul(ctx, dtype)])]
    return [Metric("gbps", "GB/s", "higher", [_copy(ctx)])]


def _best_seconds(ctx: Context, fn: Callable[[], Any]) -> float:
    """The fastest call of ``fn`` (seconds), timed as the device's cases are, L2 not flushed:
    every operand is far larger than it."""
    if not ctx.is_cuda:
        return min(timing.time_cpu(fn, CPU_TIMER))
    settings = GPU_TIMER
    if str(ctx.device) not in _ramped:
        settings = dataclasses.replace(GPU_TIMER, warmup_s=GPU_RAMP_S)
        _ramped.add(str(ctx.device))
    return min(timing.time_cuda(ctx.torch, fn, settings, None))


def _matmul(ctx: Context, dtype: str) -> float:
    """The best TFLOP/s of square products in ``dtype`` over the sweep of sizes."""
    checked: list[int] = []

    def best_seconds(n: int) -> float:
        call, check = _product(ctx, dtype, n)
        if not checked:  # the first size's output: a wrong kernel is wrong at every size
            check()
            checked.append(n)
        return _best_seconds(ctx, call)

    sizes = GPU_SIZES if ctx.is_cuda else CPU_SIZES
    return sweep(sizes, best_seconds, LONG_CALL_S[ctx.device.type])


def sweep(sizes: Sequence[int], best_seconds: Callable[[int], float], long_call_s: float) -> float:
    """The best TFLOP/s of n x n x n products over ``sizes`` in order, ``best_seconds(n)`` being
    the fastest call at size n, in seconds; the sweep stops after the first size whose call
    takes ``long_call_s`` or longer."""
    best = 0.0
    for n in sizes:
        seconds = best_seconds(n)
        best = max(best, 2 * n**3 / seconds / 1e12)  # 2 FLOP per multiply-add, as gemm counts
        if seconds >= long_call_s:
            break
    return best


def copy_gbps(nbytes: int, seconds: float) -> float:
    """GB/s of copying ``nbytes`` in ``seconds``: each byte read once and written once."""
    return 2 * nbytes / seconds / 1e9


def _product(ctx: Context, dtype: str, n: int) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A call computing one n x n product in ``dtype`` as the gemm bench does, and a check of
    its output against fp64. Skips a dtype this device has no hardware for."""
    from cudastack.environment.precision import set_tf32

    torch = ctx.torch
    if dtype == "fp8":
        if ctx.capability() < (8, 9) or not hasattr(torch, "_scaled_mm"):
            ctx.skip("an fp8 matmul needs compute capability 8.9+ and torch._scaled_mm")
        a = ctx.randn(n, n, dtype=torch.float8_e4m3fn)
        b = ctx.randn(n, n, dtype=torch.float8_e4m3fn).t()  # _scaled_mm: b column-major
        one = torch.ones((), device=ctx.device)

        def call() -> Any:
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    else:
        dt = ctx.dtype(dtype)  # skips tf32 and bf16 where the GPU lacks them
        set_tf32(torch, dtype == "tf32")  # the worker restores the flags after the ceiling
        a, b = ctx.randn(n, n, dtype=dt), ctx.randn(n, n, dtype=dt)
        out = torch.empty(n, n, dtype=dt, device=ctx.device)

        def call() -> Any:
            return torch.mm(a, b, out=out)

    def check() -> None:
        rows = min(n, CHECK_ROWS)
        tol = TOLERANCE[dtype]
        ref = a[:rows].double() @ b.double()
        ctx.check_close(call()[:rows], ref, rtol=tol, atol=tol * math.sqrt(n))

    return call, check


def _copy(ctx: Context) -> float:
    """The best GB/s (bytes read + written) of copying a buffer much larger than the caches."""
    torch = ctx.torch
    if ctx.is_cuda:
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        nbytes = min(GPU_COPY_BYTES, total // 16)  # two buffers, a small part of the memory
    else:
        low, high = CPU_COPY_BYTES
        nbytes = min(max(2 * last_level_cache_bytes(), low), high)
    n = nbytes // 4
    # Any values: a copy's speed does not depend on them. fill_ touches every page before the
    # timing (random normal numbers would cost a CPU a second at this size).
    src = torch.empty(n, dtype=torch.float32, device=ctx.device).fill_(1.5)
    dst = torch.empty_like(src).fill_(0.0)

    def call() -> Any:
        return dst.copy_(src)

    call()
    step = max(1, n // 2**20)  # a strided sample: a copy that skipped a chunk is caught
    ctx.check_close(dst[::step], src[::step], rtol=0, atol=0, what="copy")
    return copy_gbps(nbytes, _best_seconds(ctx, call))


def last_level_cache_bytes(cpu: int = 0) -> int:
    """The largest cache of logical CPU ``cpu`` as sysfs lists it, in bytes; 0 when unknown."""
    sizes = []
    for index in Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KkMmGg")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)
