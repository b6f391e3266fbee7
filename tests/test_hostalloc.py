"""The worker fixes glibc malloc's thresholds, so a case's page faults (and speed) on a CPU no
longer depend on what ran before it; each variant runs in a fresh process."""

import ctypes.util
import glob
import json
import os
import subprocess
import sys

import pytest

from cudastack.environment import hostalloc

# 8 MiB buffers: above glibc's initial 128 KiB mmap threshold, below the 16 MiB one a freed
# 16 MiB buffer (the "fp64 check" here) raises it to.
PROBE = """
import json, resource, sys
from cudastack.environment import hostalloc
import torch
state = hostalloc.fix_thresholds() if sys.argv[1] == "fixed" else None
if sys.argv[2] == "check-first":
    torch.empty(2 * 1024 * 1024, dtype=torch.float64).fill_(1.0)  # 16 MiB, freed at once
def call():
    torch.empty(2 * 1024 * 1024, dtype=torch.float32).fill_(1.0)  # 8 MiB, freed at once
for _ in range(3):
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    call()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"faults_per_call": faults, "state": state}))
"""


def probe(mode: str, before: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, before], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_fixed_thresholds_give_every_call_the_same_state_whatever_ran_before():
    alone, after_check = probe("fixed", "alone"), probe("fixed", "check-first")
    # Every 8 MiB buffer mmapped afresh: one fault per 4 KiB page, 2,048, either way. Left
    # dynamic, glibc served the same call from its heap with anywhere from 100 to 700 faults,
    # depending on what ran before and on the heap's layout.
    assert alone["faults_per_call"] == pytest.approx(after_check["faults_per_call"], rel=0.02)
    assert alone["faults_per_call"] >= 2048
    assert alone["state"]["mmap_threshold_bytes"] == hostalloc.MMAP_THRESHOLD
    assert alone["state"]["allocator"].startswith("glibc ")


def test_the_users_own_malloc_settings_are_left_alone_and_other_tunables_are_not(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")  # common in CUDA images
    assert hostalloc.fix_thresholds()["mmap_threshold_bytes"] == hostalloc.MMAP_THRESHOLD
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert hostalloc.fix_thresholds()["reason"] == "set by the user: GLIBC_TUNABLES"
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert hostalloc.fix_thresholds()["reason"] == "set by the user: MALLOC_MMAP_THRESHOLD_"


def preloaded(library: str) -> dict:
    code = (
        "import json, cudastack.environment.hostalloc as h; print(json.dumps(h.fix_thresholds()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LD_PRELOAD": library},
    )
    return json.loads(out.stdout)


def test_a_preloaded_allocator_is_left_alone_and_a_preloaded_library_that_is_not_one_is_not():
    # LD_PRELOAD as such says nothing: only a malloc that is not libc's does.
    jemalloc = sorted(glob.glob("/usr/lib/*/libjemalloc.so.2"))
    assert jemalloc, "libjemalloc2 is missing (.ci/run installs it)"
    assert preloaded(jemalloc[0]) == {
        "allocator": "unchanged",
        "reason": f"malloc is not glibc's (LD_PRELOAD={jemalloc[0]})",
    }
    libc = ctypes.util.find_library("c") or "libc.so.6"
    assert preloaded(libc)["mmap_threshold_bytes"] == hostalloc.MMAP_THRESHOLD
