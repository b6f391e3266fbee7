"""`compare` of runs whose NVML telemetry shows throttling or shifted clocks, through the CLI."""

import json
import os
from pathlib import Path

import numpy as np
from conftest import cli

from cudastack.contract.schema import SCHEMA_VERSION
from cudastack.host.analysis import results


def gpu_run(root: Path, run_id: str, tflops: float, sm_clock: float, throttled_pct: float) -> Path:
    """A run folder with one gemm case from three worker processes, each window's telemetry
    as the worker records it beside the samples."""
    rng = np.random.default_rng(len(run_id) + int(tflops))
    rows = []

    def row(metric: str, value: float, rep: int, process: int, better: str = "higher") -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "cell": "local",
            "bench": "gemm",
            "kind": "kernel",
            "headline": "tflops",
            "case": "gemm[dtype=bf16,n=8192]",
            "metric": metric,
            "unit": "x",
            "better": better,
            "rep": rep,
            "process": process,
            "value": value,
            "status": "ok",
            "device": "cuda",
            "gpu_name": "NVIDIA H200",
            "started_at": "2026-11-28T10:00:00+00:00",
        }

    for process in range(3):
        for rep, v in enumerate(tflops * (1 + rng.normal(0, 0.003, 20))):
            rows.append(row("tflops", float(v), rep, process))
        rows.append(row("sm_clock_mhz", sm_clock, 0, process))
        rows.append(
            row("throttled_pct", throttled_pct if process == 1 else 0.0, 0, process, "lower")
        )
    run_dir = root / run_id
    (run_dir / "local").mkdir(parents=True)
    results.write_tables(results.to_frame(rows), run_dir)
    env = {"torch": {"version": "2.11.0"}, "gpu": {"name": "NVIDIA H200"}}
    (run_dir / "local" / "env.json").write_text(json.dumps(env))
    return run_dir


def test_a_throttled_side_is_not_comparable_with_the_reason(tmp_path):
    a = gpu_run(tmp_path, "cool", 700.0, 1980, 0.0)
    b = gpu_run(tmp_path, "hot", 560.0, 1980, 40.0)
    proc = cli("compare", str(a), str(b), "--format", "json", "--fail-on-regression")
    # 20 % slower, but throttled: no verdict, so no regression to fail on.
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (row,) = out["comparison"]
    assert row["verdict"] == "not comparable"
    assert row["note"] == (
        "hot throttled in 40 % of a window: not comparable (--ignore-clocks compares anyway)"
    )
    assert out["summary"].startswith("0 faster, 0 slower, 0 same, 0 inconclusive, 1 not comparable")

    kept = cli("compare", str(a), str(b), "--ignore-clocks", "--fail-on-regression")
    assert kept.returncode == 1
    assert "regression: gemm[dtype=bf16,n=8192] on hot" in kept.stderr
    assert "slower" in kept.stdout


def test_a_lower_sm_clock_is_named_in_the_table(tmp_path):
    a = gpu_run(tmp_path, "full", 700.0, 1980, 0.0)
    b = gpu_run(tmp_path, "capped", 600.0, 1700, 0.0)
    proc = cli("compare", str(a), str(b), env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "not comparable" in proc.stdout
    assert "SM clock 1700 MHz vs 1980 MHz in full" in proc.stdout
    assert "1 not comparable (of 1 case)" in proc.stdout
