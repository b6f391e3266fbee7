"""All-reduce bus bandwidth between data-parallel processes (NCCL on GPUs, gloo on CPUs)."""

# nccl-tests: algbw = bytes / time; busbw = algbw x 2(n-1)/n, the traffic each link carries in a
# ring all-reduce, comparable across process counts and with the link's peak. Each sample is a
# window of calls timed by the slowest rank, since the collective ends when its last rank does.
# The count of calls is not time-budgeted per rank: every rank must make the same number of calls.
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cudastack.environment.context import Context, Metric

KIND = "kernel"
HEADLINE = "gbps"  # bus bandwidth
DATA_PARALLEL = True
PARAMS = {"size_mb": [1, 16, 256, 1024], "dtype": ["fp32", "bf16"]}
PROFILES = {
    "smoke": {"size_mb": [1], "dtype": ["fp32"]},
    "quick": {"size_mb": [1, 16], "dtype": ["fp32"]},
}
CALLS = {
    "smoke": (1, 3, 2),
    "quick": (3, 5, 4),
    "standard": (5, 10, 10),
    "full": (10, 20, 20),
}  # warm-up, windows, per window (at least: small sizes run more, see calls_per_window)
# A timed window lasts at least this long: a window's fixed costs (the synchronize that ends it,
# the first call's launch) and the per-call Python issue time of small sizes are then a small
# part of it. NCCL's 1 MB all-reduce takes tens of microseconds, so a few calls would mostly
# time the harness; nccl-tests also runs many calls per timed loop.
MIN_WINDOW_S = 0.01
MAX_CALLS_PER_WINDOW = 2000  # bounds a window when the first measurement is near zero


def calls_per_window(per_call_s: float, at_least: int) -> int:
    """Calls per timed window: enough for MIN_WINDOW_S at ``per_call_s`` (the slowest rank's
    seconds per call in the warm-up), never fewer than the profile's ``at_least``."""
    if per_call_s <= 0:
        return MAX_CALLS_PER_WINDOW
    return min(MAX_CALLS_PER_WINDOW, max(at_least, math.ceil(MIN_WINDOW_S / per_call_s)))


def _start_together(ctx: Context) -> None:
    # Leftover device work (the buffer's refill) ends first, then the barrier: every rank's
    # clock starts once the last rank arrives, so no rank's late start counts as transfer time.
    ctx.sync()
    ctx.torch.distributed.barrier()
    ctx.sync()  # a barrier may return before its own device work ends (NCCL)


def run(ctx: Context, size_mb: int, dtype: str) -> list[Metric]:
    from cudastack.environment import world
    from cudastack.environment.context import CheckFailed, Metric

    torch = ctx.torch
    w = ctx.world
    if not w.distributed:
        ctx.skip("all-reduce needs more than one process: run with --nproc N (N >= 2)")
    dist = torch.distributed
    dt = ctx.dtype(dtype)
    nbytes = size_mb * 2**20
    numel = nbytes // torch.tensor([], dtype=dt).element_size()
    buf = torch.full((numel,), float(w.rank + 1), dtype=dt, device=ctx.device)
    dist.all_reduce(buf)
    expected = w.size * (w.size + 1) / 2
    first, last = float(buf[0]), float(buf[-1])
    if first != expected or last != expected:
        raise CheckFailed(
            f"all-reduce gave {first} (first element) and {last} (last), expected {expected}"
        )
    warmup, windows, at_least = CALLS[ctx.profile.name]
    for _ in range(warmup):
        dist.all_reduce(buf)
    # A first measurement, after the warm-up (whose first calls set up connections and buffers).
    _start_together(ctx)
    start = time.perf_counter()
    for _ in range(at_least):
        dist.all_reduce(buf)
    ctx.sync()
    # Every rank must make the same number of calls: all derive it from the slowest one's time.
    (per_call,) = world.max_over_ranks(
        torch, w, ctx.device, [(time.perf_counter() - start) / at_least]
    )
    per_window = calls_per_window(per_call, at_least)
    seconds = []
    with ctx.sampler() as sampler:
        for _ in range(windows):
            # Repeated sums would overflow to inf over a long profile (within a long window they
            # may: inf adds as fast as any other value).
            buf.fill_(1.0)
            _start_together(ctx)
            start = time.perf_counter()
            for _ in range(per_window):
                dist.all_reduce(buf)
            ctx.sync()
            seconds.append((time.perf_counter() - start) / per_window)
    seconds = world.max_over_ranks(torch, w, ctx.device, seconds)
    if not w.is_main:
        return []
    algbw = [nbytes / s / 1e9 for s in seconds]
    factor = 2 * (w.size - 1) / w.size
    return [
        Metric("gbps", "GB/s", "higher", [a * factor for a in algbw]),  # bus bandwidth
        Metric("algbw_gbps", "GB/s", "higher", algbw),
        Metric("latency", "ms", "lower", [1e3 * s for s in seconds]),
        *ctx.telemetry(sampler),
    ]
