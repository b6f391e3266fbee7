"""torch.compile in a cell, as a uid the image has no passwd entry for, with variables passed in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from docker_env import cpu_cell, write_matrix

from cudastack.host.analysis import results
from cudastack.host.cells import matrix
from cudastack.host.run import pipeline
from cudastack.host.run.container import ContainerOptions
from cudastack.host.run.suite_args import SuiteArgs

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]

TRANSFORMERS = "transformers==5.24.0"  # what train_gpt builds its model with
STRANGER = "4242:4242"  # no passwd entry in the image: any invoking user but the image's own


@pytest.fixture(scope="module")
def wheelhouse_with_transformers(wheelhouse, tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheelhouse-tf")
    for wheel in wheelhouse.iterdir():
        shutil.copy(wheel, folder)
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder)]
        + ["--only-binary=:all:", "--python-version", "3.11"]
        + [arg for p in platforms for arg in ("--platform", p)]
        + [TRANSFORMERS],
        check=True,
        capture_output=True,
    )
    return folder


def test_compile_runs_as_a_uid_without_passwd_entry(
    engine, base_image, wheelhouse_with_transformers, tmp_path
):
    path = write_matrix(
        tmp_path / "m", cpu_cell("test-compile").rstrip() + f'\n    packages = ["{TRANSFORMERS}"]\n'
    )
    (cell,) = matrix.load(path)
    inputs = pipeline.BuildInputs.for_matrix(path, wheelhouse_with_transformers)
    tag, _ = pipeline.ensure_image(engine, cell, inputs, lambda line: None)
    uid = STRANGER.split(":")[0]
    lookup = engine.containers.run(tag, ["sh", "-c", f"getent passwd {uid}; echo $?"], remove=True)
    assert lookup.decode().strip() == "2", lookup  # the uid is unknown in the image

    args = SuiteArgs(
        benches=["train_gpt"],
        select=["compile=true"],
        profile="smoke",
        env=["NCCL_DEBUG=INFO"],
    )
    opts = ContainerOptions(gpus="none", timeout_s=1200, user=STRANGER)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = os.umask(0)  # the stranger writes into the cell folder this process creates
    try:
        res = pipeline.run_cell(
            engine, cell, inputs, args, run_dir, "run-1", opts, print, lambda line: None
        )
    finally:
        os.umask(old)
    log = (run_dir / cell.name / "log.txt").read_text()
    assert res.status == "ok", res.reason + log[-3000:]
    df = results.ingest_run(run_dir)  # a row per sample
    assert set(zip(df["case"], df["status"])) == {
        ("train_gpt[size=tiny,seq_len=32,precision=amp_bf16,compile=true,batch=2]", "ok")
    }, log[-3000:]
    records = run_dir / cell.name / results.RECORDS
    assert str(records.stat().st_uid) == uid  # written by the stranger, not the image's user
    env = json.loads((run_dir / cell.name / "env.json").read_text())
    assert env["env_passed"]["NCCL_DEBUG"] == "INFO"
