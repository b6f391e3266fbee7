"""Fixtures for tests against a real Docker engine: a base image made here, a local wheelhouse.

No registry can be reached where these tests run, so the base image is made with debootstrap
and `docker import`, and torch comes from a wheelhouse that pip downloads on the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from cudastack.host.cells import images, stacks

BASE_IMAGE = "cudastack-test-base:bookworm"
MIRROR = os.environ.get("CUDASTACK_TEST_MIRROR", "http://deb.debian.org/debian")
TORCH = "2.13.0"  # a CPU build of it for Python 3.11, the Python of Debian bookworm
# Another cuDNN 9 for CUDA 13 than the 9.20.0.48 torch 2.13.0 pins, and not older in its minor
# (torch refuses a cuDNN older than the one it was built with), and another NCCL than its 2.29.7.
CUDNN_PIN = "9.21.1.3"
NCCL_PIN = "2.30.3"


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
    shutil.rmtree(root, ignore_errors=True)
    return BASE_IMAGE


TEST_CELLS: set[str] = set()  # every cell name cpu_cell() has written into a test matrix


@pytest.fixture(scope="session")
def images_made_here(engine):
    """Remove the test cells' images that the tests built or pulled, once they are all done.

    Kept until then, an image one module built is a cache hit for the next module's cell of the
    same content (test-cpu's 2 minutes, several times). A cell image with its CPU torch is over
    1 GB, so the CUDA cell's 5 GB image is removed by its own test. Only the tests' own cells
    are touched: an image a developer builds meanwhile on the same engine stays (and so does
    the base image).
    """
    from docker.errors import APIError

    def cell_images() -> list:
        return list(engine.images.list(filters={"label": "dev.cudastack.cell"}))

    before = {image.id for image in cell_images()}
    yield
    for image in cell_images():
        if image.id in before or image.labels.get("dev.cudastack.cell") not in TEST_CELLS:
            continue
        with contextlib.suppress(APIError):  # already gone, or held by a failed test's container
            engine.images.remove(image.id, force=True)


def _platform_args() -> list[str]:
    """pip's --platform list for the test base image on this host: every manylinux tag its
    glibc accepts (pip fills in none between two values; nvidia wheels use several)."""
    tags = stacks.pip_platforms(BASE_IMAGE, os.uname().machine)
    return [arg for tag in tags for arg in ("--platform", tag)]


def _download(folder: Path, *requirements: str, isolated: bool = False) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            *(["--isolated"] if isolated else []),
            "--quiet",
            "--dest",
            str(folder),
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            *_platform_args(),
            *requirements,
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheelhouse")
    _download(folder, f"torch=={TORCH}")
    return folder


@pytest.fixture(scope="session")
def cuda_wheelhouse(tmp_path_factory):
    """PyPI's default torch (a CUDA 13 build) for Python 3.11 with every dependency, plus the
    pinned cuDNN and NCCL wheels: about 3 GiB, downloaded once per session from pypi.org.

    --isolated: pip's configuration and environment may point at local CPU wheels, which
    would win. CUDASTACK_TEST_CUDA_WHEELHOUSE names a folder to keep the wheels in between
    sessions (pip downloads only what it lacks)."""
    kept = os.environ.get("CUDASTACK_TEST_CUDA_WHEELHOUSE")
    folder = Path(kept) if kept else tmp_path_factory.mktemp("cuda-wheelhouse")
    folder.mkdir(parents=True, exist_ok=True)
    _download(folder, f"torch=={TORCH}", isolated=True)
    pins = (f"nvidia-cudnn-cu13=={CUDNN_PIN}", f"nvidia-nccl-cu13=={NCCL_PIN}")
    _download(folder, "--no-deps", *pins, isolated=True)
    return folder


def write_matrix(folder: Path, *cells: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "matrix.toml"
    path.write_text("\n".join(textwrap.dedent(c) for c in cells))
    return path


def cpu_cell(name: str, torch: str = TORCH) -> str:
    TEST_CELLS.add(name)
    return f"""
    [[cell]]
    name = "{name}"
    base_image = "{BASE_IMAGE}"
    torch = "{torch}"
    index = "cpu"
    python = "3.11"
    """


def cuda_cell(name: str, cudnn: str = "", nccl: str = "", base: str = BASE_IMAGE) -> str:
    """A cell of PyPI's CUDA 13 build of torch on the test base, with optional library pins."""
    TEST_CELLS.add(name)
    pins = "".join(f'\n    {k} = "{v}"' for k, v in (("cudnn", cudnn), ("nccl", nccl)) if v)
    return f"""
    [[cell]]
    name = "{name}"
    base_image = "{base}"
    cuda = "13.0"
    torch = "{TORCH}"
    index = "cu130"
    python = "3.11"{pins}
    """


@pytest.fixture(scope="session")
def good_matrix(base_image, tmp_path_factory):
    return write_matrix(tmp_path_factory.mktemp("matrix"), cpu_cell("test-cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} did not come up in {seconds:g} s")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is needed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real registry (Debian's docker-registry) on a free loopback port, no auth."""
    binary = _tool("docker-registry", "docker-registry")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(root / "log.txt", "w")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    _wait_for(up, "docker-registry")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="session")
def registry_base(engine, base_image, registry):
    """The test base image pushed to the local registry: `lock` asks a base's registry for its
    digest."""
    base = f"{registry}/{base_image}"
    engine.images.get(base_image).tag(base)
    for chunk in engine.images.push(base, stream=True, decode=True):
        assert "error" not in chunk, chunk
    yield base
    engine.images.remove(base)  # the tag only; the image stays


@pytest.fixture(scope="session")
def clean_engine(tmp_path_factory):
    """A second Docker engine with its own empty image store, for import on a clean engine."""
    dockerd = _tool("dockerd", "docker.io")
    # Socket paths are limited to ~100 characters: keep this folder's path short.
    root = Path(tempfile.mkdtemp(prefix="cs-d2-", dir="/tmp"))
    sock = root / "docker.sock"
    log = open(root / "log.txt", "w")  # noqa: SIM115 (lives as long as the server)
    # In a network namespace of its own: its default bridge is its own, never the main
    # engine's docker0 (a second engine with --bridge=none would delete that one).
    proc = subprocess.Popen(
        [
            _tool("unshare", "util-linux"),
            "--net",
            dockerd,
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "pid"),
            "-H",
            f"unix://{sock}",
            "--iptables=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    host = f"unix://{sock}"
    _wait_for(lambda: sock.exists() and _ping(host), "the second dockerd")
    yield host
    proc.terminate()
    proc.wait(timeout=60)
    log.close()
    shutil.rmtree(root, ignore_errors=True)


def _ping(host: str) -> bool:
    import docker

    try:
        return bool(docker.DockerClient(base_url=host, timeout=5).ping())
    except Exception:
        return False
