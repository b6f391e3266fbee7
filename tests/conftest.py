"""Shared fixtures: a scratch bench folder and the real command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest
from docker_env import (  # noqa: F401 (fixtures)
    base_image,
    clean_engine,
    cuda_wheelhouse,
    engine,
    good_matrix,
    images_made_here,
    registry,
    registry_base,
    wheelhouse,
)
from slurm_env import slurm, slurm_accounting  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]


def per_module(fixture_name: str, config: pytest.Config) -> str:
    """The scope of a fixture that its module's tests share: "module", but "function" under
    `make mutants`. mutmut credits a function to the test during whose setup, call or teardown
    it ran, so a shared fixture would count only for the module's first test, and a mutant of
    what the fixture runs would be tried against that test alone."""
    return "function" if "MUTANT_UNDER_TEST" in os.environ else "module"


@pytest.fixture
def make_bench(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a bench file into a fresh folder; returns the folder."""
    folder = tmp_path / "bench"
    folder.mkdir()

    def write(name: str, source: str) -> Path:
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        return folder

    return write


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m cudastack`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "cudastack", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def worker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cudastack.worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# `make test` runs two pytest-xdist workers (CI's machine has two cores). The tests that use the
# one Docker engine (image builds, most of the time this suite takes) run in one worker, in
# order, sharing its session fixtures (base image, wheelhouses, registry) as a single process
# would; those of the test Slurm cluster in one worker; every other test in either.
ENGINE_FIXTURES = {
    "engine",
    "base_image",
    "wheelhouse",
    "cuda_wheelhouse",
    "good_matrix",
    "registry",
    "registry_base",
    "clean_engine",
    "images_made_here",
}


# tryfirst: xdist's worker reads the group marks in its own hook of this name.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & ENGINE_FIXTURES or item.get_closest_marker("docker"):
            item.add_marker(pytest.mark.xdist_group("engine"))
        elif "slurm" in fixtures or item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
