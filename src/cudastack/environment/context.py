"""What a benchmark's ``run(ctx, **params)`` sees: the device, inputs, checks and the timers.

Environment side: standard library and torch only.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

from cudastack.contract.runfolder import atomic_write
from cudastack.environment import timing
from cudastack.environment.suite import Profile
from cudastack.environment.world import World

DTYPES = {
    "fp32": "float32",
    "tf32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp8": "float8_e4m3fn",
    "fp64": "float64",
}


class Skip(Exception):
    """This case cannot run on this device or stack; the reason becomes a skipped row."""


class CheckFailed(Exception):
    """The benchmark's output did not match its reference; the case is not timed."""


@dataclass
class Metric:
    """One measured quantity of a case: every sample is kept, one record row each."""

    name: str
    unit: str
    better: str  # "higher" | "lower"
    values: list[float] = field(default_factory=list)


@dataclass
class Context:
    """Handed to every benchmark's ``run``."""

    torch: Any
    device: Any  # torch.device
    profile: Profile
    peaks: Optional[dict[str, float]]
    seed: int = 0
    extra_work: float = 0.0  # a known slowdown, to measure what `compare` detects (see slowed)
    world: World = field(default_factory=World)
    nvml: Any = None  # telemetry.Nvml where an NVIDIA GPU is in use, else None: nothing sampled
    trace_dir: Optional[Path] = None  # --trace: a Chrome trace of each case is saved here
    case_id: str = ""
    # Achievable ceilings by peak name, in the peaks' units (TFLOP/s per dtype, GB/s for mem):
    # the best large GEMM and device copy the worker measured before the cases (ceilings.py).
    achievable: Optional[dict[str, float]] = None
    _flusher: Optional[timing.L2Flusher] = None

    @property
    def is_cuda(self) -> bool:
        return bool(self.device.type == "cuda")

    def skip(self, reason: str) -> NoReturn:
        raise Skip(reason)

    def require_cuda(self, what: str) -> None:
        if not self.is_cuda:
            self.skip(f"{what} needs an NVIDIA GPU; this run is on {self.device.type}")

    def require(self, module: str, why: str = "") -> Any:
        """Import an optional package (torchvision, transformers, peft), or skip the case."""
        try:
            found = importlib.import_module(module)
        except ImportError as exc:
            if exc.name == module:
                self.skip(f"{module} is not installed in this environment{why}")
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            self.skip(f"{module} cannot be imported with this stack{why}: {first}")
        # transformers imports below its torch floor but disables PyTorch (5.x: below 2.6), and
        # its models then raise when built: a fact about the cell's packages, not a failure.
        usable = getattr(getattr(found, "utils", None), "is_torch_available", None)
        if module == "transformers" and usable is not None and not usable():
            self.skip(
                f"transformers {found.__version__} does not run with torch "
                f"{self.torch.__version__} (it disables PyTorch below its floor, 2.6 for "
                f"transformers 5){why}"
            )
        return found

    def capability(self) -> tuple:
        return tuple(self.torch.cuda.get_device_capability(self.device)) if self.is_cuda else ()

    def dtype(self, name: str) -> Any:
        """A dtype by its short name; tf32 is fp32 storage with TF32 math (set by the bench).
        Skips tf32 and bf16 where the GPU has no hardware for them."""
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
        if name == "tf32" and not (self.is_cuda and self.capability() >= (8, 0)):
            self.skip("tf32 needs an NVIDIA GPU of compute capability 8.0 or newer")
        if name == "bf16" and self.is_cuda and self.capability() < (8, 0):
            # torch.cuda.is_bf16_supported() says yes here too: it counts emulation.
            cap = ".".join(map(str, self.capability()))
            self.skip(
                f"bf16 needs a GPU of compute capability 8.0 or newer; this one is {cap}, "
                "where bf16 is only emulated"
            )
        return getattr(self.torch, DTYPES[name])

    def randn(self, *shape: int, dtype: Any = None, requires_grad: bool = False) -> Any:
        """Random normal inputs: zeros run faster on some kernels and hide wrong results."""
        gen = self.torch.Generator(device=self.device).manual_seed(self.seed)
        self.seed += 1
        out = self.torch.randn(*shape, generator=gen, device=self.device, dtype=self.torch.float32)
        if dtype is not None:
            out = out.to(dtype)
        return out.requires_grad_(requires_grad)

    def sync(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize(self.device)

    def check_close(
        self, actual: Any, expected: Any, *, rtol: float, atol: float, what: str = "output"
    ) -> None:
        """Compare against a reference before timing: a fast wrong answer is not a result."""
        a = actual.detach().double().cpu()
        e = expected.detach().double().cpu()
        if a.shape != e.shape:
            raise CheckFailed(f"{what} shape {tuple(a.shape)} != reference {tuple(e.shape)}")
        bad = ~((a - e).abs() <= atol + rtol * e.abs())
        if bool(bad.any()):
            err = float(((a - e).abs() / (e.abs() + atol)).max())
            raise CheckFailed(
                f"{what} differs from reference: {int(bad.sum())} of {a.numel()} elements beyond "
                f"rtol={rtol} atol={atol} (max relative error {err:.3g})"
            )

    def sampler(self) -> Any:
        """A telemetry sampler for one measured window, or a no-op where nothing is sampled."""
        return self.nvml.sampler() if self.nvml is not None else contextlib.nullcontext()

    def telemetry(self, sampler: Any, items: Optional[float] = None) -> list[Metric]:
        return list(sampler.metrics(items)) if self.nvml is not None else []

    def trace(self, fn: Callable[[], Any], calls: int = 3) -> None:
        """With --trace, save a torch.profiler Chrome trace of a few more calls of ``fn``.

        Traced after the timing, never during it: the profiler's own cost would be measured."""
        if self.trace_dir is None:
            return
        prof_mod = self.torch.profiler
        activities = [prof_mod.ProfilerActivity.CPU]
        if self.is_cuda:
            activities.append(prof_mod.ProfilerActivity.CUDA)
        with prof_mod.profile(activities=activities) as prof:
            for _ in range(calls):
                fn()
            self.sync()
        name = re.sub(r"[^A-Za-z0-9._=-]+", "_", self.case_id).strip("_") or "case"
        if self.world.distributed:
            name += f".rank{self.world.rank}"
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.trace_dir / f"{name}.json", lambda p: prof.export_chrome_trace(str(p)))

    def settings(self) -> timing.TimerSettings:
        p = self.profile
        return timing.TimerSettings(
            p.warmup_for(self.device.type), p.budget_s, p.min_reps, p.max_reps, p.noise_target
        )

    def time(
        self, fn: Callable[[], Any], *, flush_l2: bool = True, clock: str = "device"
    ) -> list[float]:
        """Seconds per call. ``clock='host'`` times wall clock up to a synchronize instead of
        device events, for costs the host pays (launch overhead, pageable copies)."""
        s = self.settings()
        if clock == "host":
            fn = timing.synced(fn, self.sync)
        fn = self.slowed(fn, clock)
        if clock == "host" or not self.is_cuda:
            return timing.time_cpu(fn, s)
        if flush_l2 and self._flusher is None:
            self._flusher = timing.L2Flusher(self.torch, self.device)
        return timing.time_cuda(self.torch, fn, s, self._flusher if flush_l2 else None)

    def slowed(self, fn: Callable[..., Any], clock: str = "device") -> Callable[..., Any]:
        """``fn`` made (1 + ``extra_work``) times slower on the clock that times it: a GPU spin
        after each call where CUDA events (or a synchronized window) time the device, host
        busy-work where the host clock times the host. Unchanged when no slowdown is asked."""
        if not self.extra_work:
            return fn
        if clock == "device" and self.is_cuda:
            return timing.with_device_extra_work(self.torch, fn, self.extra_work)
        return timing.with_extra_work(fn, self.extra_work)

    def measure(
        self,
        fn: Callable[[], Any],
        *,
        flops: Optional[float] = None,
        nbytes: Optional[float] = None,
        peak: Optional[str] = None,
        flush_l2: bool = True,
        clock: str = "device",
        per_call: int = 1,
    ) -> list[Metric]:
        """Time ``fn`` and derive rates per sample: ``latency`` (ms), ``tflops`` from ``flops``,
        ``gbps`` from ``nbytes`` (bytes read + written), ``flop_per_byte`` given both, and, for
        the rate in the unit of the peak named by ``peak`` (a dtype name: TFLOP/s; ``mem`` or
        ``h2d``: GB/s), ``pct_of_peak`` against the device's spec peak and
        ``pct_of_achievable`` against the ceiling the worker measured for that name, each where
        known. ``per_call`` divides each sample when ``fn`` repeats the operation several times.
        Raises ValueError, before timing, when ``peak`` names a rate that was not given."""
        rate = peak_rate(peak) if peak else ""
        _has_rate(rate, flops, nbytes, f"peak {peak!r}")  # before timing, not after
        # Host-clock cases (launch overhead) are not sampled: the sampler thread would compete
        # for the interpreter with the very host work being timed.
        sampler = self.sampler() if clock == "device" else contextlib.nullcontext()
        with sampler:
            seconds = [s / per_call for s in self.time(fn, flush_l2=flush_l2, clock=clock)]
        metrics = rate_metrics(
            seconds,
            flops=flops,
            nbytes=nbytes,
            peak=(self.peaks or {}).get(peak) if peak else None,
            achievable=(self.achievable or {}).get(peak) if peak else None,
            rate=rate,
        )
        if clock == "device":
            metrics += self.telemetry(sampler)
        self.trace(fn)
        return metrics


# Peaks stated in bytes per second (GB/s): device memory and the host link. Every other peak
# name is a dtype, stated in FLOP per second (TFLOP/s).
BYTE_PEAKS = ("mem", "h2d")


def peak_rate(name: str) -> str:
    """The rate metric a peak named ``name`` is in: ``gbps`` for a byte peak, else ``tflops``."""
    return "gbps" if name in BYTE_PEAKS else "tflops"


def _has_rate(rate: str, flops: Optional[float], nbytes: Optional[float], what: str) -> None:
    """Raise ValueError when the peak is in ``rate`` but that rate was not given while the other
    was: the percentage would divide one rate by the other's peak. No rate at all is fine (no
    percentage: nothing to take a share of)."""
    given = {"tflops": flops, "gbps": nbytes}
    if rate and given[rate] is None and any(v is not None for v in given.values()):
        needs = "nbytes=" if rate == "gbps" else "flops="
        unit = "GB/s" if rate == "gbps" else "TFLOP/s"
        raise ValueError(f"{what} is in {unit}: give {needs} too, or the peak of the rate given")


def rate_metrics(
    seconds: Sequence[float],
    *,
    flops: Optional[float] = None,
    nbytes: Optional[float] = None,
    peak: Optional[float] = None,
    achievable: Optional[float] = None,
    rate: str = "",
) -> list[Metric]:
    """Latency samples plus the rates derived from each of them: ``tflops`` from ``flops`` and
    ``gbps`` from ``nbytes``; with both, their ratio ``flop_per_byte`` (arithmetic intensity,
    FLOP/B, one value: it does not vary between samples). ``pct_of_peak`` (against ``peak``)
    and ``pct_of_achievable`` (against ``achievable``, a measured ceiling) are shares of the
    rate named by ``rate`` (``tflops``: TFLOP/s, ``gbps``: GB/s), or of the only rate given
    when ``rate`` is ''. Raises ValueError when ``rate`` names a rate not given while the other
    is, or when both are given, a share is asked for and ``rate`` is ''."""
    _has_rate(rate, flops, nbytes, f"rate={rate!r}")
    if not rate and flops is not None and nbytes is not None and (peak or achievable):
        raise ValueError("given flops= and nbytes=, say which rate= the peak is in")
    out = [Metric("latency", "ms", "lower", [s * 1e3 for s in seconds])]
    rates: dict[str, Metric] = {}
    if flops is not None:
        rates["tflops"] = Metric("tflops", "TFLOP/s", "higher", [flops / s / 1e12 for s in seconds])
    if nbytes is not None:
        rates["gbps"] = Metric("gbps", "GB/s", "higher", [nbytes / s / 1e9 for s in seconds])
    out += rates.values()
    if flops is not None and nbytes:
        out.append(Metric("flop_per_byte", "FLOP/B", "higher", [flops / nbytes]))
    shared = rates.get(rate) if rate else next(iter(rates.values()), None)
    for name, of in (("pct_of_peak", peak), ("pct_of_achievable", achievable)):
        if shared is not None and of:
            out.append(Metric(name, "%", "higher", [100 * v / of for v in shared.values]))
    return out
