"""A locked cell's first build pins its OS packages beside its lock; later builds install them."""

from __future__ import annotations

import pytest
from conftest import cli
from docker_env import BASE_IMAGE, cpu_cell, write_matrix

from cudastack.host.cells import images, lock, matrix

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]

CELL = "oslock-cpu"
# A small Debian bookworm package with no dependencies a minimal system lacks, which no build
# installs unless a pin brings it.
PINNED = ("hello", "2.10-3")


def _dpkg(engine, image: str) -> dict[str, str]:
    out = engine.containers.run(
        image, ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"], remove=True
    )
    return dict(line.split(" ", 1) for line in out.decode().splitlines())


def test_the_first_build_of_a_locked_cell_pins_its_os_packages_and_later_builds_install_them(
    engine, registry_base, wheelhouse, tmp_path
):
    path = write_matrix(tmp_path / "m", cpu_cell(CELL).replace(BASE_IMAGE, registry_base))
    locked = cli("lock", "--cell", CELL, "--matrix", str(path), "--wheelhouse", str(wheelhouse))
    assert locked.returncode == 0, locked.stdout + locked.stderr
    (cell,) = matrix.load(path)
    os_lock = lock.os_lock_path(cell, path.parent / "locks")
    assert not os_lock.exists()  # written by a build, not by `lock`

    first = cli("build", "--matrix", str(path), "--wheelhouse", str(wheelhouse), timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    pins = lock.read_os_lock(os_lock)
    # The test base has no compiler: the build installed gcc, g++ and the Python headers.
    assert {"gcc", "g++", "libpython3.11-dev"} <= set(pins), pins
    tag = cell.image_tag(matrix.DEFAULT_MATRIX.parent / "Dockerfile", path.parent / "locks")
    assert {name: _dpkg(engine, tag)[name] for name in pins} == pins  # at the recorded versions

    # Another host, given the locks folder: a build of the same cell installs those pins, and
    # keeps the tag (the pins make the same cell). A pin no build would add shows they reached apt.
    engine.images.remove(tag, force=True)
    os_lock.write_text(os_lock.read_text() + f"{PINNED[0]}={PINNED[1]}\n")
    again = cli("build", "--matrix", str(path), "--wheelhouse", str(wheelhouse), timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert f"OS packages pinned by {os_lock}" in again.stdout
    installed = _dpkg(engine, tag)
    assert installed[PINNED[0]] == PINNED[1]
    assert {name: installed[name] for name in pins} == pins
    assert lock.read_os_lock(os_lock)[PINNED[0]] == PINNED[1]  # the lock was not rewritten

    # A damaged OS lock is the cell's one-line build failure, naming the file and line.
    engine.images.remove(tag, force=True)
    os_lock.write_text("gcc=1; touch /pwned\n")
    bad = cli("build", "--matrix", str(path), "--wheelhouse", str(wheelhouse), timeout=600)
    assert bad.returncode == 1
    assert f"{os_lock}:1: 'gcc=1; touch /pwned' is not an OS package pin" in bad.stdout + bad.stderr


def test_an_entrypoint_s_banner_never_reaches_the_os_lock(engine, base_image, tmp_path):
    # nvidia/cuda's entrypoint prints a banner on stdout before running the command.
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base_image}\n"
        "RUN mkdir -p /opt/cudastack && printf 'gcc=4:12.2.0-3\\nlibc6=2.36-9\\n' "
        "> /opt/cudastack/apt-installed.txt\n"
        'ENTRYPOINT ["/bin/sh", "-c", "echo ==========; echo == CUDA ==; exec \\"$@\\"", "--"]\n'
    )
    image, _ = engine.images.build(path=str(tmp_path), rm=True)
    try:
        banner = engine.containers.run(image.id, ["true"], remove=True).decode()
        assert banner.startswith("==========")  # the entrypoint is there to be bypassed
        assert images.apt_installed(engine, image.id) == {"gcc": "4:12.2.0-3", "libc6": "2.36-9"}
    finally:
        engine.images.remove(image.id, force=True)


def test_locking_a_cell_again_drops_its_os_lock(registry_base, wheelhouse, tmp_path):
    path = write_matrix(tmp_path / "m", cpu_cell(CELL).replace(BASE_IMAGE, registry_base))
    (cell,) = matrix.load(path)
    os_lock = lock.os_lock_path(cell, path.parent / "locks")
    os_lock.parent.mkdir(parents=True)
    lock.write_os_lock(os_lock, cell, {"gcc": "4:12.2.0-3"})  # a build of an earlier lock's
    again = cli("lock", "--cell", CELL, "--matrix", str(path), "--wheelhouse", str(wheelhouse))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"removed {os_lock}: the next build pins the OS packages it installs" in again.stdout
    assert not os_lock.exists()
