"""The tidy table: schema, parquet round trip, ingest of torn files, atomic writes."""

import errno
import json
import math

import pandas as pd
import pytest

from cudastack.contract.schema import COLUMNS, SCHEMA_VERSION
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
        row(case="gemm[n=2]", status="skipped", reason="no GPU", metric="", value=None),
    ]
    table = results.case_table(results.to_frame(rows)).set_index("case")
    assert table.loc["gemm[n=1]", "metric"] == "tflops"
    assert table.loc["gemm[n=1]", "median"] == 4.0
    assert table.loc["gemm[n=1]", "pct_of_peak"] == 40.0
    assert table.loc["gemm[n=2]", "status"] == "skipped"
    assert table.loc["gemm[n=2]", "reason"] == "no GPU"
    assert list(table.index) == ["gemm[n=1]", "gemm[n=2]"]
