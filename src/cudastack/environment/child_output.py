"""What the worker's forked children (DataLoader workers) print on stderr: passed on, and kept.

A DataLoader worker that cannot hand a batch over (a full /dev/shm) prints the error from its
queue's feeder thread and drops the batch, and the loop that waits for it waits until the case's
time limit: the worker's own exception says nothing. So forked children get their stderr
through a pipe that a thread of the worker reads, copying every line to the worker's stderr
(the cell's log) and keeping the last ones, which a case that ends badly adds to its reason.
The worker's own stderr is left as it is: a fatal error of its own (an abort in a CUDA library)
must reach the log even when nothing is left to copy it. Children made with the ``spawn``
start method, or by subprocess, write to the worker's stderr directly and are not kept.
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
_started = False


def start() -> None:
    """Route the stderr of every child this process forks from now on through a pipe that a
    daemon thread copies to this process's stderr and keeps; once per process."""
    global _started
    if _started:
        return
    read, write = os.pipe()

    def in_child() -> None:
        os.dup2(write, 2)
        os.close(read)  # the child only writes

    os.register_at_fork(after_in_child=in_child)
    threading.Thread(target=_copy, args=(read,), name="child-stderr", daemon=True).start()
    _started = True


def _copy(read: int) -> None:
    global _seen
    with os.fdopen(read, "rb") as pipe:  # a line as soon as it is whole
        for raw in pipe:
            os.write(2, raw)
            with _lock:
                _lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                _seen += 1


def mark() -> int:
    """A position in the children's output: ``since(mark())`` is what they print after it."""
    with _lock:
        return _seen


def since(position: int) -> list[str]:
    """The lines children printed after ``position`` (``mark``), the last KEPT_LINES at most."""
    with _lock:
        return list(_lines)[max(0, len(_lines) - (_seen - position)) :]
