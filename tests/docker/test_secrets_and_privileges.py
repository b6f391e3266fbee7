"""What a cell may do and what a run keeps, on a real engine: containers unprivileged, as the
invoking user, harness read-only; no secret of the build or the run in the image or the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import cli
from docker_env import BASE_IMAGE, cpu_cell, write_matrix
from test_engine import _lock_lines

from cudastack.host.analysis import results
from cudastack.host.cells import matrix
from cudastack.host.run import container
from cudastack.host.run.container import ContainerOptions
from cudastack.host.run.suite_args import SuiteArgs

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]

PASSWORD = "s3cretpwProxy"
PROXY = f"http://user:{PASSWORD}@proxy.invalid:3128"
TOKEN = "hf_CudastackSecretToken0123456789"
CA_MARKER = "CUDASTACK-TEST-CA-MARKER-7f3e9c"
LOCK = "/opt/venv/cudastack-lock.txt"
# The capability set of a privileged container (every capability the kernel has).
ALL_CAPS = "000001ffffffffff"

PROBE = (
    "id -u; id -g; grep CapEff /proc/self/status; "
    "touch /harness/src/cudastack/probe 2>&1 || true; "
    "touch /results/probe && echo results writable"
)


def started(engine, tmp_path: Path, **opts: object) -> dict:
    """A container as cudastack starts a cell's (its kwargs, its start), running PROBE instead
    of the worker; its inspection and its output, once it ended."""
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir(exist_ok=True)
    kw = container.container_kwargs(
        BASE_IMAGE,
        SuiteArgs(["gemm"]),
        cell_dir,
        "probe",
        "run-probe",
        BASE_IMAGE,
        ContainerOptions(gpus="none", **opts),  # type: ignore[arg-type]
    )
    kw["command"] = ["sh", "-c", PROBE]
    running = container._start(engine, kw, cell_dir, None)
    try:
        running.wait(timeout=60)
        running.reload()
        return {**running.attrs, "output": running.logs().decode()}
    finally:
        running.remove(force=True)


def test_a_cell_container_is_unprivileged_as_the_invoking_user(engine, base_image, tmp_path):
    attrs = started(engine, tmp_path)
    host = attrs["HostConfig"]
    assert host["Privileged"] is False
    assert not host.get("CapAdd") and not host.get("PidMode") and not host.get("SecurityOpt")
    assert host["NetworkMode"] == "bridge" and host["IpcMode"] != "host"
    user = f"{os.getuid()}:{os.getgid()}"
    assert attrs["Config"]["User"] == user
    mounts = {m["Destination"]: m["RW"] for m in attrs["Mounts"]}
    assert mounts == {
        "/harness/src/cudastack": False,
        "/harness/bench": False,
        "/results": True,
    }
    # And inside: the uid:gid, no capability beyond Docker's defaults, the harness unwritable.
    out = attrs["output"]
    assert out.splitlines()[:2] == user.split(":"), out
    assert ALL_CAPS not in out and "CapEff" in out, out
    assert "Read-only file system" in out and "results writable" in out, out


@pytest.mark.parametrize("network", ["none", "host"])
def test_another_network_only_when_asked(engine, base_image, tmp_path, network):
    assert started(engine, tmp_path, network=network)["HostConfig"]["NetworkMode"] == network


# A bench that does what a careless one might: prints the token it was given, and fails with
# the proxy URL (credentials and all) in its message.
LEAKY = f'''"""Prints its secrets."""

import os

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {{"outcome": ["ok", "failed"]}}


def run(ctx, outcome):
    from cudastack.environment.context import Metric

    print("my token is", os.environ["HF_TOKEN"], flush=True)
    if outcome == "failed":
        raise ConnectionError("cannot reach http://user:" + "{PASSWORD}" + "@proxy.invalid:3128")
    return [Metric("latency", "ms", "lower", [1.0, 1.0, 1.0])]
'''


def occurrences(data: bytes) -> list[str]:
    return [s for s in (PASSWORD, TOKEN, CA_MARKER) if s.encode() in data]


def test_no_secret_reaches_the_image_or_the_run_folder(
    engine, base_image, wheelhouse, make_bench, tmp_path
):
    path = write_matrix(tmp_path / "m", cpu_cell("test-secrets"))
    # Locked, so that the image keeps a file from the build context: the run's umask (0077)
    # must not make it root's alone in the image.
    (path.parent / "locks").mkdir()
    (path.parent / "locks" / "test-secrets.txt").write_text("\n".join(_lock_lines(wheelhouse)))
    (cell,) = matrix.load(path)
    tag = cell.image_tag(matrix.DEFAULT_MATRIX.parent / "Dockerfile", path.parent / "locks")
    if any(t == tag for image in engine.images.list() for t in image.tags):
        engine.images.remove(tag, force=True)  # this build must really run, with the secrets
    ca = tmp_path / "corp.pem"
    ca.write_text(f"-----BEGIN CERTIFICATE-----\n{CA_MARKER}\n-----END CERTIFICATE-----\n")
    # The proxy is a predefined build arg that pip never needs here (an offline wheelhouse);
    # NO_PROXY keeps this process's own engine connection off it.
    env = {**os.environ, "HTTPS_PROXY": PROXY, "NO_PROXY": "*", "HF_TOKEN": TOKEN}
    bench_dir = make_bench("leaky", LEAKY)
    out = tmp_path / "run"
    proc = cli(
        "run",
        "--cell",
        "test-secrets",
        "--matrix",
        str(path),
        "--wheelhouse",
        str(wheelhouse),
        "--ca-file",
        str(ca),
        "--env",
        f"HF_TOKEN={TOKEN}",
        "--bench-dir",
        str(bench_dir),
        "--profile",
        "smoke",
        "--out",
        str(out),
        env=env,
        timeout=1500,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr  # the failed case
    table = results.load_table(out)
    assert set(zip(table["case"], table["status"])) >= {
        ("leaky[outcome=ok]", "ok"),
        ("leaky[outcome=failed]", "failed"),
    }, table[["case", "status", "reason"]]
    # What was recorded still says what happened, the secrets hidden.
    log = (out / "test-secrets" / "log.txt").read_text()
    assert "my token is (redacted)" in log, log[-2000:]
    env_json = json.loads((out / "test-secrets" / "env.json").read_text())
    assert env_json["env_passed"]["HF_TOKEN"] == "(redacted)"

    image = engine.images.get(tag)
    lock_mode = engine.containers.run(tag, ["stat", "-c", "%a", LOCK], remove=True)
    assert lock_mode.decode().strip() == "644"  # readable by whichever uid the cell runs as
    assert not occurrences(json.dumps([image.history(), image.attrs]).encode())
    # Every layer and the configuration with its history, byte by byte (docker save's tar).
    tail, keep = b"", max(len(s) for s in (PASSWORD, TOKEN, CA_MARKER))
    for chunk in image.save(named=True):
        window = tail + chunk
        assert not occurrences(window), "found in the image's saved layers"
        tail = window[-keep:]

    found = {
        str(p.relative_to(out)): occurrences(p.read_bytes()) for p in out.rglob("*") if p.is_file()
    }
    assert not {name: what for name, what in found.items() if what}, found
    for name in ("build.log", "cell.json", "env.json", "log.txt", "records.jsonl"):
        assert (out / "test-secrets" / name).is_file(), name
    for name in ("run.json", "results.parquet", "results.csv", "report.html"):
        assert (out / name).is_file(), name
