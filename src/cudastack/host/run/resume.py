"""What an interrupted run still needs (--resume), read from its folder alone.

Nothing is held only in memory, so this works after any death of the host (SIGKILL, the OOM
killer, a reboot). A cell's worker processes run in order and each starts only after the one
before it finished, so a cell's done.json (written last by a finished process) says how many
of them finished: ``process`` + 1, or all when the worker skipped the whole cell. An unfinished
process runs again with ``--resume``: its worker keeps the cases it recorded ok or skipped and
runs the rest. Before that its failed rows and the host's rows about it (a failed or
interrupted run, a skipped or failed build) are taken out of the records, since it will now
say again how it went; everything a finished process recorded stays byte for byte.
"""

from __future__ import annotations

from collections.abc import Set
from pathlib import Path
from typing import Any

from cudastack.contract import runfolder


def finished_processes(cell_dir: Path, repeat: int) -> int:
    """How many of the cell's ``repeat`` worker processes finished (0 when none did)."""
    done_file = cell_dir / runfolder.DONE
    if not done_file.is_file():
        return 0
    done = runfolder.read_json(done_file)
    if done.get("cell_skipped"):
        return repeat
    process = done.get("process", 0)
    if not isinstance(process, int) or "suite_s" not in done:
        raise runfolder.RunFolderError(
            f"{done_file} is not what a worker writes; delete it to run the cell again"
        )
    return min(repeat, process + 1)


def prepare(run_dir: Path, repeat: int, going_on: Set[str] = frozenset()) -> dict[str, int]:
    """Make ``run_dir`` ready to resume: each cell's records without the rows its unfinished
    processes will write again (but those of the cells in ``going_on``, whose workers still
    run); return how many processes each cell folder has finished."""
    finished = {}
    for cell_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        finished[cell_dir.name] = n = finished_processes(cell_dir, repeat)
        records = cell_dir / runfolder.RECORDS
        if n < repeat and records.is_file() and cell_dir.name not in going_on:
            data = records.read_bytes()
            kept = b"".join(kept_lines(data, n, records))
            if kept != data:  # rewritten only when it changes: a full disk has no room for it
                runfolder.write_bytes(records, kept)
    return finished


def kept_lines(data: bytes, finished: int, path: Path = Path(runfolder.RECORDS)) -> list[bytes]:
    """The lines of a records.jsonl's ``data`` that a resume keeps, when its cell's first
    ``finished`` processes finished: all of theirs, and the ok or skipped case lines of the
    later ones. A line torn by a kill is dropped with the rest of its case's lines before it:
    a case's lines are written together, so that case may be incomplete and runs again.
    Raises RunFolderError on a line elsewhere that is no record (the file at ``path`` was
    changed by hand), as reading the records does."""
    lines = data.splitlines(keepends=True)
    torn = bool(lines) and not lines[-1].endswith(b"\n")
    rows = [(line, runfolder.record(line)) for line in (lines[:-1] if torn else lines)]
    for number, (line, row) in enumerate(rows, 1):
        if line.strip() and (row is None or not isinstance(row.get("process", 0), int)):
            raise runfolder.RunFolderError(
                f"{path}:{number}: not a record cudastack writes; remove that line to resume"
            )
    if torn and rows and rows[-1][1] is not None:
        last = _key(rows[-1][1])
        while rows and rows[-1][1] is not None and _key(rows[-1][1]) == last:
            rows.pop()
    return [line for line, row in rows if row is not None and _kept(row, finished)]


def _kept(row: dict[str, Any], finished: int) -> bool:
    if int(row.get("process", 0)) < finished:
        return True
    return row.get("bench") != "harness" and row.get("status") in ("ok", "skipped")


def _key(row: dict[str, Any]) -> tuple[Any, Any]:
    return row.get("case"), row.get("process", 0)
