"""`make mutants`: mutmut over the code behind the numbers, summarised in tests/mutants/SUMMARY.md.

Usage (from the repository root, with the .venv of `make setup`):
  .venv/bin/python tests/mutants/summary.py --run [--jobs N] [--only MODULE ...]
      a fresh run: removes mutants/, runs `mutmut run` over the functions of scope.toml, then
      writes the summary (a run of some modules only writes mutants/SUMMARY.md instead);
  .venv/bin/python tests/mutants/summary.py
      the summary of the results already in mutants/ (after `mutmut run NAME`, for instance).

The score of a module is (killed + timeout) / (mutants - equivalent - unreachable), with the
mutants listed in equivalent.toml left out; every other survivor is listed for review.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's own fallback for 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = REPO / "mutants"  # mutmut's copy of the tree and its results, ignored by git
RUN_INFO = WORK / "run-info.json"
DEBUG_LOG = WORK / "mutmut-debug.log"  # [tool.mutmut] log_to_file: one line per finished mutant
CLASS_SEP = "ǁ"  # how mutmut joins a class and its method in a mutant's name

# mutmut's statuses, as columns of the table.
COLUMNS = ("killed", "survived", "no tests", "timeout", "suspicious")


@dataclass
class FileScope:
    """One mutated source file: its module name as mutmut spells it, and what is in scope."""

    path: str
    module: str
    functions: list[str]  # mutmut's names: x_func, xǁClassǁmethod
    skipped: dict[str, str]  # name as in scope.toml -> reason


@dataclass
class Mutant:
    name: str
    path: str
    module: str
    function: str  # as a reader writes it: func, Class.method
    status: str
    seconds: float = 0.0  # how long its tests ran, from mutmut's log


@dataclass
class ModuleRow:
    module: str
    counts: Counter = field(default_factory=Counter)
    equivalent: int = 0
    unreachable: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def caught(self) -> int:
        return self.counts["killed"] + self.counts["timeout"]

    @property
    def scored(self) -> int:
        return self.total - self.equivalent - self.unreachable

    def score(self) -> str:
        return f"{100 * self.caught / self.scored:.1f} %" if self.scored else "-"


def module_name(path: str) -> str:
    """mutmut's module name for a source path: src/cudastack/a/b.py -> cudastack.a.b."""
    dotted = path.removesuffix(".py").replace("/", ".")
    return dotted.removeprefix("src.")


def mangle(name: str) -> str:
    """`func` -> x_func, `Class.method` -> xǁClassǁmethod (mutmut's trampoline names)."""
    cls, _, func = name.rpartition(".")
    return f"x{CLASS_SEP}{cls}{CLASS_SEP}{func}" if cls else f"x_{func}"


def readable(mangled: str) -> str:
    if mangled.startswith(f"x{CLASS_SEP}"):
        _, cls, func = mangled.split(CLASS_SEP)
        return f"{cls}.{func}"
    return mangled.removeprefix("x_")


def functions_of(source: str) -> list[str]:
    """Top-level functions and methods, the units mutmut mutates (nested ones belong to them)."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.ClassDef):
            names += [
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            ]
    return names


def fail(message: str, code: int = 2) -> SystemExit:
    """A one-line error; exit 2 for bad input (scope, arguments), 1 when mutmut itself failed."""
    print(f"make mutants: {message}", file=sys.stderr)
    return SystemExit(code)


def load_scope() -> list[FileScope]:
    config = tomllib.loads((HERE / "scope.toml").read_text(encoding="utf-8"))
    mutmut = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    if sorted(config) != sorted(mutmut["only_mutate"]):
        raise fail("scope.toml and [tool.mutmut] only_mutate name different files")
    scopes = []
    for path, entry in config.items():
        present = functions_of((REPO / path).read_text(encoding="utf-8"))
        only, skip = entry.get("only"), entry.get("skip", {})
        if (only is None) == ("skip" not in entry):
            raise fail(f"scope.toml: {path} needs either `only` or `skip`")
        unknown = sorted(set(only or skip) - set(present))
        if unknown:
            raise fail(f"scope.toml: {path} has no function {', '.join(unknown)}")
        chosen = only if only is not None else [f for f in present if f not in skip]
        scopes.append(FileScope(path, module_name(path), [mangle(f) for f in chosen], skip))
    return scopes


def patterns(scopes: list[FileScope]) -> list[str]:
    """`mutmut run` arguments: each function's mutants, and (a pattern that matches no mutant,
    only the function itself) its tests, so the clean run runs just the tests that cover them."""
    out = []
    for s in scopes:
        for f in s.functions:
            out += [f"{s.module}.{f}__mutmut_*", f"*{s.module}.{f}"]
    return out


def run(scopes: list[FileScope], jobs: int) -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    mutmut = Path(sys.executable).with_name("mutmut")
    log = WORK / "run.log"
    functions = sum(len(s.functions) for s in scopes)
    print(f"make mutants: {functions} functions of {len(scopes)} files, {jobs} workers")
    print("make mutants: mutmut's log is mutants/run.log")
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run(
            [str(mutmut), "run", "--max-children", str(jobs), *patterns(scopes)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
        lines = [line for line in tail.splitlines() if line.strip()]
        print("\n".join(lines[-40:]), file=sys.stderr)
        raise fail(f"mutmut run failed (exit {proc.returncode}); its log: mutants/run.log", 1)
    info = {"seconds": round(seconds), "jobs": jobs, "modules": [s.module for s in scopes]}
    RUN_INFO.write_text(json.dumps(info), encoding="utf-8")


def run_times() -> dict[str, float]:
    """Seconds per mutant, from the fork server's lines `Completed NAME: exit=N (1.234s)`."""
    times: dict[str, float] = {}
    if DEBUG_LOG.is_file():
        for line in DEBUG_LOG.read_text(encoding="utf-8", errors="replace").splitlines():
            _, found, rest = line.partition(" Completed ")
            if found and rest.endswith("s)"):
                name = rest.partition(":")[0]
                times[name] = float(rest.rpartition("(")[2].removesuffix("s)"))
    return times


def collect(scopes: list[FileScope]) -> list[Mutant]:
    from mutmut.stats import status_by_exit_code

    times = run_times()
    mutants = []
    for s in scopes:
        meta = WORK / f"{s.path}.meta"
        if not meta.is_file():
            continue
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        wanted = set(s.functions)
        for name, code in codes.items():
            mangled = name.partition("__mutmut_")[0].rpartition(".")[2]
            if mangled in wanted:
                status = status_by_exit_code[code]
                if status not in COLUMNS and status != "not checked":
                    status = "suspicious"  # segfault, killed by a signal: neither a kill nor a pass
                mutant = Mutant(name, s.path, s.module, readable(mangled), status)
                mutant.seconds = times.get(name, 0.0)
                mutants.append(mutant)
    return mutants


def function_lines(source: str, function: str) -> tuple[int, int]:
    """First and last line of a top-level function or method (`func`, `Class.method`)."""
    cls, _, name = function.rpartition(".")
    body = ast.parse(source).body
    if cls:
        body = next(n.body for n in body if isinstance(n, ast.ClassDef) and n.name == cls)
    node = next(
        n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
    )
    return node.lineno, node.end_lineno or node.lineno


def describe(m: Mutant) -> str:
    """`line N: old → new`, from mutmut's own diff of the function."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(m.name, path=m.path).splitlines()[2:]
    old = [d[1:].strip() for d in diff if d.startswith("-")]
    new = [d[1:].strip() for d in diff if d.startswith("+")]
    lines = (REPO / m.path).read_text(encoding="utf-8").splitlines()
    first, last = function_lines("\n".join(lines), m.function)
    # The first line the mutant changed, found in the function's own lines of the source file.
    where = next(
        (n for n in range(first, last + 1) if old and lines[n - 1].strip() == old[0]), None
    )
    short = [" ".join(part)[:90] for part in (old, new)]
    return f"line {where}: `{short[0]}` → `{short[1]}`"


def sort_key(m: Mutant) -> tuple[str, str, int]:
    return (m.module, m.function, int(m.name.rpartition("_")[2]))


def summarise(scopes: list[FileScope], partial: bool) -> Path:
    listed = tomllib.loads((HERE / "equivalent.toml").read_text(encoding="utf-8"))
    reasons = {kind: listed.get(kind, {}) for kind in ("equivalent", "unreachable")}
    mutants = sorted(collect(scopes), key=sort_key)
    if not mutants:
        raise fail("no results in mutants/: run `make mutants` first")
    by_name = {m.name: m for m in mutants}
    rows = {s.module: ModuleRow(s.module) for s in scopes}
    review: list[Mutant] = []
    for m in mutants:
        rows[m.module].counts[m.status] += 1
        rows[m.module].seconds += m.seconds
        if m.status in ("killed", "timeout"):
            continue
        if m.name in reasons["equivalent"]:
            rows[m.module].equivalent += 1
        elif m.name in reasons["unreachable"]:
            rows[m.module].unreachable += 1
        else:
            review.append(m)
    # Entries of the modules summarised here that name no mutant, or one a test now kills.
    stale = sorted(
        name
        for kind in reasons.values()
        for name in kind
        if name.partition("__mutmut_")[0].rpartition(".")[0] in rows
        and (name not in by_name or by_name[name].status in ("killed", "timeout"))
    )
    total = ModuleRow("**all**")
    for row in rows.values():
        total.counts.update(row.counts)
        total.equivalent += row.equivalent
        total.unreachable += row.unreachable
        total.seconds += row.seconds

    info = json.loads(RUN_INFO.read_text(encoding="utf-8")) if RUN_INFO.is_file() else {}
    from mutmut import __version__ as mutmut_version  # type: ignore[attr-defined]

    out = ["# Mutation testing: the code behind the numbers", ""]
    out.append(
        "Written by `make mutants` (tests/mutants/summary.py): mutmut "
        f"{mutmut_version} over the functions of tests/mutants/scope.toml, each mutant against "
        "the fast-tier tests that cover it ([tool.mutmut] in pyproject.toml)."
    )
    if info:
        minutes = info["seconds"] / 60
        out.append(f"The run took {minutes:.0f} min with {info['jobs']} workers.")
    out += [
        "Score: (killed + timeout) / (mutants - equivalent - unreachable); equivalent and "
        "unreachable survivors are listed with their reasons in tests/mutants/equivalent.toml. "
        "Test time: how long the module's mutants ran, added up over the workers.",
        "",
        "| module | mutants | killed | survived | no tests | timeout | suspicious "
        "| equivalent | unreachable | score | test time |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in [*rows.values(), total]:
        c = row.counts
        cells = [row.module, row.total, *(c[k] for k in COLUMNS)]
        cells += [row.equivalent, row.unreachable, row.score(), f"{row.seconds / 60:.1f} min"]
        out.append("| " + " | ".join(str(x) for x in cells) + " |")
    unchecked = total.counts["not checked"]
    if unchecked:
        out += ["", f"**{unchecked} mutants were not checked**: the run stopped before its end."]

    out += ["", "## Survivors to review", ""]
    out.append(
        "Not killed by any test and not in equivalent.toml: each needs a test that kills it, or "
        "an entry with its reason. `.venv/bin/mutmut show NAME` (after a run) prints a mutant's "
        "diff. A function no fast-tier test runs (`no tests`) needs a test, or its place under "
        "`skip` in scope.toml with the reason."
    )
    by_module: dict[str, list[Mutant]] = defaultdict(list)
    for m in review:
        by_module[m.module].append(m)
    for module, items in by_module.items():
        per_function = Counter(m.function for m in items)
        groups = ", ".join(f"{f} {n}" for f, n in per_function.most_common())
        out += ["", f"### {module} ({len(items)}: {groups})", ""]
        untested = Counter(m.function for m in items if m.status == "no tests")
        out += [f"- {f}: {n} mutants, no tests" for f, n in untested.items()]
        out += [
            f"- {m.function} `{m.name}` ({m.status}) {describe(m)}"
            for m in items
            if m.status != "no tests"
        ]
    if not review:
        out.append("\nNone.")

    out += ["", "## Not in scope", ""]
    skipped = [(s.module, f, why) for s in scopes for f, why in s.skipped.items()]
    out += [f"- {module}: {f}: {why}" for module, f, why in skipped] or ["None."]
    if stale:
        out += ["", "## Stale entries in equivalent.toml", ""]
        out.append("These no longer name a surviving mutant: check them again or remove them.")
        out += [f"- `{name}`" for name in stale]

    target = WORK / "SUMMARY.md" if partial else HERE / "SUMMARY.md"
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    print("\n".join(line for line in out if line.startswith("|")))
    print(f"make mutants: {len(review)} survivors to review; summary in {target.relative_to(REPO)}")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="a fresh mutmut run first")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutmut workers")
    parser.add_argument("--only", nargs="+", metavar="MODULE", help="these modules only")
    opts = parser.parse_args()
    os.chdir(REPO)  # mutmut reads pyproject.toml and mutants/ from the current directory
    scopes = load_scope()
    if opts.only:
        unknown = sorted(set(opts.only) - {s.module for s in scopes})
        if unknown:
            raise fail(f"--only: no module {', '.join(unknown)} in scope.toml")
        scopes = [s for s in scopes if s.module in opts.only]
    if opts.jobs < 1:
        raise fail("--jobs must be at least 1")
    if opts.run:
        run(scopes, opts.jobs)
    summarise(scopes, partial=bool(opts.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
