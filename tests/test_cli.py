"""The command line as a user meets it: one-line errors, exit code 2, nothing half-written."""

import ctypes
import json
import os
import subprocess
import sys

import pytest
from conftest import cli

from cudastack.environment.suite import DEFAULT_BENCH_DIR
from cudastack.host.analysis import results


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
        (["show", "nowhere"], "error: no run nowhere: neither a run folder nor a run id under"),
        (
            ["reproduce", "nowhere"],
            "error: no run nowhere: neither a run folder nor a run id under",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_list_with_a_bad_matrix_is_the_error_alone(tmp_path):
    (tmp_path / "bad.toml").write_text("x = [\n")
    proc = cli("list", "--matrix", "bad.toml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""  # no bench list before the error
    assert proc.stderr.startswith("error: bad.toml: not valid TOML"), proc.stderr
    assert proc.stderr.count("\n") == 1


# prctl(PR_CAPBSET_DROP) and the capabilities that let root write where permissions deny it.
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def without_root_override() -> None:
    """In a child before exec: as root, give up overriding file permissions, so that a
    read-only folder is read-only for it too (CI runs as root). Nothing to do for other users."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop a capability of root")


def test_existing_or_unwritable_out_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    proc = cli("run", "--bench", "gemm", "--out", "taken", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "error: taken already exists; a run folder is never overwritten, pick another --out\n"
    )
    (tmp_path / "ro").mkdir(mode=0o500)
    proc = subprocess.run(
        [sys.executable, "-m", "cudastack", "run", "--bench", "gemm", "--out", "ro/run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=without_root_override,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == "error: cannot create run folder ro/run: Permission denied\n"
    (tmp_path / "file").write_text("")
    proc = cli("run", "--bench", "gemm", "--out", "file/run", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "error: cannot create run folder file/run: Not a directory\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "ro", "taken"]


def test_a_missing_device_removes_the_run_folder(tmp_path):
    proc = cli("run", "--bench", "gemm", "--device", "cuda", "--results-dir", "res", cwd=tmp_path)
    assert proc.returncode == 2
    assert "torch sees no CUDA device" in proc.stdout + proc.stderr
    assert list((tmp_path / "res").iterdir()) == []


CRASH_BENCH = '''
"""A case that runs, then one that takes the worker down, as a crash in a kernel would."""
import os

KIND = "kernel"
HEADLINE = "tflops"
PARAMS = {"mode": ["ok", "crash"]}

def run(ctx, mode):
    if mode == "crash":
        os._exit(3)
    x = ctx.randn(8, 8)
    ctx.check_close(x @ ctx.torch.eye(8), x, rtol=1e-6, atol=1e-6)
    return ctx.measure(lambda: x @ x, flops=2 * 8**3)
'''


def test_a_local_run_whose_worker_dies_exits_1_and_keeps_what_finished(make_bench, tmp_path):
    folder = make_bench("crashes", CRASH_BENCH)
    proc = cli(
        "run", "--bench-dir", str(folder), "--profile", "quick", "--out", "run", cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the worker exited with code 3" in proc.stderr
    df = results.load_table(tmp_path / "run")
    assert set(df.loc[df["status"] == "ok", "case"]) == {"crashes[mode=ok]"}


def test_list_shows_benchmarks_cases_and_cells():
    proc = cli("list", "--cases", "--profile", "quick")
    assert proc.returncode == 0, proc.stderr
    assert "gemm" in proc.stdout and "gemm[dtype=fp32,n=1024]" in proc.stdout
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
        (["bench", "--cell", "nope"], "error: unknown cell nope; cells: cu11.8-torch2.7.1-py3.11"),
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
        assert "local (3/3)" in proc.stdout  # the rule over each process
    df = results.load_table(tmp_path / "a")
    assert sorted(df["process"].unique()) == [0, 1, 2]
    assert (df.groupby("process")["case"].nunique() == 2).all()  # every process ran every case
    proc = cli("compare", "a", "b", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["comparison"]
    assert len(rows) == 2
    assert all(r["unit_of_n"] == "processes" and r["n_base"] == r["n_side"] == 3 for r in rows)


def _archive(path, run_files: dict, changed: dict) -> None:
    """An export archive written by hand, in the layout `cudastack export` writes; ``changed``
    replaces run files after their hashes went into the manifest."""
    import hashlib
    import io
    import tarfile

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    manifest: dict = {
        "format": 1,
        "cell": "c",
        "tag": "cudastack/c:1",
        "image_id": "sha256:" + "ab" * 32,
        "image_sha256": sha(b"image"),
        "lock_sha256": sha(b""),
    }
    if run_files:
        manifest["run_sha256"] = {name: sha(data) for name, data in run_files.items()}
    members = {"image.tar": b"image", "manifest.json": json.dumps(manifest).encode()}
    members["lock.txt"] = b""
    members |= {f"run/{name}": data for name, data in {**run_files, **changed}.items()}
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_reproduce_from_an_archive_without_its_run_records_is_one_line(tmp_path):
    run_files = {"cell.json": b'{"tag": "cudastack/c:1"}', "env.json": b'{"torch": {}}'}
    cases = {
        # An export made without --run: the image alone cannot say what to compare against.
        "plain.tar": ({}, {}, "carries no run's records of its cell; export it with --run RUN"),
        # A run record changed after the export: its hash no longer matches the manifest's.
        "changed.tar": (
            run_files,
            {"env.json": b'{"torch": {"version": "1"}}'},
            "run/env.json does not match its manifest's sha256; nothing loaded",
        ),
    }
    for name, (files, changed, message) in cases.items():
        _archive(tmp_path / name, files, changed)
        proc = cli("reproduce", name, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"error: {name}") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1
