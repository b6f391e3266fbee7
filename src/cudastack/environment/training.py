"""Training measurement: warm-up steps, then timed windows with device syncs only at their edges.

Environment side: standard library and torch only. Throughput is items over the elapsed time of a
window of several steps, one sample per window: never the mean of per-step rates (DLE#1264), and
never a sync inside a window, which would stall the GPU's queue and understate what it does.
Every window runs one pass over the same fixed batches, so the first and last windows' mean
losses are comparable: a case whose loss does not fall is failed, since it trained nothing.
Under torchrun the same measurement runs data parallel (DDP), after a one-process baseline.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from cudastack.environment import world as worldmod
from cudastack.environment.context import CheckFailed, Context, Metric

Step = Callable[[Any], Any]  # batch -> loss tensor (after backward and the optimizer step)
MakeStep = Callable[[Callable[[Any], Any]], Step]  # wrap(model) -> step; wrap is DDP or identity


def optimizer_step(loss_of: Callable[[Any], Any], opt: Any, amp: Any = None) -> Step:
    """The usual step: loss under the precision's autocast (``precision.Autocast``, or plain
    fp32 when None), backward (loss-scaled for fp16), optimizer step, gradients cleared."""

    scaler = amp.new_scaler() if amp is not None else None

    def step(batch: Any) -> Any:
        with amp.context() if amp is not None else contextlib.nullcontext():
            loss = loss_of(batch)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def check_compile(ctx: Context, compile: bool) -> None:
    """A compile=true case skips on a CPU, where compiling a training step takes minutes, except
    in the smoke profile: its models are tiny, and a CPU run is how CI proves a cell compiles."""
    if compile and not ctx.is_cuda and ctx.profile.name != "smoke":
        ctx.skip("torch.compile of a training step takes minutes on a CPU; compile=false runs")


def compiled(ctx: Context, model: Any, compile: bool) -> Any:
    """``torch.compile(model)`` when asked (after ``check_compile``), else the model itself."""
    return ctx.torch.compile(model) if compile else model


@dataclass(frozen=True)
class Schedule:
    """How many steps to warm up and how many passes over the fixed batches to time."""

    warmup_steps: int  # covers torch.compile, cuDNN autotuning and the allocator's first steps
    windows: int  # one throughput sample per window


SCHEDULES = {
    "smoke": Schedule(warmup_steps=1, windows=3),
    "quick": Schedule(warmup_steps=2, windows=6),
    "standard": Schedule(warmup_steps=10, windows=10),
    "full": Schedule(warmup_steps=20, windows=30),
}


@dataclass(frozen=True)
class Workload:
    """What a training bench hands to ``measure``."""

    make_step: MakeStep
    next_batch: Callable[[], Any]  # the next batch, as the model's input pipeline yields it
    cycle: int  # distinct batches: every window is one pass over them, in the same order
    items_per_step: int  # images, samples or tokens one process handles per step
    unit: str  # "img/s", "samples/s", "tokens/s"
    flops_per_item: Optional[float] = None  # model FLOPs per item (forward + backward)
    peak: Optional[str] = None  # spec peak the model FLOP rate is a percentage of (MFU)


@dataclass
class _Windows:
    seconds: list[float]
    wait_s: list[float]
    losses: list[float]
    steps_per_window: int
    peak_mem_gib: Optional[float]
    sampler: Any


def _run_windows(
    ctx: Context, work: Workload, wrap: Callable[[Any], Any], trace: bool = True
) -> _Windows:
    torch = ctx.torch
    sched = SCHEDULES[ctx.profile.name]
    torch.manual_seed(0)  # the same initial weights in every cell and on every rank
    step = work.make_step(wrap)
    # The known slowdown `compare` is tested against: on a GPU inside the device's own work,
    # since the windows end with a synchronize and host busy-work would overlap the GPU's.
    step = ctx.slowed(step)
    for _ in range(max(sched.warmup_steps, work.cycle)):
        step(work.next_batch())
    # Any `cycle` consecutive steps are one pass over the fixed batches, whatever the offset.
    per_window = work.cycle
    ctx.sync()
    if ctx.is_cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    seconds, waits, losses = [], [], []
    with ctx.sampler() as sampler:
        for _ in range(sched.windows):
            ctx.sync()
            start = time.perf_counter()
            wait = 0.0
            for _ in range(per_window):
                # Data wait: host time blocked on the input pipeline. On a GPU the device may
                # still be busy with the previous step meanwhile, so this is what the host
                # lost, an upper bound on what the GPU lost.
                t0 = time.perf_counter()
                batch = work.next_batch()
                wait += time.perf_counter() - t0
                losses.append(step(batch).detach())
            ctx.sync()
            seconds.append(time.perf_counter() - start)
            waits.append(wait)
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.is_cuda else None
    if trace:
        ctx.trace(lambda: step(work.next_batch()))
    values = [float(x) for x in torch.stack(losses).float().cpu()]
    return _Windows(seconds, waits, values, per_window, peak, sampler)


def _loss_check(w: _Windows) -> tuple[float, float]:
    n = w.steps_per_window
    start = sum(w.losses[:n]) / n
    end = sum(w.losses[-n:]) / n
    if not end < start:
        raise CheckFailed(
            f"loss did not fall over the measured window ({start:.4g} -> {end:.4g}): "
            "the step does not train"
        )
    return start, end


def measure(ctx: Context, work: Workload) -> list[Metric]:
    """Train and measure; under torchrun rank 0 returns the metrics and the others ``[]``."""
    torch = ctx.torch
    w1 = ctx.world
    baseline: Optional[float] = None
    if w1.distributed:
        # Scaling efficiency needs one process's rate on one device with this process's share
        # of threads: rank 0 measures it alone while the other ranks wait.
        if w1.is_main:
            alone = _run_windows(ctx, work, lambda m: m, trace=False)
            baseline = statistics.median(
                [work.items_per_step * alone.steps_per_window / s for s in alone.seconds]
            )
        worldmod.barrier(torch, w1)

        def wrap(model: Any) -> Any:
            ids = [ctx.device.index] if ctx.is_cuda else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

        w = _run_windows(ctx, work, wrap)
        # A data-parallel window ends when its slowest rank does.
        w.seconds = worldmod.max_over_ranks(torch, w1, ctx.device, w.seconds)
        if not w1.is_main:
            return []
    else:
        w = _run_windows(ctx, work, lambda m: m)

    loss_start, loss_end = _loss_check(w)
    items = work.items_per_step * w.steps_per_window * w1.size
    rates = [items / s for s in w.seconds]
    out = [
        Metric("items_per_s", work.unit, "higher", rates),
        Metric("latency", "ms", "lower", [1e3 * s / w.steps_per_window for s in w.seconds]),
        # The step's time split in two: waiting for the input pipeline, and the rest (compute).
        Metric("data_wait_pct", "%", "lower", [100 * d / s for d, s in zip(w.wait_s, w.seconds)]),
        Metric("data_wait_ms", "ms", "lower", [1e3 * d / w.steps_per_window for d in w.wait_s]),
        Metric(
            "compute_ms",
            "ms",
            "lower",
            [1e3 * (s - d) / w.steps_per_window for d, s in zip(w.wait_s, w.seconds)],
        ),
        Metric("loss_start", "loss", "lower", [loss_start]),
        Metric("loss_end", "loss", "lower", [loss_end]),
    ]
    if w.peak_mem_gib is not None:
        out.append(Metric("peak_mem", "GiB", "lower", [w.peak_mem_gib]))
    if work.flops_per_item:
        tflops = [work.flops_per_item * r / 1e12 for r in rates]
        out.append(Metric("tflops", "TFLOP/s", "higher", tflops))
        peak = (ctx.peaks or {}).get(work.peak or "")
        if peak:
            # Model FLOPs utilisation: the model's FLOPs at this rate over all devices' peak.
            out.append(Metric("mfu", "%", "higher", [100 * t / (peak * w1.size) for t in tflops]))
    if baseline is not None:
        out.append(Metric("baseline_items_per_s", work.unit, "higher", [baseline]))
        eff = [100 * r / (w1.size * baseline) for r in rates]
        out.append(Metric("scaling_efficiency", "%", "higher", eff))
    # The sampler watches this rank's GPU, so energy is per item that this rank processed.
    out += ctx.telemetry(w.sampler, items * len(w.seconds) / w1.size)
    return out
