"""Telemetry: window summaries of NVML-shaped readings, the sampler thread, and CPU runs."""

import time

import pytest

from cudastack.telemetry import Reading, Sampler, window_metrics


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
    from cudastack.telemetry import Nvml

    nvml = Nvml(FakeBinding(), handle=object())
    r = nvml.read()
    assert (r.sm_clock_mhz, r.mem_clock_mhz, r.temp_c, r.util_pct) == (1980, 3201, 55, 97)
    assert r.power_w is None and r.reasons == 0x4
    assert nvml.energy_j() == pytest.approx(123.456)


def test_no_nvidia_gpu_means_no_sampler_and_a_reason():
    import torch

    from cudastack.telemetry import Nvml

    nvml, why = Nvml.open(torch, torch.device("cpu"))
    assert nvml is None and why == "none: no NVIDIA GPU in use (device cpu)"
