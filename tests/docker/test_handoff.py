"""Lock, push, reproduce, export / import and shell against a real registry and engines."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import pytest
from conftest import cli
from docker_env import BASE_IMAGE, TORCH, cpu_cell, write_matrix

import docker
from cudastack.host.analysis import results
from cudastack.host.cells import handoff, images, matrix, reproduce
from cudastack.host.run import pipeline

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]


@pytest.fixture(scope="module")
def locked(engine, registry_base, wheelhouse, tmp_path_factory):
    """A cell whose base lives in the registry, locked, built and run once."""
    folder = tmp_path_factory.mktemp("locked")
    path = write_matrix(folder, cpu_cell("reg-cpu").replace(BASE_IMAGE, registry_base))
    proc = cli("lock", "--matrix", str(path), "--wheelhouse", str(wheelhouse))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (cell,) = matrix.load(path)
    tag = pipeline.BuildInputs.for_matrix(path).tag(cell)
    if images.exists(engine, tag):
        engine.images.remove(tag, force=True)
    built = cli("build", "--matrix", str(path), "--wheelhouse", str(wheelhouse), timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    run = folder / "run"
    ran = cli(
        "run",
        "--cell",
        "reg-cpu",
        "--matrix",
        str(path),
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
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    return {"matrix": path, "cell": cell, "tag": tag, "base": registry_base, "run": run}


def test_lock_pins_the_registry_digest_and_every_wheel(engine, locked, wheelhouse):
    digest = engine.images.get_registry_data(locked["base"]).id
    assert locked["cell"].base_image == f"{locked['base']}@{digest}"
    lock = locked["cell"].lock_path(locked["matrix"].parent / "locks").read_text()
    for wheel in wheelhouse.iterdir():
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert f"--hash=sha256:{sha}" in lock, wheel.name
    assert f"torch=={TORCH}+cpu --hash=" in lock


def test_a_tag_missing_from_its_registry_is_one_line(registry, tmp_path):
    path = write_matrix(tmp_path, cpu_cell("x").replace(BASE_IMAGE, f"{registry}/nope:gone"))
    before = path.read_text()
    proc = cli("lock", "--matrix", str(path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: base image {registry}/nope:gone: its registry has no")
    assert path.read_text() == before and not (tmp_path / "locks").exists()


def test_locked_build_and_records_carry_the_provenance(engine, locked):
    lock_file = locked["cell"].lock_path(locked["matrix"].parent / "locks")
    inside = engine.containers.run(
        locked["tag"], ["cat", "/opt/venv/cudastack-lock.txt"], remove=True
    ).decode()
    assert inside == lock_file.read_text()  # the build installed exactly this lock
    df = results.load_table(locked["run"])
    lock_hash = "sha256:" + hashlib.sha256(lock_file.read_bytes()).hexdigest()
    assert set(df["lock_hash"]) == {lock_hash}
    assert set(df["image_digest"]) == {engine.images.get(locked["tag"]).id}
    env = json.loads((locked["run"] / "reg-cpu" / results.ENV).read_text())
    assert env["lock"]["text"] == lock_file.read_text()
    assert env["installed"]["torch"] == f"{TORCH}+cpu"
    recorded = json.loads((locked["run"] / "reg-cpu" / "cell.json").read_text())
    assert recorded["build_args"]["BASE_IMAGE"] == locked["cell"].base_image
    assert recorded["lock"] == lock_file.read_text() and recorded["tag"] == locked["tag"]


def test_push_then_reproduce_from_the_registry_and_from_scratch(
    engine, locked, registry, wheelhouse
):
    proc = cli(
        "push", "reg-cpu", "--registry", f"{registry}/cells", "--matrix", str(locked["matrix"])
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = (locked["matrix"].parent / "locks" / "reg-cpu.pushed").read_text().strip()
    assert pushed.startswith(f"{registry}/cells/reg-cpu@sha256:")
    # A teammate's engine has none of it: remove every local copy, then reproduce.
    for ref in (locked["tag"], pushed.split("@")[0] + ":" + locked["tag"].rsplit(":", 1)[1]):
        engine.images.remove(ref, force=True)
    again = cli("reproduce", str(locked["run"]), "--matrix", str(locked["matrix"]))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"reg-cpu: image pulled as {locked['tag']}: identical environment" in again.stdout
    pulled = engine.images.get(locked["tag"]).id
    rebuilt = cli(
        "reproduce",
        str(locked["run"]),
        "--matrix",
        str(locked["matrix"]),
        "--rebuild",
        "--wheelhouse",
        str(wheelhouse),
        timeout=1200,
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "image rebuilt" in rebuilt.stdout and "identical environment" in rebuilt.stdout
    assert engine.images.get(locked["tag"]).id != pulled
    engine.images.remove(pulled, force=True)  # the tag moved on: free its gigabyte now


def test_reproduce_reports_a_changed_environment(engine, locked, tmp_path):
    env_file = locked["run"] / "reg-cpu" / results.ENV
    original = env_file.read_text()
    changed = json.loads(original)
    changed["installed"]["torch"] = "2.12.0+cpu"
    changed["installed"]["extra-package"] = "1.0"
    try:
        env_file.write_text(json.dumps(changed))
        proc = cli("reproduce", str(locked["run"]), "--matrix", str(locked["matrix"]))
    finally:
        env_file.write_text(original)
    assert proc.returncode == 1
    assert "2 differences" in proc.stdout
    assert f"torch: 2.12.0+cpu -> {TORCH}+cpu" in proc.stdout
    assert "extra-package: 1.0 -> (absent)" in proc.stdout


def test_a_refused_push_is_one_line(locked):
    proc = cli(
        "push", "reg-cpu", "--registry", "127.0.0.1:1/nothing", "--matrix", str(locked["matrix"])
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: push to 127.0.0.1:1/nothing refused: ")


def _flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def test_export_imports_on_a_clean_engine_and_damage_is_refused(
    engine, locked, clean_engine, tmp_path
):
    archive = tmp_path / "reg-cpu.tar"
    proc = cli("export", "reg-cpu", "-o", str(archive), "--matrix", str(locked["matrix"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {**os.environ, "DOCKER_HOST": clean_engine}
    clean = docker.DockerClient(base_url=clean_engine)
    # The archive is as large as the image: damage it in place rather than in copies.
    with tarfile.open(archive) as tar:
        member, manifest = tar.getmember("image.tar"), tar.getmember("manifest.json")
    middle = member.offset_data + member.size // 2
    try:
        _flip_byte(archive, middle)
        tampered = cli("import", str(archive), env=env)
        assert tampered.returncode == 2 and tampered.stderr.count("\n") == 1, tampered.stderr
        assert "does not match its manifest's sha256" in tampered.stderr
        assert not clean.images.list(), "a tampered archive left an image behind"
        _flip_byte(archive, middle)
        good = cli("import", str(archive), env=env)
        assert good.returncode == 0, good.stdout + good.stderr
        assert "hashes verified" in good.stdout
        assert clean.images.get(locked["tag"]).id == engine.images.get(locked["tag"]).id
        exists = cli("export", "reg-cpu", "-o", str(archive), "--matrix", str(locked["matrix"]))
        assert exists.returncode == 2 and "already exists" in exists.stderr
        loaded = {image.id for image in clean.images.list()}
        # Cut inside the manifest's header (tarfile alone would read a shorter archive), then
        # inside the image's data.
        for cut in (manifest.offset + 100, middle):
            os.truncate(archive, cut)
            truncated = cli("import", str(archive), env=env)
            assert truncated.returncode == 2 and truncated.stderr.count("\n") == 1, truncated.stderr
            assert "is truncated or not a tar archive" in truncated.stderr
            assert {image.id for image in clean.images.list()} == loaded
    finally:
        archive.unlink()
        for image in clean.images.list():
            clean.images.remove(image.id, force=True)


def test_shell_runs_in_the_cell_with_this_folder_mounted(locked, tmp_path):
    (tmp_path / "mine.txt").write_text("hello")
    proc = cli(
        "shell",
        "reg-cpu",
        "--matrix",
        str(locked["matrix"]),
        "--gpus",
        "none",
        "--",
        "python",
        "-c",
        "import torch; print(torch.__version__, open('mine.txt').read())",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"{TORCH}+cpu hello"


MEASURED = "sha256:" + "1" * 64  # the image ID a run recorded, of an image never built here


def recorded_run(tmp_path, name: str, pushed_ref: str) -> tuple:
    """A run folder and a push record as a teammate gets them, for cell ``name`` whose run
    measured MEASURED: nothing needs building to see what reproduce says about them. Returns
    (the matrix file, the cell's image tag)."""
    path = write_matrix(tmp_path / "matrix", cpu_cell(name))
    (cell,) = matrix.load(path)
    inputs = pipeline.BuildInputs.for_matrix(path)
    tag = inputs.tag(cell)
    cell_dir = tmp_path / "run" / name
    cell_dir.mkdir(parents=True)
    reproduce.record_inputs(cell_dir, cell, inputs.dockerfile, "", tag, MEASURED, "x")
    (cell_dir / results.ENV).write_text("{}")
    (tmp_path / "matrix" / "locks").mkdir()
    handoff.pushed_record(tmp_path / "matrix" / "locks", cell).write_text(pushed_ref + "\n")
    return path, tag


def test_a_recorded_digest_that_cannot_be_pulled_is_one_line(engine, registry, tmp_path):
    ref = f"{registry}/cells/gone@sha256:{'0' * 64}"  # a digest the registry never held
    path, tag = recorded_run(tmp_path, "gone", ref)
    assert not images.exists(engine, tag)
    proc = cli("reproduce", str(tmp_path / "run"), "--matrix", str(path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: cell gone: cannot pull its recorded digest {ref} (")
    assert proc.stderr.rstrip().endswith(
        "use --rebuild to build it from the recorded inputs, or import an export of it"
    )
    assert not images.exists(engine, tag)


def test_a_digest_pushed_since_the_run_is_refused_not_tagged_as_its_image(
    engine, registry_base, tmp_path
):
    # The push record is per cell: after the run, the cell was pushed again, and its record now
    # names another image (here: the test base image, pushed to the registry).
    repo = registry_base.rsplit(":", 1)[0]
    digests = engine.images.get(registry_base).attrs["RepoDigests"]
    (ref,) = [d for d in digests if d.startswith(repo + "@")]
    path, tag = recorded_run(tmp_path, "moved", ref)
    proc = cli("reproduce", str(tmp_path / "run"), "--matrix", str(path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == (
        f"error: cell moved: {ref} is not the image this run measured ({MEASURED}): the cell "
        "was pushed again since; use --rebuild to build it from the recorded inputs, or import "
        "an export of the run\n"
    )
    assert not images.exists(engine, tag)  # the pulled image is not this cell's


def test_an_export_with_its_run_reproduces_without_the_run_folder(engine, locked, tmp_path):
    archive = tmp_path / "reg-cpu.tar"
    proc = cli("export", "reg-cpu", "--run", str(locked["run"]), "-o", str(archive))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    teammate = tmp_path / "teammate"  # no run folder, the shipped matrix, no push record
    teammate.mkdir()
    try:
        # Their engine has no copy of the image either: reproduce loads it from the archive.
        engine.images.remove(locked["tag"], force=True)
        first = cli("reproduce", str(archive), cwd=teammate)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"reg-cpu: image imported as {locked['tag']}: identical environment" in first.stdout
        again = cli("reproduce", str(archive), cwd=teammate)
        assert f"reg-cpu: image present as {locked['tag']}: identical environment" in again.stdout
        assert list(teammate.iterdir()) == []  # nothing written where it ran
        with tarfile.open(archive) as tar:
            recorded = json.loads(tar.extractfile("run/env.json").read())  # type: ignore[union-attr]
        original = json.loads((locked["run"] / "reg-cpu" / results.ENV).read_text())
        assert recorded == original  # what it compared against is the run's own fingerprint
    finally:
        if not images.exists(engine, locked["tag"]):
            cli("import", str(archive))  # the module's other tests use the image
        archive.unlink()
