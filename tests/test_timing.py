"""The timers' stop rules and what they measure, with real calls on the CPU."""

import time

import pytest

from cudastack import timing
from cudastack.context import rate_metrics
from cudastack.timing import TimerSettings


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


def test_budget_stops_a_slow_noisy_case():
    durations = iter([0.001, 0.02] * 1000)
    samples = timing.time_cpu(
        lambda: time.sleep(next(durations)),
        settings(budget_s=0.15, max_reps=10_000, noise_target=0.01),
    )
    assert 3 <= len(samples) < 100


def test_rates_derive_from_each_sample():
    metrics = {m.name: m for m in rate_metrics([0.5, 0.25], flops=1e12, nbytes=2e9, peak=8.0)}
    assert metrics["latency"].values == [500.0, 250.0]
    assert metrics["latency"].unit == "ms"
    assert metrics["tflops"].values == [2.0, 4.0]
    assert metrics["gbps"].values == [4.0, 8.0]
    assert metrics["pct_of_peak"].values == pytest.approx([25.0, 50.0])  # of the compute peak
    assert {m.better for m in metrics.values()} == {"lower", "higher"}
    assert "pct_of_peak" not in {m.name for m in rate_metrics([1.0], flops=1.0)}


def test_max_reps_holds_between_noise_checkpoints():
    durations = iter([0.0001, 0.002] * 1000)
    samples = timing.time_cpu(
        lambda: time.sleep(next(durations)), settings(min_reps=5, max_reps=13, noise_target=0.0)
    )
    assert len(samples) == 13


def test_extra_work_makes_each_call_that_fraction_slower():
    plain = timing.time_cpu(lambda: time.sleep(0.004), settings(max_reps=5))
    slower = timing.time_cpu(
        timing.with_extra_work(lambda: time.sleep(0.004), 0.5), settings(max_reps=5)
    )
    assert min(slower) >= 1.5 * 0.004
    assert sorted(slower)[2] > 1.3 * sorted(plain)[2]
