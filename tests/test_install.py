"""A regular (non-editable) install finds its own suite, Dockerfile and default matrix.

The package is built and installed with pip into a temporary folder (no network, no build
isolation: the build uses the setuptools of this environment), and the command line is run from
another folder with only that install on PYTHONPATH. The build runs in a copy of the sources,
because setuptools writes ``build/`` and ``*.egg-info`` beside what it builds: the checkout stays
as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cudastack.host.cells import matrix

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src" / "cudastack"
# What the build reads: the project table (readme = README.md) and the package.
BUILD_INPUTS = ("pyproject.toml", "README.md", "src")
# Build and run products that are not part of the package (setuptools writes src/*.egg-info).
NOT_SOURCE = ("__pycache__", "*.pyc", "*.egg-info")

# Probed in the installed package: where it is and where it looks for its data.
PROBE = r"""
import json
import cudastack
from cudastack.environment.suite import DEFAULT_BENCH_DIR
from cudastack.host.cells.matrix import DEFAULT_MATRIX
print(json.dumps({
    "package": cudastack.__file__,
    "bench_dir": str(DEFAULT_BENCH_DIR),
    "matrix": str(DEFAULT_MATRIX),
}))
"""


def package_files(package: Path) -> set[str]:
    """Every file of a package folder, relative to it, without bytecode caches."""
    return {
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def shipped_benches() -> list[str]:
    """The bench names of the source tree: its bench files, as the suite discovers them."""
    bench_dir = SOURCE / "environment" / "bench"
    return sorted(p.stem for p in bench_dir.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder a ``pip install --target`` of a copy of the sources filled (the site)."""
    root = tmp_path_factory.mktemp("install")
    tree, site = root / "tree", root / "site"
    for name in BUILD_INPUTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns(*NOT_SOURCE))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*pip, "--no-index", "--no-compile", "--target", str(site), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` from ``cwd`` with the install first on the path: its ``cudastack`` shadows
    any other (the path an editable install adds comes after PYTHONPATH), for the command and
    for the worker it starts, which inherits the environment."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(site)},
    )


def test_install_ships_every_file_of_the_package(installed: Path) -> None:
    # The shipped suite, Dockerfile and matrix are package data: a file that
    # [tool.setuptools.package-data] does not declare would be missing here.
    assert package_files(installed / "cudastack") == package_files(SOURCE)


def test_installed_package_finds_its_data_in_the_install(installed: Path, tmp_path: Path) -> None:
    proc = run_installed(installed, tmp_path, "-c", PROBE)
    assert proc.returncode == 0, proc.stderr
    found = {key: Path(value) for key, value in json.loads(proc.stdout).items()}
    package = installed.resolve() / "cudastack"
    assert found["package"] == package / "__init__.py"
    assert found["matrix"] == package / "host" / "cells" / "docker" / "matrix.toml"
    assert found["matrix"].is_file()
    assert (found["matrix"].parent / "Dockerfile").is_file()
    assert found["bench_dir"] == package / "environment" / "bench"
    assert sorted(p.stem for p in found["bench_dir"].glob("*.py")) == shipped_benches()


def test_installed_list_shows_the_shipped_benches_and_cells(
    installed: Path, tmp_path: Path
) -> None:
    proc = run_installed(installed, tmp_path, "-m", "cudastack", "list")
    assert proc.returncode == 0, proc.stderr
    first_words = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert set(shipped_benches()) <= first_words, proc.stdout
    cells = [
        cell.name for cell in matrix.load(SOURCE / "host" / "cells" / "docker" / "matrix.toml")
    ]
    assert cells and set(cells) <= first_words, proc.stdout


def test_installed_run_finds_its_suite(installed: Path, tmp_path: Path) -> None:
    # The smallest real run: one gemm case on the CPU, through the host and its worker.
    proc = run_installed(
        installed,
        tmp_path,
        *["-m", "cudastack", "run", "--bench", "gemm", "--profile", "smoke"],
        *["--select", "dtype=fp32", "--device", "cpu", "--threads", "1", "--out", "run"],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    ok = table[table["status"] == "ok"]
    assert len(ok), table[["case", "status", "reason"]]
    # gemm's case, and fp32's achievable ceiling, measured before it.
    assert set(ok["cell"]) == {"local"} and set(ok["bench"]) == {"gemm", "ceiling"}
    assert set(ok["case"]) == {"gemm[dtype=fp32,n=256]", "ceiling[what=matmul,dtype=fp32]"}
    assert ok["value"].gt(0).all()
