"""The timers' stop rules and what they measure, with real calls on the CPU."""

import itertools
import statistics
import time
from typing import Any

import pytest

from cudastack.environment import timing
from cudastack.environment.context import rate_metrics
from cudastack.environment.timing import TimerSettings


def settings(**kw):
    base = {"warmup_s": 0.0, "budget_s": 10.0, "min_reps": 5, "max_reps": 50, "noise_target": 0.0}
    return TimerSettings(**{**base, **kw})


def test_stop_rules():
    s = settings(min_reps=5, max_reps=8, noise_target=0.02, budget_s=1.0)
    assert not timing._should_stop([1.0] * 4, 0.1, s)  # below min_reps
    assert timing._should_stop([1.0] * 5, 0.1, s)  # quiet enough at min_reps
    assert not timing._should_stop([1.0, 2.0, 1.0, 2.0, 1.5], 0.1, s)  # noisy, time left
    assert timing._should_stop([1.0, 2.0, 1.0, 2.0, 1.5], 1.1, s)  # noisy, budget spent
    assert timing._should_stop([1.0, 2.0] * 4, 0.1, s)  # max_reps
    assert not timing._should_stop([5.0, 5.0], 2.0, s)  # budget spent but fewer than 3 samples
    assert timing._should_stop([5.0, 9.0, 7.0], 2.0, s)  # budget spent: 3 suffice (< min_reps)


def test_cpu_timer_measures_each_call():
    # A sleep never returns early, so every sample is at least its length.
    samples = timing.time_cpu(lambda: time.sleep(0.002), settings(max_reps=7))
    assert len(samples) == 7
    assert all(s >= 0.002 for s in samples)
    assert min(samples) < 0.05


def test_warmup_runs_before_timing_and_is_not_counted():
    calls = []
    samples = timing.time_cpu(lambda: calls.append(1), settings(warmup_s=0.01, max_reps=5))
    assert len(samples) == 5
    assert len(calls) > 5  # at least two warm-up calls happened too


class Clock:
    """The ``time`` module as ``timing`` sees it: it moves only when a timed call says so."""

    def __init__(self) -> None:
        self.ns = 0

    def perf_counter(self) -> float:
        return self.ns / 1e9

    def perf_counter_ns(self) -> int:
        return self.ns


def time_on_clock(monkeypatch, durations_ms, **kw):
    """``time_cpu`` of calls lasting ``durations_ms`` in turn on a controlled clock, in ms.

    With warmup_s=0 the warm-up is exactly two calls, so the first timed call takes
    ``durations_ms[0]``."""
    clock = Clock()
    monkeypatch.setattr(timing, "time", clock)
    calls = iter([1, 1, *durations_ms])  # the two warm-up calls, then the timed ones

    def call():
        clock.ns += next(calls) * 1_000_000

    return [round(s * 1e3, 6) for s in timing.time_cpu(call, settings(**kw))]


def test_a_spent_budget_stops_at_three_samples_even_below_min_reps(monkeypatch):
    # 600 ms calls against a 1 s budget: spent after the 2nd call, but 2 samples say nothing
    # about spread, so the timer takes a 3rd and stops there, not at min_reps=10.
    got = time_on_clock(monkeypatch, [600, 700, 800, 900] * 5, budget_s=1.0, min_reps=10)
    assert got == [600, 700, 800]


def test_max_reps_caps_a_case_that_stays_noisy(monkeypatch):
    # Alternating 1 and 3 ms never gets quiet; max_reps=13 falls between the noise checkpoints
    # (5, 6, 7, 8, 10, 12, 15), and the timer still stops at exactly 13.
    got = time_on_clock(monkeypatch, [1, 3] * 20, min_reps=5, max_reps=13, noise_target=0.01)
    assert got == [1, 3] * 6 + [1]


@pytest.mark.parametrize(("target", "n"), [(0.11, 5), (0.09, 6)])
def test_the_noise_target_decides_when_quiet_is_quiet_enough(monkeypatch, target, n):
    # The first 5 calls have q1=95, median=100, q3=105 ms: a relative IQR of 0.10. With a
    # 6th call of 100 ms, q1 = 95 + 0.25 * 5 = 96.25 and q3 = 100 + 0.75 * 5 = 103.75 (linear
    # interpolation): 0.075. A target of 0.11 stops at 5, one of 0.09 only at 6.
    durations = [90, 95, 100, 105, 110] + [100] * 50
    got = time_on_clock(monkeypatch, durations, min_reps=5, noise_target=target)
    assert got == durations[:n]


@pytest.mark.parametrize(("min_reps", "n"), [(4, 22), (20, 25)])
def test_noise_is_checked_at_geometric_checkpoints(monkeypatch, min_reps, n):
    # Ten calls alternating 1 and 3 ms, then 2 ms calls. With q = 0.25 (n - 1) the position
    # of q1, the relative IQR first reaches 0 at n = 21 (q1 = q3 = 2 ms; at n = 20 it is
    # 0.25). The checkpoints start at min_reps and grow by max(n + 1, int(1.25 n)): from 4,
    # 4, 5, 6, 7, 8, 10, 12, 15, 18, 22; from 20, 20, 25. The timer stops at the first
    # checkpoint from 21 on, never at 21 itself.
    durations = [1, 3] * 5 + [2] * 40
    got = time_on_clock(monkeypatch, durations, min_reps=min_reps, max_reps=100, noise_target=0.01)
    assert got == durations[:n]


def test_rates_derive_from_each_sample():
    metrics = {m.name: m for m in rate_metrics([0.5, 0.25], flops=1e12, peak=8.0)}
    assert metrics["latency"].values == [500.0, 250.0]
    assert metrics["latency"].unit == "ms"
    assert metrics["tflops"].values == [2.0, 4.0]
    assert metrics["pct_of_peak"].values == pytest.approx([25.0, 50.0])  # of the compute peak
    assert {m.better for m in metrics.values()} == {"lower", "higher"}
    memory = {m.name: m for m in rate_metrics([0.5, 0.25], nbytes=2e9, peak=16.0)}
    assert memory["gbps"].values == [4.0, 8.0]
    assert memory["pct_of_peak"].values == pytest.approx([25.0, 50.0])  # of the memory peak
    assert "pct_of_peak" not in {m.name for m in rate_metrics([1.0], flops=1.0)}


def test_every_rate_metric_says_its_unit_and_that_higher_is_better():
    metrics = rate_metrics([0.5], flops=4e12, nbytes=2e9, peak=16.0, achievable=8.0, rate="gbps")
    assert {m.name: (m.unit, m.better) for m in metrics} == {
        "latency": ("ms", "lower"),
        "tflops": ("TFLOP/s", "higher"),
        "gbps": ("GB/s", "higher"),
        "flop_per_byte": ("FLOP/B", "higher"),
        "pct_of_peak": ("%", "higher"),
        "pct_of_achievable": ("%", "higher"),
    }


def test_both_rates_give_their_intensity_and_each_share_is_of_the_named_rate():
    both = {"flops": 4e12, "nbytes": 2e9}  # 2 FLOP per byte; at 0.5 s: 8 TFLOP/s and 4 GB/s
    compute = {m.name: m.values for m in rate_metrics([0.5], **both, peak=16.0, rate="tflops")}
    assert compute["flop_per_byte"] == [2000.0] and compute["pct_of_peak"] == [50.0]
    memory = {
        m.name: m.values
        for m in rate_metrics([0.5], **both, peak=16.0, achievable=8.0, rate="gbps")
    }
    assert memory["pct_of_peak"] == [25.0] and memory["pct_of_achievable"] == [50.0]
    with pytest.raises(
        ValueError, match=r"^given flops= and nbytes=, say which rate= the peak is in$"
    ):
        rate_metrics([0.5], **both, peak=16.0)
    with pytest.raises(ValueError, match="rate='gbps' is in GB/s: give nbytes= too"):
        rate_metrics([0.5], flops=1e12, peak=16.0, rate="gbps")


def test_extra_work_makes_each_call_that_fraction_slower():
    plain = timing.time_cpu(lambda: time.sleep(0.004), settings(max_reps=5))
    slower = timing.time_cpu(
        timing.with_extra_work(lambda: time.sleep(0.004), 0.5), settings(max_reps=5)
    )
    assert min(slower) >= 1.5 * 0.004
    assert sorted(slower)[2] > 1.3 * sorted(plain)[2]


def test_rate_units_and_a_peak_without_a_rate():
    metrics = {m.name: m.unit for m in rate_metrics([0.5], flops=1e12, peak=8.0)}
    assert metrics == {"latency": "ms", "tflops": "TFLOP/s", "pct_of_peak": "%"}
    metrics = {m.name: m.unit for m in rate_metrics([0.5], nbytes=2e9, peak=8.0)}
    assert metrics == {"latency": "ms", "gbps": "GB/s", "pct_of_peak": "%"}
    # A peak is a share of a rate; with no flops or bytes there is nothing to share.
    assert [m.name for m in rate_metrics([0.5], peak=8.0)] == ["latency"]


def test_a_budget_spent_exactly_stops_the_timer(monkeypatch):
    # 250 ms calls against a 1 s budget (warm-up calls of 0 ms): the 4th call ends at exactly
    # 1.0 s, which counts as spent, so the timer stops at 4, not 5 (min_reps=10 never reached).
    clock = Clock()
    monkeypatch.setattr(timing, "time", clock)
    calls = iter([0, 0] + [250] * 10)

    def call():
        clock.ns += next(calls) * 1_000_000

    got = timing.time_cpu(call, settings(budget_s=1.0, min_reps=10))
    assert got == [0.25] * 4


def test_a_noise_equal_to_the_target_is_quiet_enough():
    # Five equal samples have a relative IQR of exactly 0: a target of 0 is met.
    assert timing._should_stop([1.0] * 5, 0.1, settings(min_reps=5, noise_target=0.0))


def test_the_next_checkpoint_is_always_later():
    s = settings(max_reps=100)
    assert [timing._next_checkpoint(n, s) for n in (1, 2, 3, 4, 8, 90, 99)] == [
        2,
        3,
        4,
        5,
        10,
        100,
        100,
    ]


@pytest.mark.parametrize(("start_ns", "calls"), [(0, 4), (4_000_000_000, 4)])
def test_warm_up_runs_for_its_time_from_whenever_it_starts(monkeypatch, start_ns, calls):
    # 250 ms calls, 1 s of warm-up: exactly 4 calls (the 4th ends at 1.0 s, which is enough),
    # whatever the clock read when warm-up began.
    clock = Clock()
    clock.ns = start_ns
    monkeypatch.setattr(timing, "time", clock)
    made = []

    def call():
        clock.ns += 250_000_000
        made.append(1)

    timing._warm_up(call, 1.0, lambda: None)
    assert len(made) == calls


class TickingClock(Clock):
    """A clock that moves 1 ns at every reading, as a real one does between reads."""

    def perf_counter_ns(self) -> int:
        self.ns += 1
        return self.ns - 1


def test_extra_work_busy_waits_exactly_its_fraction(monkeypatch):
    # The call reads the clock at 0, the work takes it to 1_000_001, reads at 1_000_001 and
    # 1_000_002 set the target 1_000_001 + int(1_000_002 * 0.5) = 1_500_002; the busy-wait
    # stops at the first reading of 1_500_002, leaving the clock at 1_500_003: 1.5 times the
    # work, to the tick.
    clock = TickingClock()
    monkeypatch.setattr(timing, "time", clock)

    def work():
        clock.ns += 1_000_000

    timing.with_extra_work(work, 0.5)()
    assert clock.ns == 1_500_003


class FakeCuda:
    """A GPU's stream as CUDA events see it: work enqueued moves the stream's clock, events
    stamp it. What torch.cuda offers the timers, for a CPU-only test of the device arithmetic."""

    SM_HZ = 1.98e9  # the clock ``_sleep`` counts cycles at
    SPIN_FIXED_S = 5e-6  # a kernel's launch and run cost beyond its cycles

    def __init__(self) -> None:
        self.stream_s = 0.0
        self.slept: list[int] = []
        outer = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.at = 0.0
                self.timing = enable_timing

            def record(self) -> None:
                self.at = outer.stream_s

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, end: "Event") -> float:  # milliseconds, as torch's
                if not (self.timing and end.timing):  # torch refuses too
                    raise RuntimeError("Both events must be created with enable_timing=True")
                return (end.at - self.at) * 1e3

        self.Event = Event

    def run(self, seconds: float) -> None:
        self.stream_s += seconds

    def _sleep(self, cycles: int) -> None:
        self.slept.append(cycles)
        self.stream_s += self.SPIN_FIXED_S + cycles / self.SM_HZ

    def synchronize(self, device: Any = None) -> None:
        pass


def test_device_extra_work_slows_what_cuda_events_time_by_its_fraction(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(timing, "CALIBRATION_WARMUP_S", 0.0)

    cuda = FakeCuda()
    torch = SimpleNamespace(cuda=cuda)
    kernel = lambda: cuda.run(0.004)  # noqa: E731  a 4 ms kernel
    slowed = timing.with_device_extra_work(torch, kernel, 0.15)
    samples = timing.time_cuda(torch, slowed, settings(min_reps=6, max_reps=6), None)
    # Every timed call: the kernel's 4 ms and a spin of 0.15 x 4 ms = 0.6 ms, both on the
    # stream between the events (host busy-work would not be).
    assert samples == pytest.approx([0.0046] * 6, rel=1e-6)
    # Calibrated once, at two spin lengths: 0.6 ms less the spin's 5 us fixed cost, at
    # 1.98 GHz, is 1,178,100 cycles; then one spin per call.
    assert cuda.slept[:2] == [timing.SPIN_CALIBRATION_CYCLES, 2 * timing.SPIN_CALIBRATION_CYCLES]
    assert set(cuda.slept[2:]) == {1_178_100}


def test_cuda_events_are_read_in_batches_at_geometric_checkpoints():
    from types import SimpleNamespace

    cuda = FakeCuda()
    reads: list[float] = []  # the stream's clock at each wait for an event

    class WaitedEvent(cuda.Event):
        def synchronize(self) -> None:
            reads.append(cuda.stream_s)

    cuda.Event = WaitedEvent
    durations = itertools.cycle([0.004, 0.005])  # never quiet enough for a noise target of 0
    kernel = lambda: cuda.run(next(durations))  # noqa: E731
    samples = timing.time_cuda(
        SimpleNamespace(cuda=cuda), kernel, settings(min_reps=5, max_reps=20), None
    )
    assert len(samples) == 20  # the most reps: the noise rule never stops it
    assert sorted(samples) == pytest.approx([0.004] * 10 + [0.005] * 10)
    # One wait a checkpoint, never one a call (the GPU would idle while the host reads): at
    # min_reps = 5 samples, then 25 % more each time, at least one more, up to max_reps:
    # 5, 6, 7, 8, 10, 12, 15, 18, 20.
    assert len(reads) == 9


def test_the_l2_flush_runs_before_every_timed_call_outside_its_event_pair():
    from types import SimpleNamespace

    cuda = FakeCuda()
    flushed_at: list[float] = []  # the stream's clock when each flush was enqueued

    def flush() -> None:
        flushed_at.append(cuda.stream_s)
        cuda.run(0.001)  # a 1 ms memset of the flush buffer

    kernel = lambda: cuda.run(0.004)  # noqa: E731  a 4 ms kernel
    samples = timing.time_cuda(SimpleNamespace(cuda=cuda), kernel, settings(), flush)
    # Only the kernel is between the events: a flush timed with it would read 5 ms.
    assert len(samples) >= 5 and samples == pytest.approx([0.004] * len(samples), rel=1e-9)
    # One flush before each timed call, none during the warm-up: each call starts on a cold L2.
    assert len(flushed_at) == len(samples)
    assert all(b - a == pytest.approx(0.005) for a, b in zip(flushed_at, flushed_at[1:]))


def test_the_spin_is_calibrated_on_warm_calls(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(timing, "CALIBRATION_WARMUP_S", 0.0)
    cuda = FakeCuda()
    calls = itertools.count()
    # The first call is cold (lazy init: 40 ms), every later one 4 ms: a spin calibrated on the
    # cold call would be ten times too long.
    kernel = lambda: cuda.run(0.040 if next(calls) == 0 else 0.004)  # noqa: E731
    timing.time_cuda(
        SimpleNamespace(cuda=cuda),
        timing.with_device_extra_work(SimpleNamespace(cuda=cuda), kernel, 0.15),
        settings(min_reps=3, max_reps=3),
        None,
    )
    assert set(cuda.slept[2:]) == {1_178_100}


def test_a_call_shorter_than_the_spins_fixed_cost_gets_the_shortest_spin(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(timing, "CALIBRATION_WARMUP_S", 0.0)
    cuda = FakeCuda()
    # 0.15 x 1 us is less than the spin's 5 us fixed cost: one cycle, the least there is.
    kernel = lambda: cuda.run(1e-6)  # noqa: E731
    slowed = timing.with_device_extra_work(SimpleNamespace(cuda=cuda), kernel, 0.15)
    timing.time_cuda(SimpleNamespace(cuda=cuda), slowed, settings(min_reps=3, max_reps=3), None)
    assert set(cuda.slept[2:]) == {1}


def fake_gpu_context(cuda: FakeCuda, extra_work: float = 0.0, **torch_attrs: Any) -> Any:
    """A worker's Context on the fake CUDA ``cuda``, with the quick profile's timing; its torch
    has ``torch_attrs`` too."""
    from types import SimpleNamespace

    from cudastack.environment import suite
    from cudastack.environment.context import Context

    return Context(
        torch=SimpleNamespace(cuda=cuda, **torch_attrs),
        device=SimpleNamespace(type="cuda"),
        profile=suite.PROFILES["quick"],
        peaks=None,
        extra_work=extra_work,
    )


def test_a_gpu_context_times_a_host_cost_up_to_a_synchronize_after_each_call():
    cuda = FakeCuda()
    seen: list[str] = []
    cuda.synchronize = lambda *device: seen.append("sync")  # type: ignore[method-assign]
    ctx = fake_gpu_context(cuda)
    samples = ctx.time(lambda: seen.append("call"), clock="host")
    # Each call is paid for on the host up to the device's synchronize (pageable copies,
    # launch overhead), and timed so, call by call.
    assert samples and len(seen) >= 2 * len(samples)
    assert seen == ["call", "sync"] * (len(seen) // 2)


@pytest.mark.parametrize("extra_work", [0.0, 0.5])
def test_a_gpu_context_times_the_device_clock_with_events_and_its_slowdown_on_the_stream(
    monkeypatch, extra_work
):
    monkeypatch.setattr(timing, "CALIBRATION_WARMUP_S", 0.0)
    cuda = FakeCuda()
    ctx = fake_gpu_context(cuda, extra_work)
    kernel = lambda: cuda.run(0.004)  # noqa: E731  4 ms of stream time, nothing on the host
    samples = ctx.time(kernel, flush_l2=False)
    assert samples == pytest.approx([0.004 * (1 + extra_work)] * len(samples), rel=1e-6)
    # ctx.measure times the same way: latency in ms from the events.
    (latency,) = (m for m in ctx.measure(kernel, flush_l2=False) if m.name == "latency")
    assert latency.values == pytest.approx([4.0 * (1 + extra_work)] * len(latency.values))


def test_a_gpu_context_flushes_l2_before_each_timed_call_unless_told_not_to():
    cuda = FakeCuda()
    buffers: list[Any] = []

    class DeviceBuffer:
        """torch.empty's tensor as L2Flusher uses it: zeroing it is 1 ms of stream time."""

        def __init__(self, count: int, dtype: Any, device: Any) -> None:
            self.made = (count, dtype, device)
            self.zeroed = 0
            buffers.append(self)

        def zero_(self) -> None:
            self.zeroed += 1
            cuda.run(0.001)

    ctx = fake_gpu_context(cuda, int32="int32", empty=DeviceBuffer)
    kernel = lambda: cuda.run(0.004)  # noqa: E731  a 4 ms kernel
    samples = ctx.time(kernel)
    # One buffer of L2_FLUSH_BYTES in int32 on the case's device, zeroed before each timed
    # call and outside its events: the samples are the kernel's 4 ms alone.
    (buffer,) = buffers
    assert buffer.made == (timing.L2_FLUSH_BYTES // 4, "int32", ctx.device)
    assert buffer.zeroed == len(samples) > 0
    assert samples == pytest.approx([0.004] * len(samples), rel=1e-9)
    # measure flushes by default too, with the same buffer: allocated once a context.
    (latency,) = (m for m in ctx.measure(kernel) if m.name == "latency")
    assert buffer.zeroed == len(samples) + len(latency.values) and len(buffers) == 1
    assert latency.values == pytest.approx([4.0] * len(latency.values), rel=1e-9)
    # flush_l2=False: nothing flushed, by either.
    ctx.time(kernel, flush_l2=False)
    ctx.measure(kernel, flush_l2=False)
    assert buffer.zeroed == len(samples) + len(latency.values)
    # A context that never flushes allocates no buffer.
    buffers.clear()
    other = fake_gpu_context(cuda, int32="int32", empty=DeviceBuffer)
    other.time(kernel, flush_l2=False)
    assert buffers == []


def test_a_gpu_context_times_the_host_clock_on_the_host_and_slows_it_there():
    cuda = FakeCuda()
    ctx = fake_gpu_context(cuda, extra_work=0.5)
    kernel = lambda: cuda.run(0.004)  # noqa: E731
    # The host pays microseconds to enqueue what the stream takes 4 ms to run: the host clock
    # sees the former, and its slowdown is host busy-work, never a spin on the stream.
    (latency,) = (m for m in ctx.measure(kernel, clock="host") if m.name == "latency")
    for seconds in (ctx.time(kernel, clock="host"), [ms / 1e3 for ms in latency.values]):
        assert statistics.median(seconds) < 0.001
    assert cuda.slept == []


def test_a_gpu_context_slows_the_device_clock_on_the_device_and_the_host_clock_on_the_host(
    monkeypatch,
):
    from types import SimpleNamespace

    monkeypatch.setattr(timing, "CALIBRATION_WARMUP_S", 0.0)

    from cudastack.environment import suite
    from cudastack.environment.context import Context

    cuda = FakeCuda()
    ctx = Context(
        torch=SimpleNamespace(cuda=cuda),
        device=SimpleNamespace(type="cuda"),
        profile=suite.PROFILES["quick"],
        peaks=None,
        extra_work=0.5,
    )
    kernel = lambda: cuda.run(0.002)  # noqa: E731
    ctx.slowed(kernel)()
    assert cuda.slept  # device clock: a spin on the stream
    before = list(cuda.slept)
    ctx.slowed(kernel, clock="host")()
    assert cuda.slept == before  # host clock: busy-work on the host, no spin
    ctx.extra_work = 0.0
    assert ctx.slowed(kernel) is kernel
