"""The run folder's layout, written once: every file name, atomic writes, reads with a check.

    <run>/run.json                       how the run went: running, complete, interrupted,
                                         failed, submitted (to Slurm), with the reason, and
                                         the options it was started with, for --resume (host)
    <run>/run.lock                       held by the one process writing the run (host)
    <run>/slurm/                         on Slurm: job.sbatch, arrays.json, each task's
                                         output and each process's exit code (host, tasks)
    <run>/results.parquet, results.csv   the run's table (host, from every cell's records)
    <run>/report.html                    the run's report (host)
    <run>/<cell>/records.jsonl           a JSON line per case and metric (worker, appended)
    <run>/<cell>/env.json                the environment fingerprint (worker)
    <run>/<cell>/done.json               the suite finished, and in how long (worker)
    <run>/<cell>/log.txt                 the worker's output (host)
    <run>/<cell>/build.log               the image build's output (host, container cells)
    <run>/<cell>/cell.json               what the cell's image was made from (host)
    <run>/<cell>/traces/                 torch.profiler traces, with --trace (worker)

Standard library only: the worker inside a cell writes its part of the folder with it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from cudastack.contract.errors import CudastackError

STATE = "run.json"
LOCK = "run.lock"
TABLE = "results.parquet"
CSV = "results.csv"
REPORT = "report.html"
RECORDS = "records.jsonl"
ENV = "env.json"
DONE = "done.json"
LOG = "log.txt"
BUILD_LOG = "build.log"
INPUTS = "cell.json"
TRACES = "traces"


class RunFolderError(CudastackError):
    """A file of a run folder that is not what cudastack writes there (damaged or foreign)."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees half a file and a crash (or a full disk) leaves the old one: the
    half-written bytes are only in a hidden ``.<name>.*.tmp`` beside it, removed on error. The
    file gets the permissions any new file gets (0666 less the umask, which a run sets: 0600,
    0640 with --shared), not always mkstemp's 0600. A full disk's OSError (``disk_full``)
    names ``path``, whichever call ran out of space."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# A write that fails for want of space: the disk is full, or the user's quota is spent.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> Optional[OSError]:
    """When ``exc`` is a full disk's OSError: the earliest one of the errors it arose from that
    names its file, the write the disk filled up on (what fails while handling a full disk,
    such as closing the file or recording the failure, is often a full disk too); else None."""
    if not (isinstance(exc, OSError) and exc.errno in DISK_FULL):
        return None
    found, seen = exc, set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL and current.filename:
            found = current
        current = current.__cause__ or current.__context__
    return found


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Make a full disk's OSError raised inside name ``path``: a failed write names no file, and
    a failed mkstemp its temporary one, while the file the user knows is ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            exc.filename = str(path)
        raise


def _umask() -> int:
    """This process's umask. Read from /proc where the kernel shows it (Linux 4.7+): setting it
    to read it would leave it 0 for a moment, in which a file another thread creates (a
    container's log.txt) would be readable by everyone."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # the fallback's moment is at least a private one
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``path``, atomically."""
    atomic_write(path, lambda p: p.write_bytes(data))


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented, key-sorted JSON, atomically (values JSON lacks as strings)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of a run folder. Raises RunFolderError when it is not one (a file
    cudastack did not write, or one damaged since: its writes are atomic)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunFolderError(f"{path} is not a JSON file; was it written by cudastack?") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} holds no JSON object; was it written by cudastack?")
    return data


def jsonl(lines: Iterable[dict[str, Any]]) -> str:
    """``lines`` as records.jsonl text: a JSON object a line, each ended by a newline. Writers
    append a case's lines in one write, so a kill tears at most the last case."""
    return "".join(json.dumps(line) + "\n" for line in lines)


def record(line: bytes | str) -> Optional[dict[str, Any]]:
    """One line of a records.jsonl as its row, or None for a line that is none (one torn by a
    kill, or garbage)."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) else None


def new_run_id() -> str:
    """A new run's id, sortable by time and unique across machines: 20261128-231502-3f9a1c."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
