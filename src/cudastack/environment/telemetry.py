"""GPU telemetry while a case is measured: NVML read every ~100 ms by a background thread.

Environment side: standard library; NVML (nvidia-ml-py) only where an NVIDIA GPU is in use.
Where there is none, nothing is sampled and ``describe`` says why: no reading is ever invented.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from cudastack.environment import nvml
from cudastack.environment.context import Metric

INTERVAL_S = 0.1

# Clock-event reasons that mean the GPU ran below the clock it would otherwise hold: power cap,
# hardware slowdown, thermal (software and hardware), power brake. Idle, application-clock and
# sync-boost settings are not throttling.
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def _handle(pynvml: Any, props: Any) -> Any:
    """The NVML handle of the GPU behind torch's device properties ``props``.

    Found by UUID, else by PCI bus id, never by torch's index: CUDA_VISIBLE_DEVICES renumbers
    the devices torch sees, and CUDA may order them differently from NVML even without it. By
    index only where NVML sees one GPU, so the index cannot be another board's."""
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid
        # Bytes: older bindings pass the argument to ctypes as it is.
        return pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        pci = f"{props.pci_domain_id:08X}:{bus:02X}:{props.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId_v2(pci.encode())
    if pynvml.nvmlDeviceGetCount() == 1:
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    raise LookupError("this torch reports neither a UUID nor a PCI bus id to tell which GPU it is")


@dataclass(frozen=True)
class Reading:
    """One NVML sample; a field the board does not report is None."""

    t: float  # perf_counter seconds
    sm_clock_mhz: Optional[float]
    mem_clock_mhz: Optional[float]
    power_w: Optional[float]
    temp_c: Optional[float]
    util_pct: Optional[float]
    reasons: Optional[int]


class NvmlReader(NamedTuple):
    reader: Optional[Nvml]  # None where nothing will be sampled
    source: str  # "nvml", or "none: " and why (env.json's telemetry note)


class Nvml:
    """The NVML handle of the GPU a torch device runs on."""

    def __init__(self, pynvml: Any, handle: Any) -> None:
        self._nv = pynvml
        self._h = handle

    @classmethod
    def open(cls, torch: Any, device: Any) -> NvmlReader:
        """A reader of ``device``'s GPU, or why nothing will be sampled."""
        if device.type != "cuda":
            return NvmlReader(None, f"none: no NVIDIA GPU in use (device {device.type})")
        pynvml, why = nvml.init()
        if pynvml is None:
            return NvmlReader(None, f"none: {why}")
        try:
            handle = _handle(pynvml, torch.cuda.get_device_properties(device))
        except Exception as exc:  # an old binding, a GPU NVML cannot see: no telemetry
            return NvmlReader(None, f"none: NVML unavailable ({type(exc).__name__}: {exc})")
        return NvmlReader(cls(pynvml, handle), "nvml")

    def _get(self, name: str, *args: Any) -> Any:
        """An NVML query by name; None where this board, driver or binding lacks it."""
        call = getattr(self._nv, name, None)
        if call is None:
            return None
        try:
            return call(self._h, *args)
        except self._nv.NVMLError:
            return None

    def read(self) -> Reading:
        nv = self._nv
        power = self._get("nvmlDeviceGetPowerUsage")
        util = self._get("nvmlDeviceGetUtilizationRates")
        # Renamed in newer bindings ("clocks event"); older ones have only the throttle name.
        reasons = self._get("nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:
            reasons = self._get("nvmlDeviceGetCurrentClocksThrottleReasons")
        return Reading(
            t=time.perf_counter(),
            sm_clock_mhz=self._get("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM),
            mem_clock_mhz=self._get("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_MEM),
            power_w=power / 1000 if power is not None else None,
            temp_c=self._get("nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
            util_pct=util.gpu if util is not None else None,
            reasons=reasons,
        )

    def sampler(self) -> Sampler:
        return Sampler(self.read, self.energy_j)

    def energy_j(self) -> Optional[float]:
        """The board's energy counter (mJ since driver load) in J; None where unsupported."""
        mj = self._get("nvmlDeviceGetTotalEnergyConsumption")
        return mj / 1000 if mj is not None else None

    def device_info(self) -> dict[str, Any]:
        """What env.json records of this GPU: driver, UUID, clocks, power limit. A query that
        fails is left out and ``reason`` says which and why; nothing here raises."""
        nv, h = self._nv, self._h
        queries: list[tuple[str, Callable[[], Any]]] = [
            ("driver", lambda: nv.nvmlSystemGetDriverVersion()),
            ("cuda_driver_version", lambda: nv.nvmlSystemGetCudaDriverVersion_v2()),
            ("uuid", lambda: nv.nvmlDeviceGetUUID(h)),
            ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            ("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            ("max_sm_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
            ("max_mem_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)),
            ("power_limit_mw", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h)),
            ("persistence_mode", lambda: nv.nvmlDeviceGetPersistenceMode(h)),
        ]
        info: dict[str, Any] = {"available": True}
        unread = []
        for key, query in queries:
            try:
                value = query()
            except Exception as exc:  # unsupported here, a binding without the call, a bad driver
                unread.append(f"{key} ({type(exc).__name__}: {exc})")
                continue
            info[key] = value.decode() if isinstance(value, bytes) else value
        if unread:
            info["reason"] = "not read: " + "; ".join(unread)
        return info


class Sampler:
    """Samples ``read`` every ``interval`` s between ``__enter__`` and ``__exit__``."""

    def __init__(
        self,
        read: Callable[[], Reading],
        energy_j: Callable[[], Optional[float]] = lambda: None,
        interval: float = INTERVAL_S,
    ) -> None:
        self._read = read
        self._energy_j = energy_j
        self._interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.readings: list[Reading] = []
        self.seconds = 0.0
        self.energy: Optional[float] = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.readings.append(self._read())
            self._stop.wait(self._interval)

    def __enter__(self) -> Sampler:
        self._e0 = self._energy_j()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="cudastack-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.readings.append(self._read())  # the window's last moment, also for short windows
        self.seconds = time.perf_counter() - self._t0
        e1 = self._energy_j()
        if self._e0 is not None and e1 is not None:
            self.energy = e1 - self._e0

    def metrics(self, items: Optional[float] = None) -> list[Metric]:
        """One value per metric for the window; ``energy_per_item`` when ``items`` is given."""
        return window_metrics(self.readings, self.seconds, self.energy, items)


def _values(readings: list[Reading], field: str) -> list[float]:
    return [float(v) for r in readings if (v := getattr(r, field)) is not None]


def window_metrics(
    readings: list[Reading], seconds: float, energy_j: Optional[float], items: Optional[float]
) -> list[Metric]:
    """Summaries of one measured window's samples. Energy is the board's counter when it has
    one, else mean power x time (coarser: 100 ms samples miss short peaks)."""
    out: list[Metric] = []
    power = _values(readings, "power_w")
    if power:
        out.append(Metric("power_w", "W", "lower", [statistics.fmean(power)]))
        if energy_j is None:
            energy_j = statistics.fmean(power) * seconds
    sm = _values(readings, "sm_clock_mhz")
    if sm:
        out.append(Metric("sm_clock_mhz", "MHz", "higher", [statistics.median(sm)]))
    mem = _values(readings, "mem_clock_mhz")
    if mem:
        out.append(Metric("mem_clock_mhz", "MHz", "higher", [statistics.median(mem)]))
    temp = _values(readings, "temp_c")
    if temp:
        out.append(Metric("temp_c", "°C", "lower", [max(temp)]))
    util = _values(readings, "util_pct")
    if util:
        out.append(Metric("gpu_util_pct", "%", "higher", [statistics.fmean(util)]))
    reasons = [r.reasons for r in readings if r.reasons is not None]
    if reasons:
        throttled = sum(1 for r in reasons if r & THROTTLE_MASK) / len(reasons)
        # A flag (1 = some samples were throttled) and how much of the window was.
        out.append(Metric("throttled", "flag", "lower", [1.0 if throttled else 0.0]))
        out.append(Metric("throttled_pct", "%", "lower", [100 * throttled]))
    if energy_j is not None and items:
        out.append(Metric("energy_per_item", "J/item", "lower", [energy_j / items]))
    return out
