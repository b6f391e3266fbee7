"""One writer per run folder: a lock on <run>/run.lock held for the whole run.

The lock is ``flock`` on the file, which the kernel releases when its holder dies however it
dies (SIGKILL, the OOM killer, a reboot), so a stale lock needs no clean-up: the next writer
simply gets it. The file holds the holder's pid, host and start time for the error a second
writer sees; its contents mean nothing once the lock is free. Worker processes do not inherit
the lock (Python opens files non-inheritable), so a worker left behind by a killed host does
not keep the folder locked; the launchers stop such workers themselves.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from cudastack.contract import runfolder
from cudastack.contract.errors import UserError


class RunLocked(UserError):
    """Another process writes this run folder."""


@contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block. Raises RunLocked (one line, naming the holder)
    when another live process holds it."""
    path = run_dir / runfolder.LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            raise RunLocked(
                f"{run_dir} is being written by {holder}; wait for that run to end or stop it "
                "(a folder has one writer at a time)"
            ) from None
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {at}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, harmless once free
