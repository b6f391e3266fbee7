"""On a cluster that keeps accounting (slurmdbd), as real ones do: the host says nothing of a
missing sacct, and a task scontrol has forgotten is told by sacct (state, node, exit code)."""

from __future__ import annotations

import time

import pytest
from conftest import cli

from cudastack.contract.errors import EXIT_FAILED
from cudastack.host.run import slurm as slurm_launcher

pytestmark = pytest.mark.slurm

# The cell "crashes" dies in its first case with exit code 3; any other cell passes.
BENCH = '''"""A quick case, or a crash, by the cell's name."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [0]}


def run(ctx, n):
    import os
    import sys

    from cudastack.environment.context import Metric

    if sys.argv[sys.argv.index("--cell") + 1] == "crashes":
        os._exit(3)
    return [Metric("latency", "ms", "lower", [1.0, 1.1, 1.2])]
'''


def test_a_task_scontrol_has_forgotten_is_told_by_sacct(slurm_accounting, make_bench, tmp_path):
    cluster = slurm_accounting
    bench = make_bench("quick", BENCH)
    out = tmp_path / "run"
    argv = ["run", "--launcher", "slurm", "--partition", cluster.partition, "--bench-dir"]
    argv += [str(bench), "--profile", "smoke", "--out", str(out), "--cell", "crashes,fine"]
    proc = cli(*argv, env=cluster.env, timeout=600)
    assert proc.returncode == EXIT_FAILED, proc.stdout[-3000:] + proc.stderr
    assert "Slurm keeps no accounting" not in proc.stdout  # sacct answered at submission
    ((job, cells),) = slurm_launcher.submitted_arrays(out).items()
    tasks = {cell: f"{job}_{index}" for cell, (index, _) in cells.items()}

    def scontrol_knows() -> list[str]:
        return [
            t for t in tasks.values() if not cluster.run("scontrol", "show", "job", t).returncode
        ]

    # The controller purges a job MinJobAge (2 s) after it ended, at its next purge (a minute
    # apart): from then on, scontrol no longer knows it.
    deadline = time.monotonic() + 180
    while scontrol_knows():
        assert time.monotonic() < deadline, f"scontrol still knows {scontrol_knows()} after 180 s"
        time.sleep(2)
    # What the launcher asks when squeue no longer lists a task: now sacct's answer.
    crashed = slurm_launcher.ended_task(job, cells["crashes"][0], cluster.env)
    assert crashed == ("FAILED", cluster.node, "3:0")
    fine = slurm_launcher.ended_task(job, cells["fine"][0], cluster.env)
    assert fine == ("COMPLETED", cluster.node, "0:0")
    assert not scontrol_knows()  # ... and not scontrol's, which still does not know them
