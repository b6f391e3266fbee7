"""The exit-code contract, through the real command line: 0 everything asked for ran ok (skips
allowed unless --fail-on-skip), 1 something failed, 2 bad input with nothing written, 130
interrupted with what finished kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import cli

from cudastack.contract.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from cudastack.contract.runfolder import RECORDS, TABLE
from cudastack.host.analysis import results
from cudastack.host.run import state

# A bench whose cases end as ``outcome`` says: ok, skipped or failed (a two-line error).
BENCH = '''"""A bench that ends as it is told."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {{"outcome": {outcomes}}}


def run(ctx, outcome):
    import time

    from cudastack.environment.context import Metric

    if outcome == "skipped":
        ctx.skip("not on this device")
    if outcome == "failed":
        raise ValueError("a first line\\nthe real cause")
    if outcome == "slow":
        time.sleep(600)
    return [Metric("latency", "ms", "lower", [1.0, 1.0, 1.0])]
'''


def run_bench(make_bench, tmp_path, outcomes, *extra):
    folder = make_bench("ends", BENCH.format(outcomes=outcomes))
    out = tmp_path / "run"
    proc = cli("run", "--bench-dir", str(folder), "--out", str(out), *extra, timeout=300)
    return proc, out


@pytest.mark.parametrize(
    ("outcomes", "extra", "code"),
    [
        (["ok"], [], EXIT_OK),
        (["ok", "skipped"], [], EXIT_OK),
        (["ok", "skipped"], ["--fail-on-skip"], EXIT_FAILED),
        (["ok", "failed"], [], EXIT_FAILED),
        (["ok", "failed", "skipped"], ["--fail-on-skip"], EXIT_FAILED),
    ],
)
def test_a_run_exits_by_how_its_cases_ended(make_bench, tmp_path, outcomes, extra, code):
    proc, out = run_bench(make_bench, tmp_path, outcomes, *extra)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr
    # Whatever the code, every case has its row in the table.
    table = results.load_table(out)
    assert sorted(table["status"].unique()) == sorted(set(outcomes))
    # A run that ran to its end says so, however its cases ended.
    assert state.read(out)["state"] == "complete"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--repeat", "0"], "--repeat 0: give 1 or more"),
        (["--device", "gpu"], "--device 'gpu': choose auto, cpu, cuda or cuda:N"),
        (["--device", "cuda:x"], "--device 'cuda:x': choose"),
        (["--threads", "-3"], "--threads -3: give 1 or more, or 0"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(make_bench, tmp_path, bad, message):
    proc, out = run_bench(make_bench, tmp_path, ["ok"], *bad)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout[-2000:] + proc.stderr
    assert proc.stderr.startswith(f"error: {message}") and proc.stderr.count("\n") == 1
    assert not out.exists()


def started_past_its_first_case(make_bench, out) -> subprocess.Popen:
    """A run of an ok case then a slow one, in its own process group (as a terminal's Ctrl-C
    reaches the command and its workers), once its first case is recorded."""
    folder = make_bench("ends", BENCH.format(outcomes=["ok", "slow"]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cudastack", "run", "--bench-dir", str(folder), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal: a shell's background job (how CI may start pytest) ignores
        # SIGINT, and Python keeps an ignored SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    records = out / "local" / RECORDS
    deadline = time.monotonic() + 240
    while not (records.exists() and b'"ok"' in records.read_bytes()):
        assert proc.poll() is None and time.monotonic() < deadline, "the first case never ended"
        time.sleep(0.2)
    return proc


def test_an_interrupted_run_exits_130_and_keeps_what_finished(make_bench, tmp_path):
    out = tmp_path / "run"
    proc = started_past_its_first_case(make_bench, out)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, stdout[-2000:] + stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    table = results.load_table(out)
    ok = table[table["status"] == "ok"]
    assert set(ok["case"]) == {"ends[outcome=ok]"}
    assert "interrupted by the user" in set(table["reason"])
    assert (state.read(out)["state"], state.read(out)["reason"]) == (
        "interrupted",
        "interrupted by the user",
    )
    shown = cli("show", str(out))
    assert "state: interrupted: interrupted by the user" in shown.stdout, shown.stderr


def test_a_killed_run_says_it_did_not_finish_and_shows_what_it_recorded(make_bench, tmp_path):
    out = tmp_path / "run"
    proc = started_past_its_first_case(make_bench, out)
    assert state.read(out)["state"] == "running"
    os.killpg(proc.pid, signal.SIGKILL)  # the host and its worker, as the OOM killer might
    proc.communicate(timeout=60)
    shown = cli("show", str(out))
    assert shown.returncode == EXIT_OK, shown.stderr
    assert f"state: did not finish: its process ({proc.pid} on " in shown.stdout
    assert f"cudastack run --resume {out} finishes it" in shown.stdout
    # No table was stored: the case that finished is read from the records.
    assert "ends (kernel) · outcome=ok" in shown.stdout, shown.stdout
    # Nothing written into a folder whose owner may still be at work.
    assert not (out / TABLE).exists()


def test_show_says_how_a_complete_run_went(make_bench, tmp_path):
    proc, out = run_bench(make_bench, tmp_path, ["ok", "skipped"])
    assert proc.returncode == EXIT_OK, proc.stderr
    shown = cli("show", str(out))
    assert "state: complete: 1 cell: 1 ok; 2 cases: 1 ok, 1 skipped" in shown.stdout


def test_show_finds_a_run_by_its_id_as_compare_does(make_bench, tmp_path):
    proc, out = run_bench(make_bench, tmp_path, ["ok"])
    assert proc.returncode == EXIT_OK, proc.stderr
    by_id = cli("show", out.name, "--results-dir", str(out.parent))
    assert by_id.returncode == EXIT_OK, by_id.stderr
    # ends[outcome=ok] as a block: the bench, its one parameter in the title.
    assert "ends (kernel) · outcome=ok" in by_id.stdout, by_id.stdout
    missing = cli("show", "no-such-run", "--results-dir", str(out.parent))
    assert missing.returncode == EXIT_BAD_INPUT
    assert missing.stderr.startswith("error: no run no-such-run: neither a run folder nor")
