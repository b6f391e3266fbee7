"""What the worker's forked children (DataLoader workers) print on stderr: passed on, and kept.

A DataLoader worker that cannot hand a batch over (a full /dev/shm) prints the error from its
queue's feeder thread and drops the batch, and the loop that waits for it waits until the case's
time limit: the worker's own exception says nothing. So forked children get their stderr
through a pipe that a thread of the worker reads, copying every line to the worker's stderr
(the cell's log) and keeping the last ones, which a case that ends badly adds to its reason.
The worker's own stderr is left as it is: a fatal error of its own (an abort in a CUDA library)
must reach the log even when nothing is left to copy it. Children made with the ``spawn`` or
``forkserver`` start method (Python 3.14's default on Linux), or by subprocess, write to the
worker's stderr directly and are not kept.
"""

from __future__ import annotations

import os
import threading
from collections import deque

# Enough for a few tracebacks of the children; a reason quotes only their decisive lines.
KEPT_LINES = 200

_lines: deque[str] = deque(maxlen=KEPT_LINES)
_seen = 0  # lines read in all, so that a case can take only the ones printed during it
_lock = threading.Lock()
_pipe_read = -1  # the pipe's read end, in the process that reads it; -1 elsewhere
_started = False
# A line without its end yet (a progress bar's carriage returns) is kept to this length.
_PENDING_LIMIT = 4096


def start() -> None:
    """Route the stderr of every child this process forks from now on through a pipe that a
    daemon thread copies to this process's stderr and keeps; once per process."""
    global _started, _pipe_read
    if _started:
        return
    _pipe_read, write = os.pipe()
    os.register_at_fork(after_in_child=lambda: _in_child(write))
    threading.Thread(target=_copy, args=(_pipe_read,), name="child-stderr", daemon=True).start()
    _started = True


def _in_child(write: int) -> None:
    """In a forked child: stderr into the pipe. The read end is closed once, in the first
    generation; a grandchild inherits -1 and must not close whatever now holds that number."""
    global _pipe_read
    os.dup2(write, 2)
    if _pipe_read >= 0:
        os.close(_pipe_read)
        _pipe_read = -1


def _copy(read: int) -> None:
    """Copy the pipe to stderr as it arrives, and keep its lines. Never stops on a failed
    write: a reader that stopped would leave the children blocked on a full pipe."""
    global _seen
    pending = b""
    while chunk := os.read(read, 65536):
        _write_all(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        pending = pending[-_PENDING_LIMIT:]
        with _lock:
            _lines.extend(line.decode("utf-8", "replace") for line in lines)
            _seen += len(lines)


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(2, view) :]
    except OSError:
        pass  # stderr closed: the lines are still kept


def mark() -> int:
    """A position in the children's output: ``since(mark())`` is what they print after it."""
    with _lock:
        return _seen


def since(position: int) -> list[str]:
    """The lines children printed after ``position`` (``mark``), the last KEPT_LINES at most."""
    with _lock:
        return list(_lines)[max(0, len(_lines) - (_seen - position)) :]
