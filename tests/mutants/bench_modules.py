"""A pytest plugin for mutation runs: bench modules named as mutmut names them, honest durations.

Loaded by ``[tool.mutmut] pytest_add_cli_args``; a plain test run never loads it.

- The worker and the tests import a bench by file path under a name of their own choosing
  (``cudastack_bench_gemm``, ``known_flops_gemm``, ...). mutmut names the mutants of
  ``src/cudastack/environment/bench/gemm.py`` ``cudastack.environment.bench.gemm.*`` and
  switches a mutant on only inside the module of that name, so every spec for a file of the
  mutated bench folder is given that name.
- mutmut runs a mutant's tests fastest first and sets its time limit from the tests' durations,
  but it measures only the call phase. A test whose fixture does the work (the GPT FLOP test
  trains the model in its fixture) would look instant: it would run first for every mutant it
  covers and time out. Here a test's set-up time is counted in its call duration.
"""

from __future__ import annotations

import contextlib
import importlib.util
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any, Optional

import pytest

# mutmut runs the tests in its copy of the tree, tests/ beside the src/ it mutated.
BENCH_DIR = Path(__file__).resolve().parents[2] / "src" / "cudastack" / "environment" / "bench"
SETUP_S = pytest.StashKey[float]()

_spec_from_file_location = importlib.util.spec_from_file_location


def spec_from_file_location(
    name: str, location: Any = None, *args: Any, **kwargs: Any
) -> Optional[ModuleSpec]:
    """``importlib.util.spec_from_file_location``, with mutmut's name for a bench file."""
    if location is not None:
        path = Path(location).resolve()
        if path.parent == BENCH_DIR and path.suffix == ".py":
            name = f"cudastack.environment.bench.{path.stem}"
    return _spec_from_file_location(name, location, *args, **kwargs)


importlib.util.spec_from_file_location = spec_from_file_location  # type: ignore[assignment]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Add the set-up phase's time to the call phase's, before mutmut reads it."""
    if call.when == "setup":
        item.stash[SETUP_S] = call.duration
    elif call.when == "call":
        call.duration += item.stash.get(SETUP_S, 0.0)


# train_gpt imports transformers' GPT-2 on first use. Imported here, in the process mutmut forks
# every mutant's tests from, it is paid once per run instead of once per mutant (seconds each).
with contextlib.suppress(ImportError):
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: F401
