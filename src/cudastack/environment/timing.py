"""The timers: CUDA events per call on a GPU, perf_counter_ns on the CPU, stopped by time and noise.

Environment side: standard library and torch only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from cudastack.contract.stats import summarize

# 256 MB is more than the L2 of any current GPU (H100/H200: 50 MB, B200: 126 MB), so zeroing it
# evicts every input of the previous call; triton's do_bench uses the same size.
L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TimerSettings:
    """Budgets and stop rules for one measurement."""

    warmup_s: float
    budget_s: float
    min_reps: int
    max_reps: int
    noise_target: float


class L2Flusher:
    """A buffer allocated once and zeroed before each timed GPU call."""

    def __init__(self, torch: Any, device: Any) -> None:
        self._buf = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self._buf.zero_()


def _should_stop(samples: list[float], elapsed: float, s: TimerSettings) -> bool:
    n = len(samples)
    if n >= s.max_reps or (elapsed >= s.budget_s and n >= min(s.min_reps, 3)):
        return True
    return n >= s.min_reps and summarize(samples).rel_iqr <= s.noise_target


def _next_checkpoint(n: int, s: TimerSettings) -> int:
    # The noise rule sorts every sample, so it is checked at geometric steps (every 25 % more
    # samples), keeping the timer's own cost per sample constant instead of growing with n.
    return min(max(n + 1, int(n * 1.25)), s.max_reps)


def _warm_up(fn: Callable[[], Any], seconds: float, sync: Callable[[], None]) -> None:
    # Warm-up is by time, not count: a GPU's clocks need about a second to ramp, and a CPU's
    # allocator and thread pool a few calls. At least two calls so lazy init is never timed.
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < seconds:
        fn()
        sync()
        calls += 1


def time_cpu(fn: Callable[[], Any], s: TimerSettings) -> list[float]:
    """Seconds per call, each call timed on its own with perf_counter_ns."""
    _warm_up(fn, s.warmup_s, lambda: None)
    samples: list[float] = []
    checkpoint = s.min_reps
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) * 1e-9)
        elapsed = time.perf_counter() - start
        if len(samples) >= checkpoint or elapsed >= s.budget_s:
            if _should_stop(samples, elapsed, s):
                return samples
            checkpoint = _next_checkpoint(len(samples), s)


def time_cuda(
    torch: Any, fn: Callable[[], Any], s: TimerSettings, flush: Optional[Callable[[], None]]
) -> list[float]:
    """Seconds per call from a CUDA event pair around each call, L2 flushed outside the pair.

    Events are read in batches (one synchronize per checkpoint), so the GPU never idles waiting
    for the host between calls.
    """
    sync = torch.cuda.synchronize
    _warm_up(fn, s.warmup_s, sync)
    samples: list[float] = []
    pending: list[Any] = []
    checkpoint = s.min_reps
    start = time.perf_counter()
    while True:
        if flush is not None:
            flush()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        pending.append((begin, end))
        if len(samples) + len(pending) >= checkpoint or time.perf_counter() - start > s.budget_s:
            end.synchronize()
            samples.extend(b.elapsed_time(e) * 1e-3 for b, e in pending)
            pending.clear()
            if _should_stop(samples, time.perf_counter() - start, s):
                return samples
            checkpoint = _next_checkpoint(len(samples), s)


def synced(fn: Callable[[], Any], sync: Callable[[], None]) -> Callable[[], None]:
    """``fn`` followed by a device synchronize: a call as the host pays for it (launch
    overhead, pageable copies), timed on the host clock."""

    def call() -> None:
        fn()
        sync()

    return call


def with_extra_work(fn: Callable[..., Any], fraction: float) -> Callable[..., Any]:
    """``fn`` followed by host busy-work lasting ``fraction`` of its own time: every call
    becomes exactly (1 + fraction) times slower on a host clock. A test aid for the power of
    comparisons; device (CUDA event) timings need ``with_device_extra_work``."""

    def call(*args: Any) -> Any:
        start = time.perf_counter_ns()
        out = fn(*args)
        end = time.perf_counter_ns() + int((time.perf_counter_ns() - start) * fraction)
        while time.perf_counter_ns() < end:
            pass
        return out

    return call


# The calibration of ``with_device_extra_work``: warm-up by time first (clocks ramp, lazy
# initialisation and autotuning happen), then back-to-back calls timed together, and the spin
# kernel timed at two lengths, for its cost per cycle and its fixed launch-and-run cost.
CALIBRATION_WARMUP_S = 1.0
CALIBRATION_CALLS = 3
SPIN_CALIBRATION_CYCLES = 10_000_000  # ~5 ms at 2 GHz: long enough for event resolution


def with_device_extra_work(
    torch: Any, fn: Callable[..., Any], fraction: float
) -> Callable[..., Any]:
    """``fn`` followed by a GPU spin lasting ``fraction`` of its device time, enqueued on the
    same stream: every call becomes (1 + fraction) times slower as CUDA events (and a
    synchronized wall clock) see it, which host busy-work cannot do while the GPU runs ahead.

    The first call calibrates: ``fn`` runs for ``CALIBRATION_WARMUP_S``, then an event pair
    times ``CALIBRATION_CALLS`` back-to-back calls (device seconds per call), and
    ``torch.cuda._sleep`` (a private spin kernel torch's own tests use, counted in SM cycles)
    is timed at two lengths, so the spin's fixed cost is subtracted from the time it must add.
    Approximate where a call is as short as that fixed cost (a few microseconds: the slowdown
    is then larger than asked) or where the timer flushes L2 between calls (the calibration
    does not, so memory-bound calls get a slightly short spin).
    """
    cycles = 0

    def elapsed_s(work: Callable[[], Any]) -> float:
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        work()
        end.record()
        end.synchronize()
        return float(begin.elapsed_time(end)) * 1e-3

    def spin(n: int) -> Callable[[], Any]:
        return lambda: torch.cuda._sleep(n)

    def calibrate(*args: Any) -> int:
        _warm_up(lambda: fn(*args), CALIBRATION_WARMUP_S, torch.cuda.synchronize)

        def calls() -> None:
            for _ in range(CALIBRATION_CALLS):
                fn(*args)

        per_call_s = elapsed_s(calls) / CALIBRATION_CALLS
        short = elapsed_s(spin(SPIN_CALIBRATION_CYCLES))
        per_cycle_s = (
            elapsed_s(spin(2 * SPIN_CALIBRATION_CYCLES)) - short
        ) / SPIN_CALIBRATION_CYCLES
        fixed_s = short - SPIN_CALIBRATION_CYCLES * per_cycle_s
        return max(1, round((fraction * per_call_s - fixed_s) / per_cycle_s))

    def call(*args: Any) -> Any:
        nonlocal cycles
        if not cycles:
            cycles = calibrate(*args)
        out = fn(*args)
        torch.cuda._sleep(cycles)
        return out

    return call
