"""A process that ends with the one that started it, however that one ends (Linux).

Standard library only: the host gives it to the worker (and torchrun) it starts, and the worker
calls it for itself, which covers torchrun's ranks and its own process-group children. A worker
left running by a killed host would go on appending to the run folder that --resume then writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from typing import Optional

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: Optional[int] = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent thread ends (the host, torchrun
    and a parent worker start their children from their main thread). ``parent``: the pid that
    started this process, when known: if it died before the request (the kernel then never
    sends the signal), this process ends now. Elsewhere than Linux, or without a libc, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if parent is not None and os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
