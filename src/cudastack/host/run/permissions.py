"""Who may read a run: its folder 0700 and its files 0600, or group-readable with --shared."""

from __future__ import annotations

import os

# The process umask a run sets, so that every file and folder it makes (run.json, records,
# log.txt, build.log, the table, the report) gets it, and so do the workers it starts locally,
# which inherit it. A run records host names, paths, command lines and logs that are nobody
# else's business on a shared machine.
PRIVATE_UMASK = 0o077
SHARED_UMASK = 0o027  # --shared: the group reads, nobody else
PRIVATE_FOLDER, SHARED_FOLDER = 0o700, 0o750

_shared = False


def apply(shared: bool) -> None:
    """Set this process's umask for the run about to start (before anything of it is written):
    private (0600 files, 0700 folders), or with ``shared`` readable by the group as well."""
    global _shared
    _shared = shared
    os.umask(SHARED_UMASK if shared else PRIVATE_UMASK)


def folder_mode() -> int:
    """The mode a new run folder gets: 0700, or 0750 once ``apply(shared=True)`` ran.

    The folder's mode is what guards the files a worker writes in a container too: Docker
    passes no umask, so they are 0644 there, and only the folder keeps other users out."""
    return SHARED_FOLDER if _shared else PRIVATE_FOLDER
