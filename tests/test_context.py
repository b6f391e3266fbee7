"""The benchmark context with real torch on the CPU: checks, skips, inputs, measuring."""

import json
import time

import pytest
import torch
from test_timing import Clock  # the controlled clock the timers are tested on

from cudastack.environment.context import CheckFailed, Context, Skip
from cudastack.environment.suite import PROFILES


@pytest.fixture
def ctx():
    return Context(torch, torch.device("cpu"), PROFILES["quick"], None)


def test_check_close_passes_within_tolerance_and_fails_beyond(ctx):
    ref = torch.ones(4, 4)
    ctx.check_close(ref + 1e-6, ref, rtol=1e-4, atol=0)
    bad = ref.clone()
    bad[0, 0] = 1.5
    with pytest.raises(CheckFailed, match="1 of 16 elements"):
        ctx.check_close(bad, ref, rtol=1e-3, atol=0)
    with pytest.raises(CheckFailed, match="shape"):
        ctx.check_close(ref[:2], ref, rtol=1, atol=1)


def test_gpu_only_things_skip_on_cpu(ctx):
    with pytest.raises(Skip, match="needs an NVIDIA GPU"):
        ctx.require_cuda("CUDA graphs")
    with pytest.raises(Skip, match="tf32 needs"):
        ctx.dtype("tf32")
    assert ctx.dtype("bf16") is torch.bfloat16


def test_inputs_are_random_normal_and_reproducible():
    a = Context(torch, torch.device("cpu"), PROFILES["quick"], None).randn(1000)
    b = Context(torch, torch.device("cpu"), PROFILES["quick"], None).randn(1000)
    assert torch.equal(a, b)
    assert abs(float(a.mean())) < 0.2 and 0.8 < float(a.std()) < 1.2
    assert int((a == 0).sum()) == 0


def test_measure_on_cpu_returns_latency_and_rate(ctx):
    x = ctx.randn(64, 64)
    metrics = {m.name: m for m in ctx.measure(lambda: x @ x, flops=2 * 64**3)}
    assert set(metrics) == {"latency", "tflops"}
    assert len(metrics["latency"].values) >= PROFILES["quick"].min_reps
    assert all(v > 0 for v in metrics["tflops"].values)


def test_an_unknown_dtype_names_the_known_ones(ctx):
    with pytest.raises(ValueError, match=r"unknown dtype 'fp7'; known: fp32, tf32, fp16, bf16"):
        ctx.dtype("fp7")


def test_the_tf32_skip_says_what_hardware_it_needs(ctx):
    with pytest.raises(
        Skip, match=r"^tf32 needs an NVIDIA GPU of compute capability 8\.0 or newer$"
    ):
        ctx.dtype("tf32")


def test_bf16_on_a_gpu_before_ampere_skips_and_names_its_capability():
    from types import SimpleNamespace

    volta = SimpleNamespace(get_device_capability=lambda device: (7, 0))
    gpu = Context(
        SimpleNamespace(cuda=volta), SimpleNamespace(type="cuda"), PROFILES["quick"], None
    )
    with pytest.raises(
        Skip,
        match=r"^bf16 needs a GPU of compute capability 8\.0 or newer; this one is 7\.0, "
        r"where bf16 is only emulated$",
    ):
        gpu.dtype("bf16")


def test_each_input_draws_from_the_next_seed():
    # Oracle: torch's own generator seeded 0, 1, 2 in turn. Each call must take a new seed, so
    # two inputs of one case are never the same tensor.
    ctx = Context(torch, torch.device("cpu"), PROFILES["quick"], None)
    got = [ctx.randn(8) for _ in range(3)]
    for seed, x in enumerate(got):
        assert torch.equal(x, torch.randn(8, generator=torch.Generator().manual_seed(seed)))


def test_inputs_are_fp32_draws_whatever_the_default_dtype(ctx):
    # Reproducible across runs means independent of torch's default dtype: the draw is fp32,
    # then cast to what was asked.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = ctx.randn(8)
        y = ctx.randn(8, dtype=torch.float64)
    finally:
        torch.set_default_dtype(old)
    assert x.dtype == torch.float32
    assert torch.equal(y, torch.randn(8, generator=torch.Generator().manual_seed(1)).double())


def test_check_close_reports_the_largest_relative_error(ctx):
    # One element is 3 against a reference of 2 with atol=0.5: |3 - 2| / (|2| + 0.5) = 0.4.
    ref = torch.full((4, 4), 2.0)
    bad = ref.clone()
    bad[1, 2] = 3.0
    with pytest.raises(CheckFailed, match=r"^output differs .*max relative error 0\.4\)$"):
        ctx.check_close(bad, ref, rtol=1e-3, atol=0.5)


@pytest.mark.parametrize("clock", ["device", "host"])
def test_measure_divides_each_sample_by_the_calls_it_holds(monkeypatch, ctx, clock):
    # Every call takes exactly 8 ms on a controlled clock and holds 4 operations: 2 ms each,
    # 8 GFLOP / 2 ms = 4 TFLOP/s, 40% of a 10 TFLOP/s fp32 peak.
    from cudastack.environment import timing

    fake = Clock()
    monkeypatch.setattr(timing, "time", fake)
    ctx.peaks = {"fp32": 10.0}

    def call():
        fake.ns += 8_000_000

    metrics = {
        m.name: m for m in ctx.measure(call, flops=8e9, peak="fp32", clock=clock, per_call=4)
    }
    assert metrics["latency"].values == pytest.approx([2.0] * 5)
    assert metrics["tflops"].values == pytest.approx([4.0] * 5)
    assert metrics["pct_of_peak"].values == pytest.approx([40.0] * 5)


def test_one_call_per_sample_unless_told(monkeypatch, ctx):
    from cudastack.environment import timing

    fake = Clock()
    monkeypatch.setattr(timing, "time", fake)

    def call():
        fake.ns += 3_000_000

    (latency,) = ctx.measure(call)
    assert latency.values == pytest.approx([3.0] * 5)


def test_extra_work_slows_every_timed_call(ctx):
    # extra_work=1.0 doubles each call on the host clock: a 3 ms sleep takes at least 6 ms.
    ctx.extra_work = 1.0
    (latency,) = ctx.measure(lambda: time.sleep(0.003))
    assert min(latency.values) >= 6.0


def test_trace_saves_a_chrome_trace_of_the_measured_function(ctx, tmp_path):
    x = ctx.randn(16, 16)
    ctx.trace_dir = tmp_path
    ctx.case_id = "matmul n=16"
    ctx.measure(lambda: x @ x)
    events = json.loads((tmp_path / "matmul_n=16.json").read_text())["traceEvents"]
    assert any("mm" in e.get("name", "") for e in events)


@pytest.mark.parametrize(
    ("peak", "rate", "peak_value", "ceiling"),
    [("fp32", 1.0, 10.0, 5.0), ("mem", 2.0, 4.0, 2.5)],
)
def test_measure_gives_both_rates_and_states_each_share_in_the_peak_s_unit(
    monkeypatch, ctx, peak, rate, peak_value, ceiling
):
    # 8 ms a call on a controlled clock, 8 GFLOP and 16 MB: 1 TFLOP/s and 2 GB/s, 500 FLOP/B.
    # fp32's peak and ceiling are TFLOP/s, mem's GB/s: each share is of its own rate (``rate``).
    from cudastack.environment import timing

    fake = Clock()
    monkeypatch.setattr(timing, "time", fake)
    ctx.peaks = {peak: peak_value}
    ctx.achievable = {peak: ceiling}

    def call():
        fake.ns += 8_000_000

    metrics = {m.name: m for m in ctx.measure(call, flops=8e9, nbytes=16e6, peak=peak)}
    assert metrics["tflops"].values == pytest.approx([1.0] * 5)
    assert metrics["gbps"].values == pytest.approx([2.0] * 5)
    assert metrics["flop_per_byte"].values == [500.0]  # one value: it does not vary
    assert (metrics["flop_per_byte"].unit, metrics["pct_of_achievable"].unit) == ("FLOP/B", "%")
    assert metrics["pct_of_peak"].values == pytest.approx([100 * rate / peak_value] * 5)
    assert metrics["pct_of_achievable"].values == pytest.approx([100 * rate / ceiling] * 5)


def test_a_peak_without_a_measured_ceiling_has_no_share_of_achievable(ctx):
    x = ctx.randn(16, 16)
    ctx.peaks, ctx.achievable = {"fp32": 1.0, "bf16": 1.0}, {"bf16": 1.0}  # none for fp32
    names = {m.name for m in ctx.measure(lambda: x @ x, flops=2 * 16**3, peak="fp32")}
    assert "pct_of_peak" in names and "pct_of_achievable" not in names


@pytest.mark.parametrize(
    ("peak", "given", "message"),
    [
        ("mem", {"flops": 1e9}, "peak 'mem' is in GB/s: give nbytes= too"),
        ("h2d", {"flops": 1e9}, "peak 'h2d' is in GB/s: give nbytes= too"),
        ("bf16", {"nbytes": 1e6}, "peak 'bf16' is in TFLOP/s: give flops= too"),
    ],
)
def test_measure_refuses_a_peak_of_a_rate_not_given_before_timing_anything(
    ctx, peak, given, message
):
    calls = []
    with pytest.raises(ValueError, match=message):
        ctx.measure(lambda: calls.append(1), peak=peak, **given)
    assert calls == []  # the timing budget is not spent on a case that cannot have a result


class SensorsAndEnergy:
    """The slice of nvidia-ml-py a sampler reads: an SM clock, and an energy counter that says
    how often it was read."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.energy_reads = 0

    def nvmlDeviceGetClockInfo(self, handle, clock):
        if clock != self.NVML_CLOCK_SM:
            raise self.NVMLError("Not Supported")
        return 1980

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self.energy_reads += 1
        return 1000 * self.energy_reads


def test_device_clock_cases_are_sampled_and_host_clock_cases_are_not(ctx):
    from cudastack.environment.telemetry import Nvml

    board = SensorsAndEnergy()
    ctx.nvml = Nvml(board, handle=object())
    device = {m.name: m.values for m in ctx.measure(lambda: torch.ones(8).sum())}
    assert device["sm_clock_mhz"] == [1980.0]
    assert board.energy_reads == 2  # the window's start and end
    # Host-clock cases (launch overhead) leave the interpreter to the host work being timed.
    host = {m.name: m.values for m in ctx.measure(lambda: torch.ones(8).sum(), clock="host")}
    assert "sm_clock_mhz" not in host and "latency" in host
    assert board.energy_reads == 2
