"""Atomic writes under a real crash and a real write failure: the old file or none, never half.

Each writer runs in a subprocess of its own: one is killed with SIGKILL halfway through its
write, the others hit a file-size limit the kernel enforces (RLIMIT_FSIZE), which fails a write
part way exactly as a full disk does (EFBIG instead of ENOSPC). The export archive's writer is
covered the same way in tests/test_archive.py.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

OLD = b"old complete file\n" * 1000

# Writes 1 MB of the new file, says so, then waits to be killed before it could finish.
KILLED_MID_WRITE = """
import sys, time
from pathlib import Path
from cudastack.contract.runfolder import atomic_write

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"n" * 1_000_000)
        f.flush()
        print("half written", flush=True)
        time.sleep(60)
        f.write(b"n" * 1_000_000)

atomic_write(Path(sys.argv[1]), write)
"""


def kill_mid_write(script: str, *args: str) -> None:
    """Run ``script`` until it prints its first line, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line == "half written\n", proc.communicate()[1]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("old", [True, False], ids=["replacing", "new"])
def test_a_writer_killed_mid_write_leaves_the_old_file_or_none(tmp_path, old):
    target = tmp_path / "results.parquet"
    if old:
        target.write_bytes(OLD)
    kill_mid_write(KILLED_MID_WRITE, str(target))
    if old:
        assert target.read_bytes() == OLD
    else:
        assert not target.exists()
    # The half-written bytes are only in a hidden temporary file beside it.
    assert [p.name.startswith(".") for p in tmp_path.iterdir() if p != target] == [True]


# Each writer with what it writes: more than LIMIT bytes, so the write fails part way.
LIMIT = 4096
BIG = "x" * (16 * LIMIT)
WRITERS = {
    "runfolder.atomic_write": (
        "from cudastack.contract.runfolder import atomic_write\n"
        "atomic_write(target, lambda p: p.write_text(BIG))"
    ),
    "lock.write_lock": (
        "from cudastack.host.cells import lock, matrix\n"
        "cell = matrix.Cell('c', 'debian:12', '2.9.1', 'cpu', '3.12')\n"
        "lock.write_lock(target, cell, [f'pkg{i}==1.0 --hash=sha256:{BIG[:64]}' "
        "for i in range(1000)])"
    ),
    "lock.pin_base": (
        "from cudastack.host.cells import lock\n"
        "lock.pin_base(target, 'debian:12', 'debian:12@sha256:' + 'a' * 64)"
    ),
    # env.json and done.json of a worker.
    "runfolder.write_json": (
        "from cudastack.contract import runfolder\nrunfolder.write_json(target, {'padding': BIG})"
    ),
}
FULL_DISK = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
target, BIG, LIMIT = Path(sys.argv[1]), "x" * {big}, {limit}
{imports}
resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
try:
    {call}
except OSError as exc:
    sys.exit(exc.errno)
"""


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_that_fails_part_way_leaves_the_old_file(tmp_path, writer):
    target = tmp_path / "target"
    # The old file is a matrix whose base image pin_base can find, padded past the limit.
    old = 'base_image = "debian:12"\n' + f"# {BIG}\n"
    target.write_text(old)
    imports, call = WRITERS[writer].rsplit("\n", 1)
    script = FULL_DISK.format(big=len(BIG), limit=LIMIT, imports=imports, call=call)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == errno.EFBIG, proc.stderr  # the write failed, and said so
    assert target.read_text() == old
