"""run --launcher slurm against a real Slurm: one job array, a task per cell, followed and
ingested; failed and timed-out tasks as failed rows with Slurm's state; Ctrl-C cancels."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli

from cudastack.contract.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from cudastack.contract.runfolder import RECORDS
from cudastack.host.analysis import results
from cudastack.host.run import slurm as slurm_launcher
from cudastack.host.run.suite_args import SuiteArgs

pytestmark = pytest.mark.slurm

# Two quick cases; the cell "crashes" dies in its first, the cell "hangs" sleeps past any time
# limit (the bench reads its cell's name from the worker's command line).
BENCH = '''"""Two quick cases, or a crash, or a hang, by the cell's name."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [0, 1]}


def run(ctx, n):
    import os
    import sys
    import time

    from cudastack.environment.context import Metric

    cell = sys.argv[sys.argv.index("--cell") + 1]
    if cell == "crashes":
        os._exit(3)
    if cell == "hangs":
        time.sleep(3600)
    return [Metric("latency", "ms", "lower", [1.0 + n, 1.1 + n, 1.2 + n])]
'''


# Two quick cases, whatever the cell (the cell local has no --cell on its command line).
PLAIN = '''"""Two quick cases."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [0, 1]}


def run(ctx, n):
    from cudastack.environment.context import Metric

    return [Metric("latency", "ms", "lower", [1.0 + n, 1.1 + n, 1.2 + n])]
'''


def _run(slurm, bench: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = ["run", "--launcher", "slurm", "--partition", slurm.partition, "--bench-dir"]
    argv += [str(bench), "--profile", "smoke", "--out", str(out), *extra]
    return cli(*argv, env=slurm.env, timeout=600)


def test_run_on_slurm_runs_the_suite_in_one_array_and_ingests_every_cell(
    slurm, make_bench, tmp_path
):
    bench = make_bench("quick", BENCH)
    out = tmp_path / "run"
    proc = _run(slurm, bench, out, "--cell", "node-a,node-b")
    assert proc.returncode == EXIT_OK, proc.stdout[-3000:] + proc.stderr
    assert "submitted job array" in proc.stdout and "2 tasks, one per cell" in proc.stdout
    assert "Slurm keeps no accounting here (sacct failed: Slurm accounting storage is " in (
        proc.stdout
    )
    # Each cell's progress, case by case, as a local run prints it.
    for cell in ("node-a", "node-b"):
        for n in (0, 1):
            line = rf"^{cell}: \[\s*{n + 1}/2\] quick\[n={n}\] +ok "
            assert re.search(line, proc.stdout, re.M), proc.stdout
    script = (out / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script and f"#SBATCH --partition={slurm.partition}" in script
    table = results.load_table(out)
    for cell in ("node-a", "node-b"):
        rows = table[(table["cell"] == cell) & (table["bench"] == "quick")]
        assert sorted(rows["case"].unique()) == ["quick[n=0]", "quick[n=1]"]
        assert set(rows["status"]) == {"ok"}
        # Where the result came from: the job, its array task and the node.
        env = json.loads((out / cell / "env.json").read_text())
        assert env["slurm"]["node"] == slurm.node
        assert env["slurm"]["partition"] == slurm.partition
        assert env["slurm"]["array_task_id"] in ("0", "1")
    outputs = sorted(p.name for p in (out / "slurm").glob("*.out"))
    assert len(outputs) == 2, outputs  # each task's output file beside the script


def test_bench_on_slurm_runs_the_suite_as_one_task_in_the_node_s_python(
    slurm, make_bench, tmp_path
):
    bench = make_bench("quick", PLAIN)
    out = tmp_path / "run"
    argv = ["bench", "--launcher", "slurm", "--partition", slurm.partition, "--bench-dir"]
    argv += [str(bench), "--profile", "smoke", "--out", str(out)]
    proc = cli(*argv, env=slurm.env, timeout=600)
    assert proc.returncode == EXIT_OK, proc.stdout[-3000:] + proc.stderr
    assert "(1 task, one per cell)" in proc.stdout
    rows = results.load_table(out)
    rows = rows[(rows["cell"] == "local") & (rows["bench"] == "quick")]
    assert set(rows["status"]) == {"ok"} and set(rows["case"]) == {"quick[n=0]", "quick[n=1]"}
    assert json.loads((out / "run.json").read_text())["options"]["command"] == "bench"


def test_constraint_alternatives_run_each_cell_once_per_node_type(slurm, make_bench, tmp_path):
    bench = make_bench("quick", BENCH)
    out = tmp_path / "run"
    proc = _run(slurm, bench, out, "--cell", "a,b", "--constraint", "type-a|type-b")
    assert proc.returncode == EXIT_OK, proc.stdout[-3000:] + proc.stderr
    # A job array's tasks share one constraint: an array per type, a task per cell in each.
    arrays = _arrays(out)
    assert [sorted(cells) for cells in arrays.values()] == [
        ["a@type-a", "b@type-a"],
        ["a@type-b", "b@type-b"],
    ]
    assert "(2 tasks, one per cell on type-b nodes)" in proc.stdout
    first, _ = arrays
    assert "#SBATCH --constraint=type-a" in (out / "slurm" / f"job.{first}.sbatch").read_text()
    assert "#SBATCH --constraint=type-b" in (out / "slurm" / "job.sbatch").read_text()
    table = results.load_table(out)
    ran = table[table["bench"] == "quick"]
    assert set(ran["cell"]) == {"a@type-a", "b@type-a", "a@type-b", "b@type-b"}
    assert set(ran["status"]) == {"ok"} and len(ran["case"].unique()) == 2


def test_an_array_slurm_refuses_cancels_the_arrays_of_the_other_types(slurm, make_bench, tmp_path):
    bench = make_bench("quick", BENCH)
    out = tmp_path / "run"
    proc = _run(slurm, bench, out, "--cell", "a", "--constraint", "type-a|no-such-type")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: sbatch failed: "), proc.stderr
    ((first, cells),) = _arrays(out).items()  # type-a's array was submitted, then cancelled
    assert list(cells) == ["a@type-a"]
    deadline = time.monotonic() + 60
    while _listed(slurm, first):
        assert time.monotonic() < deadline, slurm.run("squeue").stdout
        time.sleep(0.5)
    # The refused script never took the name of the one Slurm ran.
    assert "#SBATCH --constraint=type-a" in (out / "slurm" / "job.sbatch").read_text()
    assert not (out / "slurm" / "job.sbatch.new").exists()


def test_a_crashed_and_a_timed_out_task_are_failed_rows_with_slurm_s_state(
    slurm, make_bench, tmp_path
):
    bench = make_bench("quick", BENCH)
    out = tmp_path / "run"
    # A minute's time limit per task: "hangs" is killed by Slurm, the others finish in it.
    proc = _run(slurm, bench, out, "--cell", "crashes,hangs,fine", "--time", "1")
    assert proc.returncode == EXIT_FAILED, proc.stdout[-3000:] + proc.stderr
    table = results.load_table(out)
    fine = table[(table["cell"] == "fine") & (table["bench"] == "quick")]
    assert set(fine["status"]) == {"ok"} and set(fine["case"]) == {"quick[n=0]", "quick[n=1]"}

    def reason(cell: str) -> str:
        (why,) = table[(table["cell"] == cell) & (table["bench"] == "harness")]["reason"]
        return str(why)

    assert reason("crashes").startswith(f"the worker exited with code 3 on {slurm.node}")
    assert "ended TIMEOUT" in reason("hangs") and slurm.node in reason("hangs"), reason("hangs")
    assert "crashes: failed" in proc.stdout and "hangs: failed" in proc.stdout


def test_timeout_holds_for_each_worker_process_on_its_node(slurm, make_bench, tmp_path):
    bench = make_bench("quick", BENCH)
    out = tmp_path / "run"
    proc = _run(slurm, bench, out, "--cell", "hangs", "--timeout", "3")
    assert proc.returncode == EXIT_FAILED, proc.stdout[-3000:] + proc.stderr
    table = results.load_table(out)
    (why,) = table[table["bench"] == "harness"]["reason"]
    assert why == f"timed out after 3 s (--timeout) on {slurm.node}", why


def test_ctrl_c_cancels_the_array_and_keeps_what_finished(slurm, make_bench, tmp_path):
    bench = make_bench("quick", BENCH)
    out = tmp_path / "run"
    argv = ["run", "--launcher", "slurm", "--partition", slurm.partition, "--bench-dir"]
    # full: a case limit (900 s) the hang outlasts whatever the machine's load.
    argv += [str(bench), "--profile", "full", "--out", str(out), "--cell", "fine,hangs"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cudastack", *argv],
        env=slurm.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: a background job or a pytest-xdist worker ignores SIGINT, and
        # Python keeps an ignored SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Wait until "fine" has finished and "hangs" runs.
    deadline = time.monotonic() + 600
    while not (out / "slurm" / "fine.0.exit").exists() or not _running(slurm):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "cancelled the job array (scancel)" in output
    deadline = time.monotonic() + 60
    while _running(slurm):  # scancel ends the task
        assert time.monotonic() < deadline, slurm.run("squeue").stdout
        time.sleep(0.5)
    kept = results.read_records(out / "fine" / RECORDS)
    assert set(kept[kept["bench"] == "quick"]["status"]) == {"ok"}
    assert json.loads((out / "run.json").read_text())["state"] == "interrupted"


def _running(slurm) -> bool:
    return bool(slurm.run("squeue", "-h", "-t", "RUNNING").stdout.strip())


# Two cases; the second waits until the bench folder holds ``open``.
GATED = '''"""Two cases, the second held at a gate."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [0, 1]}


def run(ctx, n):
    import time
    from pathlib import Path

    from cudastack.environment.context import Metric

    while n == 1 and not (Path(__file__).parent / "open").exists():
        time.sleep(0.2)
    return [Metric("latency", "ms", "lower", [1.0 + n, 1.1 + n, 1.2 + n])]
'''


def _start(slurm, bench: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A run whose gated case waits as long as the test needs: profile full's case limit
    (900 s), not smoke's 180 s, which a loaded machine can spend before the gate opens."""
    argv = ["run", "--launcher", "slurm", "--partition", slurm.partition, "--bench-dir"]
    argv += [str(bench), "--profile", "full", "--out", str(out), *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "cudastack", *argv],
        env=slurm.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _at_gate(out: Path, cell: str) -> bool:
    records = out / cell / RECORDS
    return records.exists() and b"gated[n=0]" in records.read_bytes()


def _arrays(out: Path) -> dict:
    return json.loads((out / "slurm" / "arrays.json").read_text())


def test_resume_follows_the_tasks_a_killed_host_left_and_submits_the_rest_again(
    slurm, make_bench, tmp_path
):
    bench = make_bench("gated", GATED)
    out = tmp_path / "run"
    proc = _start(slurm, bench, out, "--cell", "a,b")
    deadline = time.monotonic() + 600
    while not (_at_gate(out, "a") and _at_gate(out, "b")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.kill()  # the host alone, as the OOM killer would: its array runs on
    proc.communicate(timeout=60)
    ((first, tasks),) = _arrays(out).items()
    # b's task dies with its node, as it were; a's runs on at its gate.
    slurm.run("scancel", f"{first}_{tasks['b'][0]}", check=True)
    while _listed(slurm, f"{first}_{tasks['b'][0]}"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    kept = {cell: (out / cell / RECORDS).read_bytes() for cell in ("a", "b")}

    resumed = _resume(slurm, out)
    # The gate opens once b is submitted again: a's worker, followed, finishes its case then.
    while len(_arrays(out)) < 2:
        assert resumed.poll() is None and time.monotonic() < deadline, resumed.communicate()
        time.sleep(0.2)
    (bench / "open").touch()
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == EXIT_OK, output
    second = list(_arrays(out))[1]
    assert f"following job array {first}, which the interrupted run left in Slurm (a)" in output
    assert f"submitted job array {second} (1 task, one per cell)" in output, output
    assert list(_arrays(out)[second]) == ["b"]
    table = results.load_table(out)
    for cell in ("a", "b"):
        rows = table[(table["cell"] == cell) & (table["bench"] == "gated")]
        assert sorted(rows["case"].unique()) == ["gated[n=0]", "gated[n=1]"]
        assert set(rows["status"]) == {"ok"}
        assert (out / cell / RECORDS).read_bytes().startswith(kept[cell])  # kept byte for byte
    # Both arrays' scripts stay, for whoever must see what ran.
    assert (out / "slurm" / f"job.{first}.sbatch").exists()
    assert "# cell b" in (out / "slurm" / "job.sbatch").read_text()


def test_no_wait_submits_and_returns_show_sees_what_finished_resume_finishes(
    slurm, make_bench, tmp_path
):
    bench = make_bench("gated", GATED)
    out = tmp_path / "run"
    proc = _start(slurm, bench, out, "--cell", "a", "--no-wait")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_OK, output
    assert f"cudastack run --resume {out} follows it to the end" in output
    assert json.loads((out / "run.json").read_text())["state"] == "submitted"
    deadline = time.monotonic() + 600
    while not _at_gate(out, "a"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    shown = cli("show", str(out))
    assert shown.returncode == EXIT_OK, shown.stdout + shown.stderr
    assert "state: submitted: job array" in shown.stdout and "gated" in shown.stdout
    (bench / "open").touch()
    while _listed(slurm, next(iter(_arrays(out)))):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    finished = cli("run", "--resume", str(out), env=slurm.env, timeout=300)
    assert finished.returncode == EXIT_OK, finished.stdout + finished.stderr
    assert "submitted job array" not in finished.stdout  # nothing was left to run
    table = results.load_table(out)
    assert set(table[table["bench"] == "gated"]["case"]) == {"gated[n=0]", "gated[n=1]"}
    assert json.loads((out / "run.json").read_text())["state"] == "complete"


def _resume(slurm, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cudastack", "run", "--resume", str(out)],
        env=slurm.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _listed(slurm, job: str) -> bool:
    return bool(slurm.run("squeue", "-h", "-j", job).stdout.strip())


def test_how_a_task_ended_comes_from_scontrol_or_is_gone_when_slurm_forgot_it(slurm, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nexit 3\n")
    submitted = slurm.run(
        "sbatch",
        "--parsable",
        "--wait",
        "--array=0",
        f"--output={tmp_path}/%A_%a.out",
        str(script),
    )
    job = submitted.stdout.strip().split(";")[0]
    assert job.isdigit(), submitted.stdout + submitted.stderr
    assert slurm_launcher.ended_task(job, 0, slurm.env) == ("FAILED", slurm.node, "3:0")
    # This cluster keeps no accounting: a job scontrol does not know is gone for good.
    assert slurm_launcher.ended_task("999999", 0, slurm.env) == (slurm_launcher.GONE, "", "")


def test_a_cluster_that_cannot_take_the_job_is_one_line_and_no_folder(slurm, tmp_path):
    out = tmp_path / "run"
    nope = cli(
        "run", "--launcher", "slurm", "--partition", "nope", "--out", str(out), env=slurm.env
    )
    assert nope.returncode == 2 and nope.stderr.count("\n") == 1, nope.stderr
    assert nope.stderr.startswith(
        f"error: --partition nope: no such partition; this cluster has {slurm.partition}"
    )
    elsewhere = {**slurm.env, "SLURM_CONF": str(tmp_path / "no-slurm.conf")}
    down = cli("run", "--launcher", "slurm", "--out", str(out), env=elsewhere)
    assert down.returncode == 2 and down.stderr.count("\n") == 1, down.stderr
    assert down.stderr.startswith("error: Slurm's controller does not answer here (scontrol")
    assert not out.exists()


def test_a_resume_after_slurm_forgot_the_array_follows_nothing(slurm, tmp_path):
    # squeue asked for one job it no longer knows fails ("Invalid job id specified"): for a
    # resume that is an array with nothing left to follow, not an error.
    run_dir = tmp_path / "run"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "slurm" / "arrays.json").write_text(json.dumps({"999999": {"a": [0, 0]}}))
    launcher = slurm_launcher.SlurmLauncher(
        SuiteArgs(), ["a"], slurm_launcher.SlurmOptions(), 60.0, print, env=slurm.env
    )
    assert launcher.adopt(run_dir) == set()
