"""The run folder's layout, written once: every file name, atomic writes, reads with a check.

    <run>/run.json                       how the run went: running, complete, interrupted,
                                         failed, with the reason (host)
    <run>/results.parquet, results.csv   the run's table (host, from every cell's records)
    <run>/report.html                    the run's report (host)
    <run>/<cell>/records.jsonl           one JSON record per line (worker, appended)
    <run>/<cell>/env.json                the environment fingerprint (worker)
    <run>/<cell>/done.json               the suite finished, and in how long (worker)
    <run>/<cell>/log.txt                 the worker's output (host)
    <run>/<cell>/build.log               the image build's output (host, container cells)
    <run>/<cell>/cell.json               what the cell's image was made from (host)
    <run>/<cell>/traces/                 torch.profiler traces, with --trace (worker)

Standard library only: the worker inside a cell writes its part of the folder with it.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from cudastack.contract.errors import CudastackError

STATE = "run.json"
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
    file gets the usual permissions (0666 less the umask), not mkstemp's 0600: results are
    for sharing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def new_run_id() -> str:
    """A new run's id, sortable by time and unique across machines: 20261128-231502-3f9a1c."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
