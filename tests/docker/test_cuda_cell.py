"""CUDA cells on a real engine: PyPI's CUDA build of torch locked and built, and a cuDNN / NCCL
pin that the image loads in place of torch's own (no GPU needed: torch reports both without)."""

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
    """The cell's tag, with no image under it: so this test really builds."""
    (cell,) = matrix.load(path)
    tag = pipeline.BuildInputs.for_matrix(path).tag(cell)
    if images.exists(engine, tag):
        engine.images.remove(tag, force=True)
    return tag


def _lock_versions(text: str) -> dict:
    return dict(re.findall(r"^([a-z0-9-]+)==(\S+) --hash=sha256:[0-9a-f]{64}$", text, re.M))


def test_lock_then_build_a_cell_of_pypis_cuda_torch(
    engine, registry_base, cuda_wheelhouse, tmp_path
):
    path = write_matrix(tmp_path / "m", cuda_cell("test-cu130", base=registry_base))
    locked = cli("lock", "--matrix", str(path), "--wheelhouse", str(cuda_wheelhouse))
    assert locked.returncode == 0, locked.stdout + locked.stderr
    lock_text = (tmp_path / "m" / "locks" / "test-cu130.txt").read_text()
    pins = _lock_versions(lock_text)
    # Every wheel the wheelhouse has for torch's dependency tree, each with its hash: the
    # nvidia wheels published only for manylinux_2_27 (cuDNN) among them.
    assert pins["torch"] == TORCH
    assert pins["nvidia-cudnn-cu13"] != CUDNN_PIN and pins["nvidia-nccl-cu13"] != NCCL_PIN
    assert {"nvidia-cublas", "nvidia-cuda-runtime", "triton"} <= set(pins)
    assert len(pins) == len(lock_text.splitlines()) - 1  # every line but the header
    tag = _fresh(engine, path)
    started = time.perf_counter()
    built = cli("build", "--matrix", str(path), "--wheelhouse", str(cuda_wheelhouse), timeout=1800)
    print(f"build of a CUDA torch cell from its lock: {time.perf_counter() - started:.0f} s")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    # The build's own check: PyPI's default torch is the CUDA 13.0 variant, and says so.
    assert f"torch {TORCH}+cu130, torch.version.cuda '13.0'" in built.stdout
    inside = engine.containers.run(tag, ["cat", "/opt/venv/cudastack-lock.txt"], remove=True)
    assert inside.decode() == lock_text  # installed with --require-hashes from this lock
    print(f"image {tag}: {engine.images.get(tag).attrs['Size'] / 1e9:.2f} GB")


def test_a_cudnn_and_nccl_pin_is_what_the_image_loads_and_env_json_reports(
    engine, base_image, cuda_wheelhouse, tmp_path
):
    name = "test-cu130-pinned"
    path = write_matrix(tmp_path / "m", cuda_cell(name, cudnn=CUDNN_PIN, nccl=NCCL_PIN))
    _fresh(engine, path)
    started = time.perf_counter()
    built = cli("build", "--matrix", str(path), "--wheelhouse", str(cuda_wheelhouse), timeout=1800)
    print(
        f"build of a pinned CUDA torch cell without a lock: {time.perf_counter() - started:.0f} s"
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    loaded = re.search(r"cuDNN (\d+) loaded .*NCCL (\S+) \(cell pin", built.stdout)
    assert loaded, built.stdout[-3000:]
    assert (format_cudnn(int(loaded[1])), loaded[2]) == (
        ".".join(CUDNN_PIN.split(".")[:3]),
        NCCL_PIN,
    )
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
