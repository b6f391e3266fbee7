"""What a resumed worker process already recorded: the cases it skips, the ceilings it reuses.

Environment side, standard library only. ``--resume`` asks a worker process to add to its cell's
records.jsonl what an earlier, killed attempt of the same process left undone. A case counts as
recorded when the file holds an ok or skipped line of it for this process: a failed one runs
again (the host has already removed the failed lines of an unfinished process). Process-group
children (ISOLATE) must skip the same cases as their parent, whose list they get through ENV:
the file changes under them as earlier groups append to it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cudastack.contract import runfolder
from cudastack.contract.schema import CEILING_BENCH, rows_of

ENV = "CUDASTACK_RESUME_RECORDED"


@dataclass(frozen=True)
class Recorded:
    """What one process of a cell recorded before: case ids done, and the first sample of each
    of its ceiling cases (the sample that states the ceiling's value)."""

    cases: frozenset[str] = frozenset()
    ceilings: dict[str, float] = field(default_factory=dict)


def read(records: Path, process: int) -> Recorded:
    """What ``records`` (a cell's records.jsonl) holds of process ``process``: the cases with an
    ok or skipped line, and the ok ceilings' values (case id -> value). Lines that are not JSON
    objects (a line torn by a kill) are passed over."""
    if not records.is_file():
        return Recorded()
    done: set[str] = set()
    ceilings: dict[str, float] = {}
    with open(records, encoding="utf-8", errors="replace") as f:
        for line in f:
            row = runfolder.record(line)
            if row is None or row.get("process", 0) != process:
                continue
            if row.get("status") in ("ok", "skipped"):
                done.add(str(row.get("case")))
            if row.get("bench") == CEILING_BENCH and row.get("status") == "ok":
                value = next(iter(rows_of(row)), {}).get("value")
                if value is not None:
                    ceilings.setdefault(str(row["case"]), float(value))
    return Recorded(frozenset(done), ceilings)


def encode(found: Recorded) -> str:
    """``found`` as the text of the ENV variable, for process-group children."""
    return json.dumps({"cases": sorted(found.cases), "ceilings": found.ceilings})


def handed() -> Recorded:
    """What the parent worker found recorded, from ENV (nothing when it is not set)."""
    text = os.environ.get(ENV, "")
    if not text:
        return Recorded()
    data = json.loads(text)
    return Recorded(frozenset(data["cases"]), dict(data["ceilings"]))
