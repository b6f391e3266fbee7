"""The benchmark context with real torch on the CPU: checks, skips, inputs, measuring."""

import pytest
import torch

from cudastack.context import CheckFailed, Context, Skip
from cudastack.suite import PROFILES


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
