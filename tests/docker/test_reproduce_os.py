"""`reproduce --rebuild` against a real engine: a base changed under its name, OS package pins."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from conftest import cli
from docker_env import BASE_IMAGE, cpu_cell, write_matrix

from cudastack.host.analysis import results

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]

# A test-only name for the base: the shared test base is never retagged.
BASE = "cudastack-test-reproduce-os:bookworm"
CELL = "os-cpu"
# Small Debian bookworm packages with no dependencies a minimal system lacks: `tree` goes into
# the changed base, `hello` only into a rebuild, by a pin.
IN_BASE, PINNED = "tree", ("hello", "2.10-3")


def _dpkg(engine, image: str) -> dict[str, str]:
    out = engine.containers.run(
        image, ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"], remove=True
    )
    return dict(line.split(" ", 1) for line in out.decode().splitlines())


def _descendants(engine, root: str) -> list[str]:
    """``root`` and every image built on it, parents before children."""
    children: dict[str, list[str]] = {}
    for image in engine.images.list(all=True):
        children.setdefault(image.attrs.get("Parent") or "", []).append(image.id)
    found, todo = [], [root]
    while todo:
        found.append(todo.pop(0))
        todo += children.get(found[-1], [])
    return found


@pytest.fixture(scope="module")
def recorded(engine, base_image, wheelhouse, tmp_path_factory):
    """A run of a cell built on BASE, then BASE changed under its name: one more OS package."""
    engine.images.get(BASE_IMAGE).tag(BASE)  # the same image under the test's own name
    folder = tmp_path_factory.mktemp("os")
    path = write_matrix(folder, cpu_cell(CELL).replace(BASE_IMAGE, BASE))
    run = folder / "run"
    ran = cli(
        "run",
        "--cell",
        CELL,
        "--matrix",
        str(path),
        "--wheelhouse",
        str(wheelhouse),
        "--bench",
        "gemm",
        "--select",
        "n=512",
        "--select",
        "dtype=fp32",
        "--profile",
        "quick",
        "--out",
        str(run),
        timeout=1800,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    old_base = engine.images.get(BASE).id
    dockerfile = (
        f"FROM {BASE}\nRUN apt-get update && apt-get install -y --no-install-recommends "
        f"{IN_BASE} && rm -rf /var/lib/apt/lists/*\n"
    )
    changed, _ = engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=BASE, rm=True)
    try:
        yield {"matrix": path, "run": run, "old_base": old_base, "new_base": changed.id}
    finally:
        # Every image built on the changed base, newest first (a failed build leaves its
        # steps' images behind), then the base: an image with children cannot be removed.
        for image_id in reversed(_descendants(engine, changed.id)):
            with contextlib.suppress(Exception):
                engine.images.remove(image_id, force=True)  # the last one untags BASE too
        with contextlib.suppress(Exception):
            engine.images.remove(BASE)  # only the name, if it still points at the shared base


@pytest.fixture(scope="module")
def rebuilt(engine, recorded, wheelhouse):
    """reproduce --rebuild of that run, with one recorded OS package only a pin brings."""
    env_file = recorded["run"] / CELL / results.ENV
    original = env_file.read_text()
    env = json.loads(original)
    env["os_packages_built"][PINNED[0]] = PINNED[1]
    try:
        env_file.write_text(json.dumps(env))
        proc = cli(
            "reproduce",
            str(recorded["run"]),
            "--matrix",
            str(recorded["matrix"]),
            "--rebuild",
            "--wheelhouse",
            str(wheelhouse),
            "--show-identical",
            timeout=1800,
        )
    finally:
        env_file.write_text(original)
    cell = json.loads((recorded["run"] / CELL / "cell.json").read_text())
    return {"proc": proc, "env": env, "tag": cell["tag"], "cell": cell}


def test_the_run_records_the_base_and_the_os_packages_its_build_installed(recorded, rebuilt):
    env, cell = rebuilt["env"], rebuilt["cell"]
    assert cell["base"] == recorded["old_base"]  # an imported base has no digest: its ID
    assert env["python"]["version"].startswith("3.11.")
    # The test base lacks gcc: the final stage's apt step installed it, and it was recorded.
    for name in ("gcc", "g++", "libpython3.11-dev"):
        assert env["os_packages_built"][name] == env["os_packages"][name]
    assert IN_BASE not in env["os_packages"] and PINNED[0] not in env["os_packages"]


def test_a_base_changed_under_its_name_is_reported(recorded, rebuilt):
    proc = rebuilt["proc"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"image rebuilt as {rebuilt['tag']}: " in proc.stdout  # the same tag: the same cell
    assert f"base image: {recorded['old_base']} -> {recorded['new_base']}" in proc.stdout
    assert f"{IN_BASE}: (absent) -> " in proc.stdout
    assert f"{PINNED[0]}: (absent) -> {PINNED[1]}" in proc.stdout
    assert "OS packages: 2 added\n" in proc.stdout
    assert "identical environment" not in proc.stdout
    # --show-identical: what agreed, one line per category
    assert "Python: identical (3.11." in proc.stdout
    assert "lock: identical (" in proc.stdout and "pip packages: " in proc.stdout


def test_a_rebuild_installs_the_recorded_os_package_versions(engine, rebuilt):
    inside = _dpkg(engine, rebuilt["tag"])
    pins = rebuilt["env"]["os_packages_built"]
    assert {name: inside.get(name) for name in pins} == pins
    listed = engine.containers.run(
        rebuilt["tag"], ["cat", "/opt/cudastack/os-packages.txt"], remove=True
    ).decode()
    assert f"{PINNED[0]} {PINNED[1]} amd64" in listed.splitlines()


# Last: its failed rebuild leaves the cell without an image.
def test_a_version_the_archive_lacks_fails_in_one_line(recorded, wheelhouse):
    env_file = recorded["run"] / CELL / results.ENV
    original = env_file.read_text()
    env = json.loads(original)
    env["os_packages_built"][PINNED[0]] = "0.0-gone"
    try:
        env_file.write_text(json.dumps(env))
        proc = cli(
            "reproduce",
            str(recorded["run"]),
            "--matrix",
            str(recorded["matrix"]),
            "--rebuild",
            "--wheelhouse",
            str(wheelhouse),
            timeout=1200,
        )
    finally:
        env_file.write_text(original)
    # The build's own lines (stdout) with a failure: the reason is made from them.
    shown = proc.stderr + proc.stdout[-3000:]
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, shown
    assert proc.stderr.startswith(f"error: build of {CELL} failed: E: Version '0.0-gone' for "), (
        shown
    )
    assert f"for '{PINNED[0]}' was not found" in proc.stderr
    assert "snapshot.debian.org" in proc.stderr and "--apt-snapshot" in proc.stderr
