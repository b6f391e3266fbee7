"""A CPU's spec peak FLOP rate: physical cores used × clock × FLOP per cycle of its vector ISA.

Environment side, standard library only: read from /proc/cpuinfo and sysfs, never measured.
"""

# The FLOP per cycle of a core is that of its FMA units: lanes per vector x 2 FLOP per fused
# multiply-add x units that issue one each cycle; fp64 has half the lanes of fp32. The flags
# say which vector ISA a core has, not how many FMA units it has, so each figure below is for
# the parts that have the most of them; a part with fewer reaches part of it (the method says
# which figure was used):
# - AVX-512 (avx512f): two 512-bit FMA units, 64 fp32 FLOP/cycle: Intel Xeon Scalable Gold 6xxx
#   and Platinum (Bronze, Silver and some Gold 5xxx have one unit: half), AMD Zen 5 desktop and
#   server (family 1Ah). AMD Zen 4 (family 19h with AVX-512) runs 512-bit operations on its two
#   256-bit FMA pipes in two halves: 32.
# - AVX2 with FMA: two 256-bit FMA units, 32 fp32 FLOP/cycle: Intel from Haswell on, AMD Zen 2
#   and later. AMD Zen and Zen+ (family 17h, models below 30h) have two 128-bit FMA pipes: 16.
# Other ISAs (SSE only, AVX without FMA, aarch64, whose NEON/SVE pipe count varies by core and is
# not in /proc/cpuinfo) have no figure here: no peak, and the reason says so.
#
# The clock is the highest the core is specified for: cpufreq's cpuinfo_max_freq (the boost
# clock where the driver reports one), else the "@ 2.90GHz" of an Intel model name (the base
# clock). "cpu MHz" is not used: on bare metal it is the clock of the moment, and under a
# hypervisor the nominal clock, below the boost clock the cores run at (a 2-core Zen 4 VM whose
# "cpu MHz" is 2596 ran fp32 GEMMs at 199 GFLOP/s, above 2 × 2.596 GHz × 32 = 166).

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

CPUINFO = Path("/proc/cpuinfo")
MAX_FREQ = "/sys/devices/system/cpu/cpu{}/cpufreq/cpuinfo_max_freq"  # in kHz

_INTEL = (
    "Intel 64 and IA-32 Architectures Optimization Reference Manual (order no. 248966): two "
    "256-bit FMA units from Haswell on, two 512-bit FMA units on Xeon Scalable Gold 6xxx and "
    "Platinum"
)
_ZEN4 = (
    "AMD Software Optimization Guide for AMD Family 19h Processors (pub. 56665): two 256-bit "
    "FMA pipes, 512-bit operations issued as two 256-bit halves; A. Yee, Zen4 and Zen5 AVX512 "
    "teardowns, http://numberworld.org/blogs/2024_8_7_zen5_avx512_teardown"
)
_ZEN1 = (
    "AMD Software Optimization Guide for AMD Family 17h Processors (pub. 55723): two 128-bit "
    "FMA pipes"
)
# Memory bandwidth has no figure a CPU reports: it depends on the DIMMs and channels populated.
NO_MEMORY_SPEC = (
    "no spec for a CPU's memory bandwidth: it depends on the memory channels and DIMMs "
    "populated, which the OS does not report (the copy ceiling measures what is achievable)"
)


@dataclass(frozen=True)
class Isa:
    """The vector ISA found, with its fp32 FLOP per cycle per core and how that is counted."""

    label: str  # e.g. "AVX2 FMA"
    fp32_per_cycle: int
    how: str  # the product the figure is, e.g. "2 FMA units × 8 fp32 lanes × 2 FLOP"
    source: str


def vector_isa(flags: Iterable[str], vendor: str = "", family: int = 0, model: int = 0) -> Isa:
    """The vector ISA a core with these /proc/cpuinfo ``flags`` (and vendor_id, cpu family,
    model) computes with. Raises LookupError naming the flags found when none has a figure."""
    have = set(flags)
    amd = vendor == "AuthenticAMD"
    if "avx512f" in have:
        if amd and family == 0x19:
            return Isa(
                "AVX-512 on Zen 4", 32, "2 FMA pipes × 8 fp32 lanes (256 bits) × 2 FLOP", _ZEN4
            )
        return Isa("AVX-512", 64, "2 FMA units × 16 fp32 lanes × 2 FLOP", _INTEL)
    if "avx2" in have and "fma" in have:
        if amd and family == 0x17 and model < 0x30:
            return Isa(
                "AVX2 FMA on Zen 1", 16, "2 FMA pipes × 4 fp32 lanes (128 bits) × 2 FLOP", _ZEN1
            )
        return Isa("AVX2 FMA", 32, "2 FMA units × 8 fp32 lanes × 2 FLOP", _INTEL)
    vector = sorted(f for f in have if f.startswith(("avx", "sse", "asimd", "sve", "neon")))
    raise LookupError(
        "no FLOP-per-cycle figure for this CPU's vector ISA (AVX-512 and AVX2 with FMA have "
        f"one); its flags have {', '.join(vector) or 'no vector extension'}"
    )


@dataclass(frozen=True)
class Clock:
    """The clock the peak is stated at, in GHz, and where it was read."""

    ghz: float
    source: str  # "cpuinfo_max_freq" or "model name"


def clock(max_freq_khz: Optional[str], model_name: str) -> Clock:
    """The clock from cpufreq's cpuinfo_max_freq text (kHz), else the model name's "@ x.xxGHz".
    Raises LookupError when neither states one."""
    if max_freq_khz is not None and max_freq_khz.strip().isdigit() and int(max_freq_khz) > 0:
        return Clock(int(max_freq_khz) / 1e6, "cpuinfo_max_freq")
    m = re.search(r"@\s*(\d+(?:\.\d+)?)\s*GHz", model_name)
    if m:
        return Clock(float(m.group(1)), "model name")
    raise LookupError(
        "no clock: no cpufreq cpuinfo_max_freq here (a VM often has none) and the model name "
        f"{model_name!r} states none"
    )


def processors(cpuinfo: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict of its fields per logical CPU."""
    out: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", cpuinfo.strip()):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in block.splitlines())
        )
        if "processor" in fields:
            out.append(fields)
    return out


def physical_cores(cpus: list[dict[str, str]], allowed: Iterable[int]) -> tuple[int, str]:
    """Physical cores among the ``allowed`` logical CPUs, and a note when it is a guess: the
    hyperthreads of one core share its FMA units, so they count once."""
    wanted = set(allowed)
    mine = [c for c in cpus if c["processor"].isdigit() and int(c["processor"]) in wanted]
    if mine and all("core id" in c for c in mine):
        return len({(c.get("physical id", "0"), c["core id"]) for c in mine}), ""
    return len(wanted), " (no core ids in /proc/cpuinfo: logical CPUs counted as cores)"


@dataclass(frozen=True)
class CpuPeak:
    """A CPU's spec peaks in TFLOP/s per dtype, with how they were derived, or why none."""

    values: Optional[dict[str, float]]
    method: str = ""  # one line: the product the figure is, each factor with its source
    source: str = ""  # the documents the FLOP-per-cycle figure is from
    reason: str = ""  # why there is no peak; empty when there is

    def record(self) -> dict[str, Any]:
        """What env.json keeps under ``cpu.peaks``: the figures % of peak is against, how they
        were derived and from which documents, or why there are none; and why no memory peak."""
        if self.values is None:
            return {"values": None, "reason": self.reason, "mem": NO_MEMORY_SPEC}
        return {
            "values": self.values,
            "method": self.method,
            "source": self.source,
            "mem": NO_MEMORY_SPEC,
        }


def derive(
    cpuinfo: str, max_freq_khz: Optional[str], threads: int, allowed: Iterable[int]
) -> CpuPeak:
    """The fp32 and fp64 peaks of the cores ``threads`` torch threads use among the ``allowed``
    logical CPUs, from /proc/cpuinfo's text and cpuinfo_max_freq's (kHz; None where absent).

    cores = min(threads, physical cores among the allowed CPUs); peak = cores × clock × FLOP
    per cycle; fp64 half of fp32. No peak, with the reason, when any factor is unknown."""
    allowed = sorted(allowed) or [0]
    cpus = processors(cpuinfo)
    first = next((c for c in cpus if c.get("processor") == str(allowed[0])), None)
    if first is None:
        first = cpus[0] if cpus else {}
    try:
        isa = vector_isa(
            first.get("flags", "").split(),
            first.get("vendor_id", ""),
            _int(first.get("cpu family", "")),
            _int(first.get("model", "")),
        )
        ghz = clock(max_freq_khz, first.get("model name", ""))
    except LookupError as exc:
        return CpuPeak(None, reason=str(exc))
    physical, note = physical_cores(cpus, allowed)
    cores = max(1, min(threads, physical))
    fp32 = cores * ghz.ghz * isa.fp32_per_cycle / 1e3  # GHz x FLOP/cycle = GFLOP/s; in TFLOP/s
    method = (
        f"{cores} cores ({threads} torch threads, {physical} physical cores usable{note}) × "
        f"{ghz.ghz:.2f} GHz ({ghz.source}) × {isa.fp32_per_cycle} FLOP/cycle ({isa.label}: "
        f"{isa.how}), fp32; fp64 half"
    )
    return CpuPeak({"fp32": fp32, "fp64": fp32 / 2}, method, isa.source)


def _int(text: str) -> int:
    try:
        return int(text, 0) if text.startswith("0x") else int(text)
    except ValueError:
        return 0


def for_this_cpu(threads: int) -> CpuPeak:
    """The peak of this machine's CPU for ``threads`` torch threads (torch.get_num_threads()),
    among the CPUs this process may run on."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError as exc:
        return CpuPeak(None, reason=f"cannot read {CPUINFO}: {exc.strerror}")
    try:
        max_freq: Optional[str] = Path(MAX_FREQ.format(allowed[0])).read_text()
    except OSError:
        max_freq = None
    return derive(cpuinfo, max_freq, threads, allowed)
