"""The command line as a user meets it: one-line errors, exit code 2, nothing half-written."""

import json
import os

import pytest
from conftest import cli

from cudastack import results
from cudastack.suite import DEFAULT_BENCH_DIR


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--bench", "nope"], "error: unknown bench nope; choose from: allreduce, bandw"),
        (["run", "--set", "batch"], "error: malformed --set 'batch'"),
        (["run", "--set", "colour=red"], "error: --set colour: no bench has that parameter"),
        (["run", "--set", "batch=big"], "error: --set batch=big: batch takes a number"),
        (["run", "--set", "precision=fp12"], "error: --set precision=fp12: finetune knows amp_"),
        (
            ["run", "--bench", "finetune", "--set", "weights=no/such/dir"],
            "error: --set weights=no/such/dir: no such folder on this host",
        ),
        (["run", "--nproc", "64"], "error: --nproc 64 is more than the "),
        (["run", "--nproc", "0"], "error: --nproc 0: give 1 or more processes"),
        (["run", "--repeat", "0"], "error: --repeat 0: give 1 or more processes per cell"),
        (
            ["run", "--nproc", "2", "--bench", "gemm"],
            "error: gemm does not run data parallel; --nproc applies to: allreduce, train_gpt,",
        ),
        (["run", "--select", "dtype"], "error: malformed --select 'dtype'"),
        (["run", "--select", "dtype=fp64"], "error: dtype=fp64 matches no case; values: "),
        (["run", "--select", "colour=red"], "error: no selected bench has parameter 'colour'"),
        (["run", "--profile", "turbo"], "error: unknown profile 'turbo'"),
        (["run", "--bench-dir", "missing"], "error: bench folder missing does not exist"),
        (["list", "--profile", "turbo"], "error: unknown profile 'turbo'"),
        (["show", "nowhere"], "error: nowhere has no results.parquet"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_or_unwritable_out_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    proc = cli("run", "--bench", "gemm", "--out", "taken", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "error: taken already exists; a run folder is never overwritten, pick another --out\n"
    )
    (tmp_path / "ro").mkdir(mode=0o500)
    proc = cli("run", "--bench", "gemm", "--out", "ro/run", cwd=tmp_path)
    if proc.returncode == 2:  # as root a read-only folder is still writable: nothing to check
        assert proc.stderr.startswith("error: cannot create run folder ro/run: ")
    (tmp_path / "file").write_text("")
    proc = cli("run", "--bench", "gemm", "--out", "file/run", cwd=tmp_path)
    assert (
        proc.returncode == 2 and "cannot create run folder file/run: Not a directory" in proc.stderr
    )


def test_a_missing_device_removes_the_run_folder(tmp_path):
    proc = cli("run", "--bench", "gemm", "--device", "cuda", "--results-dir", "res", cwd=tmp_path)
    assert proc.returncode == 2
    assert "torch sees no CUDA device" in proc.stdout + proc.stderr
    assert list((tmp_path / "res").iterdir()) == []


def test_list_shows_benchmarks_cases_and_cells():
    proc = cli("list", "--cases", "--profile", "quick")
    assert proc.returncode == 0, proc.stderr
    assert "gemm" in proc.stdout and "gemm[dtype=fp32,n=2048]" in proc.stdout
    assert "quick:" in proc.stdout and "standard:" in proc.stdout
    assert "cells: local" in proc.stdout
    assert DEFAULT_BENCH_DIR.is_dir()


def test_bench_without_an_engine_runs_here_and_says_so(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    proc = cli(
        "bench",
        "--bench",
        "gemm",
        "--select",
        "n=512",
        "--select",
        "dtype=fp32",
        "--profile",
        "quick",
        "--out",
        "run",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("cudastack bench: no Docker engine reachable")
    assert "running the suite locally" in first
    df = results.load_table(tmp_path / "run")
    assert set(df["cell"]) == {"local"} and set(df["status"]) == {"ok"}


def test_cell_runs_need_an_engine(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    proc = cli("run", "--cell", "cpu-torch2.9.1-py3.12", "--bench", "gemm", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no Docker engine reachable")
    assert "--cell needs a Docker engine" in proc.stderr and proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--cell", "nope"], "error: unknown cell nope; cells: cu11.8-torch2.7.1-py3.10"),
        (["build", "--matrix", "missing.toml"], "error: matrix file missing.toml does not exist"),
        (["run", "--cell", "x", "--wheelhouse", "nowhere"], "error: unknown cell x"),
        (["doctor", "--matrix", "missing.toml"], "error: matrix file missing.toml does not exist"),
    ],
)
def test_matrix_input_errors(tmp_path, args, message):
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(message), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_repeat_runs_worker_processes_that_compare_takes_as_its_unit(tmp_path):
    for name in ("a", "b"):
        proc = cli(
            "run", "--repeat", "3", "--bench", "launch", "--select", "mode=eager",
            "--profile", "quick", "--out", name, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "process 3 of 3" in proc.stdout
    df = results.load_table(tmp_path / "a")
    assert sorted(df["process"].unique()) == [0, 1, 2]
    assert (df.groupby("process")["case"].nunique() == 2).all()  # every process ran every case
    proc = cli("compare", "a", "b", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["comparison"]
    assert len(rows) == 2
    assert all(r["unit_of_n"] == "processes" and r["n_base"] == r["n_side"] == 3 for r in rows)
