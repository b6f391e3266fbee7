"""The architecture's import boundaries, checked in fresh interpreters.

- The environment side (``cudastack.environment``, ``cudastack.contract``, ``cudastack.worker``)
  runs on the bare Python of a cell image: importing it loads none of the host's libraries and
  no host module.
- ``cudastack.contract`` is shared by both sides: it loads the standard library only.
- The host side (``cudastack.host``) never imports torch at module import time.
- Within the host, only the CLI (``cudastack.host.cli``) knows the command line: the run loop,
  its launchers, the cells and the analysis load none of it, so another front end (a Slurm
  task, a script) drives them as the commands do.

The modules are found by walking the packages, so a new module is covered without touching this
file. Each check imports modules only (no torch code runs) and reads ``sys.modules`` afterwards.
When one fails, its message names the module whose import first loaded the forbidden one;
``python -X importtime -c "import THAT.MODULE"`` shows the chain below it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import cudastack
from cudastack.environment.suite import DEFAULT_BENCH_DIR

# The host's own dependencies (pyproject's [project] dependencies that a cell image lacks).
HOST_LIBRARIES = (
    "pandas",
    "docker",
    "typer",
    "rich",
    "matplotlib",
    "scipy",
    "psutil",
    "pyarrow",
)
# What the suite needs and the host must not load (pyproject's [bench] extra).
TORCH_LIBRARIES = ("torch", "torchvision", "transformers", "peft")

ENVIRONMENT_SIDE = ("cudastack.environment", "cudastack.contract", "cudastack.worker")
HOST_SIDE = ("cudastack.host",)

# Run by a fresh interpreter: import each named module and, for a package, every module below it
# (pkgutil.walk_packages), recording what each import added to sys.modules. walk_packages yields a
# package before it imports it, so importing each name as it comes keeps the attribution exact:
# a module is charged with what its own import (and its parents', already done) newly loaded.
CHILD = r"""
import importlib, json, pkgutil, sys

loaded = {}

def load(name):
    before = set(sys.modules)
    module = importlib.import_module(name)
    loaded[name] = sorted(set(sys.modules) - before)
    return module

for root in sys.argv[1:]:
    module = load(root)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), root + "."):
        load(info.name)

print(json.dumps(loaded))
"""


@dataclass(frozen=True)
class Imports:
    """What importing some modules in a fresh interpreter loaded.

    ``loaded`` maps each imported module, in import order, to the full names of the modules its
    import added to ``sys.modules`` (the interpreter's start-up modules are never counted)."""

    loaded: dict[str, list[str]]

    @property
    def walked(self) -> set[str]:
        """The modules imported on purpose (the roots and everything found below them)."""
        return set(self.loaded)

    def culprits(self, forbidden: Callable[[str], bool]) -> dict[str, list[str]]:
        """The walked modules whose own import loaded a module that ``forbidden`` (called with a
        full module name) rejects, each with what it loaded: a library by its top-level name,
        a module of cudastack by its full name. Empty when nothing forbidden was loaded."""
        found: dict[str, list[str]] = {}
        for importer, names in self.loaded.items():
            bad = {short_name(name) for name in names if forbidden(name)}
            if bad:
                found[importer] = sorted(bad)
        return found


def short_name(module: str) -> str:
    """``pandas.core.frame`` -> ``pandas``; cudastack's own modules keep their full name."""
    return module if module.startswith("cudastack.") else module.partition(".")[0]


def import_fresh(roots: tuple[str, ...]) -> Imports:
    """Import ``roots`` and every module below each of them in a new interpreter (the same
    Python, environment and working folder as this one). Raises CalledProcessError, with the
    child's traceback, if an import fails."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *roots],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return Imports(json.loads(proc.stdout.splitlines()[-1]))


def modules_in_files(package: str) -> set[str]:
    """The module names of a package's .py files, found by listing the folder rather than by
    importing: the shipped benches (package data, loaded by path) are left out."""
    root = Path(cudastack.__file__).resolve().parent.parent
    folder = root.joinpath(*package.split("."))
    names = set()
    for file in folder.rglob("*.py"):
        if DEFAULT_BENCH_DIR in file.parents:
            continue
        parts = file.relative_to(root).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def explain(culprits: dict[str, list[str]]) -> str:
    """One line per culprit, for an assertion message."""
    return "\n".join(
        f"importing {module} loaded {', '.join(libs)}" for module, libs in culprits.items()
    )


def top_level_in(libraries: tuple[str, ...]) -> Callable[[str], bool]:
    return lambda module: module.partition(".")[0] in libraries


@pytest.fixture(scope="module")
def environment_side() -> Imports:
    return import_fresh(ENVIRONMENT_SIDE)


@pytest.fixture(scope="module")
def host_side() -> Imports:
    return import_fresh(HOST_SIDE)


def test_the_walk_imports_every_module_of_both_sides(
    environment_side: Imports, host_side: Imports
) -> None:
    # A folder without __init__.py is not walked: were one added, its modules would escape
    # the checks below. Only the shipped benches are package data on purpose.
    assert environment_side.walked == {
        "cudastack.worker",
        *modules_in_files("cudastack.environment"),
        *modules_in_files("cudastack.contract"),
    }
    assert host_side.walked == modules_in_files("cudastack.host")


def test_environment_side_loads_no_host_library(environment_side: Imports) -> None:
    culprits = environment_side.culprits(top_level_in(HOST_LIBRARIES))
    assert not culprits, explain(culprits)


def test_environment_side_loads_no_host_module(environment_side: Imports) -> None:
    culprits = environment_side.culprits(lambda module: module.startswith("cudastack.host"))
    assert not culprits, explain(culprits)


def test_contract_loads_only_the_standard_library() -> None:
    contract = import_fresh(("cudastack.contract",))

    def outside(module: str) -> bool:
        # The package's own __init__ is part of every import of cudastack; the other sides are not.
        if module == "cudastack" or module.startswith("cudastack.contract"):
            return False
        return module.partition(".")[0] not in sys.stdlib_module_names

    assert contract.walked == modules_in_files("cudastack.contract")
    culprits = contract.culprits(outside)
    assert not culprits, explain(culprits)


def test_host_side_never_loads_torch(host_side: Imports) -> None:
    culprits = host_side.culprits(top_level_in(TORCH_LIBRARIES))
    assert not culprits, explain(culprits)


def test_only_the_cli_knows_the_command_line() -> None:
    below_cli = ("cudastack.host.run", "cudastack.host.cells", "cudastack.host.analysis")
    imports = import_fresh((*below_cli, "cudastack.host.console"))
    culprits = imports.culprits(lambda module: module.startswith("cudastack.host.cli"))
    assert not culprits, explain(culprits)
