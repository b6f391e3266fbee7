"""One writer per run folder: a lock on <run>/run.lock held for the whole run.

The lock is ``flock`` on the file, which the kernel releases when its holder dies however it
dies (SIGKILL, the OOM killer, a reboot), so a stale lock needs no clean-up: the next writer
simply gets it. The file holds the holder's pid, host and start time for the error a second
writer sees; its contents mean nothing once the lock is free. Worker processes do not inherit
the lock (Python opens files non-inheritable); they end with the host that started them
(the parent-death signal), and the containers of a killed host are removed by --resume.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from cudastack.contract import runfolder
from cudastack.contract.errors import UserError


class RunLocked(UserError):
    """Another process writes this run folder."""


def holder(run_dir: Path) -> Optional[str]:
    """Who writes ``run_dir`` now ("pid N on HOST since T"), or None when nobody does: the lock
    itself says so, on any host that shares the folder, whatever became of a recorded pid."""
    try:
        fd = os.open(run_dir / runfolder.LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # no lock file (an older run) or none readable here
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


@contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block. Raises RunLocked (one line, naming the holder)
    when another live process holds it."""
    path = run_dir / runfolder.LOCK
    try:
        # Never through a link: a copied folder's run.lock could point at any file of yours.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EINVAL, "not a regular file")
    except OSError as exc:
        if exc.errno in runfolder.DISK_FULL:
            raise
        raise UserError(
            f"cannot lock {path}: {exc.strerror or exc}; a run folder needs a run.lock file "
            "cudastack can write"
        ) from None
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
