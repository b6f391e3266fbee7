"""Variables into cells: --env KEY=VALUE and the host's NCCL_* / TORCH_* / CUDA_LAUNCH_BLOCKING."""

import json
import os
from pathlib import Path

import pytest
from conftest import cli

from cudastack.host.analysis import results
from cudastack.host.run.container import ContainerOptions, container_kwargs
from cudastack.host.run.suite_args import PASSED_ENV, SuiteArgs, cell_env, passthrough_env

HOST = {
    "NCCL_DEBUG": "INFO",
    "NCCL_SOCKET_IFNAME": "eth0",
    "TORCH_LOGS": "+dynamo",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "CUDA_LAUNCH_BLOCKING": "1",
    "TORCH_HOME": "/home/someone/.cache/torch",  # a folder of the host: not for a cell
    "TORCH_EXTENSIONS_DIR": "/home/someone/ext",  # nor this
    "NCCL_TOPO_FILE": "/etc/nccl-topo.xml",  # nor a file of the host
    "TORCHINDUCTOR_MAX_AUTOTUNE": "1",  # not TORCH_*
    "XNCCL_DEBUG": "x",
    "HOME": "/root",
    "PATH": "/usr/bin",
    "CUDA_VISIBLE_DEVICES": "3",
    "nccl_debug": "lower case is another variable",
}


def test_passthrough_takes_nccl_torch_and_launch_blocking_only():
    assert passthrough_env(HOST) == {
        "CUDA_LAUNCH_BLOCKING": "1",
        "NCCL_DEBUG": "INFO",
        "NCCL_SOCKET_IFNAME": "eth0",
        "TORCH_LOGS": "+dynamo",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }


def test_explicit_env_wins_and_every_name_is_announced():
    env = cell_env(["NCCL_DEBUG=WARN", "MY_FLAG=a=b", "EMPTY=", "MY_FLAG=last"], HOST)
    assert env["NCCL_DEBUG"] == "WARN"  # --env over the host's INFO
    assert env["MY_FLAG"] == "last" and env["EMPTY"] == ""
    assert env[PASSED_ENV].split(",") == sorted(set(env) - {PASSED_ENV})
    assert cell_env([], {"PATH": "/usr/bin"}) == {}  # nothing passed: nothing announced


def test_container_gets_the_variables_and_an_identity_for_any_uid(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(("NCCL_", "TORCH_")) or key == "CUDA_LAUNCH_BLOCKING":
            monkeypatch.delenv(key)
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    monkeypatch.setenv("TORCH_LOGS", "recompiles")
    monkeypatch.setenv("UNRELATED_SECRET", "s3cret")
    args = SuiteArgs(benches=["gemm"], env=["NCCL_DEBUG=TRACE", "HF_HUB_OFFLINE=1"])
    kw = container_kwargs("img", args, tmp_path, "c", "r", "ref", ContainerOptions(gpus="none"))
    env = kw["environment"]
    assert env["NCCL_DEBUG"] == "TRACE" and env["TORCH_LOGS"] == "recompiles"
    assert env["HF_HUB_OFFLINE"] == "1" and "UNRELATED_SECRET" not in env
    assert env[PASSED_ENV] == "HF_HUB_OFFLINE,NCCL_DEBUG,TORCH_LOGS"
    # torch.compile as a uid with no passwd entry: a user name and writable caches.
    assert env["USER"] and env["LOGNAME"]
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith(env["HOME"] + "/")
    assert env["TRITON_CACHE_DIR"].startswith(env["HOME"] + "/")
    assert kw["user"] == f"{os.getuid()}:{os.getgid()}"
    other = ContainerOptions(gpus="none", user="4242:4242")
    assert container_kwargs("img", args, tmp_path, "c", "r", "ref", other)["user"] == "4242:4242"


BENCH = '''
"""Reads a variable the host passed in."""
import os

KIND = "kernel"
HEADLINE = "tflops"
PARAMS = {"n": [8]}

def run(ctx, n):
    if os.environ.get("PROBE") != "from --env":
        raise RuntimeError(f"PROBE is {os.environ.get('PROBE')!r}")
    x = ctx.randn(n, n)
    return ctx.measure(lambda: x @ x, flops=2 * n**3)
'''


def test_a_local_run_sees_and_records_what_was_passed(make_bench, tmp_path: Path):
    folder = make_bench("probe", BENCH)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCCL_", "TORCH_"))}
    env.update({"NCCL_DEBUG": "INFO", "UNRELATED": "x"})
    proc = cli(
        "run",
        "--bench-dir",
        str(folder),
        "--profile",
        "quick",
        "--env",
        "PROBE=from --env",
        "--env",
        "TORCH_SHOW_CPP_STACKTRACES=1",
        "--env",
        "HF_TOKEN=hf_secret",
        "--out",
        "run",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(results.load_table(tmp_path / "run")["status"]) == {"ok"}
    recorded = json.loads((tmp_path / "run" / "local" / "env.json").read_text())
    passed = {
        "NCCL_DEBUG": "INFO",
        "PROBE": "from --env",
        "TORCH_SHOW_CPP_STACKTRACES": "1",
        "HF_TOKEN": "(redacted)",  # env.json travels; a secret's value does not
    }
    if "CUDA_LAUNCH_BLOCKING" in env:
        passed["CUDA_LAUNCH_BLOCKING"] = env["CUDA_LAUNCH_BLOCKING"]
    assert recorded["env_passed"] == passed


@pytest.mark.parametrize("command", ["run", "bench", "shell"])
@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("NOEQUALS", "error: --env 'NOEQUALS': give KEY=VALUE"),
        ("=x", "error: --env '=x': '' is not a variable name"),
        ("1X=y", "error: --env '1X=y': '1X' is not a variable name"),
        ("A-B=y", "error: --env 'A-B=y': 'A-B' is not a variable name"),
    ],
)
def test_bad_env_is_one_line_exit_2_and_writes_nothing(tmp_path, command, item, message):
    where = ["some-cell"] if command == "shell" else ["--bench", "gemm"]
    proc = cli(command, *where, "--env", "OK=1", "--env", item, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
