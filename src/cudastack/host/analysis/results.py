"""Host side: ingest workers' records into one tidy table, store it atomically, summarise it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from cudastack.contract.errors import CudastackError
from cudastack.contract.runfolder import (  # noqa: F401
    CSV,
    DONE,
    ENV,
    RECORDS,
    TABLE,
    atomic_write,
    jsonl,
    writing,
)
from cudastack.contract.schema import COLUMNS, SAMPLES, SCHEMA_VERSION, rows_of
from cudastack.contract.stats import NOISY_REL_IQR

# The metric that best states a case's result in one number, in order of preference: how runs
# recorded before benches declared their HEADLINE (schema 4) are read.
HEADLINE_METRICS = ("items_per_s", "tflops", "gbps", "latency_us", "latency")

# Only for rows recorded before the `kind` column existed (schema 3 and older), which name a
# bench but not its kind: the benches shipped then, by name. Every later row carries the KIND
# its bench file declares; nothing but ``bench_kinds`` reads this table.
LEGACY_KINDS = {
    **dict.fromkeys(
        ("gemm", "conv", "sdpa", "elementwise", "bandwidth", "launch", "allreduce"), "kernel"
    ),
    **dict.fromkeys(
        ("train_resnet", "train_gpt", "seed_cnn", "finetune", "dataloader", "infer_precision"),
        "workload",
    ),
}


class ResultsError(CudastackError):
    """A results folder or file that cannot be read as cudastack results."""


def read_records(path: Path) -> pd.DataFrame:
    """The rows of one records.jsonl (one per sample: ``schema.rows_of`` each line) as the
    table ``to_frame`` makes of them. A torn last line (the writer was killed mid-line) is
    dropped; a malformed line elsewhere is an error, since the file was not written by a
    worker; blank lines are skipped.

    Read column-wise by pyarrow, told the schema's column types (a run holds millions of rows:
    one json.loads a line costs seconds per 200,000 lines of schema 4). A file pyarrow refuses
    (a malformed line, a value of another type than its column's, as in rows of older cudastack
    versions) is read again line by line, which names the bad line and types values as
    ``to_frame`` does.

    Raises ResultsError ("path:lineno: not a JSON record", or records of a newer schema)."""
    data = path.read_bytes()
    table = _read_columnar(data)
    if table is None:
        # A byte that is not UTF-8 becomes a lone surrogate here, which makes its line malformed
        # (a torn last one, cut inside a character, is dropped) instead of the whole file.
        return to_frame(_rows_per_line(path, data.decode("utf-8", "surrogateescape")))
    return _conform(_samples_as_rows(table).to_pandas())


def _read_columnar(data: bytes) -> pa.Table | None:
    """The records in ``data`` (a records.jsonl's bytes) as an Arrow table with COLUMNS' types,
    other keys ignored, a torn last line dropped; None where the file is not what a worker
    writes, or pyarrow refuses it.

    pyarrow gets only what workers write: one {...} a line and no blank ones, printable ASCII
    (json.dumps escapes the rest; pyarrow itself refuses a lone escaped surrogate). Anything
    else, a damaged or foreign file, goes to the per-line reader, which reads it as it always
    has and names a bad line (pyarrow would crash on a file that starts with a line that is
    not an object: apache/arrow#47409). The checks are whole-buffer scans without copies."""
    end = _records_end(data)
    lines = data.count(b"\n", 0, end) + 1
    if (
        data[:1] != b"{"
        or data[end - 1 : end] != b"}"
        or data.translate(None, _PRINTABLE)  # a byte outside printable ASCII and newlines
        or data.count(b"}\n{", 0, end) != lines - 1  # a line not one {...}, or a blank one
    ):
        return None
    try:
        table = pajson.read_json(pa.py_buffer(data).slice(0, end), parse_options=_PARSE)
    except pa.ArrowInvalid:  # a value of another type than its column's, a key twice, NaN, ...
        return None
    return table if table.num_rows == lines else None  # not two records on one line


def _samples_as_rows(table: pa.Table) -> pa.Table:
    """``table`` (one row per records.jsonl line) with one row per sample, as ``rows_of`` makes
    them: a line's SAMPLES list becomes that many rows, rep its position and value the element;
    a line without one (schema 4 and older) stays one row with its own rep and value."""
    samples = table.column(SAMPLES).combine_chunks()
    table = table.drop_columns([SAMPLES])
    if samples.null_count == len(samples):
        return table  # every line one sample (schema 4 and older)
    listed = samples.is_valid().to_numpy(zero_copy_only=False)
    counts = np.where(listed, pc.list_value_length(samples).fill_null(0).to_numpy(), 1)
    line = np.repeat(np.arange(len(counts)), counts)
    rows = table.take(pa.array(line))
    listed = listed[line]
    # rep: the position in its line's list, numbered from the row where the line's rows start
    position = np.arange(len(line)) - np.repeat(np.cumsum(counts) - counts, counts)
    rep = np.where(listed, position, rows.column("rep").fill_null(0).to_numpy())
    value = rows.column("value").fill_null(np.nan).to_numpy().copy()
    value[listed] = pc.list_flatten(samples).fill_null(np.nan).to_numpy()
    rows = rows.set_column(rows.schema.get_field_index("rep"), "rep", pa.array(rep, pa.int64()))
    return rows.set_column(rows.schema.get_field_index("value"), "value", pa.array(value))


def _records_end(data: bytes) -> int:
    """Where the whole records of ``data`` end: before the trailing newlines, and before the
    last line when that is not a whole JSON record (a writer killed mid-line), as the per-line
    reader drops it too."""
    # The last line as str.splitlines cuts it: only one trailing newline ends it. A blank last
    # line is dropped alone, so that a torn line before it stays in and is an error, as it is
    # to the per-line reader.
    end = len(data) - 1 if data[-1:] == b"\n" else len(data)
    start = data.rfind(b"\n", 0, end) + 1
    try:
        json.loads(data[start:end])
    except (json.JSONDecodeError, UnicodeDecodeError):
        end = max(start - 1, 0)
    return end


_SAMPLE = ("rep", "value")  # the columns a line of schema 5 holds as its list SAMPLES
_ARROW_TYPES = {int: pa.int64(), float: pa.float64(), str: pa.string()}
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\n"
_PARSE = pajson.ParseOptions(
    explicit_schema=pa.schema(
        [(name, _ARROW_TYPES[kind]) for name, kind in COLUMNS.items()]
        + [(SAMPLES, pa.list_(pa.float64()))]
    ),
    unexpected_field_behavior="ignore",
)


def _rows_per_line(path: Path, text: str) -> list[dict]:
    """The records of ``text`` (the file at ``path``), one json.loads per line. A line holding a
    lone surrogate (``text`` decoded a byte that is not UTF-8 so) is malformed; a lone surrogate
    a record escapes (``"\\ud800"``) is kept as that escape, text that parquet can store."""
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if not line.isascii():
                line.encode("utf-8")  # raises on a lone surrogate
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeEncodeError):
            if number == len(lines):
                break
            raise ResultsError(f"{path}:{number}: not a JSON record") from None
        if not isinstance(row, dict):
            raise ResultsError(f"{path}:{number}: not a JSON record (JSON, but no object)")
        if "\\ud" in line.lower():  # maybe an escaped surrogate: rare, so checked only then
            row = {k: _encodable(v) for k, v in row.items()}
        rows += rows_of(row)
    return rows


def _encodable(value: object) -> object:
    """``value`` with each lone surrogate as its escape, ``\\ud800``, if it is a string."""
    if not isinstance(value, str):
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def to_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Records as a table with exactly the schema's columns and types."""
    return _conform(pd.DataFrame(list(rows)))


def _conform(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with exactly COLUMNS, in order, typed: a missing or null int is 0, a missing or
    null float NaN, a missing or null string ''; other columns dropped. Raises ResultsError
    for records of a newer schema."""
    # A schema_version that is no number (foreign rows, another writer's) counts as none.
    versions = pd.to_numeric(df.get("schema_version", pd.Series(dtype="float64")), errors="coerce")
    newer = versions.max()
    if newer > SCHEMA_VERSION:
        raise ResultsError(
            f"records use schema {newer:g}, newer than this cudastack's "
            f"{SCHEMA_VERSION}; upgrade cudastack to read them"
        )
    for column, kind in COLUMNS.items():
        if column not in df:
            df[column] = pd.Series(dtype="float64" if kind is float else object)
        if kind is float:
            df[column] = pd.to_numeric(df[column], errors="coerce").astype("float64")
        elif kind is int:
            df[column] = _ints(df[column])
        else:
            text = df[column]
            if text.dtype.kind in "biufcmM":  # numbers or times there: "" is no value of theirs
                text = text.astype(object)
            df[column] = text.fillna("").astype(str)
    return df[list(COLUMNS)].reset_index(drop=True)


def _ints(column: pd.Series) -> pd.Series:
    """``column`` as int64: a missing, null, non-numeric, infinite or out-of-range value is 0."""
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.dtype == "int64":
        return numbers
    numbers = numbers.astype("float64")
    return numbers.where(numbers.abs() < 2.0**63, 0).astype("int64")  # NaN and inf are not <


def write_tables(df: pd.DataFrame, folder: Path) -> None:
    """results.parquet (exact round trip) and results.csv (for spreadsheets), each atomically."""
    atomic_write(folder / TABLE, lambda p: df.to_parquet(p, index=False))
    atomic_write(folder / CSV, lambda p: df.to_csv(p, index=False))


def load_table(run_dir: Path) -> pd.DataFrame:
    path = run_dir / TABLE
    if not path.is_file():
        raise ResultsError(f"{run_dir} has no {TABLE}; is it a cudastack run folder?")
    try:
        table = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as exc:  # cut short, or no parquet at all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsError(f"{path} is not a table cudastack can read: {reason}") from None
    return _conform(table)


def ingest_run(run_dir: Path) -> pd.DataFrame:
    """Gather every cell's records under a run folder into one table and store it. A run
    ingests after every cell: a cell's records unchanged since (same size and mtime) are not
    read again."""
    df = read_run(run_dir)
    write_tables(df, run_dir)
    return df


def read_run(run_dir: Path) -> pd.DataFrame:
    """Every cell's records under a run folder as one table, writing nothing: what a run in
    progress, or one killed before it stored its table, holds."""
    parts = [_cell_records(p) for p in sorted(run_dir.glob(f"*/{RECORDS}"))]
    return pd.concat(parts, ignore_index=True) if parts else to_frame([])


# records.jsonl path -> ((size, mtime_ns) when read, its table): the cells a run has finished.
_READ: dict[Path, tuple[tuple[int, int], pd.DataFrame]] = {}


def _cell_records(path: Path) -> pd.DataFrame:
    stat = path.stat()
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _READ.get(path.resolve())
    if cached is not None and cached[0] == key:
        return cached[1]
    df = read_records(path)
    _READ[path.resolve()] = (key, df)
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


# The `,` that starts the next `key=value` of a case id: a value may hold a comma, a key not.
_PARAM_SEP = re.compile(r",(?=\w+=)")


def case_params(case: str) -> dict[str, str]:
    """A case id's parameters as it writes them, ``bench[k=v,...]`` (suite.Case.id) ->
    {k: v}, values as text; {} for an id without parameters."""
    inner = case.partition("[")[2].removesuffix("]")
    return {k: v for k, _, v in (p.partition("=") for p in _PARAM_SEP.split(inner) if p)}


def bench_kinds(df: pd.DataFrame) -> dict[str, str]:
    """bench -> ``kernel`` | ``workload``: the kind its rows record, or for rows from before
    schema 4 (no kind) the LEGACY_KINDS entry. A bench neither names is left out; one whose
    declaration changed between the runs in ``df`` gets the last one recorded."""
    recorded = df["kind"] if "kind" in df else pd.Series("", index=df.index)
    pairs = pd.DataFrame({"bench": df["bench"], "kind": recorded.fillna("")}).drop_duplicates()
    kinds = {b: LEGACY_KINDS[b] for b in pairs["bench"] if b in LEGACY_KINDS}
    kinds.update((b, k) for b, k in zip(pairs["bench"], pairs["kind"]) if k)
    return kinds


def headline_rank(metric: pd.Series, declared: pd.Series | str) -> pd.Series:
    """How well each row's metric states its case in one number, lowest best: -1 for the
    ``declared`` headline of its bench (rows from schema 4), else its place in
    HEADLINE_METRICS (older rows, or a declared metric the case lacks), any other metric last."""
    order = metric.map({m: i for i, m in enumerate(HEADLINE_METRICS)})
    return order.fillna(len(HEADLINE_METRICS)).where(metric != declared, -1)


# Shares of a case's rate, each a column of the case table beside the headline (never one).
PERCENT_COLUMNS = ("pct_of_peak", "pct_of_achievable")


def case_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per case: its headline metric's summary, % of peak (the data sheet's) and % of
    achievable (the run's measured ceiling), or why it did not run."""
    stats = summarize(df)
    declared = df[["cell", "case", "headline"]].drop_duplicates(["cell", "case"])
    stats = stats.merge(declared, on=["cell", "case"], how="left")
    stats["rank"] = headline_rank(stats["metric"], stats["headline"].fillna(""))
    shares = {
        column: stats[stats["metric"] == column].set_index(["cell", "case"])["median"]
        for column in PERCENT_COLUMNS
    }
    head = stats[~stats["metric"].isin(PERCENT_COLUMNS)].sort_values("rank", kind="stable")
    head = head.drop_duplicates(["cell", "case"]).drop(columns=["rank", "headline"])
    for column, share in shares.items():
        head[column] = [share.get((c, k)) for c, k in zip(head["cell"], head["case"])]
    head["status"], head["reason"] = "ok", ""
    not_ok = df[df["status"] != "ok"].drop_duplicates(["cell", "case"])
    rest = not_ok[["cell", "bench", "case", "status", "reason"]]
    order = df.drop_duplicates(["cell", "case"])[["cell", "case"]]
    table = pd.concat([head, rest], ignore_index=True)
    return order.merge(table, on=["cell", "case"], how="left").reset_index(drop=True)


def harness_row(
    run_id: str,
    cell: str,
    stage: str,
    status: str,
    reason: str,
    image_digest: str = "",
    process: int = 0,
) -> dict:
    """A records.jsonl line for what happened to a whole cell (skipped by the doctor, failed
    build or run), or to its worker process ``process`` (--repeat): one row, no value."""
    # Every column its type's empty value (0, ''): pyarrow then reads the file column-wise. The
    # sample (rep, value) is the list SAMPLES, as a worker writes it.
    row: dict = {c: 0 if kind is int else "" for c, kind in COLUMNS.items() if c not in _SAMPLE}
    row.update(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        cell=cell,
        bench="harness",
        case=f"harness[stage={stage}]",
        params=json.dumps({"stage": stage}),
        process=process,
        status=status,
        reason=reason,
        image_digest=image_digest,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    row[SAMPLES] = [None]
    return row


def append_records(cell_dir: Path, lines: Iterable[dict]) -> None:
    """Append ``lines`` to the cell's records.jsonl: an append, never a rewrite, so a full disk
    cuts at most the last line, which ``read_records`` drops."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    path = cell_dir / RECORDS
    with writing(path), open(path, "a", encoding="utf-8") as f:
        f.write(jsonl(lines))
