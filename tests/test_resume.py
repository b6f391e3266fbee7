"""--resume and the run folder's one writer, with real processes: a host killed outright
mid-cell, a second writer, options that contradict the run's, and what a resume keeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import cli

from cudastack.contract.errors import EXIT_BAD_INPUT, EXIT_OK
from cudastack.contract.runfolder import RECORDS, TABLE, RunFolderError
from cudastack.host.analysis import results
from cudastack.host.run import loop, resume, state
from cudastack.host.run.launcher import CellPlan, CellResult
from cudastack.host.run.local import WorkerRefused

# Five cases whose samples are random (so a case run again would not match), the fourth held
# at a gate: it waits while the folder's file ``open`` is missing, once some earlier process
# has passed it (``passed``), so that with --repeat 2 only the second process waits.
BENCH = '''"""Cases held at a gate."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [0, 1, 2, 3, 4]}


def run(ctx, n):
    import os
    import random
    import time
    from pathlib import Path

    from cudastack.environment.context import Metric

    here = Path(__file__).parent
    if n == 3:
        if os.environ.get("GATE_EVERY") or (here / "passed").exists():
            while not (here / "open").exists():
                time.sleep(0.05)
        (here / "passed").touch()
    return [Metric("latency", "ms", "lower", [random.random() for _ in range(3)])]
'''
CASES = {f"gated[n={n}]" for n in range(5)}


def start(folder: Path, out: Path, *extra: str, gate_every: bool = True) -> subprocess.Popen:
    """A run of the gated bench in the background, once it waits at the gate."""
    env = {**os.environ, "GATE_EVERY": "1" if gate_every else ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cudastack",
            "run",
            "--bench-dir",
            str(folder),
            "--out",
            str(out),
            *list(extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    records = out / "local" / RECORDS
    deadline = time.monotonic() + 240
    # The gate is reached once the case before it is recorded by the process that waits there.
    before_gate = (0 if gate_every else 1, "gated[n=2]")
    while not (records.exists() and before_gate in recorded(records)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    return proc


def recorded(records: Path) -> set[tuple[int, str]]:
    """(process, case) of each line a records.jsonl holds whole."""
    lines = records.read_bytes().split(b"\n")[:-1]
    return {(r["process"], r["case"]) for r in map(json.loads, lines)}


def kill_host(proc: subprocess.Popen, out: Path) -> None:
    """SIGKILL the host process alone, as the OOM killer would, and check its worker went
    with it (the worker asks the kernel to end it when its parent dies)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while any(str(out) in command for command in _commands()):
        assert time.monotonic() < deadline, "the worker outlived its killed host"
        time.sleep(0.1)


def _commands() -> list[str]:
    """The command lines of the live processes (a zombie is dead, only not yet reaped)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(p.cmdline()))
        except psutil.Error:  # gone, or a zombie, meanwhile
            pass
    return found


def ok_lines(out: Path) -> list[bytes]:
    data = (out / "local" / RECORDS).read_bytes()
    return [line for line in data.splitlines() if b'"status": "ok"' in line]


def cases_by_process(out: Path) -> dict[int, list[str]]:
    table = results.load_table(out)
    table = table[table["bench"] == "gated"]
    found: dict[int, list[str]] = {}
    for (process, case), rows in table.groupby(["process", "case"]):
        # a case recorded once: its rows are one set of samples, rep 0..2 of each metric
        reps = rows.groupby("metric")["rep"].apply(sorted)
        assert all(r == list(range(len(r))) for r in reps), case
        found.setdefault(int(process), []).append(str(case))
    return {p: sorted(c) for p, c in found.items()}


@pytest.mark.parametrize("isolate", [False, True], ids=["one-process", "process-groups"])
def test_a_host_killed_mid_cell_resumes_to_the_table_of_an_uninterrupted_run(
    make_bench, tmp_path, isolate
):
    # With ISOLATE each case runs in a child of the worker, which must skip the same cases.
    bench = BENCH.replace("PARAMS =", 'ISOLATE = ["n"]\nPARAMS =') if isolate else BENCH
    folder = make_bench("gated", bench)
    (folder / "open").touch()
    whole = cli("run", "--bench-dir", str(folder), "--out", str(tmp_path / "whole"))
    assert whole.returncode == EXIT_OK, whole.stderr
    (folder / "open").unlink()

    out = tmp_path / "run"
    proc = start(folder, out)
    # One writer: a second process is refused while the first holds the folder, in one line
    # that names the holder.
    second = cli("run", "--resume", str(out))
    assert second.returncode == EXIT_BAD_INPUT, second.stdout + second.stderr
    assert second.stderr.count("\n") == 1 and f"pid {proc.pid} on " in second.stderr
    assert "being written by" in second.stderr
    # Readers read a run in progress from its records, writing nothing into it.
    report = cli("report", str(out), "-o", str(tmp_path / "report.html"))
    assert report.returncode == EXIT_OK, report.stderr
    assert "gated[n=2]" in (tmp_path / "report.html").read_text()
    assert not (out / TABLE).exists()
    kill_host(proc, out)
    before = ok_lines(out)
    assert {json.loads(line)["case"] for line in before} >= {f"gated[n={n}]" for n in range(3)}

    (folder / "open").touch()
    resumed = cli("run", "--resume", str(out))
    assert resumed.returncode == EXIT_OK, resumed.stdout[-3000:] + resumed.stderr
    assert "resuming" in resumed.stdout
    assert cases_by_process(out) == cases_by_process(tmp_path / "whole") == {0: sorted(CASES)}
    after = ok_lines(out)
    assert after[: len(before)] == before  # the finished cases' samples, byte for byte
    recorded = state.read(out)
    assert recorded["state"] == "complete" and len(recorded["resumed_at"]) == 1
    assert recorded["options"]["bench_dir"] == str(folder)


def test_a_killed_repeat_resumes_only_the_process_that_did_not_finish(make_bench, tmp_path):
    folder = make_bench("gated", BENCH)
    out = tmp_path / "run"
    proc = start(folder, out, "--repeat", "2", gate_every=False)
    kill_host(proc, out)
    first = [line for line in ok_lines(out) if b'"process": 0' in line]
    assert resume.finished_processes(out / "local", 2) == 1

    (folder / "open").touch()
    resumed = cli("run", "--resume", str(out))
    assert resumed.returncode == EXIT_OK, resumed.stdout[-3000:] + resumed.stderr
    assert cases_by_process(out) == {0: sorted(CASES), 1: sorted(CASES)}
    assert [line for line in ok_lines(out) if b'"process": 0' in line] == first


def test_resume_refuses_what_contradicts_the_run_in_one_line(make_bench, tmp_path):
    folder = make_bench("gated", BENCH)
    (folder / "open").touch()
    out = tmp_path / "run"
    done = cli("run", "--bench-dir", str(folder), "--out", str(out), "--profile", "smoke")
    assert done.returncode == EXIT_OK, done.stderr
    records = (out / "local" / RECORDS).read_bytes()
    for extra, message in [
        (["--profile", "quick"], "--profile quick contradicts the run, started with --profile"),
        (["--trace"], "--trace contradicts the run, started with no --trace"),
        (["--out", str(tmp_path / "other")], "--out with --resume"),
    ]:
        proc = cli("run", "--resume", str(out), *extra)
        assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1
    wrong = cli("bench", "--resume", str(out))
    assert wrong.returncode == EXIT_BAD_INPUT
    assert "started by cudastack run; resume it with cudastack run --resume" in wrong.stderr
    # Options that do not change what is measured may differ; the run's own are kept.
    again = cli("run", "--resume", out.name, "--results-dir", str(tmp_path), "--verbose")
    assert again.returncode == EXIT_OK, again.stderr
    assert (out / "local" / RECORDS).read_bytes() == records  # nothing was left to run
    assert state.read(out)["options"]["profile"] == "smoke"

    (tmp_path / "old").mkdir()
    old = cli("run", "--resume", str(tmp_path / "old"))
    assert old.returncode == EXIT_BAD_INPUT and "records no options" in old.stderr


def row(case: str, process: int, status: str = "ok", bench: str = "gated") -> bytes:
    return json.dumps({"case": case, "process": process, "status": status, "bench": bench}).encode()


def test_a_resume_keeps_finished_processes_and_what_later_ones_recorded_ok():
    lines = [
        row("a", 0),
        row("b", 0, "failed"),  # a failed case of a finished process stays failed
        row("a", 1),
        row("b", 1, "skipped"),
        row("c", 1, "failed"),  # runs again
        row("harness[stage=run]", 1, "failed", "harness"),  # the host says again how it went
        b"",
        row("d", 1),
        row("e", 1),
        row("e", 1),
    ]
    data = b"\n".join(lines) + b'\n{"case": "e", "proc'  # killed while writing e's rows
    kept = resume.kept_lines(data, finished=1)
    assert kept == [line + b"\n" for line in [*lines[:4], lines[7]]]
    # A line elsewhere that is no record was not written by a worker: refused, as reading is.
    with pytest.raises(RunFolderError, match=r"records.jsonl:2: not a record"):
        resume.kept_lines(lines[0] + b"\nnot json\n" + lines[2] + b"\n", finished=1)
    # Without a tear every ok row stays, the last case's too.
    whole = resume.kept_lines(b"\n".join(lines) + b"\n", finished=1)
    assert whole[-2:] == [lines[8] + b"\n", lines[9] + b"\n"]


def test_a_secret_given_with_env_is_not_recorded_and_must_be_given_again(make_bench, tmp_path):
    folder = make_bench("gated", BENCH)
    (folder / "open").touch()
    out = tmp_path / "run"
    token = "HF_TOKEN=hf_s3cr3tvalue42"
    done = cli("run", "--bench-dir", str(folder), "--out", str(out), "--env", token)
    assert done.returncode == EXIT_OK, done.stderr
    assert b"hf_s3cr3tvalue42" not in (out / "run.json").read_bytes()
    assert state.read(out)["options"]["env"] == ["HF_TOKEN=(redacted)"]
    bare = cli("run", "--resume", str(out))
    assert bare.returncode == EXIT_BAD_INPUT
    assert "--env HF_TOKEN with a secret value" in bare.stderr and bare.stderr.count("\n") == 1
    other = cli("run", "--resume", str(out), "--env", "NCCL_DEBUG=INFO")
    assert other.returncode == EXIT_BAD_INPUT and "contradicts the run's --env" in other.stderr
    again = cli("run", "--resume", str(out), "--env", token)
    assert again.returncode == EXIT_OK, again.stderr


def test_data_parallel_workers_end_with_their_killed_host(make_bench, tmp_path):
    # torchrun and its ranks as well: the ranks wait at the gate, the host is killed.
    folder = make_bench("gated", BENCH.replace("PARAMS =", "DATA_PARALLEL = True\nPARAMS ="))
    out = tmp_path / "run"
    proc = start(folder, out, "--nproc", "2")
    assert any("torch.distributed.run" in command for command in _commands())
    kill_host(proc, out)


def test_a_secret_an_exception_quotes_is_redacted_everywhere(make_bench, tmp_path):
    folder = make_bench(
        "leaky",
        '''"""A case whose error quotes a token."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [0]}


def run(ctx, n):
    import os

    raise RuntimeError(f"bad token {os.environ['HF_TOKEN']} for the hub")
''',
    )
    out = tmp_path / "run"
    env = {**os.environ, "HF_TOKEN": "hf_abcdefgh12345678"}
    proc = subprocess.run(
        [sys.executable, "-m", "cudastack", "run", "--bench-dir", str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    (reason,) = results.load_table(out)["reason"]
    assert "bad token (redacted) for the hub" in reason
    assert "hf_abcdefgh12345678" not in proc.stdout + proc.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert b"hf_abcdefgh12345678" not in path.read_bytes(), path


def _set_option(out: Path, **options) -> None:
    data = json.loads((out / "run.json").read_text())
    data["options"].update(options)
    (out / "run.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda out: (out / "run.lock").unlink() or (out / "run.lock").mkdir(), "cannot lock"),
        (lambda out: _set_option(out, repeat="three"), "records repeat as 'three'"),
        (lambda out: _set_option(out, select=[1]), "records select as [1]"),
        (lambda out: _set_option(out, command=None), "records no options"),
        (
            lambda out: (out / "local" / "done.json").write_text('{"process": "x"}'),
            "done.json is not what a worker writes",
        ),
        (
            lambda out: (
                (out / "local" / "done.json").unlink()
                or (out / "local" / RECORDS).write_bytes(
                    b"garbage\n" + (out / "local" / RECORDS).read_bytes()
                )
            ),
            "records.jsonl:1: not a record",
        ),
    ],
    ids=["lock-is-a-folder", "wrong-type", "list-of-numbers", "no-command", "done", "garbage"],
)
def test_a_damaged_run_folder_is_one_line_not_a_traceback(make_bench, tmp_path, damage, message):
    folder = make_bench("gated", BENCH)
    (folder / "open").touch()
    out = tmp_path / "run"
    done = cli("run", "--bench-dir", str(folder), "--out", str(out), "--profile", "smoke")
    assert done.returncode == EXIT_OK, done.stderr
    damage(out)
    proc = cli("run", "--resume", str(out))
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout[-2000:] + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr, proc.stderr


class Refusing:
    """A launcher whose one cell's worker refuses its input before recording anything."""

    interrupted_note = ""

    def plan(self) -> list[CellPlan]:
        return [CellPlan("local")]

    def run(self, cell: str, process: int, run_dir: Path, run_id: str) -> CellResult:
        (run_dir / cell).mkdir()
        raise WorkerRefused("the worker refused its input")


@pytest.mark.parametrize("resumed", [False, True])
def test_a_refused_worker_removes_a_new_empty_folder_never_a_resumed_one(tmp_path, resumed):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{}")
    with pytest.raises(WorkerRefused):
        loop.run_cells(Refusing(), 1, loop.Writing(run_dir, "r", resumed))
    assert run_dir.exists() == resumed


@pytest.mark.parametrize("parent_alive", [True, False])
def test_a_child_whose_parent_died_before_it_asked_to_die_with_it_ends(parent_alive):
    # The kernel signals only a parent death after the request: one before it (the host killed
    # between fork and prctl) leaves the child reparented, so the child checks and ends itself.
    code = (
        "import os, sys; from cudastack.contract import lifetime; "
        "lifetime.die_with_parent(os.getppid() if sys.argv[1] == 'alive' else 1); print('alive')"
    )
    arg = "alive" if parent_alive else "gone"
    proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True)
    if parent_alive:
        assert proc.returncode == 0 and proc.stdout == "alive\n", proc.stderr
    else:
        assert proc.returncode == -signal.SIGKILL and proc.stdout == ""
