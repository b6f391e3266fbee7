"""Who may read a run, through the real command line: only its user, or with --shared their
group too; never anybody else."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli

from cudastack.contract import runfolder

BENCH = '''"""A bench that measures nothing, quickly."""

KIND = "kernel"
HEADLINE = "latency"


def run(ctx):
    from cudastack.environment.context import Metric

    print("a line for log.txt", flush=True)
    return [Metric("latency", "ms", "lower", [1.0, 1.0, 1.0])]
'''
# What the host and the worker write into every run: each must exist to be judged.
WRITTEN = (
    runfolder.STATE,
    runfolder.TABLE,
    runfolder.CSV,
    runfolder.REPORT,
    f"local/{runfolder.RECORDS}",
    f"local/{runfolder.ENV}",
    f"local/{runfolder.LOG}",
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(make_bench, tmp_path: Path, *extra: str) -> Path:
    folder = make_bench("quiet", BENCH)
    out = tmp_path / "results" / "run"
    proc = cli("run", "--profile", "smoke", "--bench-dir", str(folder), "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    for name in WRITTEN:
        assert (out / name).is_file(), name
    return out


@pytest.mark.integration
def test_a_run_is_readable_by_its_user_alone(make_bench, tmp_path):
    out = run(make_bench, tmp_path)
    assert mode(out) == 0o700 and mode(out / "local") == 0o700
    for path in out.rglob("*"):
        assert mode(path) & 0o077 == 0, f"{path.relative_to(out)} is {oct(mode(path))}"


@pytest.mark.integration
def test_a_shared_run_is_readable_by_the_group_and_nobody_else(make_bench, tmp_path):
    out = run(make_bench, tmp_path, "--shared")
    assert mode(out) == 0o750 and mode(out / "local") == 0o750
    for name in WRITTEN:
        assert mode(out / name) == 0o640, f"{name} is {oct(mode(out / name))}"
    for path in out.rglob("*"):
        assert mode(path) & 0o007 == 0, f"{path.relative_to(out)} is {oct(mode(path))}"


@pytest.mark.integration
def test_doctor_s_smoke_run_is_private_too(make_bench, tmp_path):
    # doctor --deep's run goes through run_smoke, in a process whose umask lets others read.
    code = (
        "import os, sys; from pathlib import Path; os.umask(0o022); "
        "from cudastack.host.run import loop; "
        "print(loop.run_smoke(Path(sys.argv[1]), Path(sys.argv[2])).run_dir)"
    )
    folder = make_bench("quiet", BENCH)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert (out / runfolder.TABLE).is_file()
    for path in [out, *out.rglob("*")]:
        assert mode(path) & 0o077 == 0, f"{path} is {oct(mode(path))}"
