"""--resume across cells in containers: one OOM-killed, one killed outright and a host killed
outright; then a resume that removes what the dead host left running and runs what is missing."""

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
        if Path("grow").exists():  # put in the cell's folder (the working directory) to OOM it
            hog = []
            while True:
                hog.append(b"x" * (64 << 20))
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


def container_of(engine, run_id: str, cell: str):
    (found,) = engine.containers.list(
        filters={"label": [f"{RUN_LABEL}={run_id}", f"dev.cudastack.cell={cell}"]}
    )
    return found


def harness_reason(cell_dir: Path) -> str:
    rows = results.read_records(cell_dir / RECORDS)
    (why,) = rows[rows["bench"] == "harness"]["reason"]
    return str(why)


def test_an_oom_killed_a_killed_container_and_a_killed_host_resume_to_every_case(
    engine, base_image, wheelhouse, make_bench, tmp_path
):
    bench = make_bench("gated", BENCH)
    # Cells of one image content but their names: builds after the first are all cache hits.
    names = ("test-cpu", "test-cpu-b", "test-cpu-c")
    m = write_matrix(tmp_path / "m", *(cpu_cell(name) for name in names))
    out = tmp_path / "run"
    argv = ["run", "--cell", ",".join(names), "--matrix", str(m), "--wheelhouse"]
    argv += [str(wheelhouse), "--bench-dir", str(bench), "--profile", "smoke", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cudastack", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    a, b, c = (out / name for name in names)
    wait_for(lambda: at_gate(a), proc, "cell test-cpu reached its gate")
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    # The kernel's OOM killer: a memory limit a little above what the worker holds, then
    # the case allocates past it.
    oom = container_of(engine, run_id, "test-cpu")
    held = int(oom.stats(stream=False)["memory_stats"]["usage"])
    oom.update(mem_limit=held + (128 << 20), memswap_limit=held + (128 << 20))
    (a / "grow").touch()
    wait_for(lambda: b.exists(), proc, "cell test-cpu-b started")
    (a / "grow").unlink()
    assert harness_reason(a).startswith("container was OOM-killed (exit 137)"), harness_reason(a)
    wait_for(lambda: at_gate(b), proc, "cell test-cpu-b reached its gate")
    container_of(engine, run_id, "test-cpu-b").kill()  # SIGKILL
    wait_for(lambda: at_gate(c), proc, "cell test-cpu-c reached its gate")
    assert harness_reason(b).startswith("container exited with code 137"), harness_reason(b)
    # A second writer is refused while the host lives, and leaves the run's containers alone.
    second = cli("run", "--resume", str(out), timeout=300)
    assert second.returncode == 2 and "is being written by pid" in second.stderr, second.stderr
    assert container_of(engine, run_id, "test-cpu-c").status == "running"
    os.kill(proc.pid, signal.SIGKILL)  # the host, leaving test-cpu-c's container running
    proc.communicate(timeout=60)
    assert len(engine.containers.list(filters={"label": f"{RUN_LABEL}={run_id}"})) == 1
    kept = {cell: ok_lines(cell) for cell in (a, b, c)}
    for lines in kept.values():  # n=0..2 recorded, a line each
        assert {json.loads(line)["case"] for line in lines} >= {f"gated[n={n}]" for n in range(3)}

    (bench / "open").touch()
    resumed = cli("run", "--resume", str(out), timeout=900)
    assert resumed.returncode == EXIT_OK, resumed.stdout[-3000:] + resumed.stderr
    assert "removed 1 container(s) the interrupted run left running" in resumed.stdout
    assert not engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
    table = results.load_table(out)
    assert set(table["status"]) == {"ok"}  # the failed and killed attempts' rows are gone
    for cell, lines in kept.items():
        ran = table[(table["cell"] == cell.name) & (table["bench"] == "gated")]
        assert sorted(ran["case"].unique()) == CASES
        assert ok_lines(cell)[: len(lines)] == lines  # what finished, byte for byte
