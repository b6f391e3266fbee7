"""The Slurm test cluster itself: a job array runs on it, and it keeps no accounting."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from slurm_env import slurm_env

pytestmark = pytest.mark.slurm


def test_job_array_runs_every_task_on_the_node(slurm, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "job.sbatch"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$SLURM_ARRAY_TASK_ID $(hostname)" > {out}/task-$SLURM_ARRAY_TASK_ID.txt\n'
    )
    done = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--array=0-1",
            f"--partition={slurm.partition}",
            "--ntasks=1",
            "--cpus-per-task=1",
            f"--output={tmp_path}/slurm-%A_%a.out",
            str(script),
        ],
        env=slurm_env(slurm),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"Submitted batch job \d+\n", done.stdout), done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["task-0.txt", "task-1.txt"]
    for task in (0, 1):
        task_id, host = (out / f"task-{task}.txt").read_text().split()
        assert task_id == str(task)
        assert host.split(".")[0] == slurm.node
    # sbatch --wait returns once the job is finished, which can be a moment before its node
    # is released (state COMPLETING, still listed); then squeue lists nothing.
    deadline = time.monotonic() + 15
    while (queue := slurm.run("squeue", "-h", "-o", "%i %T", check=True).stdout) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert queue == ""


def test_node_has_this_machines_cpus(slurm):
    node = slurm.run("scontrol", "show", "node", slurm.node, check=True).stdout
    assert f"NodeName={slurm.node} " in node
    assert re.search(rf"\bCPUTot={slurm.cpus}\b", node), node
    assert re.search(r"\bState=IDLE\b", node), node
    assert f"Partitions={slurm.partition}" in node


def test_sacct_is_unavailable_without_accounting(slurm):
    """The test cluster has no accounting storage, so code that follows jobs must do without
    sacct (squeue, scontrol and each task's own exit file): this is what it sees."""
    result = slurm.run("sacct", "--noheader", "--allocations")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "Slurm accounting storage is disabled\n"
