"""`make mutants`: mutmut over the code behind the numbers, summarised in tests/mutants/SUMMARY.md.

Usage (from the repository root, with the .venv of `make setup`):
  .venv/bin/python tests/mutants/summary.py --run [--jobs N] [--only MODULE ...] [--fresh]
                                              [--survivors] [--keep-stats]
      runs `mutmut run` over the mutants of scope.toml's functions that have no verdict yet for
      the source as it is (all of them with --fresh; with --survivors also the survivors that
      equivalent.toml does not list, to see new tests kill them; with --keep-stats mutmut
      traces only the tests that are new since the last run), adds the verdicts to
      results.json, then writes SUMMARY.md;
  .venv/bin/python tests/mutants/summary.py
      adds what mutants/ holds (after `mutmut run NAME`, for instance) and writes SUMMARY.md.

A full run takes hours on two cores, so verdicts are kept in results.json (committed) per file,
with the sha256 of the file they were found for: a run stopped part way is continued by the next
`make mutants`, and a file that changed since is tested again from the start.

The score of a module is (killed + timeout) / (mutants - equivalent - unreachable), with the
mutants listed in equivalent.toml left out; every other survivor is listed for review.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
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
RESULTS = HERE / "results.json"  # the verdicts so far, per file (see the module docstring)
DEBUG_LOG = WORK / "mutmut-debug.log"  # [tool.mutmut] log_to_file: one line per finished mutant
CLASS_SEP = "ǁ"  # how mutmut joins a class and its method in a mutant's name

# mutmut's statuses, as columns of the table.
COLUMNS = ("killed", "survived", "no tests", "timeout", "suspicious", "not checked")


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
    description: str = ""  # `line N: old → new`, kept for the survivors


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
        """The mutants the score is over: those with a verdict, less the listed survivors."""
        return self.total - self.counts["not checked"] - self.equivalent - self.unreachable

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


def patterns(
    scopes: list[FileScope], kept: dict[str, dict[str, Mutant]], again: frozenset[str] = frozenset()
) -> list[str]:
    """`mutmut run` arguments for the mutants without a verdict, and those named in ``again``:
    each one by name where results.json lists it (its file unchanged), else all of a
    function's; and (a pattern that matches no mutant, only the function itself) the
    function's tests, so the clean run runs just the tests that cover them."""
    out = []
    for s in scopes:
        known = kept.get(s.module, {})
        for f in s.functions:
            names = sorted(n for n in known if _function(n) == f)
            todo = [n for n in names if known[n].status == "not checked" or n in again]
            if not names:
                todo = [f"{s.module}.{f}__mutmut_*"]
            if todo:
                out += [*todo, f"*{s.module}.{f}"]
    return out


def _function(name: str) -> str:
    """The mangled function of a mutant's name: a.b.x_func__mutmut_3 -> x_func."""
    return name.partition("__mutmut_")[0].rpartition(".")[2]


def run(
    scopes: list[FileScope],
    jobs: int,
    kept: dict[str, dict[str, Mutant]],
    again: frozenset[str] = frozenset(),
    keep_stats: bool = False,
) -> str:
    """Run mutmut over ``scopes``; '' when it finished or was stopped with Ctrl-C, else why it
    failed (what it decided before it failed is in mutants/ all the same)."""
    # mutmut's record of which tests reach which function (the stats phase, about 15 minutes
    # here): kept on request, mutmut then runs only the tests that are new since.
    stats = WORK / "mutmut-stats.json"
    saved = stats.read_bytes() if keep_stats and stats.is_file() else None
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    if saved is not None:
        stats.write_bytes(saved)
    mutmut = Path(sys.executable).with_name("mutmut")
    log = WORK / "run.log"
    wanted = patterns(scopes, kept, again)
    if not wanted:
        print("make mutants: every mutant in scope has its verdict for the source as it is")
        return ""
    functions = sum(1 for w in wanted if w.startswith("*"))
    print(f"make mutants: {functions} functions with mutants to test, {jobs} workers")
    print("make mutants: mutmut's log is mutants/run.log; stop it with Ctrl-C, verdicts are kept")
    with open(log, "w", encoding="utf-8") as out:
        try:
            proc = subprocess.run(
                [str(mutmut), "run", "--max-children", str(jobs), *wanted],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        except KeyboardInterrupt:  # mutmut stops its workers too; what it decided is kept
            return ""
    if proc.returncode == 0:
        return ""
    tail = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    lines = [line for line in tail.splitlines() if line.strip()]
    print("\n".join(lines[-40:]), file=sys.stderr)
    return f"mutmut run failed (exit {proc.returncode}); its log: mutants/run.log"


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
    """The verdicts in mutants/ (mutmut's .meta files) for the functions in scope, with the
    diff of each that no test killed."""
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
                if status not in ("killed", "timeout", "not checked", "no tests"):
                    mutant.description = describe(mutant)
                mutants.append(mutant)
    return mutants


def source_sha(path: str) -> str:
    return hashlib.sha256((REPO / path).read_bytes()).hexdigest()


def load_kept(scopes: list[FileScope]) -> dict[str, dict[str, Mutant]]:
    """results.json's verdicts (module -> mutant name -> Mutant) of the files in scope that have
    not changed since; a changed file's are dropped, since its mutants are other mutants."""
    stored = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    kept: dict[str, dict[str, Mutant]] = {}
    for s in scopes:
        entry = stored.get(s.path)
        if entry and entry["sha256"] == source_sha(s.path):
            wanted = set(s.functions)
            kept[s.module] = {
                name: Mutant(name, s.path, s.module, readable(_function(name)), *verdict)
                for name, verdict in entry["mutants"].items()
                if _function(name) in wanted
            }
    return kept


def keep(scopes: list[FileScope], kept: dict[str, dict[str, Mutant]]) -> None:
    """Add the verdicts in mutants/ to ``kept`` (a mutant not checked there keeps its verdict)
    and write results.json for every file in scope."""
    for m in collect(scopes):
        known = kept.setdefault(m.module, {})
        if m.status != "not checked" or m.name not in known:
            known[m.name] = m
    stored = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    for s in scopes:
        if s.module in kept:
            stored[s.path] = {
                "sha256": source_sha(s.path),
                "mutants": {
                    m.name: [m.status, round(m.seconds, 3), m.description]
                    for m in sorted(kept[s.module].values(), key=sort_key)
                },
            }
    RESULTS.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n", encoding="utf-8")


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


def listed() -> dict[str, dict[str, str]]:
    """equivalent.toml: kind ("equivalent", "unreachable") -> mutant name -> reason."""
    entries = tomllib.loads((HERE / "equivalent.toml").read_text(encoding="utf-8"))
    return {kind: entries.get(kind, {}) for kind in ("equivalent", "unreachable")}


def to_review(kept: dict[str, dict[str, Mutant]]) -> list[Mutant]:
    """The survivors that equivalent.toml does not list: each needs a test or a reason."""
    known = {name for names in listed().values() for name in names}
    return [
        m
        for by_name in kept.values()
        for m in by_name.values()
        if m.status not in ("killed", "timeout", "not checked") and m.name not in known
    ]


def summarise(scopes: list[FileScope], kept: dict[str, dict[str, Mutant]]) -> Path:
    reasons = listed()
    mutants = sorted((m for by_name in kept.values() for m in by_name.values()), key=sort_key)
    if not mutants:
        raise fail("no verdicts in results.json or mutants/: run `make mutants` first")
    by_name = {m.name: m for m in mutants}
    rows = {s.module: ModuleRow(s.module) for s in scopes}
    review = sorted(to_review(kept), key=sort_key)
    for m in mutants:
        rows[m.module].counts[m.status] += 1
        rows[m.module].seconds += m.seconds
        if m.status in ("killed", "timeout", "not checked"):
            continue
        if m.name in reasons["equivalent"]:
            rows[m.module].equivalent += 1
        elif m.name in reasons["unreachable"]:
            rows[m.module].unreachable += 1
    # Entries of the modules with every verdict that name no mutant, or one a test now kills.
    complete = {m for m, row in rows.items() if row.total and not row.counts["not checked"]}
    stale = sorted(
        name
        for kind in reasons.values()
        for name in kind
        if name.partition("__mutmut_")[0].rpartition(".")[0] in complete
        and (name not in by_name or by_name[name].status in ("killed", "timeout"))
    )
    total = ModuleRow("**all**")
    for row in rows.values():
        total.counts.update(row.counts)
        total.equivalent += row.equivalent
        total.unreachable += row.unreachable
        total.seconds += row.seconds

    from mutmut import __version__ as mutmut_version  # type: ignore[attr-defined]

    out = ["# Mutation testing: the code behind the numbers", ""]
    out.append(
        "Written by `make mutants` (tests/mutants/summary.py): mutmut "
        f"{mutmut_version} over the functions of tests/mutants/scope.toml, each mutant against "
        "the fast-tier tests that cover it ([tool.mutmut] in pyproject.toml). The verdicts "
        "are kept in tests/mutants/results.json, each for the source file as it is now."
    )
    out += [
        "Score: (killed + timeout) / (mutants - not checked - equivalent - unreachable); "
        "equivalent and unreachable survivors are listed with their reasons in "
        "tests/mutants/equivalent.toml. Test time: how long the module's mutants ran, added up "
        "over the workers.",
        "",
        "| module | mutants | killed | survived | no tests | timeout | suspicious | not checked "
        "| equivalent | unreachable | score | test time |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in [*rows.values(), total]:
        c = row.counts
        cells = [row.module, row.total, *(c[k] for k in COLUMNS)]
        cells += [row.equivalent, row.unreachable, row.score(), f"{row.seconds / 60:.1f} min"]
        out.append("| " + " | ".join(str(x) for x in cells) + " |")
    unchecked = total.counts["not checked"]
    untried = [row.module for row in rows.values() if not row.total]
    if unchecked or untried:
        out += [
            "",
            f"**Not finished: {unchecked} mutants not checked yet**"
            + (f", and no verdict yet for {', '.join(untried)}" if untried else "")
            + ". A module's score is over the mutants checked so far; `make mutants` goes on "
            "with the rest.",
        ]

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
            f"- {m.function} `{m.name}` ({m.status}) {m.description}"
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

    target = HERE / "SUMMARY.md"
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    print("\n".join(line for line in out if line.startswith("|")))
    print(f"make mutants: {len(review)} survivors to review; summary in {target.relative_to(REPO)}")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run mutmut first")
    parser.add_argument(
        "--fresh", action="store_true", help="forget the kept verdicts: test every mutant again"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutmut workers")
    parser.add_argument("--only", nargs="+", metavar="MODULE", help="these modules only")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="also test again the survivors not listed in equivalent.toml (after new tests)",
    )
    parser.add_argument(
        "--keep-stats",
        action="store_true",
        help="keep the last run's map of tests to functions: only new tests are traced (a "
        "test changed since keeps what it reached before)",
    )
    opts = parser.parse_args()
    os.chdir(REPO)  # mutmut reads pyproject.toml and mutants/ from the current directory
    scopes = load_scope()
    chosen = scopes
    if opts.only:
        unknown = sorted(set(opts.only) - {s.module for s in scopes})
        if unknown:
            raise fail(f"--only: no module {', '.join(unknown)} in scope.toml")
        chosen = [s for s in scopes if s.module in opts.only]
    if opts.jobs < 1:
        raise fail("--jobs must be at least 1")
    kept = load_kept(scopes)
    if opts.fresh:
        for s in chosen:
            kept.pop(s.module, None)
    failed = ""
    if opts.run:
        again = frozenset(m.name for m in to_review(kept)) if opts.survivors else frozenset()
        failed = run(chosen, opts.jobs, kept, again, opts.keep_stats)
    # Verdicts mutmut reached before it failed or was killed are kept: a mutant's verdict does
    # not depend on the others.
    keep(chosen, kept)
    summarise(scopes, kept)
    if failed:
        raise fail(failed, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
