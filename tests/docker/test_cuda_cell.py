"""A CUDA cell on a real engine: PyPI's CUDA build of torch locked and built, with a cuDNN and an
NCCL pin that the image loads in place of torch's own (no GPU needed: torch reports both)."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import cli
from docker_env import CUDNN_PIN, NCCL_PIN, TORCH, cuda_cell, write_matrix

from cudastack.environment.envinfo import format_cudnn
from cudastack.host.cells import images, matrix
from cudastack.host.run import pipeline

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]


def _fresh(engine, path) -> str:
    """The cell's tag, with no image under it: so this test really builds (and, after it, so
    its 5 GB are not kept)."""
    (cell,) = matrix.load(path)
    tag = pipeline.BuildInputs.for_matrix(path).tag(cell)
    if images.exists(engine, tag):
        engine.images.remove(tag, force=True)
    return tag


def _lock_versions(text: str) -> dict:
    return dict(re.findall(r"^([a-z0-9-]+)==(\S+) --hash=sha256:[0-9a-f]{64}$", text, re.M))


def test_a_locked_cuda_cell_with_cudnn_and_nccl_pins_builds_loads_and_reports_them(
    engine, registry_base, cuda_wheelhouse, tmp_path, request
):
    # One cell for both promises (a CUDA build of torch locked and built; library pins that the
    # image loads over torch's own): each such image is 5 GB, and building two cost CI 7 min.
    name = "test-cu130-pinned"
    cell = cuda_cell(name, cudnn=CUDNN_PIN, nccl=NCCL_PIN, base=registry_base)
    path = write_matrix(tmp_path / "m", cell)
    locked = cli("lock", "--matrix", str(path), "--wheelhouse", str(cuda_wheelhouse))
    assert locked.returncode == 0, locked.stdout + locked.stderr
    lock_text = (tmp_path / "m" / "locks" / f"{name}.txt").read_text()
    pins = _lock_versions(lock_text)
    # Every wheel torch's dependency tree needs, each with its hash: the nvidia wheels published
    # only for manylinux_2_27 (cuDNN) among them, and the cell's pins in place of torch's own.
    assert pins["torch"] == TORCH
    assert (pins["nvidia-cudnn-cu13"], pins["nvidia-nccl-cu13"]) == (CUDNN_PIN, NCCL_PIN)
    assert {"nvidia-cublas", "nvidia-cuda-runtime", "triton"} <= set(pins)
    assert len(pins) == len(lock_text.splitlines()) - 1  # every line but the header
    tag = _fresh(engine, path)
    # 5 GB: gone when this test is, not at the end of the session with the CPU cells.
    request.addfinalizer(lambda: _fresh(engine, path))
    started = time.perf_counter()
    built = cli("build", "--matrix", str(path), "--wheelhouse", str(cuda_wheelhouse), timeout=1800)
    print(f"build of a pinned CUDA torch cell from its lock: {time.perf_counter() - started:.0f} s")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    # The build's own checks: PyPI's default torch is the CUDA 13.0 variant, and says so; it
    # loads the pinned cuDNN and NCCL.
    assert f"torch {TORCH}+cu130, torch.version.cuda '13.0'" in built.stdout
    loaded = re.search(r"cuDNN (\d+) loaded .*NCCL (\S+) \(cell pin", built.stdout)
    assert loaded, built.stdout[-3000:]
    assert (format_cudnn(int(loaded[1])), loaded[2]) == (
        ".".join(CUDNN_PIN.split(".")[:3]),
        NCCL_PIN,
    )
    inside = engine.containers.run(tag, ["cat", "/opt/venv/cudastack-lock.txt"], remove=True)
    assert inside.decode() == lock_text  # installed with --require-hashes from this lock
    print(f"image {tag}: {engine.images.get(tag).attrs['Size'] / 1e9:.2f} GB")
    # Run on the CPU (no GPU needed): env.json says what torch loaded in the container.
    ran = cli(
        "run",
        "--cell",
        name,
        "--matrix",
        str(path),
        "--gpus",
        "none",
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
        timeout=1200,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    env = json.loads((tmp_path / "run" / name / "env.json").read_text())
    assert env["torch"]["cuda"] == "13.0"
    assert env["torch"]["cudnn"] == ".".join(CUDNN_PIN.split(".")[:3])
    assert env["torch"]["nccl"] == NCCL_PIN
