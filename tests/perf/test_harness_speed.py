"""The harness's own speed, measured with pytest-benchmark (`make perf`), not pass/fail timing
(but for the column-wise records reader's speed-up over the per-line one it replaced)."""

import json
import time

import pandas as pd
import pytest

from cudastack.contract.schema import COLUMNS, SCHEMA_VERSION, rows_of
from cudastack.environment import suite, timing, worker
from cudastack.environment.context import Metric
from cudastack.environment.timing import TimerSettings
from cudastack.host.analysis import results

ROW = {
    "schema_version": 1,
    "run_id": "r",
    "cell": "local",
    "bench": "gemm",
    "params": "{}",
    "metric": "latency",
    "unit": "ms",
    "better": "lower",
    "status": "ok",
    "reason": "",
    "device": "cpu",
    "device_name": "cpu",
    "gpu_name": "",
    "driver": "",
    "torch": "2",
    "cuda_runtime": "",
    "cudnn": "",
    "image_digest": "",
    "harness_rev": "h",
    "started_at": "2026-01-01T00:00:00+00:00",
}


def test_cpu_timer_overhead_per_sample(benchmark):
    """1000 timed calls of a no-op: the cost the timer adds to every sample."""
    s = TimerSettings(warmup_s=0.0, budget_s=60.0, min_reps=1000, max_reps=1000, noise_target=0.0)
    samples = benchmark(timing.time_cpu, lambda: None, s)
    assert len(samples) == 1000
    benchmark.extra_info["median_sample_ns"] = sorted(samples)[500] * 1e9


@pytest.fixture(scope="module")
def big_records(tmp_path_factory):
    path = tmp_path_factory.mktemp("perf") / "cell" / results.RECORDS
    path.parent.mkdir()
    with open(path, "w") as f:
        for i in range(200_000):
            f.write(
                json.dumps(
                    {
                        **ROW,
                        "case": f"gemm[n={i % 500}]",
                        "rep": i // 500,
                        "value": 1.0 + (i % 7) * 0.01,
                    }
                )
                + "\n"
            )
    return path


def test_ingest_200k_records_of_schema_1(benchmark, big_records):
    """An old run's records, a short line a sample (schema 1): read column-wise all the same."""
    df = benchmark(results.read_records, big_records)
    assert len(df) == 200_000


def test_case_table_over_one_million_rows(benchmark):
    df = results.to_frame(
        [{**ROW, "case": f"gemm[n={i}]", "rep": 0, "value": 1.0} for i in range(10)]
    )
    import pandas as pd

    big = pd.concat([df.assign(case=lambda d, k=k: d["case"] + f"#{k}") for k in range(2_000)])
    big = pd.concat([big.assign(rep=r, value=1.0 + r * 1e-3) for r in range(50)], ignore_index=True)
    table = benchmark(results.case_table, big)
    assert len(big) == 1_000_000 and len(table) == 20_000


def test_compare_one_million_rows(benchmark):
    """Two cells x 500 cases x 1000 samples: the bootstrap and the tests per case."""
    import numpy as np
    import pandas as pd

    from cudastack.host.analysis import compare

    rng = np.random.default_rng(0)
    n_cases, n = 500, 1000
    frames = [
        pd.DataFrame(
            {
                "run_id": "r",
                "cell": side,
                "bench": "gemm",
                "metric": "tflops",
                "unit": "TFLOP/s",
                "better": "higher",
                "status": "ok",
                "process": 0,
                "case": np.repeat([f"gemm[i={i}]" for i in range(n_cases)], n),
                "value": 100 + rng.normal(0, 1, n_cases * n),
            }
        )
        for side in ("a", "b")
    ]
    df = pd.concat(frames, ignore_index=True)
    table = benchmark.pedantic(compare.compare, args=(df,), rounds=3, iterations=1)
    assert len(df) == 1_000_000 and len(table) == n_cases


def per_line_reader(path):
    """records.jsonl read as before the column-wise reader, one json.loads per line, then
    to_frame: the reference the speed-up is measured against."""
    return results.to_frame(results._rows_per_line(path, path.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def worker_records(tmp_path_factory):
    """200,000 samples as a worker records them (every column, a pid; 400 cases of 2 metrics of
    250 samples): "plain" as a worker writes them (a line a metric), "timed out" with the harness
    line the host then appends, and "schema 4" a line a sample, as workers wrote them before."""
    base = {
        **{column: "x" for column, kind in COLUMNS.items() if kind is str},
        "schema_version": SCHEMA_VERSION,
        "run_id": "20261201-000000-abcd",
        "process": 0,
        "pid": 4242,
        "headline": "tflops",
        "lock_hash": "cd" * 32,
        "image_digest": "sha256:" + "ab" * 32,
        "started_at": "2026-12-01T00:00:00+00:00",
    }
    metrics = [
        Metric("tflops", "TFLOP/s", "higher", [400 + i / 7 for i in range(250)]),
        Metric("latency", "ms", "lower", [0.5 + i / 1e4 for i in range(250)]),
    ]
    folder = tmp_path_factory.mktemp("perf")
    paths = {name: folder / name / results.RECORDS for name in ("plain", "timed out", "schema 4")}
    for i in range(400):
        case = suite.Case("gemm", {"dtype": "bf16", "n": 64 * (i + 1)})
        lines = worker.case_lines(base, case, "ok", "", metrics)
        results.append_records(paths["plain"].parent, lines)
        results.append_records(paths["timed out"].parent, lines)
        results.append_records(paths["schema 4"].parent, [r for ln in lines for r in rows_of(ln)])
    late = results.harness_row("r", "x", "run", "failed", "the cell took longer than 600 s")
    results.append_records(paths["timed out"].parent, [late])
    return paths


def test_read_200k_worker_records(benchmark, worker_records):
    df = benchmark(results.read_records, worker_records["plain"])
    assert len(df) == 200_000 and list(df.columns) == list(COLUMNS)


# How much faster reading a run's records must be than the per-line reading of the records of
# schema 4 (a json.loads per sample). Records of schema 5 hold a metric's samples on one line
# (200,000 samples: 3 MB, not 140), which pyarrow reads column-wise: 0.07 s against 2.9 s on
# two cores, 40x. Records of older runs, a line a sample, still read column-wise: there the
# floor is pyarrow's parse of 140 MB, about half of 0.7 s on two cores (4x).
MIN_SPEEDUP = {"plain": 10.0, "timed out": 10.0, "schema 4": 3.0}


@pytest.mark.parametrize("variant", list(MIN_SPEEDUP))
def test_column_wise_reader_beats_the_per_line_reader(benchmark, worker_records, variant):
    """Best of 5 of each reader, in one process: the per-line reader on the samples a line
    each (schema 4), read_records on ``variant``; the same table, MIN_SPEEDUP times as fast."""
    path = worker_records[variant]
    per_line = []
    for _ in range(5):
        started = time.perf_counter()
        reference = per_line_reader(worker_records["schema 4"])
        per_line.append(time.perf_counter() - started)
    df = benchmark.pedantic(results.read_records, args=(path,), rounds=5, iterations=1)
    if variant == "timed out":  # the host's line after the worker's: one row more, the last
        assert df["bench"].iloc[-1] == "harness"
        df = df.iloc[:-1]
    pd.testing.assert_frame_equal(df, reference)
    speedup = min(per_line) / benchmark.stats.stats.min
    benchmark.extra_info.update(per_line_best_s=min(per_line), speedup=round(speedup, 1))
    assert speedup >= MIN_SPEEDUP[variant], f"{speedup:.1f}x the per-line reader"


def test_the_cpu_ceilings_a_run_with_kernels_pays_for(benchmark):
    """fp32's GEMM sweep and the copy, as the worker measures them before a CPU run's kernel
    cases: what such a run costs more than before ceilings (about half a second on 2 cores)."""
    import torch

    from cudastack.environment import ceilings
    from cudastack.environment.context import Context

    ctx = Context(torch, torch.device("cpu"), suite.PROFILES["quick"], None)

    def both():
        return ceilings.run(ctx, "matmul", "fp32") + ceilings.run(ctx, "copy")

    matmul, copy = benchmark.pedantic(both, rounds=3, iterations=1)
    benchmark.extra_info["fp32_tflops"] = matmul.values[0]
    benchmark.extra_info["copy_gbps"] = copy.values[0]
