"""How a run folder says how its run went: running, complete, interrupted or failed (run.json).

The host writes ``running`` with its pid and host name when it creates the folder and the end
when the run ends. A run killed outright (SIGKILL, the OOM killer, a reboot) never writes its
end: its folder still says ``running``, and a reader on the same host finds the pid gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from cudastack.contract import redact, runfolder
from cudastack.host.run import writer

# submitted: a job array left in Slurm to run on (--no-wait); a resume follows it to the end.
STATES = ("running", "complete", "interrupted", "failed", "submitted")
INTERRUPTED = "interrupted by the user"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def started(run_dir: Path, run_id: str, options: Optional[dict[str, Any]] = None) -> None:
    """Record that this process runs ``run_dir`` from now on, started with ``options`` (the
    command and its options, what --resume runs again). A resumed run keeps when it first
    started and adds when it resumed."""
    now = _now()
    before = read(run_dir) or {}
    data = {
        "run_id": run_id,
        "state": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": before.get("started_at", now),
        "options": options or {},
    }
    if before:
        data["resumed_at"] = [*before.get("resumed_at", []), now]
    runfolder.write_json(run_dir / runfolder.STATE, data)


def ended(run_dir: Path, state: str, reason: str) -> None:
    """Record how the run ended: one of STATES but ``running``, and why in one line."""
    path = run_dir / runfolder.STATE
    data = read(run_dir) or {}
    data.update(state=state, reason=reason, ended_at=_now())
    runfolder.write_json(path, data)


def read(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's run.json, or None for a folder without one (written by an older cudastack)."""
    path = run_dir / runfolder.STATE
    return runfolder.read_json(path) if path.is_file() else None


@contextmanager
def recorded(run_dir: Path) -> Iterator[None]:
    """Whatever stops the run before it records its end (an error, Ctrl-C outside a cell, a
    full disk) is recorded as its end, then raised on; a folder removed meanwhile (the worker
    refused its input: nothing to keep) is left alone."""
    try:
        yield
    except BaseException as exc:
        if run_dir.is_dir():
            # On a full disk this write fails too: run.json then keeps "running", and the
            # error the user sees is the one that stopped the run.
            with contextlib.suppress(OSError):
                if isinstance(exc, KeyboardInterrupt):
                    ended(run_dir, "interrupted", INTERRUPTED)
                else:
                    reason = redact.text(str(exc)).strip().splitlines()
                    ended(run_dir, "failed", reason[0] if reason else type(exc).__name__)
        raise


def describe(run_dir: Path) -> str:
    """One line on how the run in ``run_dir`` went, from its run.json (``read``) and its lock
    (held: its writer is at work, on whichever host), with the command that finishes it."""
    data = read(run_dir)
    if data is None:
        return "state: not recorded (a run folder of an older cudastack)"
    state, reason = data.get("state", ""), data.get("reason", "")
    options = data.get("options")
    command = options.get("command", "run") if isinstance(options, dict) else "run"
    finish = f"; cudastack {command} --resume {run_dir} finishes it"
    if state not in ("running", "complete"):
        return f"state: {state}" + (f": {reason}" if reason else "") + finish
    if state == "complete":
        return "state: complete" + (f": {reason}" if reason else "")
    at_work = writer.holder(run_dir)
    if at_work is not None:
        return f"state: running ({at_work})"
    pid, host = data.get("pid"), data.get("host", "")
    if (run_dir / runfolder.LOCK).exists() or (
        host == socket.gethostname() and isinstance(pid, int) and not _alive(pid)
    ):
        return (
            f"state: did not finish: its process ({pid} on {host}) is gone, killed or the "
            f"machine restarted (since {data.get('started_at', '?')}); the cases it recorded "
            f"are kept{finish}"
        )
    return f"state: running (pid {pid} on {host}, since {data.get('started_at', '?')})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
