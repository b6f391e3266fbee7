"""Training throughput, its latency split, data-parallel totals and MFU on a controlled clock."""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
import torch.multiprocessing

from cudastack.environment import suite, training
from cudastack.environment import world as worldmod
from cudastack.environment.context import CheckFailed, Context, Skip
from cudastack.environment.telemetry import Nvml
from cudastack.environment.world import World

# Each step waits WAIT_S for its batch, then computes for COMPUTE_S, on a clock that moves only
# by these amounts. Binary fractions, so every sum of them below is exact in floating point.
ITEMS_PER_STEP = 8
CYCLE = 4  # steps per window: one pass over the fixed batches
WAIT_S = 0.125
COMPUTE_S = 0.375
FLOPS_PER_ITEM = 2.5e11
PEAK_TFLOPS = 10.0
WINDOWS = training.SCHEDULES["quick"].windows


class Clock:
    """The ``time`` module as ``training`` sees it: perf_counter moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def workload(clock: Clock, compute_s: float = COMPUTE_S) -> training.Workload:
    """A real linear regression trained by SGD; its batches and steps take known clock time."""
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(ITEMS_PER_STEP, 4, generator=gen) for _ in range(CYCLE)]
    batches = itertools.cycle(inputs)

    def next_batch() -> Any:
        clock.advance(WAIT_S)
        return next(batches)

    def make_step(wrap: Any) -> training.Step:
        model = wrap(torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)

        def loss_of(x: Any) -> Any:
            return torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))

        inner = training.optimizer_step(loss_of, opt)

        def step(batch: Any) -> Any:
            clock.advance(compute_s)
            return inner(batch)

        return step

    return training.Workload(
        make_step, next_batch, CYCLE, ITEMS_PER_STEP, "img/s", FLOPS_PER_ITEM, "bf16"
    )


def context(world: Optional[World] = None) -> Context:
    return Context(
        torch,
        torch.device("cpu"),
        suite.PROFILES["quick"],
        {"bf16": PEAK_TFLOPS},
        world=world or World(),
    )


def by_name(metrics: list) -> dict[str, list[float]]:
    return {m.name: m.values for m in metrics}


def test_one_process_rates_and_step_split_from_known_step_times(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(training, "time", clock)
    got = by_name(training.measure(context(), workload(clock)))
    # One window = CYCLE steps of 0.125 s waiting + 0.375 s computing = 2.0 s for
    # 8 items x 4 steps = 32 items: 16 items/s, one sample per window.
    assert got["items_per_s"] == [16.0] * WINDOWS
    assert got["latency"] == [500.0] * WINDOWS  # 2.0 s / 4 steps
    assert got["data_wait_ms"] == [125.0] * WINDOWS
    assert got["compute_ms"] == [375.0] * WINDOWS
    assert got["data_wait_pct"] == [25.0] * WINDOWS  # 0.5 s of 2.0 s
    # 2.5e11 FLOPs per item x 16 items/s = 4 TFLOP/s, 40 % of a 10 TFLOP/s peak.
    assert got["tflops"] == [4.0] * WINDOWS
    assert got["mfu"] == [40.0] * WINDOWS
    assert got["loss_end"][0] < got["loss_start"][0]  # it really trained
    assert "scaling_efficiency" not in got and "baseline_items_per_s" not in got


class AllocatorStats:
    """torch.cuda as training's memory line reads it: a peak the test sets, and when (on the
    controlled clock) the peak was reset and read."""

    def __init__(self, clock: Clock, peak_bytes: int) -> None:
        self.clock, self.peak_bytes = clock, peak_bytes
        self.calls: list[tuple[str, Any, float]] = []

    def synchronize(self, device: Any = None) -> None:
        pass

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.calls.append(("reset", device, self.clock.now))

    def max_memory_allocated(self, device: Any = None) -> int:
        self.calls.append(("read", device, self.clock.now))
        return self.peak_bytes


class TorchOnFakeCuda:
    """Real torch (the model trains on the CPU) with ``torch.cuda`` replaced."""

    def __init__(self, cuda: AllocatorStats) -> None:
        self.cuda = cuda

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def test_peak_memory_is_the_allocators_peak_over_the_timed_windows_in_gib(monkeypatch):
    from types import SimpleNamespace

    clock = Clock()
    monkeypatch.setattr(training, "time", clock)
    cuda = AllocatorStats(clock, 3 * 2**29)  # 1.5 GiB
    device = SimpleNamespace(type="cuda", index=0)
    ctx = Context(TorchOnFakeCuda(cuda), device, suite.PROFILES["quick"], {"bf16": PEAK_TFLOPS})
    got = training.measure(ctx, workload(clock))
    (peak,) = [m for m in got if m.name == "peak_mem"]
    assert (peak.values, peak.unit, peak.better) == ([1.5], "GiB", "lower")
    # Reset after the warm-up steps (0.5 s each on this clock), read after the timed windows
    # (2.0 s each): the warm-up's allocations (cuDNN autotuning, compile) are not the step's.
    warm = max(training.SCHEDULES["quick"].warmup_steps, CYCLE) * (WAIT_S + COMPUTE_S)
    assert cuda.calls == [("reset", device, warm), ("read", device, warm + 2.0 * WINDOWS)]


# Data parallel: rank 1 computes for 0.5 s a step, so its windows take 4 x 0.625 = 2.5 s while
# rank 0's take 2.0 s. A window ends when the slowest rank's does.
SLOW_COMPUTE_S = 0.5


def _dp_rank(rank: int, store: str, out: str) -> None:
    """One of two gloo processes, each with its own controlled clock."""
    threads, real_time = torch.get_num_threads(), training.time
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=120)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timeout
    )
    world, finished = World(rank, 2, rank), False
    try:
        clock = Clock()
        training.time = clock
        compute_s = COMPUTE_S if rank == 0 else SLOW_COMPUTE_S
        ctx = context(world)
        ctx.nvml = Nvml(EnergyCounter(), handle=object())  # each rank samples its own GPU
        metrics = training.measure(ctx, workload(clock, compute_s))
        described = {m.name: [m.unit, m.better, m.values] for m in metrics}
        Path(f"{out}.{rank}").write_text(json.dumps(described))
        finished = True
    finally:
        training.time = real_time
        torch.set_num_threads(threads)
        worldmod.leave(torch, world, finished)  # the worker's own way out


def test_two_data_parallel_processes_total_their_items_over_the_slowest_window(tmp_path):
    out, store = str(tmp_path / "metrics"), str(tmp_path / "store")
    # Rank 1 in a spawned process, rank 0 in this one: `make mutants` credits a function only
    # to tests that run it in their own process, and rank 0 is the one that reports.
    peer = torch.multiprocessing.get_context("spawn").Process(
        target=_dp_rank, args=(1, store, out), daemon=True
    )
    peer.start()
    try:
        _dp_rank(0, store, out)
        peer.join(timeout=120)
    finally:
        if peer.is_alive():  # rank 0 failed: rank 1 would wait for it until the group's timeout
            peer.kill()
    assert peer.exitcode == 0
    described = json.loads(Path(f"{out}.0").read_text())
    assert json.loads(Path(f"{out}.1").read_text()) == {}  # only rank 0 reports
    assert described["baseline_items_per_s"][:2] == ["img/s", "higher"]
    assert described["scaling_efficiency"][:2] == ["%", "higher"]
    # Energy is per item this rank processed: 6.4 J over WINDOWS x 32 items, not the world's.
    assert described["energy_per_item"][2] == pytest.approx(
        [6.4 / (WINDOWS * ITEMS_PER_STEP * CYCLE)]
    )
    got = {name: values for name, (_, _, values) in described.items()}
    # Rank 0 alone first: 32 items per 2.0 s window = 16 items/s.
    assert got["baseline_items_per_s"] == [16.0]
    # Together: 2 ranks x 32 items per 2.5 s window (rank 1's) = 25.6 items/s, which is
    # 25.6 / (2 x 16) = 80 % of two perfectly scaled processes.
    assert got["items_per_s"] == pytest.approx([25.6] * WINDOWS, rel=1e-12)
    assert got["scaling_efficiency"] == pytest.approx([80.0] * WINDOWS, rel=1e-12)
    assert got["latency"] == [625.0] * WINDOWS  # 2.5 s / 4 steps
    # 2.5e11 x 25.6 = 6.4 TFLOP/s over two devices of 10 TFLOP/s peak each: 32 %.
    assert got["tflops"] == pytest.approx([6.4] * WINDOWS, rel=1e-12)
    assert got["mfu"] == pytest.approx([32.0] * WINDOWS, rel=1e-12)


def test_every_metric_says_its_unit_and_which_way_is_better(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(training, "time", clock)
    got = {m.name: (m.unit, m.better) for m in training.measure(context(), workload(clock))}
    assert got["items_per_s"] == ("img/s", "higher")
    assert got["latency"] == ("ms", "lower")
    assert got["data_wait_pct"] == ("%", "lower")
    assert got["data_wait_ms"] == ("ms", "lower")
    assert got["compute_ms"] == ("ms", "lower")
    assert got["loss_start"] == got["loss_end"] == ("loss", "lower")
    assert got["tflops"] == ("TFLOP/s", "higher")
    assert got["mfu"] == ("%", "higher")
    assert "peak_mem" not in got  # a CUDA allocator's peak: nothing to report on a CPU


class EnergyCounter:
    """The slice of nvidia-ml-py a sampler reads, for a board that reports only its energy
    counter, which has gone up by 6.4 J between any two reads."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.mj = 0

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        self.mj += 6400
        return self.mj


def test_energy_is_per_item_over_all_measured_windows(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(training, "time", clock)
    ctx = context()
    ctx.nvml = Nvml(EnergyCounter(), handle=object())
    got = by_name(training.measure(ctx, workload(clock)))
    # One sampler spans the windows: 6.4 J over WINDOWS x 32 items.
    assert got["energy_per_item"] == pytest.approx([6.4 / (WINDOWS * ITEMS_PER_STEP * CYCLE)])


def test_the_step_computes_its_loss_under_the_precisions_autocast():
    from cudastack.environment.precision import Autocast

    model = torch.nn.Linear(4, 1)
    seen = []

    def loss_of(x: Any) -> Any:
        y = model(x)
        seen.append(y.dtype)
        return y.float().square().mean()

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    training.optimizer_step(loss_of, opt, Autocast(torch, "cpu", torch.bfloat16))(torch.ones(2, 4))
    training.optimizer_step(loss_of, opt)(torch.ones(2, 4))
    assert seen == [torch.bfloat16, torch.float32]


def test_the_step_frees_its_gradients_after_the_optimizer_step():
    # set_to_none: zeroing in place would add a memset of every gradient to each timed step,
    # work a training loop following PyTorch's default does not do.
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    training.optimizer_step(lambda x: model(x).square().mean(), opt)(torch.ones(2, 4))
    assert [p.grad for p in model.parameters()] == [None, None]


def test_extra_host_work_leaves_the_controlled_clock_alone(monkeypatch):
    # The known slowdown busy-waits on the real clock; the controlled one sees only the step.
    clock = Clock()
    monkeypatch.setattr(training, "time", clock)
    ctx = context()
    ctx.extra_work = 0.5
    assert by_name(training.measure(ctx, workload(clock)))["items_per_s"] == [16.0] * WINDOWS


def test_the_trace_records_real_training_steps(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(training, "time", clock)
    ctx = context()
    ctx.trace_dir = tmp_path
    ctx.case_id = "linear"
    training.measure(ctx, workload(clock))
    events = json.loads((tmp_path / "linear.json").read_text())["traceEvents"]
    assert any("mse_loss" in e.get("name", "") for e in events)


def _windows(losses: list[float], per_window: int) -> Any:
    return training._Windows([], [], losses, per_window, None, None)


def test_loss_check_compares_the_first_and_last_window_means():
    # Windows of 2 steps: first (2 + 4) / 2 = 3, last (1 + 0.5) / 2 = 0.75.
    assert training._loss_check(_windows([2.0, 4.0, 3.0, 1.0, 0.5], 2)) == (3.0, 0.75)


def test_a_loss_that_stays_flat_does_not_train():
    with pytest.raises(
        CheckFailed, match=r"loss did not fall .*\(2 -> 2\): the step does not train"
    ):
        training._loss_check(_windows([2.0, 2.0, 2.0, 2.0], 2))


def test_compile_skips_on_a_cpu_and_wraps_only_when_asked():
    ctx = context()
    with pytest.raises(
        Skip,
        match=r"^torch\.compile of a training step takes minutes on a CPU; compile=false runs$",
    ):
        training.check_compile(ctx, True)
    training.check_compile(ctx, False)  # no skip
    # The smoke profile's models are tiny: a CPU compiles them, which is how CI proves a cell
    # can compile.
    smoke = Context(torch, torch.device("cpu"), suite.PROFILES["smoke"], None)
    training.check_compile(smoke, True)  # no skip
    model = torch.nn.Linear(2, 2)
    assert training.compiled(ctx, model, False) is model
    assert training.compiled(ctx, model, True)._orig_mod is model
