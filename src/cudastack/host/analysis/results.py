"""Host side: ingest workers' records into one tidy table, store it atomically, summarise it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from cudastack.contract.schema import COLUMNS, SCHEMA_VERSION
from cudastack.contract.stats import NOISY_REL_IQR

RECORDS = "records.jsonl"
ENV = "env.json"
DONE = "done.json"  # written by the worker when its suite finished
TABLE = "results.parquet"
CSV = "results.csv"

# The metric that best states a case's result in one number, in order of preference.
HEADLINE_METRICS = ("items_per_s", "tflops", "gbps", "latency_us", "latency")


class ResultsError(ValueError):
    """A results folder or file that cannot be read as cudastack results."""


def read_records(path: Path) -> pd.DataFrame:
    """Rows of one records.jsonl. A torn last line (the writer was killed mid-line) is dropped;
    a malformed line elsewhere is an error, since the file was not written by a worker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ResultsError(f"{path}:{number}: not a JSON record") from None
    return to_frame(rows)


def to_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Records as a table with exactly the schema's columns and types."""
    df = pd.DataFrame(list(rows))
    newer = df["schema_version"].max() if "schema_version" in df and len(df) else SCHEMA_VERSION
    if newer > SCHEMA_VERSION:
        raise ResultsError(
            f"records use schema {newer}, newer than this cudastack's "
            f"{SCHEMA_VERSION}; upgrade cudastack to read them"
        )
    for column, kind in COLUMNS.items():
        if column not in df:
            df[column] = pd.Series(dtype="float64" if kind is float else object)
        if kind is float:
            df[column] = pd.to_numeric(df[column], errors="coerce").astype("float64")
        elif kind is int:
            df[column] = pd.to_numeric(df[column], errors="coerce").fillna(0).astype("int64")
        else:
            df[column] = df[column].fillna("").astype(str)
    return df[list(COLUMNS)].reset_index(drop=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    # Write beside the target and rename: a reader never sees half a file, a crash leaves none.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_tables(df: pd.DataFrame, folder: Path) -> None:
    """results.parquet (exact round trip) and results.csv (for spreadsheets), each atomically."""
    atomic_write(folder / TABLE, lambda p: df.to_parquet(p, index=False))
    atomic_write(folder / CSV, lambda p: df.to_csv(p, index=False))


def load_table(run_dir: Path) -> pd.DataFrame:
    path = run_dir / TABLE
    if not path.is_file():
        raise ResultsError(f"{run_dir} has no {TABLE}; is it a cudastack run folder?")
    return to_frame(pd.read_parquet(path).to_dict("records"))


def ingest_run(run_dir: Path) -> pd.DataFrame:
    """Gather every cell's records under a run folder into one table and store it."""
    parts = [read_records(p) for p in sorted(run_dir.glob(f"*/{RECORDS}"))]
    df = pd.concat(parts, ignore_index=True) if parts else to_frame([])
    write_tables(df, run_dir)
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, bench, case, metric): median, quartiles, n, relative IQR, noisy."""
    keys = ["cell", "bench", "case", "metric", "unit", "better"]
    ok = df[df["status"] == "ok"]
    grouped = ok.groupby(keys, sort=False)["value"]
    out = grouped.quantile(0.5).rename("median").to_frame()
    out["q1"] = grouped.quantile(0.25)
    out["q3"] = grouped.quantile(0.75)
    out["n"] = grouped.size()
    out = out.reset_index()
    out["rel_iqr"] = (out["q3"] - out["q1"]) / out["median"].abs()
    out["noisy"] = out["rel_iqr"] > NOISY_REL_IQR
    return out


def case_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per case: its headline metric's summary, % of peak, or why it did not run."""
    stats = summarize(df)
    rank = {m: i for i, m in enumerate(HEADLINE_METRICS)}
    stats["rank"] = stats["metric"].map(rank).fillna(len(rank))
    peak = stats[stats["metric"] == "pct_of_peak"].set_index(["cell", "case"])["median"]
    head = stats[stats["metric"] != "pct_of_peak"].sort_values("rank", kind="stable")
    head = head.drop_duplicates(["cell", "case"]).drop(columns="rank")
    head["pct_of_peak"] = [peak.get((c, k)) for c, k in zip(head["cell"], head["case"])]
    head["status"], head["reason"] = "ok", ""
    not_ok = df[df["status"] != "ok"].drop_duplicates(["cell", "case"])
    rest = not_ok[["cell", "bench", "case", "status", "reason"]]
    order = df.drop_duplicates(["cell", "case"])[["cell", "case"]]
    table = pd.concat([head, rest], ignore_index=True)
    return order.merge(table, on=["cell", "case"], how="left").reset_index(drop=True)


def harness_row(
    run_id: str, cell: str, stage: str, status: str, reason: str, image_digest: str = ""
) -> dict:
    """A row for what happened to a whole cell (skipped by the doctor, failed build or run)."""
    row: dict = {c: "" for c in COLUMNS}
    row.update(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        cell=cell,
        bench="harness",
        case=f"harness[stage={stage}]",
        params=json.dumps({"stage": stage}),
        rep=0,
        value=None,
        status=status,
        reason=reason,
        image_digest=image_digest,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return row


def append_records(cell_dir: Path, rows: Iterable[dict]) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    with open(cell_dir / RECORDS, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
