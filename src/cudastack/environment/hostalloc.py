"""The host allocator's state, fixed for the whole worker process so no case changes another's.

Environment side: standard library only.

glibc's malloc serves a request of at least its *mmap threshold* with a fresh ``mmap`` (every
page faulted in on first touch, returned to the kernel on free) and smaller ones from its heap.
By default the threshold is dynamic: freeing an mmapped chunk raises it to that chunk's size (up
to 32 MiB on 64-bit), and the heap's trim threshold to twice that. So a case's speed on a CPU
depended on what ran before it: the fp64 reference conv of a check, run just before timing,
raised the threshold above the fp32 conv's buffers, and the timed conv skipped ~4,500 page
faults a call and read 1.9x faster (0.44 vs 0.23 TFLOP/s) than the same conv timed in a fresh
process. Setting the thresholds explicitly turns the dynamic rule off (mallopt(3)).

The values are glibc's own defaults, frozen: every buffer of 128 KiB or more is mmapped afresh
and returned on free, whatever ran before. Freezing them high instead (32 MiB) does not give a
steady state either: torch allocates with posix_memalign, whose padded request does not fit the
hole its own freed buffer left, so the heap grew and faulted anyway unless a larger buffer had
been freed before — the very dependence on history this removes. Page faults stay in the
figures, as in a fresh process; preloading jemalloc or tcmalloc (``LD_PRELOAD``) is the way to
measure without them, and is recorded as such.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

# mallopt parameters (glibc's <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD
TRIM_THRESHOLD = 128 * 1024  # glibc's DEFAULT_TRIM_THRESHOLD
# Set by the user, these already fix glibc's thresholds (read once at start-up): left alone.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
USER_TUNABLE = "glibc.malloc."  # in GLIBC_TUNABLES (other tunables, e.g. rseq, do not count)


def fix_thresholds() -> dict[str, Any]:
    """Fix glibc malloc's mmap and trim thresholds for this process; returns what env.json
    records: the values set, or why nothing was changed (another allocator preloaded, the
    user's own malloc settings, a C library other than glibc)."""
    libc = _glibc()
    if libc is None:
        return {"allocator": "unchanged", "reason": "not glibc"}
    if _interposed(libc):  # jemalloc or tcmalloc preloaded: glibc's settings do not apply
        preload = os.environ.get("LD_PRELOAD", "")
        return {"allocator": "unchanged", "reason": f"malloc is not glibc's (LD_PRELOAD={preload})"}
    own = [k for k in USER_SETTINGS if k in os.environ]
    if USER_TUNABLE in os.environ.get("GLIBC_TUNABLES", ""):
        own.append("GLIBC_TUNABLES")
    if own:
        return {"allocator": "glibc, unchanged", "reason": f"set by the user: {', '.join(own)}"}
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        return {"allocator": "glibc, unchanged", "reason": "mallopt refused the thresholds"}
    return {
        "allocator": f"glibc {libc.gnu_get_libc_version().decode()}",
        "mmap_threshold_bytes": MMAP_THRESHOLD,
        "trim_threshold_bytes": TRIM_THRESHOLD,
    }


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version  # only glibc has it (musl does not)
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    return libc


def _interposed(libc: Any) -> bool:
    """Whether the process's malloc (the first one the dynamic linker finds) is not libc's."""
    used = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
    return used != ctypes.cast(libc.malloc, ctypes.c_void_p).value
