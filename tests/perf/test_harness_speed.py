"""The harness's own speed, measured with pytest-benchmark (`make perf`), not pass/fail timing."""

import json

import pytest

from cudastack.environment import timing
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


def test_ingest_200k_records(benchmark, big_records):
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
