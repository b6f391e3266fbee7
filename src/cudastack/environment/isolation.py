"""Run a suite's process groups one after another, each in a fresh worker process of its own.

Environment side, standard library only. A bench's ISOLATE list makes ``suite.process_groups``
split the cases; this module is how the worker runs more than one group: it starts itself again
for each group, with the same request limited to that group (``--group N``), so every launcher
(local, container, a scheduler) gets the isolation without knowing of it. The children append
to the same records.jsonl; the parent counts their cases and writes the lines of any case a child
never recorded because it died.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from cudastack.contract import runfolder
from cudastack.contract.request import SuiteRequest
from cudastack.environment.suite import Case

# The cudastack package this process runs, for the child to import the same one.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

FailedLines = Callable[[Case, str], list[dict[str, Any]]]


def child_argv(request: SuiteRequest, group: int) -> list[str]:
    """The command of the worker process that runs group ``group`` (0-based) of ``request``'s
    suite: the same request, limited to that group."""
    return [sys.executable, "-m", "cudastack.worker", *replace(request, group=group).to_argv()]


def case_statuses(lines: Sequence[dict[str, Any]]) -> list[str]:
    """The status of each case in a run of records.jsonl lines, in order.

    A case's lines are consecutive and none repeats its first (metric, rep) pair (a line of
    schema 5 holds all of a metric's samples, and no rep), so a case ends where the case id
    changes or that pair comes again: two identical cases (a value listed twice in PARAMS) in a
    row are still two.
    """
    statuses: list[str] = []
    first: tuple[str, str, Any] = ("", "", None)
    for row in lines:
        key = (row["case"], row["metric"], row.get("rep"))
        if not statuses or row["case"] != first[0] or key == first:
            statuses.append(row["status"])
            first = key
    return statuses


def how_it_ended(code: int) -> str:
    """A child's exit status in words: a negative code is the signal that killed it."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def run_groups(
    request: SuiteRequest,
    groups: Sequence[Sequence[Case]],
    records: Path,
    failed_lines: FailedLines,
    env: Optional[Mapping[str, str]] = None,
) -> dict[str, int]:
    """Run each group in a child worker process, one at a time; return the cases' status counts.
    ``env`` adds variables to the children's environment (what the parent measured for them).

    A child that dies (a segfault in a kernel library, the kernel's OOM killer) leaves failed
    rows for its cases that have none, and the next group still runs.
    """
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    for index, cases in enumerate(groups):
        print(
            f"process {index + 1} of {len(groups)}: {len(cases)} cases in a fresh worker process",
            flush=True,
        )
        start = _clean_end(records)
        code = _run_child(child_argv(request, index), env or {})
        statuses = case_statuses(_lines_from(records, start))
        for status in statuses:
            counts[status] += 1
        missing = list(cases[len(statuses) :])
        if not missing:
            continue
        how = how_it_ended(code)
        lines = failed_lines(missing[0], f"its worker process ended with {how} during this case")
        for case in missing[1:]:
            reason = f"not run: its worker process ended with {how} during {missing[0].id}"
            lines += failed_lines(case, reason)
        _clean_end(records)
        with open(records, "a", encoding="utf-8") as out:
            out.write(runfolder.jsonl(lines))
        counts["failed"] += len(missing)
        print(f"process {index + 1} ended with {how}; {len(missing)} cases failed", flush=True)
    return counts


def _run_child(cmd: list[str], extra: Mapping[str, str]) -> int:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()  # the child writes to the same stdout: keep the lines in order
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except BaseException:  # interrupted: the child does not outlive the worker
        proc.kill()
        proc.wait()
        raise


def _clean_end(path: Path) -> int:
    """The file's size after cutting a line torn by a killed writer, so appends start clean."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return keep


def _lines_from(path: Path, offset: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().split(b"\n")
    # The last piece is '' after a complete line, or a line torn by the child's death.
    return [json.loads(line) for line in lines[:-1] if line.strip()]
