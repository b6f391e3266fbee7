"""The warning before `bench` builds images the engine's disk has no room for, on a real engine."""

from __future__ import annotations

import shutil

import pytest

from cudastack.host.cells import doctor, images, matrix
from cudastack.host.console import echo
from cudastack.host.run import pipeline
from cudastack.host.run.container import ContainerOptions
from cudastack.host.run.suite_args import SuiteArgs

pytestmark = pytest.mark.docker


def launcher(engine, cells, disk: doctor.EngineDisk, said: list) -> pipeline.ContainerLauncher:
    return pipeline.ContainerLauncher(
        engine,
        cells,
        pipeline.BuildInputs.for_matrix(matrix.DEFAULT_MATRIX),
        SuiteArgs(),
        ContainerOptions(gpus="none"),
        doctor.HostReport(disk=disk),
        "none",  # every cell runs (a CUDA build on the CPU), so every one needs its image
        said.append,
        lambda cell: echo,
    )


def test_the_engine_says_where_its_images_go_and_the_free_space_there(engine):
    disk = doctor.inspect(engine).disk
    assert disk.root == engine.info()["DockerRootDir"]
    if disk.free_gb is None:  # an engine in a VM, or on another machine
        assert disk.why
    else:
        assert disk.free_gb == pytest.approx(shutil.disk_usage(disk.root).free / 1e9, rel=0.05)


def test_bench_warns_before_building_more_images_than_the_disk_holds(engine):
    cells = matrix.load(matrix.DEFAULT_MATRIX)
    inputs = pipeline.BuildInputs.for_matrix(matrix.DEFAULT_MATRIX)
    missing = [c for c in cells if not images.exists(engine, inputs.tag(c))]
    if not missing:
        pytest.skip("every shipped cell's image is on this engine: nothing to build")
    needed = sum(doctor.image_gb(c) for c in missing)
    said: list[str] = []
    plans = launcher(engine, cells, doctor.EngineDisk("/var/lib/docker", 1.0, ""), said).plan()
    assert [p.cell for p in plans] == [c.name for c in cells]  # the plan itself is unchanged
    (warning,) = said
    assert warning.startswith("warning: ")
    assert (
        f"need{'s' if len(missing) == 1 else ''} about {needed:.0f} GB, more than the 1 GB free"
        in warning
    )
    # With room for them, nothing is said.
    quiet: list[str] = []
    launcher(engine, cells, doctor.EngineDisk("/var/lib/docker", needed + 1, ""), quiet).plan()
    assert quiet == []
