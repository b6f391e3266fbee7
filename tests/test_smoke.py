"""The smoke profile on this CPU: every bench file runs, nothing fails, compile=true compiles."""

import time

import pandas as pd
import pytest
from conftest import cli

from cudastack.environment import suite, training
from cudastack.environment.suite import DEFAULT_BENCH_DIR
from cudastack.host.analysis import results

pytestmark = pytest.mark.integration

SMOKE_WALL_LIMIT_S = 600  # about a minute on two idle cores; generous for a shared CI runner
# Paths a GPU takes that the smoke grid must reach (on a CPU they are skipped rows).
GPU_PATHS = {
    "gemm": "dtype=fp8",
    "launch": "mode=graph",
    "bandwidth": "copy=h2d_pinned",
    "train_resnet": "precision=amp_fp16",  # autocast to fp16 with a GradScaler
}


def cases(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop_duplicates(["cell", "case"])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    started = time.perf_counter()
    proc = cli("run", "--profile", "smoke", "--out", "run", cwd=root, timeout=900)
    wall = time.perf_counter() - started
    print(f"smoke profile on this host: {wall:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return cases(results.load_table(root / "run")), wall, proc


def test_every_bench_file_has_a_smoke_grid_and_schedule():
    specs = suite.discover(DEFAULT_BENCH_DIR)
    assert [n for n, s in specs.items() if "smoke" not in s.profiles] == []
    assert "smoke" in training.SCHEDULES
    assert suite.resolve_profile("auto", has_gpu=False).name == "quick"  # smoke is never auto
    assert suite.resolve_profile("auto", has_gpu=True).name == "standard"


def test_smoke_runs_every_bench_with_no_failure_in_bounded_time(smoke_run):
    df, wall, proc = smoke_run
    assert "profile smoke" in proc.stdout
    # Every bench file, and the ceilings the kernels name, measured before the cases.
    assert set(df["bench"]) == set(suite.discover(DEFAULT_BENCH_DIR)) | {"ceiling"}
    failed = df[df["status"] == "failed"]
    assert failed.empty, failed[["case", "reason"]].to_string()
    ok = df[df["status"] == "ok"]
    # allreduce needs --nproc 2 (test below); every other bench runs something on a CPU.
    assert set(ok["bench"]) == set(df["bench"]) - {"allreduce"}
    assert wall < SMOKE_WALL_LIMIT_S


def test_smoke_compiles_a_training_step_on_the_cpu(smoke_run):
    df, _, _ = smoke_run
    compiled = df[df["case"].str.contains("compile=true")]
    assert not compiled.empty
    assert (compiled[compiled["bench"] == "train_gpt"]["status"] == "ok").all()


def test_smoke_reaches_every_sdpa_backend_and_gpu_path_and_skips_them_here(smoke_run):
    df, _, _ = smoke_run
    sdpa = df[df["bench"] == "sdpa"]
    backends = set(sdpa["case"].str.extract(r"backend=(\w+)")[0])
    assert backends == {"flash", "efficient", "cudnn", "math"}
    for bench, path in GPU_PATHS.items():
        rows = df[(df["bench"] == bench) & df["case"].str.contains(path)]
        assert not rows.empty, f"smoke does not reach {bench}[{path}]"
        assert set(rows["status"]) == {"skipped"}, rows[["case", "status", "reason"]]


def test_smoke_data_parallel_on_two_processes(tmp_path):
    # compile=true under DDP costs two more compiles on two cores; the run above compiles.
    proc = cli(
        "run", "--nproc", "2", "--profile", "smoke", "--set", "compile=false", "--out", "dp",
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    df = cases(results.load_table(tmp_path / "dp"))
    dp = {n for n, s in suite.discover(DEFAULT_BENCH_DIR).items() if s.data_parallel}
    assert set(df["bench"]) == dp
    assert "failed" not in set(df["status"]), df[["case", "status", "reason"]].to_string()
    assert set(df[df["status"] == "ok"]["bench"]) == dp


# The good bench asserts the smoke grid is what ran: a doctor running another profile fails it.
DEEP_BENCHES = {
    "good": """
        KIND = "kernel"
        HEADLINE = "latency"
        PARAMS = {"n": [1]}
        PROFILES = {"smoke": {"n": [2]}}

        def run(ctx, n):
            assert n == 2, "not the smoke profile"
            return ctx.measure(lambda: ctx.torch.ones(n))
    """,
    "bad": """
        KIND = "kernel"
        HEADLINE = "latency"
        PARAMS = {"n": [1]}

        def run(ctx, n):
            raise RuntimeError("boom")
    """,
    "later": """
        KIND = "kernel"
        HEADLINE = "latency"
        PARAMS = {"n": [1]}

        def run(ctx, n):
            ctx.skip("not here")
    """,
}


def test_doctor_deep_runs_smoke_and_counts_its_cases(make_bench, tmp_path):
    for name, source in DEEP_BENCHES.items():
        folder = make_bench(name, source)
    common = ["doctor", "--deep", "--bench-dir", str(folder), "--results-dir", "r"]
    proc = cli(*common, cwd=tmp_path, timeout=300)
    assert "smoke profile here: 1 ok, 1 skipped, 1 failed" in proc.stdout, proc.stdout
    assert proc.returncode == 1  # a failed smoke case fails the doctor
    (run_dir,) = (tmp_path / "r").iterdir()
    assert len(cases(results.load_table(run_dir))) == 3

    (folder / "bad.py").unlink()
    proc = cli(*common, cwd=tmp_path, timeout=300)
    assert "ok  smoke profile here: 1 ok, 1 skipped, 0 failed" in proc.stdout, proc.stdout
    host_failed = any(line.startswith("fail ") for line in proc.stdout.splitlines())
    assert proc.returncode == (1 if host_failed else 0), proc.stdout + proc.stderr
