"""The worker fixes glibc malloc's thresholds, so a case's page faults (and speed) on a CPU no
longer depend on what ran before it; each variant runs in a fresh process."""

import json
import subprocess
import sys

import pytest

from cudastack import hostalloc

# 8 MiB buffers: above glibc's initial 128 KiB mmap threshold, below the 16 MiB one a freed
# 16 MiB buffer (the "fp64 check" here) raises it to.
PROBE = """
import json, resource, sys
from cudastack import hostalloc
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


def test_a_preloaded_allocator_or_the_users_own_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert hostalloc.fix_thresholds() == {
        "allocator": "unchanged",
        "reason": "LD_PRELOAD=libjemalloc.so.2",
    }
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert hostalloc.fix_thresholds()["reason"] == "set by the user: MALLOC_MMAP_THRESHOLD_"
