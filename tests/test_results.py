"""The tidy table: schema, parquet round trip, ingest of torn files, atomic writes."""

import errno
import json
import math
import random

import pandas as pd
import pytest

from cudastack.contract.schema import COLUMNS, SAMPLES, SCHEMA_VERSION, rows_of
from cudastack.environment import suite, worker
from cudastack.environment.context import Metric
from cudastack.host.analysis import results


def row(**kw):
    base = {
        "schema_version": SCHEMA_VERSION,
        "run_id": "r",
        "cell": "local",
        "bench": "gemm",
        "case": "gemm[n=1]",
        "params": json.dumps({"n": 1}),
        "metric": "tflops",
        "unit": "TFLOP/s",
        "better": "higher",
        "rep": 0,
        "value": 1.5,
        "status": "ok",
        "reason": "",
        "device": "cpu",
        "device_name": "cpu model",
        "gpu_name": "",
        "driver": "",
        "torch": "2.13.0",
        "cuda_runtime": "",
        "cudnn": "",
        "image_digest": "",
        "harness_rev": "h1",
        "started_at": "2026-11-28T00:00:00+00:00",
    }
    return {**base, **kw}


def write_jsonl(path, rows, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_parquet_round_trip_is_exact(tmp_path):
    rows = [row(rep=i, value=v) for i, v in enumerate([1.0, 1 / 3, 1e-300, 123456789.123])]
    rows.append(
        row(
            case="gemm[n=2]",
            status="failed",
            reason="boom",
            metric="",
            unit="",
            better="",
            value=None,
        )
    )
    df = results.to_frame(rows)
    results.write_tables(df, tmp_path)
    back = results.load_table(tmp_path)
    pd.testing.assert_frame_equal(df, back)
    assert list(back.columns) == list(COLUMNS)
    assert back["value"].dtype == "float64" and back["rep"].dtype == "int64"
    assert math.isnan(back["value"].iloc[-1])
    csv = pd.read_csv(tmp_path / results.CSV)
    assert list(csv.columns) == list(COLUMNS) and len(csv) == len(df)


def test_ingest_gathers_cells_and_drops_a_torn_last_line(tmp_path):
    write_jsonl(tmp_path / "a" / results.RECORDS, [row(cell="a")], tail='{"schema_version": 1, "ru')
    write_jsonl(tmp_path / "b" / results.RECORDS, [row(cell="b"), row(cell="b", rep=1)])
    df = results.ingest_run(tmp_path)
    assert sorted(df["cell"]) == ["a", "b", "b"]
    assert (tmp_path / results.TABLE).is_file() and (tmp_path / results.CSV).is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_malformed_line_inside_a_file_is_an_error(tmp_path):
    path = tmp_path / "c" / results.RECORDS
    path.parent.mkdir()
    path.write_text(json.dumps(row()) + "\nnot json\n" + json.dumps(row()) + "\n")
    with pytest.raises(results.ResultsError, match=r"records.jsonl:2: not a JSON record"):
        results.read_records(path)


def test_newer_schema_is_refused():
    with pytest.raises(results.ResultsError, match="upgrade cudastack"):
        results.to_frame([row(schema_version=SCHEMA_VERSION + 1)])


def test_failed_write_leaves_the_old_table_and_no_temp_file(tmp_path):
    df = results.to_frame([row()])
    results.write_tables(df, tmp_path)
    before = (tmp_path / results.TABLE).read_bytes()

    class FillsTheDisk(pd.DataFrame):
        def to_parquet(self, path, *a, **k):
            # Part of a file reaches the disk before it is full, as a real write would.
            with open(path, "wb") as f:
                f.write(b"PAR1" + bytes(4096))
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        results.write_tables(FillsTheDisk(df), tmp_path)
    assert (tmp_path / results.TABLE).read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_case_table_picks_the_headline_and_keeps_failures():
    rows = [
        row(metric="latency", unit="ms", better="lower", value=2.0),
        row(metric="tflops", value=3.0),
        row(metric="tflops", rep=1, value=5.0),
        row(metric="pct_of_peak", unit="%", value=40.0),
        row(metric="pct_of_achievable", unit="%", value=60.0),
        row(metric="pct_of_achievable", unit="%", rep=1, value=70.0),
        row(case="gemm[n=2]", status="skipped", reason="no GPU", metric="", value=None),
    ]
    table = results.case_table(results.to_frame(rows)).set_index("case")
    assert table.loc["gemm[n=1]", "metric"] == "tflops"
    assert table.loc["gemm[n=1]", "median"] == 4.0
    assert table.loc["gemm[n=1]", "pct_of_peak"] == 40.0
    assert table.loc["gemm[n=1]", "pct_of_achievable"] == 65.0  # a column, as % of peak is
    assert table.loc["gemm[n=2]", "status"] == "skipped"
    assert table.loc["gemm[n=2]", "reason"] == "no GPU"
    assert list(table.index) == ["gemm[n=1]", "gemm[n=2]"]


def test_case_table_picks_the_headline_the_bench_declares():
    # Declared: latency states this case's result, though tflops comes first in the order runs
    # recorded before benches declared a headline are read by.
    rows = [
        row(metric="latency", unit="ms", better="lower", value=2.0, headline="latency"),
        row(metric="tflops", value=3.0, headline="latency"),
        row(case="gemm[n=2]", metric="latency", unit="ms", better="lower", value=2.0),
        row(case="gemm[n=2]", metric="tflops", value=3.0),  # no declaration: an older run
    ]
    table = results.case_table(results.to_frame(rows)).set_index("case")
    assert table.loc["gemm[n=1]", "metric"] == "latency"
    assert table.loc["gemm[n=2]", "metric"] == "tflops"


def test_kinds_are_what_rows_record_and_only_older_rows_read_the_legacy_table():
    rows = [
        row(bench="gemm", kind="workload"),  # a gemm of the user's that declares itself so
        row(bench="conv", case="conv[n=1]"),  # recorded before the kind column existed
        row(bench="mine", case="mine[n=1]"),  # an older user bench: no kind is known
        row(bench="job", case="job[n=1]", kind="workload"),
    ]
    kinds = results.bench_kinds(results.to_frame(rows))
    assert kinds == {"gemm": "workload", "conv": "kernel", "job": "workload"}


# The column-wise reader (read_records) against the per-line reader it replaced.


def per_line_reader(path):
    """records.jsonl read as before the column-wise reader, one json.loads per line: the
    path read_records falls back to, kept as it was."""
    return results.to_frame(results._rows_per_line(path, path.read_text(encoding="utf-8")))


def reading(read, path):
    """What reading ``path`` gives: ("table", df) or ("error", exception type, message)."""
    try:
        return ("table", read(path))
    except Exception as e:  # any outcome is compared, errors included
        return ("error", type(e), str(e))


def assert_read_as_per_line(path):
    """read_records gives the per-line reader's table, or its error; returns the outcome."""
    new, old = reading(results.read_records, path), reading(per_line_reader, path)
    assert new[0] == old[0], (new, old)
    if new[0] == "table":
        pd.testing.assert_frame_equal(new[1], old[1])
    else:
        assert new[1:] == old[1:]
    return new


def column_wise(path):
    """Whether read_records reads ``path`` column-wise (not the whole file by its per-line
    fallback): only then does agreeing with the per-line reader test the column-wise reader."""
    try:
        return results._read_columnar(path.read_bytes()) is not None
    except results.ResultsError:  # it found a malformed line itself
        return True


def worker_lines():
    """records.jsonl lines of one cell as the worker writes them (ok, skipped, failed cases,
    non-finite and integer samples, a pid the table does not keep) and a harness line of the
    host."""
    base = {
        **row(),
        "run_id": "r1",
        "cell": "cu124",
        "image_digest": "sha256:" + "ab" * 32,
        "lock_hash": "cd" * 32,
        "process": 1,
        "pid": 4242,  # records.jsonl only: not a column of the table
        "device": "cuda",
        "device_name": "NVIDIA H100 80GB HBM3",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "driver": "550.54.15",
        "cuda_runtime": "12.4",
        "cudnn": "90100",
        "kind": "kernel",
        "headline": "tflops",
    }
    gemm = suite.Case("gemm", {"dtype": "bf16", "n": 8192})
    samples = [512.25, 1e-300, 1.7976931348623157e308, 3, float("nan"), float("inf"), -0.0]
    metrics = [
        Metric("tflops", "TFLOP/s", "higher", samples),
        Metric("latency", "ms", "lower", [1 / 3, 2.0]),
        Metric("temp_c", "°C", "lower", [71.0]),
    ]
    lines = worker.case_lines(base, gemm, "ok", "", metrics)
    sdpa = suite.Case("sdpa", {"seq": 4096, "causal": True})
    lines += worker.case_lines(base, sdpa, "skipped", 'no flash kernel for "sm_70"\\here', [])
    oom = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total) ☹"
    lines += worker.case_lines(base, suite.Case("train_gpt", {"steps": 10}), "failed", oom, [])
    harness = results.harness_row("r1", "cu124", "build", "failed", "exit 1")
    # Its time fixed like the cases': two calls a second apart must give the same lines.
    lines.append({**harness, "started_at": base["started_at"]})
    return lines


def worker_rows():
    """The rows of ``worker_lines``, one per sample: what a worker of schema 4 wrote a line
    each (rep and value in place of the list)."""
    return [r for line in worker_lines() for r in rows_of(line)]


def test_read_records_reads_worker_records_as_the_per_line_reader(tmp_path):
    results.append_records(tmp_path, worker_lines())  # json.dumps per line, as the worker writes
    path = tmp_path / results.RECORDS
    assert column_wise(path)
    assert len(path.read_text().splitlines()) == 6  # a line a metric, not a sample
    _, df = assert_read_as_per_line(path)
    assert len(df) == 13 and list(df.columns) == list(COLUMNS)
    assert df["value"].iloc[:3].tolist() == [512.25, 1e-300, 1.7976931348623157e308]
    assert df["value"].iloc[3] == 3.0 and math.isnan(df["value"].iloc[4])
    assert df["process"].tolist() == [1] * 12 + [0]  # the harness row's '' is 0
    assert df["unit"].iloc[9] == "°C" and df["reason"].iloc[11].endswith("☹")
    assert df["rep"].tolist() == [*range(7), 0, 1, 0, 0, 0, 0]
    pd.testing.assert_frame_equal(df, results.to_frame(worker_rows()))


def test_lines_of_schema_4_and_5_in_one_file_are_read_column_wise(tmp_path):
    # Old runs hold a line per sample (rep, value); a file may hold both kinds.
    path = tmp_path / results.RECORDS
    write_jsonl(path, [*worker_rows(), *worker_lines(), row(rep=3, value=1.5)])
    assert column_wise(path)
    _, df = assert_read_as_per_line(path)
    pd.testing.assert_frame_equal(df, results.to_frame([*worker_rows() * 2, row(rep=3, value=1.5)]))


def test_a_torn_last_line_is_dropped_and_the_rest_read_column_wise(tmp_path):
    lines = worker_lines()
    path = tmp_path / results.RECORDS
    torn = json.dumps(lines[0])[:-40]  # inside its list of samples
    for tail in ('{"schema_version": 4, "ru', "{", '{"value": 1.5, "run_id": "r1"', torn):
        write_jsonl(path, lines, tail=tail)
        assert column_wise(path)
        _, df = assert_read_as_per_line(path)
        assert len(df) == len(worker_rows())
    write_jsonl(path, lines, tail=json.dumps(row(case="gemm[n=3]")))  # whole, but no newline
    assert assert_read_as_per_line(path)[1]["case"].iloc[-1] == "gemm[n=3]"


def test_a_harness_row_after_worker_records_is_read_column_wise(tmp_path):
    # The host appends one when a cell times out, each column typed (process 0).
    results.append_records(tmp_path, worker_lines()[:-1])
    results.append_records(tmp_path, [results.harness_row("r1", "cu124", "run", "failed", "")])
    path = tmp_path / results.RECORDS
    assert json.loads(path.read_text().splitlines()[-1])["process"] == 0
    assert column_wise(path)
    _, df = assert_read_as_per_line(path)
    assert df["process"].tolist() == [1] * (len(worker_rows()) - 1) + [0]


def test_an_older_harness_row_with_empty_int_columns_reads_as_before(tmp_path):
    # Harness rows of earlier versions held '' in every int column: pyarrow refuses those, the
    # per-line reader takes the file, and '' is 0 as it always was.
    row = {**results.harness_row("r1", "cu124", "run", "failed", ""), "process": "", "rep": ""}
    del row[SAMPLES]  # then a line was one row: rep and value
    results.append_records(tmp_path, [*worker_lines()[:-1], {**row, "value": None}])
    path = tmp_path / results.RECORDS
    assert not column_wise(path)
    _, df = assert_read_as_per_line(path)
    assert df["process"].iloc[-1] == 0


def test_a_malformed_line_inside_a_file_names_its_line(tmp_path):
    path = tmp_path / results.RECORDS
    for bad in ('{"run_id": "r1", "rep": 1', "{} {}", '{"run_id": "r1"} x', "nul"):
        lines = [json.dumps(r) for r in worker_lines() * 2]
        lines[5] = bad
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(results.ResultsError, match=r"records.jsonl:6: not a JSON record"):
            results.read_records(path)
        assert_read_as_per_line(path)


def test_blank_lines_are_skipped(tmp_path):
    lines = [json.dumps(r) for r in worker_lines()]
    path = tmp_path / results.RECORDS
    path.write_text("\n" + "\n\n".join(lines[:4]) + "\n  \t\n" + "\n".join(lines[4:]) + "\n\n")
    _, df = assert_read_as_per_line(path)
    assert len(df) == len(worker_rows())


def test_extra_keys_are_ignored(tmp_path):
    path = tmp_path / results.RECORDS
    extra = {"pid": 7, "note": {"nested": [1, None, {"deep": "x"}]}, "flag": True, "run_id": "r"}
    write_jsonl(path, [row(), {**row(rep=1), **extra}, row(rep=2, host=None)])
    assert column_wise(path)
    _, df = assert_read_as_per_line(path)
    assert list(df.columns) == list(COLUMNS) and df["rep"].tolist() == [0, 1, 2]


def test_nulls_and_missing_keys_take_the_schemas_types(tmp_path):
    path = tmp_path / results.RECORDS
    rows = [
        row(value=None, rep=None, reason=None),
        row(value=2.5, rep=1),
        {"schema_version": 1, "run_id": "r", "value": 4},  # an old record: most keys missing
    ]
    write_jsonl(path, rows)
    assert column_wise(path)
    _, df = assert_read_as_per_line(path)
    assert math.isnan(df["value"].iloc[0]) and df["value"].tolist()[1:] == [2.5, 4.0]
    assert df["rep"].tolist() == [0, 1, 0] and df["process"].tolist() == [0, 0, 0]
    assert df["reason"].iloc[0] == "" and df["cell"].iloc[2] == ""
    assert df.dtypes.equals(results.to_frame([]).dtypes)


def test_a_value_of_another_type_than_its_column_is_typed_as_to_frame_types_it(tmp_path):
    # pyarrow refuses these; the per-line reader reads them.
    path = tmp_path / results.RECORDS
    for odd in ({"torch": 2.1}, {"rep": 1.0}, {"value": "1.5"}, {"cell": None, "rep": "3"}):
        write_jsonl(path, [row(), row(**odd)])
        assert_read_as_per_line(path)
    write_jsonl(path, [row(), row(torch=2.1)])
    assert results.read_records(path)["torch"].tolist() == ["2.13.0", "2.1"]


def test_records_of_a_newer_schema_in_a_file_are_refused(tmp_path):
    path = tmp_path / results.RECORDS
    write_jsonl(path, [row(), row(schema_version=SCHEMA_VERSION + 1)])
    assert column_wise(path)
    with pytest.raises(results.ResultsError, match="upgrade cudastack"):
        results.read_records(path)
    assert_read_as_per_line(path)


def test_an_empty_file_is_the_empty_table(tmp_path):
    path = tmp_path / results.RECORDS
    for text in ("", "\n", "\n  \n", '{"schema_version": 4, "r'):
        path.write_text(text)
        _, df = assert_read_as_per_line(path)
        pd.testing.assert_frame_equal(df, results.to_frame([]))


ODD_FILES = {
    "two records on a line": '{"rep": 1}\n{"rep": 2} {"rep": 3}\n{"rep": 4}\n',
    "a record over two lines": '{"rep": 1}\n{"rep":\n2}\n{"rep": 3}\n',
    "a top-level null": '{"rep": 1}\nnull\n{"rep": 3}\n',  # pyarrow crashes on one at a start
    "null first": 'null\n{"rep": 1}\n',
    "a top-level array": '[1]\n{"rep": 1}\n',
    "CRLF": '{"rep": 1}\r\n{"rep": 2}\r\n',
    "a CR inside a record": '{"rep": 1}\n{"rep":\r2}\n',
    "a form feed splitting the last line": '{"rep": 1}\n{"rep": 2}\x0c{"rep": 3}',
    "a line separator in a string": '{"rep": 1, "reason": "a\u2028b"}\n{"rep": 2}\n',
    "non-ASCII": '{"rep": 1, "reason": "ü ☹"}\n',
    "a byte-order mark": '\ufeff{"rep": 1}\n{"rep": 2}\n',
    "NaN and Infinity": '{"value": NaN}\n{"value": Infinity}\n{"value": -Infinity}\n',
    "NaN in an int column": '{"rep": NaN}\n',
    "a key twice": '{"rep": 1, "rep": 2}\n',
    "an escaped surrogate": '{"reason": "\\ud83d\\ude00 \\ud83d"}\n',
    "an int past int64": '{"rep": 9223372036854775808}\n{"rep": 1}\n',
    "an int past a float": '{"value": 1e400}\n',
    "a bool": '{"value": true, "rep": false, "cell": true}\n',
    "an object in a string column": '{"params": {"n": 1}}\n',
    "a raw tab in a string": '{"reason": "a\tb"}\n',
    "spaces around records": '  {"rep": 1}  \n{"rep": 2}\n',
    "a blank last line after a torn one": '{"rep": 1}\n{"rep": \n \n',
    "an empty last line after a torn one": '{"rep": 1}\n{"rep": \n\n',
    "only a torn line": '{"rep": 1',
    "a lone surrogate in an extra key": '{"rep": 1, "note": "\\ud83d"}\n{"rep": 2}\n',
    "an empty int in schema_version": '{"schema_version": ""}\n',
    "samples with nulls and ints": '{"values": [1, null, 2.5]}\n{"rep": 1}\n',
    "no samples": '{"values": []}\n{"values": [3]}\n',
    "null samples": '{"values": null, "value": 3, "rep": 2}\n',
    "samples and a value": '{"values": [1, 2], "rep": 5, "value": 9}\n',
    "samples not a list": '{"values": "1.5"}\n{"values": {"a": 1}}\n',
    "a string sample": '{"values": [1, "a"]}\n',
    "a nested list of samples": '{"values": [[1]]}\n',
    "a bool sample": '{"values": [true, 1]}\n',
    "NaN among the samples": '{"values": [1, NaN]}\n',
}


@pytest.mark.parametrize("text", ODD_FILES.values(), ids=ODD_FILES.keys())
def test_an_odd_file_reads_as_the_per_line_reader_reads_it(tmp_path, text):
    path = tmp_path / results.RECORDS
    path.write_bytes(text.encode("utf-8"))
    assert_read_as_per_line(path)


def test_damaged_files_read_as_the_per_line_reader_reads_them(tmp_path):
    """Worker records with random bytes inserted, deleted or changed, some cut short: whatever
    pyarrow makes of them, read_records agrees with the per-line reader."""
    rng = random.Random(0)
    harness = results.harness_row("r1", "c", "run", "failed", "x")
    text = "".join(json.dumps(r) + "\n" for r in [*worker_lines()[:4], *worker_rows()[:2], harness])
    pieces = [*'{}[]",:\\ 0123456789.eE-\n\r\t\x0c', "null", "NaN", "}\n{", "\n\n", " null "]
    path = tmp_path / results.RECORDS
    read_column_wise = 0
    for _ in range(150):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars))
            chars[at : at + rng.randint(0, 1)] = [rng.choice(pieces)] * rng.randint(0, 1)
        damaged = "".join(chars[: rng.randrange(len(chars))] if rng.random() < 0.3 else chars)
        path.write_text(damaged)
        read_column_wise += column_wise(path)
        assert_read_as_per_line(path)
    assert read_column_wise > 30  # the damage left many files for pyarrow to read


def test_load_table_is_the_round_trip_through_dicts(tmp_path):
    """load_table reads the parquet file straight into the table the former round trip
    through dicts made, for tables of this schema, an older one, and one with more columns."""
    df = results.to_frame([*worker_rows(), row(value=None, reason=None)])
    old = df.drop(columns=["process", "lock_hash", "kind", "headline"]).assign(schema_version=1)
    for table in (df, old, df.assign(extra="x"), df.iloc[:0]):
        table.to_parquet(tmp_path / results.TABLE, index=False)
        by_dicts = results.to_frame(pd.read_parquet(tmp_path / results.TABLE).to_dict("records"))
        pd.testing.assert_frame_equal(results.load_table(tmp_path), by_dicts)


def test_ingest_reads_again_only_the_cells_whose_records_changed(tmp_path, monkeypatch):
    """A run ingests after every cell: a finished cell's records are read once, an appended
    file again, and the table holds every row either way."""
    read = []
    real = results.read_records
    monkeypatch.setattr(results, "read_records", lambda p: read.append(p.parent.name) or real(p))
    rows = worker_rows()
    results.append_records(tmp_path / "a", rows)
    results.append_records(tmp_path / "b", rows)
    assert len(results.ingest_run(tmp_path)) == 2 * len(rows)
    assert len(results.ingest_run(tmp_path)) == 2 * len(rows)
    assert read == ["a", "b"]
    results.append_records(tmp_path / "b", rows[:1])
    assert len(results.ingest_run(tmp_path)) == 2 * len(rows) + 1
    assert read == ["a", "b", "b"]
