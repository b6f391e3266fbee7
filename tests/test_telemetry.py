"""Telemetry: window summaries of NVML-shaped readings, the sampler thread, and CPU runs."""

import time

import pytest

from cudastack.environment.telemetry import Reading, Sampler, window_metrics


def reading(t, power=None, sm=None, reasons=None, temp=None):
    return Reading(t, sm, None, power, temp, None, reasons)


def by_name(metrics):
    return {m.name: m.values for m in metrics}


def test_energy_prefers_the_boards_counter_and_falls_back_to_mean_power():
    rs = [reading(0, power=100.0), reading(1, power=300.0)]
    assert by_name(window_metrics(rs, 2.0, energy_j=50.0, items=10))["energy_per_item"] == [5.0]
    # no counter: mean power (200 W) x 2 s = 400 J over 10 items
    m = by_name(window_metrics(rs, 2.0, energy_j=None, items=10))
    assert m["power_w"] == [200.0] and m["energy_per_item"] == [40.0]
    assert "energy_per_item" not in by_name(window_metrics(rs, 2.0, None, items=None))


def test_throttled_counts_power_and_thermal_reasons_not_idle():
    idle, app_clocks, power_cap, hw_thermal = 0x1, 0x2, 0x4, 0x40
    calm = [reading(i, reasons=r) for i, r in enumerate([idle, app_clocks, 0, 0])]
    m = by_name(window_metrics(calm, 1.0, None, None))
    assert m["throttled"] == [0.0] and m["throttled_pct"] == [0.0]
    hot = [reading(i, reasons=r) for i, r in enumerate([0, power_cap, hw_thermal | idle, 0])]
    m = by_name(window_metrics(hot, 1.0, None, None))
    assert m["throttled"] == [1.0] and m["throttled_pct"] == [50.0]


def test_fields_a_board_does_not_report_are_left_out_not_invented():
    m = by_name(window_metrics([reading(0, sm=1980.0, temp=61.0)], 1.0, None, 5))
    assert m == {"sm_clock_mhz": [1980.0], "temp_c": [61.0]}


def test_the_sampler_reads_about_every_interval_until_the_window_ends():
    ticks = []

    def read():
        ticks.append(time.perf_counter())
        return reading(ticks[-1], power=250.0)

    with Sampler(read, interval=0.05) as sampler:
        time.sleep(0.5)
    assert 6 <= len(sampler.readings) <= 13  # 11 expected: start, 9 ticks, and the window's end
    assert sampler.seconds == pytest.approx(0.5, abs=0.1)
    m = by_name(sampler.metrics(items=100))
    assert m["power_w"] == [250.0]
    assert m["energy_per_item"] == pytest.approx([250.0 * sampler.seconds / 100])


class FakeBinding:
    """The slice of nvidia-ml-py that Nvml calls, as an older binding with a board that lacks
    a power sensor: no GPU is needed to check names, units and gaps."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    def nvmlDeviceGetPowerUsage(self, handle):
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return {1: 1980, 2: 3201}[clock]

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 55

    def nvmlDeviceGetUtilizationRates(self, handle):
        return type("Utilization", (), {"gpu": 97, "memory": 40})()

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        return 0x4  # no ...ClocksEventReasons in this binding: the older name answers

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return 123_456  # mJ


def test_nvml_readings_convert_units_and_leave_unsupported_fields_empty():
    from cudastack.environment.telemetry import Nvml

    nvml = Nvml(FakeBinding(), handle=object())
    r = nvml.read()
    assert (r.sm_clock_mhz, r.mem_clock_mhz, r.temp_c, r.util_pct) == (1980, 3201, 55, 97)
    assert r.power_w is None and r.reasons == 0x4
    assert nvml.energy_j() == pytest.approx(123.456)


def test_no_nvidia_gpu_means_no_sampler_and_a_reason():
    import torch

    from cudastack.environment.telemetry import Nvml

    nvml, why = Nvml.open(torch, torch.device("cpu"))
    assert nvml is None and why == "none: no NVIDIA GPU in use (device cpu)"


class TwoGpus(FakeBinding):
    """Two boards as NVML numbers them: in host order, blind to CUDA_VISIBLE_DEVICES."""

    BOARDS = (
        {"uuid": "GPU-0f9e3a12-7d4c-4b1a-8e2f-1c3d5e7f9a0b", "pci": "00000000:17:00.0",
         "clocks": {1: 1410, 2: 1215}, "max": {1: 1410, 2: 1215}, "limit_mw": 400_000},
        {"uuid": "GPU-6b2d8c44-1e9f-4a3b-9c7d-2e4f6a8b0c1d", "pci": "00000000:65:00.0",
         "clocks": {1: 1980, 2: 2619}, "max": {1: 1980, 2: 2619}, "limit_mw": 700_000},
    )  # fmt: skip

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.BOARDS)

    def _find(self, key, value):
        for i, board in enumerate(self.BOARDS):
            if board[key] == value.decode():
                return i
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return self._find("uuid", uuid)

    def nvmlDeviceGetHandleByPciBusId_v2(self, bus_id):
        return self._find("pci", bus_id)

    def nvmlSystemGetDriverVersion(self):
        return b"570.86.15"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 12080

    def nvmlDeviceGetUUID(self, handle):
        return self.BOARDS[handle]["uuid"]

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return self.BOARDS[handle]["clocks"][clock]

    def nvmlDeviceGetMaxClockInfo(self, handle, clock):
        return self.BOARDS[handle]["max"][clock]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self.BOARDS[handle]["limit_mw"]

    def nvmlDeviceGetPersistenceMode(self, handle):
        return 1


def second_gpu_seen_by_torch(monkeypatch, binding, **ids):
    """CUDA_VISIBLE_DEVICES=1: torch's cuda:0 is the host's second board, and its properties
    say so by UUID (torch prints it without NVML's "GPU-" prefix) or PCI bus id (``ids``)."""
    import sys
    from types import SimpleNamespace

    import torch

    props = SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=80 * 2**30,
        multi_processor_count=132, L2_cache_size=50 * 2**20, **ids,
    )  # fmt: skip
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_90"])
    monkeypatch.setitem(sys.modules, "pynvml", binding)
    return torch, torch.device("cuda", 0)


def env_nvml(torch, device):
    """env.json's NVML entry as the worker makes it: through telemetry's reader."""
    from cudastack.environment import envinfo
    from cudastack.environment.telemetry import Nvml

    nvml, note = Nvml.open(torch, device)
    return envinfo.fingerprint(torch, device, nvml=nvml, nvml_note=note)["gpu"]["nvml"]


def test_env_json_records_the_gpu_torch_uses_under_cuda_visible_devices(monkeypatch):
    uuid = TwoGpus.BOARDS[1]["uuid"]
    torch, device = second_gpu_seen_by_torch(monkeypatch, TwoGpus(), uuid=uuid[len("GPU-") :])
    info = env_nvml(torch, device)
    assert info["uuid"] == uuid and info["driver"] == "570.86.15"
    assert (info["sm_clock_mhz"], info["max_sm_clock_mhz"], info["power_limit_mw"]) == (
        1980, 1980, 700_000,
    )  # fmt: skip
    assert "reason" not in info


def test_without_a_uuid_the_gpu_is_found_by_its_pci_bus_id(monkeypatch):
    pci = {"pci_domain_id": 0, "pci_bus_id": 0x65, "pci_device_id": 0}
    torch, device = second_gpu_seen_by_torch(monkeypatch, TwoGpus(), **pci)
    assert env_nvml(torch, device)["uuid"] == TwoGpus.BOARDS[1]["uuid"]


def test_a_gpu_that_cannot_be_told_apart_gets_no_nvml_fields_and_a_reason(monkeypatch):
    # Neither UUID nor PCI bus id, and two boards: NVML's index 0 may be another one.
    torch, device = second_gpu_seen_by_torch(monkeypatch, TwoGpus())
    info = env_nvml(torch, device)
    assert info["available"] is False and "neither a UUID nor a PCI bus id" in info["reason"]
    assert "uuid" not in info and "power_limit_mw" not in info


class FlakyGpus(TwoGpus):
    """A board whose power limit NVML cannot read and a binding that fails in its own way."""

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetMaxClockInfo(self, handle, clock):
        raise RuntimeError("Driver/library version mismatch")


def test_nvml_queries_that_raise_are_left_out_with_the_reason_and_the_run_goes_on(monkeypatch):
    uuid = TwoGpus.BOARDS[1]["uuid"]
    torch, device = second_gpu_seen_by_torch(monkeypatch, FlakyGpus(), uuid=uuid)
    info = env_nvml(torch, device)
    assert info["available"] is True and info["uuid"] == uuid and info["sm_clock_mhz"] == 1980
    for key in ("power_limit_mw", "max_sm_clock_mhz", "max_mem_clock_mhz"):
        assert key not in info and key in info["reason"]
    assert "NVMLError: Not Supported" in info["reason"]
    assert "RuntimeError: Driver/library version mismatch" in info["reason"]


def test_nvml_that_fails_to_start_leaves_the_gpu_recorded_without_it(monkeypatch):
    class NoDriver(TwoGpus):
        def nvmlInit(self):
            raise self.NVMLError("Driver Not Loaded")

    torch, device = second_gpu_seen_by_torch(monkeypatch, NoDriver(), uuid="6b2d8c44")
    info = env_nvml(torch, device)
    assert info == {
        "available": False,
        "reason": "none: NVML unavailable (NVMLError: Driver Not Loaded)",
    }
