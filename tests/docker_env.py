"""Fixtures for tests against a real Docker engine: a base image made here, a local wheelhouse.

No registry can be reached where these tests run, so the base image is made with debootstrap
and `docker import`, and torch comes from a wheelhouse that pip downloads on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from cudastack import images

BASE_IMAGE = "cudastack-test-base:bookworm"
MIRROR = os.environ.get("CUDASTACK_TEST_MIRROR", "http://deb.debian.org/debian")
TORCH = "2.13.0"  # a CPU build of it for Python 3.11, the Python of Debian bookworm


@pytest.fixture(scope="session")
def engine():
    try:
        return images.connect()
    except images.EngineUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide a Docker engine: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def base_image(engine, tmp_path_factory):
    """A minimal Debian with Python, imported as an image (made once per engine)."""
    if images.exists(engine, BASE_IMAGE):
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        pytest.fail(
            "debootstrap is needed to make the test base image (apt-get install debootstrap)"
        )
    root = tmp_path_factory.mktemp("rootfs")
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv",
            "bookworm",
            str(root),
            MIRROR,
        ],
        check=True,
        capture_output=True,
    )
    archive = root.parent / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    repo, tag = BASE_IMAGE.split(":")
    engine.api.import_image_from_file(str(archive), repository=repo, tag=tag)
    archive.unlink()
    return BASE_IMAGE


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(folder),
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux_2_28_x86_64",
            f"torch=={TORCH}",
        ],
        check=True,
        capture_output=True,
    )
    return folder


def write_matrix(folder: Path, *cells: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "matrix.toml"
    path.write_text("\n".join(textwrap.dedent(c) for c in cells))
    return path


def cpu_cell(name: str, torch: str = TORCH) -> str:
    return f"""
    [[cell]]
    name = "{name}"
    base_image = "{BASE_IMAGE}"
    torch = "{torch}"
    index = "cpu"
    python = "3.11"
    """


@pytest.fixture(scope="session")
def good_matrix(base_image, tmp_path_factory):
    return write_matrix(tmp_path_factory.mktemp("matrix"), cpu_cell("test-cpu"))
