"""--resume across cells in containers: a container killed outright and a host killed outright,
then a resume that removes what the dead host left running and runs only what is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli
from docker_env import cpu_cell, write_matrix

from cudastack.contract.errors import EXIT_OK
from cudastack.contract.runfolder import RECORDS
from cudastack.host.analysis import results
from cudastack.host.run.container import RUN_LABEL

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]

# Five cases, the fourth held until the bench folder (mounted read-only) holds ``open``.
BENCH = '''"""Cases held at a gate."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [0, 1, 2, 3, 4]}


def run(ctx, n):
    import random
    import time
    from pathlib import Path

    from cudastack.environment.context import Metric

    while n == 3 and not (Path(__file__).parent / "open").exists():
        time.sleep(0.05)
    return [Metric("latency", "ms", "lower", [random.random() for _ in range(3)])]
'''
CASES = sorted(f"gated[n={n}]" for n in range(5))


def at_gate(cell_dir: Path) -> bool:
    """Whether the cell's worker has recorded the case before the gate."""
    records = cell_dir / RECORDS
    if not records.exists():
        return False
    lines = records.read_bytes().split(b"\n")[:-1]
    return any(json.loads(line)["case"] == "gated[n=2]" for line in lines)


def wait_for(check, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 600  # the first cell's image may be built first
    while not check():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.2)


def ok_lines(cell_dir: Path) -> list[bytes]:
    data = (cell_dir / RECORDS).read_bytes()
    return [line for line in data.splitlines() if b'"status": "ok"' in line]


def test_a_killed_container_and_a_killed_host_resume_to_every_case(
    engine, base_image, wheelhouse, make_bench, tmp_path
):
    bench = make_bench("gated", BENCH)
    # Two cells of one image content but their names: the second build is all cache hits.
    m = write_matrix(tmp_path / "m", cpu_cell("test-cpu"), cpu_cell("test-cpu-b"))
    out = tmp_path / "run"
    argv = ["run", "--cell", "test-cpu,test-cpu-b", "--matrix", str(m), "--wheelhouse"]
    argv += [str(wheelhouse), "--bench-dir", str(bench), "--profile", "smoke", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cudastack", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    a, b = out / "test-cpu", out / "test-cpu-b"
    wait_for(lambda: at_gate(a), proc, "cell test-cpu reached its gate")
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    (container,) = engine.containers.list(
        filters={"label": [f"{RUN_LABEL}={run_id}", "dev.cudastack.cell=test-cpu"]}
    )
    container.kill()  # SIGKILL, as the OOM killer would
    wait_for(lambda: at_gate(b), proc, "cell test-cpu-b reached its gate")
    failed = results.read_records(a / RECORDS)
    (why,) = failed[failed["bench"] == "harness"]["reason"]
    assert why.startswith("container exited with code 137"), why
    os.kill(proc.pid, signal.SIGKILL)  # the host, leaving test-cpu-b's container running
    proc.communicate(timeout=60)
    left = engine.containers.list(filters={"label": f"{RUN_LABEL}={run_id}"})
    assert len(left) == 1
    kept = {cell: ok_lines(cell) for cell in (a, b)}
    assert all(len(lines) >= 9 for lines in kept.values())  # n=0..2, 3 samples each

    (bench / "open").touch()
    resumed = cli("run", "--resume", str(out), timeout=900)
    assert resumed.returncode == EXIT_OK, resumed.stdout[-3000:] + resumed.stderr
    assert "removed 1 container(s) the interrupted run left running" in resumed.stdout
    assert not engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
    table = results.load_table(out)
    assert set(table["status"]) == {"ok"}  # the failed and torn attempts' rows are gone
    for cell, lines in kept.items():
        ran = table[(table["cell"] == cell.name) & (table["bench"] == "gated")]
        assert sorted(ran["case"].unique()) == CASES
        assert ok_lines(cell)[: len(lines)] == lines  # what finished, byte for byte
