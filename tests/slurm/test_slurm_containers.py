"""--container docker on a real Slurm: the cell's image built here, saved into the run folder,
loaded by the node's Docker engine and run there, one task per cell (the test node is this host
and shares its engine; pyxis and Apptainer are not installed here, their scripts are checked as
text in tests/test_slurm_tasks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli
from docker_env import TORCH, cpu_cell, write_matrix

from cudastack.contract.errors import EXIT_OK
from cudastack.host.analysis import results
from cudastack.host.cells import images, matrix
from cudastack.host.run import loop, task_container

pytestmark = [pytest.mark.slurm, pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]

# Two quick cases that fail unless --env's variable reached the container by name.
BENCH = '''"""Two quick cases that need --env's variable."""

KIND = "kernel"
HEADLINE = "latency"
PARAMS = {"n": [0, 1]}


def run(ctx, n):
    import os

    from cudastack.environment.context import Metric

    if os.environ.get("CUDASTACK_TEST_PASSED") != "by-name":
        raise RuntimeError("--env did not reach the container")
    return [Metric("latency", "ms", "lower", [1.0 + n, 1.1 + n, 1.2 + n])]
'''


def test_a_cell_runs_in_its_image_on_the_node_by_the_node_s_docker(
    slurm, engine, base_image, wheelhouse, make_bench, tmp_path
):
    bench = make_bench("needs_env", BENCH)
    m = write_matrix(tmp_path / "m", cpu_cell("test-cpu"))
    out = tmp_path / "run"
    argv = ["run", "--launcher", "slurm", "--partition", slurm.partition, "--container"]
    argv += ["docker", "--cell", "test-cpu", "--matrix", str(m), "--wheelhouse", str(wheelhouse)]
    argv += ["--bench-dir", str(bench), "--profile", "smoke", "--out", str(out)]
    argv += ["--env", "CUDASTACK_TEST_PASSED=by-name"]
    proc = cli(*argv, env=slurm.env, timeout=1500)
    assert proc.returncode == EXIT_OK, proc.stdout[-3000:] + proc.stderr
    table = results.load_table(out)
    rows = table[(table["cell"] == "test-cpu") & (table["bench"] == "needs_env")]
    assert sorted(rows["case"].unique()) == ["needs_env[n=0]", "needs_env[n=1]"]
    assert set(rows["status"]) == {"ok"}
    # It ran in the cell's image (its torch, not this environment's), on the node, and the
    # records name the image the node loaded.
    handed = json.loads((out / "slurm" / "images.json").read_text())["test-cpu"]
    identity = images.identity(engine, handed["tag"])
    image_id = engine.images.get(handed["tag"]).id.removeprefix("sha256:")[:16]
    archive = out / "slurm" / "images" / f"test-cpu.{image_id}.tar"
    assert handed["archive"] and handed["ref"] == str(archive.absolute()) and archive.is_file()
    assert set(rows["image_digest"]) == {identity}
    env = json.loads((out / "test-cpu" / "env.json").read_text())
    assert env["torch"]["version"].startswith(TORCH)
    assert env["slurm"]["node"] == slurm.node and env["slurm"]["job_id"]
    script = (out / "slurm" / "job.sbatch").read_text()
    assert f"docker load --quiet --input {archive.absolute()} >>" in script
    assert "by-name" not in script  # --env's value reached the task from sbatch's environment


def test_a_resumed_run_reuses_the_archive_it_saved(engine, base_image, wheelhouse, tmp_path):
    # Saving a cell's image is gigabytes and a minute: a resume that hands the cell off again
    # finds the archive of that image id whole in the run folder and leaves it as it is.
    m = write_matrix(tmp_path / "m", cpu_cell("test-cpu"))
    cells = {"test-cpu": matrix.select(matrix.load(m), ["test-cpu"])[0]}
    inputs = loop.build_inputs(m, wheelhouse, None)
    run_dir, said = tmp_path / "run", []
    archives = run_dir / "slurm" / "images"
    run_dir.mkdir()

    def hand_off() -> task_container.NodeImage:
        found = task_container.hand_off(
            engine, cells, inputs, run_dir, archives, "", said.append, lambda cell: print
        )
        assert isinstance(found["test-cpu"], task_container.NodeImage), found
        return found["test-cpu"]

    first = hand_off()
    saved = Path(first.ref).stat()
    again = hand_off()
    assert again == first and Path(again.ref).stat().st_mtime_ns == saved.st_mtime_ns
    assert said[-2:] == [
        f"test-cpu: {Path(first.ref).name} is already in the run folder",
        f"test-cpu: the nodes get {first.ref}",
    ]
    assert [p.name for p in archives.iterdir()] == [Path(first.ref).name]  # no temporary left
