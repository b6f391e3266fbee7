"""A CPU's spec peak: cores x clock x FLOP per cycle, from fixed /proc/cpuinfo and sysfs text."""

import platform
import re

import pytest
import torch

from cudastack.environment import ceilings, cpu_peak
from cudastack.environment.context import Context
from cudastack.environment.suite import PROFILES


def cpuinfo(
    flags: str,
    *,
    cpus: int = 2,
    cores: int = 2,
    vendor: str = "GenuineIntel",
    family: int = 6,
    model: int = 106,
    name: str = "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
    core_ids: bool = True,
) -> str:
    """/proc/cpuinfo as Linux writes it for ``cpus`` logical CPUs over ``cores`` physical ones
    (hyperthread siblings share a core id), one socket."""
    blocks = []
    for cpu in range(cpus):
        ids = f"physical id\t: 0\ncore id\t\t: {cpu % cores}\n" if core_ids else ""
        blocks.append(
            f"processor\t: {cpu}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
            f"model\t\t: {model}\nmodel name\t: {name}\ncpu MHz\t\t: 2596.138\n{ids}"
            f"siblings\t: {cpus}\ncpu cores\t: {cores}\nflags\t\t: fpu sse sse2 {flags}\n"
        )
    return "\n".join(blocks) + "\n"


AVX512 = "avx avx2 fma avx512f avx512dq"
AVX2 = "avx avx2 fma"


# Each figure worked out by hand: cores x GHz x FLOP/cycle, GFLOP/s, for 2 threads on 2 cores.
@pytest.mark.parametrize(
    ("text", "max_freq", "gflops", "clock", "isa"),
    [
        # Ice Lake server, two 512-bit FMA units: 2 x 3.5 GHz x 64.
        (cpuinfo(AVX512), "3500000", 2 * 3.5 * 64, "cpuinfo_max_freq", "AVX-512"),
        # Zen 4 (family 19h with AVX-512): 512-bit operations on two 256-bit pipes, 32.
        (
            cpuinfo(AVX512, vendor="AuthenticAMD", family=25, model=17, name="AMD EPYC 9R14"),
            "3700000",
            2 * 3.7 * 32,
            "cpuinfo_max_freq",
            "AVX-512 on Zen 4",
        ),
        # Haswell and later without AVX-512: two 256-bit FMA units, 32.
        (cpuinfo(AVX2), "2450000", 2 * 2.45 * 32, "cpuinfo_max_freq", "AVX2 FMA"),
        # Zen 1 (family 17h, model below 30h): two 128-bit FMA pipes, 16.
        (
            cpuinfo(AVX2, vendor="AuthenticAMD", family=23, model=1, name="AMD EPYC 7601"),
            "2700000",
            2 * 2.7 * 16,
            "cpuinfo_max_freq",
            "AVX2 FMA on Zen 1",
        ),
        # No cpufreq (a VM): the model name's clock.
        (cpuinfo(AVX2), None, 2 * 2.9 * 32, "model name", "AVX2 FMA"),
    ],
)
def test_peak_is_cores_times_clock_times_flop_per_cycle(text, max_freq, gflops, clock, isa):
    found = cpu_peak.derive(text, max_freq, threads=2, allowed=[0, 1])
    assert found.values is not None, found.reason
    assert found.values["fp32"] == pytest.approx(gflops / 1e3)  # TFLOP/s
    assert found.values["fp64"] == pytest.approx(gflops / 2e3)  # half the lanes
    record = found.record()
    assert "2 cores (2 torch threads, 2 physical cores usable) × " in record["method"]
    assert f"GHz ({clock}) × " in record["method"] and f"FLOP/cycle ({isa}: " in record["method"]
    assert record["source"] and "memory channels" in record["mem"]


@pytest.mark.parametrize(
    ("text", "max_freq", "reason"),
    [
        # SSE only: no figure for its ISA.
        (cpuinfo("avx"), "3000000", r"no FLOP-per-cycle figure .* its flags have avx, sse, sse2$"),
        # A clock neither cpufreq nor the model name states.
        (cpuinfo(AVX2, name="AMD EPYC"), None, r"^no clock: .*model name 'AMD EPYC' states none"),
        (cpuinfo(AVX2, name="AMD EPYC"), "0", r"^no clock: "),  # a driver reporting nothing
    ],
)
def test_no_peak_where_a_factor_is_unknown_and_the_reason_says_which(text, max_freq, reason):
    found = cpu_peak.derive(text, max_freq, threads=2, allowed=[0, 1])
    assert found.values is None
    assert re.search(reason, found.reason), found.reason
    record = found.record()
    assert record["values"] is None and record["reason"] == found.reason and record["mem"]


@pytest.mark.parametrize(
    ("threads", "allowed", "cores"),
    [
        (8, range(8), 4),  # 8 hyperthreads on 4 cores: siblings share a core's FMA units
        (2, range(8), 2),  # torch uses 2 threads: 2 cores' worth
        (8, [0, 4], 1),  # taskset to two siblings of core 0
        (8, [0, 1], 2),  # ... or to two cores
    ],
)
def test_cores_are_the_physical_cores_torch_s_threads_may_use(threads, allowed, cores):
    text = cpuinfo(AVX2, cpus=8, cores=4)
    found = cpu_peak.derive(text, "2000000", threads=threads, allowed=allowed)
    assert found.values is not None
    assert found.values["fp32"] == pytest.approx(cores * 2.0 * 32 / 1e3)
    assert found.method.startswith(f"{cores} cores ")


def test_without_core_ids_logical_cpus_count_and_the_method_says_so():
    text = cpuinfo(AVX2, cpus=4, cores=4, core_ids=False)
    found = cpu_peak.derive(text, "2000000", threads=4, allowed=range(4))
    assert found.values is not None and found.values["fp32"] == pytest.approx(4 * 2.0 * 32 / 1e3)
    assert "logical CPUs counted as cores" in found.method


def test_this_machine_s_peak_is_derived_or_says_why_not():
    found = cpu_peak.for_this_cpu(torch.get_num_threads())
    if found.values is None:
        # This 2-core VM: no cpufreq and a model name ("AMD EPYC") without a clock.
        assert found.reason.startswith(("no clock", "no FLOP-per-cycle")), found.reason
        return
    cores = int(found.method.split()[0])
    assert 1 <= cores <= torch.get_num_threads()
    # Some GHz between 0.5 and 6, and one of the tabled FLOP per cycle figures.
    assert 0.5 * 16 * cores / 1e3 <= found.values["fp32"] <= 6 * 64 * cores / 1e3
    if "(cpuinfo_max_freq)" in found.method:
        # At the highest clock the cores are specified for, no GEMM outruns the peak (the
        # model name's clock is the base clock, which boost exceeds: not checked there).
        ctx = Context(torch, torch.device("cpu"), PROFILES["quick"], None)
        (best,) = ceilings.run(ctx, "matmul", "fp32")[0].values
        assert best <= 1.05 * found.values["fp32"], (best, found.method)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86 flags table")
def test_this_machine_s_vector_isa_is_found():
    text = cpu_peak.CPUINFO.read_text()
    (first, *_) = cpu_peak.processors(text)
    flags = first["flags"].split()
    if "avx2" not in flags:
        pytest.skip("no AVX2 here")
    isa = cpu_peak.vector_isa(
        flags, first["vendor_id"], int(first["cpu family"]), int(first["model"])
    )
    assert isa.fp32_per_cycle in (16, 32, 64)
