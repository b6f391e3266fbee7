"""--timeout on a local run: a hung worker is killed with all it started, finished cases stay."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import cli

from cudastack.host.analysis import results

pytestmark = pytest.mark.integration

# One case that finishes, then one that hangs where the worker's own per-case alarm cannot end
# it (SIGALRM ignored: a case stuck in native code never returns to the interpreter that would
# run the alarm's handler). Before hanging it starts two processes: one in its process group,
# as a DataLoader worker is, and one in a session of its own, as torchrun starts its ranks.
# Every pid goes into a file the test reads.
HANG_BENCH = '''
"""A case that finishes, then a case that hangs."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

KIND = "kernel"
HEADLINE = "tflops"
PARAMS = {"mode": ["ok", "hang"]}
DATA_PARALLEL = True
PIDS = Path(PIDS_FOLDER)
SLEEP = [sys.executable, "-c", "import time; time.sleep(3600)"]


def run(ctx, mode):
    x = ctx.randn(16, 16)
    if mode == "hang":
        group = subprocess.Popen(SLEEP)
        session = subprocess.Popen(SLEEP, start_new_session=True)
        rank = os.environ.get("RANK", "0")
        pids = f"{os.getpid()} {group.pid} {session.pid} {os.getppid()}"
        (PIDS / f"rank{rank}").write_text(pids)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    ctx.check_close(x @ ctx.torch.eye(16), x, rtol=1e-6, atol=1e-6)
    return ctx.measure(lambda: x @ x, flops=2 * 16**3)
'''


def _state(pid: int) -> str:
    """The process's state letter, or '' when it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _state(pid) not in ("", "Z")  # a zombie has ended; only its entry waits for init


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(int(entry.name))
    return members


def _run_until_the_limit(make_bench, tmp_path: Path, limit: int, *extra: str):
    pids_folder = tmp_path / "pids"
    pids_folder.mkdir()
    source = HANG_BENCH.replace("PIDS_FOLDER", repr(str(pids_folder)))
    folder = make_bench("hangs", source)
    started = time.monotonic()
    args = ["run", "--bench-dir", str(folder), "--profile", "quick", "--timeout", str(limit)]
    try:
        proc = cli(*args, *extra, "--out", "r", cwd=tmp_path, timeout=limit + 90)
    finally:
        took = time.monotonic() - started
        files = sorted(pids_folder.iterdir())
        recorded = [int(p) for f in files for p in f.read_text().split()]
        survivors = [pid for pid in recorded if _alive(pid)]
        # On a run that did not stop them, this test's own processes must not outlive it.
        for pid in survivors:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return proc, took, recorded, survivors


def _assert_stopped_at_the_limit(proc, took: float, limit: int, run_dir: Path) -> None:
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    # It ran until the limit, and not much longer: the kill is immediate.
    assert limit <= took < limit + 20, took
    reason = f"the cell ran past its time limit of {limit} s (--timeout)"
    assert reason in proc.stderr
    df = results.load_table(run_dir)
    ok = df[df["status"] == "ok"]
    assert set(ok["case"]) == {"hangs[mode=ok]"} and set(ok["metric"]) >= {"latency"}
    harness = df[df["bench"] == "harness"]
    assert harness[["case", "status", "reason"]].values.tolist() == [
        ["harness[stage=run]", "failed", reason]
    ]
    assert "hangs[mode=hang]" not in set(df["case"])  # it never finished


def test_a_hung_worker_is_killed_at_the_time_limit_with_all_it_started(make_bench, tmp_path):
    limit = 25
    proc, took, recorded, survivors = _run_until_the_limit(make_bench, tmp_path, limit)
    assert len(recorded) == 4, recorded  # the worker reached the hang
    _assert_stopped_at_the_limit(proc, took, limit, tmp_path / "r")
    assert survivors == []  # the worker, its child and the child in a session of its own
    worker, _group_child, session_child, _host = recorded
    assert _group_members(worker) == [] and _group_members(session_child) == []


def test_a_hung_torchrun_is_killed_with_every_rank(make_bench, tmp_path):
    # torchrun starts each rank in a session of its own: killing the launcher's group alone
    # would leave the ranks (and what they started) running.
    limit = 40
    proc, took, recorded, survivors = _run_until_the_limit(
        make_bench, tmp_path, limit, "--nproc", "2"
    )
    assert len(recorded) == 8, recorded  # both ranks reached the hang
    _assert_stopped_at_the_limit(proc, took, limit, tmp_path / "r")
    launcher = recorded[3]
    assert launcher == recorded[7]  # the ranks' parent: torchrun
    assert survivors == []  # torchrun, both ranks, and what each of them started
    for leader in (launcher, recorded[0], recorded[2], recorded[4], recorded[6]):
        assert _group_members(leader) == []


def test_a_time_limit_of_zero_is_bad_input(tmp_path):
    proc = cli("run", "--timeout", "0", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: --timeout 0: give a time limit in seconds above 0")
    assert not (tmp_path / "r").exists()
