"""Achievable ceilings: which the planned cases name, how each is counted, real ones on the CPU."""

import json
import math
from pathlib import Path

import pytest
import torch

from cudastack.environment import ceilings, suite
from cudastack.environment.context import Context
from cudastack.environment.suite import DEFAULT_BENCH_DIR, PROFILES

SPECS = suite.discover(DEFAULT_BENCH_DIR)


@pytest.mark.parametrize(
    ("benches", "named"),
    [
        (["gemm"], ["fp32", "bf16"]),  # quick's two dtypes, each case's own
        (["elementwise", "bandwidth"], ["mem"]),  # their host-link cases name none
        (["gemm", "conv", "sdpa", "elementwise"], ["fp32", "bf16", "mem"]),
        # Workloads are no kernel (their rate is not one operation's), launch names no ceiling:
        # such a run measures nothing before its cases.
        (["train_gpt", "infer_precision", "seed_cnn", "launch"], []),
    ],
)
def test_the_ceilings_a_run_measures_are_those_its_kernel_cases_name(benches, named):
    cases = suite.plan(SPECS, "quick", benches)
    assert suite.ceilings_named(SPECS, cases) == named


def test_a_case_s_ceiling_is_its_bench_s_declaration_with_its_parameters_filled_in():
    (case,) = suite.plan(SPECS, "quick", ["gemm"], {"dtype": ["bf16"], "n": ["512"]})
    assert SPECS["gemm"].ceiling_for(case) == "bf16"
    (copy,) = suite.plan(SPECS, "quick", ["bandwidth"], {"copy": ["d2d"]})
    assert SPECS["bandwidth"].ceiling_for(copy) == "mem"
    assert SPECS["launch"].ceiling == ""


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ('CEILING = "{size}"', r"CEILING names \['size'\], which PARAMS does not have"),
        ('CEILING = ["mem"]', "CEILING must be a peak name in quotes"),
        ('CEILING = "mem bandwidth"', "CEILING must be a peak name in quotes"),
        ("CEILING = PEAK", "CEILING must be a peak name in quotes"),
    ],
)
def test_a_malformed_ceiling_declaration_is_named_with_what_to_write(
    make_bench, declaration, message
):
    source = (
        f'KIND = "kernel"\nHEADLINE = "tflops"\nPARAMS = {{"dtype": ["fp32"]}}\n{declaration}\n'
    )
    folder = make_bench("b", source)
    with pytest.raises(suite.SuiteError, match=message):
        suite.discover(folder)


def test_a_cpu_measures_fp32_and_the_copy_a_gpu_every_dtype_named():
    named = ["fp32", "bf16", "mem", "h2d", "int8_dynamic"]
    ids = [c.id for c in ceilings.cases(named, "cpu")]
    assert ids == ["ceiling[what=matmul,dtype=fp32]", "ceiling[what=copy]"]
    gpu = ceilings.cases(named, "cuda")
    assert [c.id for c in gpu] == [
        "ceiling[what=matmul,dtype=fp32]",
        "ceiling[what=matmul,dtype=bf16]",
        "ceiling[what=copy]",
    ]  # h2d and a precision with no matmul have none
    assert [ceilings.peak_of(c) for c in gpu] == ["fp32", "bf16", "mem"]
    assert [ceilings.declared(c)["headline"] for c in gpu] == ["tflops", "tflops", "gbps"]
    assert ceilings.cases([], "cuda") == []


def test_the_sweep_takes_the_best_size_and_stops_after_a_long_call():
    # Known times per size: the rate is 2 n^3 FLOP over the call's seconds.
    times = {256: 1e-3, 512: 4e-3, 1024: 0.02, 2048: 0.1}
    seen = []

    def best_seconds(n):
        seen.append(n)
        return times[n]

    best = ceilings.sweep((256, 512, 1024, 2048), best_seconds, long_call_s=0.01)
    assert seen == [256, 512, 1024]  # 1024's call took 20 ms: no bigger size is tried
    assert best == pytest.approx(max(2 * n**3 / times[n] / 1e12 for n in seen))
    assert best == pytest.approx(2 * 1024**3 / 0.02 / 1e12)  # 0.107 TFLOP/s at n = 1024


def test_the_copy_counts_each_byte_read_and_written():
    # 1 GiB copied in a second moves 2 GiB: read once, written once, as data sheets count.
    assert ceilings.copy_gbps(2**30, 1.0) == pytest.approx(2 * 2**30 / 1e9)


def test_ceilings_reach_a_child_process_as_text_and_nothing_else_passes():
    found = {"fp32": 0.1, "mem": 25.0}
    assert ceilings.decode(ceilings.encode(found)) == found
    for text in ("", "not json", "[1, 2]", json.dumps({"fp32": "fast", "mem": -1, "x": math.inf})):
        assert ceilings.decode(text) == {}


@pytest.fixture
def ctx():
    return Context(torch, torch.device("cpu"), PROFILES["quick"], None)


def test_real_ceilings_on_this_cpu_are_one_best_sample_each(ctx):
    (matmul,) = ceilings.run(ctx, "matmul", "fp32")
    assert (matmul.name, matmul.unit, matmul.better) == ("tflops", "TFLOP/s", "higher")
    assert len(matmul.values) == 1 and 0 < matmul.values[0] < 100
    (copy,) = ceilings.run(ctx, "copy")
    assert (copy.name, copy.unit) == ("gbps", "GB/s")
    assert len(copy.values) == 1 and 0 < copy.values[0] < 10_000


def test_the_last_level_cache_is_read_from_sysfs():
    # The copy's buffer is twice it: without a size read, the copy could be served from cache.
    index = Path("/sys/devices/system/cpu/cpu0/cache/index0/size")
    if not index.exists():
        pytest.skip("no sysfs cache description here")
    assert ceilings.last_level_cache_bytes() >= 256 * 2**10  # every current CPU has more
