"""The real quick suite on this CPU with real torch: every record must be sane."""

import json
import math

import pandas as pd
import pytest
from conftest import cli

from cudastack import results
from cudastack.schema import COLUMNS, STATUSES, UNITS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("integration")
    proc = cli("run", "--profile", "quick", "--out", "run", cwd=root, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return root / "run", proc


def test_every_bench_produced_rows(quick_run):
    run_dir, proc = quick_run
    df = results.load_table(run_dir)
    assert set(df["bench"]) == {"gemm", "conv", "sdpa", "bandwidth", "elementwise", "launch"}
    assert "profile quick" in proc.stdout
    assert "run " in proc.stdout and "median" in proc.stdout  # the summary table


def test_every_record_is_sane(quick_run):
    run_dir, _ = quick_run
    df = results.load_table(run_dir)
    assert list(df.columns) == list(COLUMNS)
    assert set(df["status"]) <= set(STATUSES)
    assert (df["status"] != "failed").all(), df[df["status"] == "failed"][["case", "reason"]]
    ok = df[df["status"] == "ok"]
    assert len(ok) > 0
    assert ok["value"].map(math.isfinite).all() and (ok["value"] > 0).all()
    for metric, unit in UNITS.items():
        assert (ok.loc[ok["metric"] == metric, "unit"] == unit).all(), metric
    assert set(ok["better"]) <= {"higher", "lower"}
    assert (ok.loc[ok["metric"].isin(["latency", "latency_us"]), "better"] == "lower").all()
    assert (ok.loc[ok["metric"].isin(["tflops", "gbps"]), "better"] == "higher").all()
    not_ok = df[df["status"] != "ok"]
    assert (not_ok["reason"] != "").all() and not_ok["value"].isna().all()
    # every ok case has a latency and repeated samples, numbered from 0
    for case, rows in ok.groupby("case"):
        lat = rows[rows["metric"].isin(["latency", "latency_us"])]
        assert len(lat) >= 3, case
        assert sorted(lat["rep"]) == list(range(len(lat))), case
    for column in ("run_id", "cell", "device", "device_name", "torch", "harness_rev", "started_at"):
        assert (df[column] != "").all(), column
    assert (df["cell"] == "local").all() and (df["device"] == "cpu").all()


def test_params_round_trip_into_case_ids(quick_run):
    df = results.load_table(quick_run[0]).drop_duplicates("case")
    for case, params in zip(df["case"], df["params"]):
        decoded = json.loads(params)
        assert all(f"{k}=" in case for k in decoded), case


def test_fingerprint_fields(quick_run):
    env = json.loads((quick_run[0] / "local" / results.ENV).read_text())
    for key in ("python", "torch", "cpu", "flags", "env", "packages", "harness_rev", "threads"):
        assert key in env, key
    assert env["torch"]["version"] and env["python"]["version"]
    assert env["cpu"]["torch_threads"] == env["threads"] >= 1
    assert set(env["flags"]) >= {"matmul_allow_tf32", "cudnn_benchmark", "cudnn_deterministic"}


def test_csv_matches_parquet(quick_run):
    run_dir = quick_run[0]
    parquet = results.load_table(run_dir)
    csv = pd.read_csv(run_dir / results.CSV, keep_default_na=False, na_values={"value": [""]})
    assert len(csv) == len(parquet)
    assert (csv["case"] == parquet["case"]).all()
    assert csv["value"].equals(parquet["value"]) or (
        (csv["value"] - parquet["value"]).abs().max() < 1e-9 * parquet["value"].abs().max()
    )


def test_show_prints_the_same_run(quick_run):
    proc = cli("show", str(quick_run[0]))
    assert proc.returncode == 0, proc.stderr
    assert "gemm[dtype=fp32,n=2048]" in proc.stdout
