"""A full disk: one line and exit code 1, the records written so far kept and readable, no file
left half-written that looks whole, and the run finished by --resume once there is room. And
the warning before a matrix's image builds need more disk than the engine has free.

The run fills a real tmpfs (mounting one needs root, which CI has): a bench whose cases record
many samples fills it part way through the run, in the worker's appends to records.jsonl, and
then every write the host makes (the log, the table, run.json) meets the full disk as well.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import cli

from cudastack.contract import runfolder
from cudastack.contract.errors import EXIT_FAILED, EXIT_OK
from cudastack.host.analysis import results
from cudastack.host.cells import doctor, matrix
from cudastack.host.cli.main import disk_full_message
from cudastack.host.run import state

# Eight cases of 12,000 samples each: some 210 KB of records a case (a line of its samples), 1.7
# MB in all, so that a 1 MiB disk fills during the fifth case.
BULKY = '''"""A bench whose every case records many samples: a run's records grow fast."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"i": [0, 1, 2, 3, 4, 5, 6, 7]}


def run(ctx, i):
    from cudastack.environment.context import Metric

    return [Metric("latency", "ms", "lower", [1.0 + k / 7 for k in range(12_000)])]
'''
CASES = 8
SAMPLES = 12_000
ONE_LINE = (
    "error: no space left on device writing {path}: free some space, then "
    "cudastack run --resume {run} finishes the run"
)  # a pattern once formatted: its words hold no character special to re


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 1 MiB tmpfs, unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the tests as root)")
    where = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def run_that_fills_the_disk(small_disk, tmp_path_factory):
    """The real command line, run into a folder on the small disk: (process, run folder)."""
    bench = tmp_path_factory.mktemp("bench")
    (bench / "bulky.py").write_text(textwrap.dedent(BULKY))
    out = small_disk / "run"
    proc = cli("run", "--bench-dir", str(bench), "--out", str(out), timeout=300)
    return proc, out


def test_a_disk_that_fills_mid_run_is_one_line_and_exit_1(run_that_fills_the_disk):
    proc, out = run_that_fills_the_disk
    assert proc.returncode == EXIT_FAILED, proc.stdout[-2000:] + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    # The file named is the host's first write that failed once the worker had died of the
    # full disk: the cell's log or table as a rule, which depends on how much of the log's
    # last page was free.
    named = re.fullmatch(ONE_LINE.format(path="(.+)", run=re.escape(str(out))), last)
    assert named, proc.stderr
    assert Path(named[1]).parent in (out, out / "local"), last
    assert shutil.disk_usage(out).free < 4096  # the disk did fill


def test_the_records_written_before_it_are_kept_and_readable(run_that_fills_the_disk):
    _, out = run_that_fills_the_disk
    records = results.read_records(out / "local" / runfolder.RECORDS)  # a torn last line dropped
    per_case = records.groupby("case").size()
    assert 1 <= len(per_case) < CASES  # the run stopped part way
    # Every case before the one the disk filled in has all its samples, each one whole.
    assert (per_case.iloc[:-1] == SAMPLES).all(), per_case
    assert records["status"].eq("ok").all()
    assert records["value"].notna().all()


def test_no_file_is_left_half_written(run_that_fills_the_disk):
    _, out = run_that_fills_the_disk
    # Whole-file writes go through a temporary file, removed when the write fails.
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    if (out / runfolder.TABLE).exists():
        results.load_table(out)  # raises on a table cut short
    # run.json is still the one written when the run started: readable, and not "complete".
    recorded = state.read(out)
    assert recorded is not None and recorded["state"] in ("running", "failed")


def test_the_run_resumes_elsewhere_to_a_complete_table(run_that_fills_the_disk, tmp_path):
    _, out = run_that_fills_the_disk
    moved = tmp_path / "run"
    shutil.copytree(out, moved)
    resumed = cli("run", "--resume", str(moved), timeout=300)
    assert resumed.returncode == EXIT_OK, resumed.stdout[-2000:] + resumed.stderr
    table = results.load_table(moved)
    assert table.groupby("case").size().to_dict() == {
        f"bulky[i={i}]": SAMPLES for i in range(CASES)
    }
    assert set(table["status"]) == {"ok"}
    assert state.read(moved)["state"] == "complete"


# -- the parts, without a small disk --------------------------------------------------------


def test_a_failed_atomic_write_names_its_file_and_leaves_the_old_one(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")

    def fills_the_disk(tmp: Path) -> None:
        tmp.write_bytes(b"part of a new file")  # what reached the disk before it was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as caught:
        runfolder.atomic_write(target, fills_the_disk)
    assert caught.value.filename == str(target)  # not the temporary file's name, nor none
    assert runfolder.disk_full(caught.value) is caught.value
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_a_write_to_a_full_device_is_a_full_disk_naming_its_file(tmp_path):
    """/dev/full fails every write with ENOSPC, as a full disk does."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with (
        pytest.raises(OSError) as caught,
        runfolder.writing(tmp_path / "records.jsonl"),
        open("/dev/full", "w") as f,
    ):
        f.write("x" * 100_000)
    full = runfolder.disk_full(caught.value)
    assert full is not None and full.filename == str(tmp_path / "records.jsonl")


def test_the_first_named_full_disk_of_a_chain_is_the_one_reported(tmp_path):
    """Recording a failure on a full disk fails too: the line names the write that failed
    first, not run.json."""
    table, run_json = tmp_path / runfolder.TABLE, tmp_path / runfolder.STATE

    def fill(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    try:
        try:
            runfolder.atomic_write(table, fill)
        except OSError:
            runfolder.atomic_write(run_json, fill)  # what state.recorded does on the way out
    except OSError as exc:
        outer = exc
    assert outer.filename == str(run_json)
    assert runfolder.disk_full(outer).filename == str(table)
    # Other errors are no full disk, whatever they arose from.
    assert runfolder.disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert runfolder.disk_full(ValueError("x")) is None
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(table))
    assert runfolder.disk_full(quota) is quota


def test_the_line_says_how_to_finish_the_run_only_when_it_did_not_finish(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "local").mkdir(parents=True)
    records = run_dir / "local" / runfolder.RECORDS
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(records))
    # Not a run folder (no run.json): the command again.
    assert disk_full_message(full) == (
        f"no space left on device writing {records}: free some space, then run the command again"
    )
    state.started(run_dir, "r1")
    assert disk_full_message(full) == (
        f"no space left on device writing {records}: free some space, then "
        f"cudastack run --resume {run_dir} finishes the run"
    )
    # The run folder itself, as a write that names no file of it may be named.
    assert disk_full_message(OSError(errno.ENOSPC, "x", str(run_dir))).endswith(
        f"cudastack run --resume {run_dir} finishes the run"
    )
    state.ended(run_dir, "complete", "1 cell: 1 ok")  # `report` on a finished run: no resume
    report = run_dir / runfolder.REPORT
    assert disk_full_message(OSError(errno.ENOSPC, "x", str(report))) == (
        f"no space left on device writing {report}: free some space, then run the command again"
    )
    assert disk_full_message(OSError(errno.EDQUOT, "x")) == (
        "disk quota exceeded: free some space, then run the command again"
    )


# -- the disk the images of a matrix need ---------------------------------------------------


def shipped_cells() -> list[matrix.Cell]:
    return matrix.load(matrix.DEFAULT_MATRIX)


def test_a_cells_image_is_estimated_by_its_torch_build():
    cells = shipped_cells()
    cuda = [c for c in cells if c.torch_cuda]
    cpu = [c for c in cells if not c.torch_cuda]
    assert cuda and cpu
    needed = sum(doctor.image_gb(c) for c in cells)
    assert needed == len(cuda) * doctor.CUDA_IMAGE_GB + len(cpu) * doctor.CPU_IMAGE_GB
    assert 5 <= doctor.CUDA_IMAGE_GB <= 15 and 1 <= doctor.CPU_IMAGE_GB <= 3


def test_a_matrix_needing_more_image_disk_than_is_free_is_warned_in_one_line():
    cells = shipped_cells()
    needed = sum(doctor.image_gb(c) for c in cells)
    check = doctor.image_disk(cells, doctor.EngineDisk("/var/lib/docker", 30.4, ""))
    assert check.status == "warn"
    assert check.detail == (
        f"the {len(cells)} cell images to build need about {needed:.0f} GB, more than the "
        "30 GB free under /var/lib/docker: free some space (docker image prune), or build "
        "fewer cells (--cell)"
    )
    assert "\n" not in check.detail


def test_a_matrix_that_fits_or_has_its_images_is_ok():
    cells = shipped_cells()
    cpu = [c for c in cells if not c.torch_cuda]
    fits = doctor.image_disk(cpu, doctor.EngineDisk("/var/lib/docker", 59.0, ""))
    assert (fits.status, fits.detail) == (
        "ok",
        "59 GB free under /var/lib/docker; the 1 cell image to build needs about 2 GB",
    )
    built = doctor.image_disk([], doctor.EngineDisk("/var/lib/docker", 1.2, ""))
    assert (built.status, built.detail) == (
        "ok",
        "1 GB free under /var/lib/docker; no image to build",
    )


def test_free_space_that_cannot_be_known_is_said(tmp_path, monkeypatch):
    cells = shipped_cells()
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    # A data root on this machine: its free space, as the file system reports it.
    here = doctor.engine_disk({"DockerRootDir": str(tmp_path)})
    assert here.root == str(tmp_path)
    assert here.free_gb == pytest.approx(shutil.disk_usage(tmp_path).free / 1e9, rel=0.01)
    # One this machine does not have (an engine in a VM), or an engine on another machine.
    gone = doctor.engine_disk({"DockerRootDir": str(tmp_path / "absent")})
    assert gone.free_gb is None and "not a folder on this machine" in gone.why
    monkeypatch.setenv("DOCKER_HOST", "tcp://build-box:2375")
    remote = doctor.engine_disk({"DockerRootDir": str(tmp_path)})
    assert remote.free_gb is None and "tcp://build-box:2375" in remote.why
    assert doctor.engine_disk({}).why == "the engine does not say where it keeps images"
    check = doctor.image_disk(cells, remote)
    assert check.status == "warn"
    assert check.detail.startswith(f"the {len(cells)} cell images to build need about ")
    assert "the space free cannot be known here: the engine (tcp://build-box:2375)" in check.detail
