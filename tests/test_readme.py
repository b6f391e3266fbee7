"""The README against the code: every command it shows runs or parses, every list it gives holds.

Each `cudastack ...`, `make ...` and `python -m cudastack.worker ...` line of the README (its
```sh blocks and its inline code) is classified, never skipped:
- RUN for real: the commands that only read runs (`list`, `show`, `compare`, `report`) run
  in-process against real run folders; `run` and `bench --local` examples that name no benches
  of their own run as a subprocess with a short suite appended (SHORT), and give this module the
  two run folders the other examples read;
- PARSED: every other command (it needs a GPU, an engine, a registry, or a long run) goes through
  the real command line's own parser, so each subcommand, option and value type it names exists;
  `run` / `bench` arguments are also validated as a run would validate them (benches, --select,
  --set, --nproc) and the cells it names must be in the matrix;
- `make` lines are dry-run (`make -n`): the target exists, every VAR=value reaches the recipe,
  and the `cudastack` command it would run is classified like the others.
Placeholders (RUN_A, <run_id>, CELL, a,b, N, ...) are replaced by real values first. Synopsis
lines (`[--cell a,b]`, `x|y`, `...`) have their option names checked on their subcommand and are
then instantiated, one command per alternative of a `x|y` value.

The slowest part is three tiny worker runs (two README examples and the README's example bench);
the module takes about 20 s on two idle CPU cores (30 s when they are shared).
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from conftest import cli
from typer.testing import CliRunner

from cudastack.contract import schema
from cudastack.environment import peaks, suite
from cudastack.environment import worker as worker_mod
from cudastack.host.analysis import results
from cudastack.host.cells import matrix
from cudastack.host.cli.main import app as APP
from cudastack.host.run import container
from cudastack.host.run.suite_args import SuiteArgs

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
ROOT = typer.main.get_command(APP)

# Commands that only read finished runs and the bench folder: cheap, so they always run for real.
READS_RUNS = {"list", "show", "compare", "report"}
# Options a run or bench --local example may carry and still run here with SHORT appended; any
# other option (cells, GPUs, more processes, its own benches) makes it PARSED and validated only.
RUNS_HERE_WITH = {"--local", "--trace", "--device", "--threads"}
# The shortest real suite: one gemm case of the quick profile (about 0.5 s of measuring).
SHORT = ["--profile", "quick", "--bench", "gemm", "--select", "n=512", "--select", "dtype=fp32"]
SHORT_CASE = "gemm[dtype=fp32,n=512]"
# Leading words of README shell lines that are other tools, named so nothing passes unseen.
OTHER_TOOLS = {"git"}
# Options of other tools the README names in backticks.
# pip's, for the locked install; Dockerfile flags the classic builder refuses.
OTHER_OPTIONS = {
    "--require-hashes",
    "--mount",
    "--link",
    "--exclusive",
    "--no-requeue",
    "--export",
    "--init",
    "--nv",
    "--container-image",
    "--only",
    "--fresh",
    "--survivors",
    "--keep-stats",
}  # pip, docker, sbatch, apptainer, pyxis; make mutants (tests/mutants/summary.py)


# --- reading the README ---------------------------------------------------------------------


def fenced_blocks() -> list[tuple[str, str, str]]:
    """(language, body, section heading) of every fenced block."""
    out, heading = [], ""
    lines = README.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        if line.startswith("```"):
            lang, body = line[3:].strip(), []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((lang, "\n".join(body), heading))
        i += 1
    return out


def prose() -> str:
    """The README without its fenced blocks."""
    return re.sub(r"^```.*?^```", "", README, flags=re.S | re.M)


def section(name: str) -> str:
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no section {name!r}"
    return match.group(1)


@dataclass
class Line:
    """One command as the README writes it."""

    text: str  # as written, comment stripped
    comment: str
    where: str  # which block or inline span

    @property
    def synopsis(self) -> bool:
        return bool(re.search(r"[\[\]|]|\.\.\.", self.text))


def _split_commands(text: str) -> list[str]:
    """`a && b` and two `cudastack` commands on one synopsis line are separate commands."""
    parts = []
    for part in re.split(r"\s&&\s", text):
        pieces = re.split(r"\s{2,}(?=cudastack )", part.strip())
        parts.extend(p.strip() for p in pieces if p.strip())
    return parts


def readme_lines() -> list[Line]:
    """Every command line of the ```sh blocks and every inline `cudastack ...` / `make ...`."""
    found: list[Line] = []
    for lang, body, heading in fenced_blocks():
        if lang != "sh":
            continue
        joined: list[str] = []
        for raw in body.splitlines():
            if raw[:1].isspace() and joined:  # a continuation of the line above
                joined[-1] = joined[-1].removesuffix("\\").rstrip() + " " + raw.strip()
            elif raw.strip():
                joined.append(raw.strip())
        for raw in joined:
            text, _, comment = _strip_comment(raw)
            for cmd in _split_commands(text):
                found.append(Line(cmd, comment, f"```sh block in '{heading}'"))
    spans = r"`((?:cudastack|make|python -m cudastack\.worker) [^`]*)`"
    for span in re.findall(spans, prose()):
        found.append(Line(span, "", "inline code"))
    return found


def _strip_comment(raw: str) -> tuple[str, str, str]:
    """Split a shell line at its first unquoted `#`."""
    quote = ""
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or raw[i - 1].isspace()):
            return raw[:i].rstrip(), "#", raw[i + 1 :].strip()
    return raw.rstrip(), "", ""


# --- the real command line --------------------------------------------------------------------


def subcommand(name: str) -> Any:
    ctx = ROOT.make_context("cudastack", [name])
    cmd = ROOT.get_command(ctx, name)
    assert cmd is not None, f"cudastack has no subcommand {name!r}"
    return cmd, ctx


def option_names(name: str) -> set[str]:
    cmd, _ = subcommand(name)
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def parse(args: list[str]) -> dict:
    """Parse with the real parser without running; a bad option or value raises."""
    cmd, ctx = subcommand(args[0])
    return cmd.make_context(args[0], list(args[1:]), parent=ctx).params


def invoke(args: list[str]) -> Any:
    """Run a subcommand in this process, as `cudastack ARGS` does."""
    return CliRunner().invoke(APP, args)


def validate_suite(params: dict) -> None:
    """What `run` and `bench` check before anything starts, and the cells they name."""
    SuiteArgs(
        benches=[b for b in params["bench"].split(",") if b],
        select=list(params["select"] or []),
        profile=params["profile"],
        bench_dir=params["bench_dir"],
        device=params["device"],
        overrides=list(params["overrides"] or []),
        nproc=params["nproc"],
        repeat=params["repeat"],
    ).validate()
    check_cells(params)


def check_cells(params: dict) -> None:
    cells = {c.name for c in matrix.load(params.get("matrix_file", matrix.DEFAULT_MATRIX))}
    named = [c for c in (params.get("cell") or "").split(",") if c and not is_placeholder(c)]
    assert set(named) <= cells, f"cells {sorted(set(named) - cells)} are not in the matrix"


def is_placeholder(word: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z_/]*|a,b", word))


# --- placeholders -----------------------------------------------------------------------------


@dataclass
class Runs:
    """The real run folders the README's placeholders stand for."""

    a: Path
    b: Path
    tmp: Path

    def run_id(self, folder: Path) -> str:
        return str(results.load_table(folder)["run_id"].iloc[0])


def substitute_text(text: str, runs: Runs) -> str:
    """Placeholders written inside words, before the line is split into words."""
    text = re.sub(r"\[(suite|cell) options\]", "", text)  # the option lists below the synopsis
    text = text.replace("results/<run_id>", str(runs.a))
    text = re.sub(r"<run[ _]id>", lambda _: runs.run_id(runs.a), text)
    # The README's example weights folder stands for one of the user's: any existing folder.
    weights = runs.tmp / "weights"
    weights.mkdir(exist_ok=True)
    return re.sub(r"weights=(?!DIR\b)\S+", f"weights={weights}", text)


def concrete(words: list[str], runs: Runs) -> list[list[str]]:
    """A synopsis or example as real arguments; one list per alternative of an `x|y` value."""
    words = [w.strip("[]") for w in words if w.strip("[]") not in ("", "...")]
    folders = iter([runs.a, runs.b])
    out, alternatives = [], []
    for i, word in enumerate(words):
        before = out[-1] if out else ""
        if word == "RUN_A":
            word = str(runs.a)
        elif word == "RUN_B":
            word = str(runs.b)
        elif word in ("RUN", "RUN_DIR"):
            word = str(next(folders))
        elif word == "A" and before == "--baseline":
            word = runs.run_id(runs.b)  # a run of the comparison
        elif word == "a,b" and before == "--bench":
            word = "gemm"  # the bench the runs measured
        elif word == "a,b" and before == "--cell":
            word = ",".join(c.name for c in matrix.load(matrix.DEFAULT_MATRIX)[:2])
        elif word == "N":
            word = "2"  # the smallest data-parallel run
        elif word == "P":
            word = "auto"
        elif word == "DIR" and before == "--bench-dir":
            word = str(suite.DEFAULT_BENCH_DIR)
        elif word == "FILE" and before == "--matrix":
            word = str(matrix.DEFAULT_MATRIX)
        elif before in ("-o", "--out") and word == "report.html":
            word = str(runs.tmp / "report.html")  # never into the working tree
        elif "|" in word and before.startswith("-"):
            alternatives.append((i, word.split("|")))
            word = word.split("|")[0]
        out.append(word)
    variants = [out]
    for i, choices in alternatives:
        for choice in choices[1:]:
            variants.append([*out[:i], choice, *out[i + 1 :]])
    return variants


# --- classification -------------------------------------------------------------------------


@dataclass
class Command:
    """A README command, made concrete, with what the test does with it."""

    args: list[str]  # after `cudastack`
    tier: str  # "run-here" (a worker run), "reads-runs" (in-process) or "parse"
    source: str


def classify(line: Line, runs: Runs) -> list[Command]:
    """The README line as cudastack commands; `make` lines through a dry run."""
    words = shlex.split(substitute_text(line.text, runs))
    source = f"{line.text!r} ({line.where})"
    if words[0] == "make":
        return [c for args in make_dry_run(words[1:], source) for c in classify_cli(args, source)]
    if words[0] == "cudastack":
        check_option_names(words[1], line.text + " " + line.comment, source)
        out = []
        for args in concrete(words[1:], runs):
            out += classify_cli(args, source, line.synopsis)
        return out
    if words[:3] == ["python", "-m", "cudastack.worker"]:
        # The worker's own parser; argparse exits 2 on an option it does not know.
        worker_mod.parse_args([w.strip("[]") for w in words[3:] if w.strip("[]") != "..."])
        return []
    assert words[0] in OTHER_TOOLS, f"README command not classified by this test: {source}"
    return []


def classify_cli(args: list[str], source: str, synopsis: bool = False) -> list[Command]:
    name = args[0]
    if name in READS_RUNS:
        return [Command(args, "reads-runs", source)]
    opts = {a.split("=")[0] for a in args[1:] if a.startswith("-")}
    # A synopsis stands for many runs, none of them an example to run: it is parsed.
    runs_suite = name == "run" or (name == "bench" and "--local" in opts)
    if not synopsis and runs_suite and opts <= RUNS_HERE_WITH:
        return [Command(args, "run-here", source)]
    return [Command(args, "parse", source)]


def check_option_names(name: str, text: str, source: str) -> None:
    """Every option a README line (its comment too) names exists on its subcommand."""
    known = option_names(name) | ({"--"} if name == "shell" else set())
    named = {m for m in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*|--)(?=[\s\]=]|$)", text)}
    unknown = named - known
    assert not unknown, f"{source}: cudastack {name} has no {sorted(unknown)}"


def make_dry_run(words: list[str], source: str) -> list[list[str]]:
    """`make -n`: the target exists and every VAR=value reaches its recipe; the cudastack
    command lines it would run, as arguments after `cudastack`."""
    proc = subprocess.run(
        ["make", "-n", *words], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"{source}: make -n failed: {proc.stderr}"
    for assignment in (w for w in words if "=" in w):
        value = assignment.split("=", 1)[1]
        assert value in proc.stdout, f"{source}: {assignment} does not reach the recipe"
    return [
        shlex.split(m.group(1)) for m in re.finditer(r"(?m)^\S*bin/cudastack (.*)$", proc.stdout)
    ]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def placeholders_only(tmp: Path) -> Runs:
    """Classification before any run exists needs folders for the names; they are replaced."""
    return Runs(tmp / "A", tmp / "B", tmp)


@pytest.fixture(scope="module")
def worker_examples(
    tmp: Path, placeholders_only: Runs
) -> list[tuple[Command, Path, subprocess.CompletedProcess]]:
    """Every README example that runs a worker here, run for real with SHORT appended: the
    first two are the runs RUN_A and RUN_B stand for."""
    todo = []
    for line in readme_lines():
        # Lines naming runs are never run-here examples, and their run ids do not exist yet.
        if line.synopsis or re.search(r"RUN|run[ _]id", line.text):
            continue
        for cmd in classify(line, placeholders_only):
            if cmd.tier == "run-here":
                todo.append(cmd)
    assert len(todo) >= 2, "the README should show at least two run / bench --local examples"
    done = []
    for k, cmd in enumerate(todo):
        out = tmp / "AB"[k] if k < 2 else tmp / f"run{k}"
        proc = cli(*cmd.args, *SHORT, "--out", str(out), timeout=600)
        assert proc.returncode == 0, f"{cmd.source}: {proc.stdout[-2000:]}{proc.stderr}"
        done.append((cmd, out, proc))
    return done


@pytest.fixture(scope="module")
def runs(worker_examples: list, tmp: Path) -> Runs:
    return Runs(worker_examples[0][1], worker_examples[1][1], tmp)


# --- the command examples -------------------------------------------------------------------


def test_the_readme_has_commands_of_every_kind():
    lines = readme_lines()
    words = {shlex.split(line.text)[0] for line in lines}
    assert {"cudastack", "make"} <= words
    assert len(lines) >= 30  # the synopsis, the examples and the inline commands


@pytest.mark.integration
def test_run_examples_run_here_and_write_what_the_readme_lists(worker_examples):
    listed = results_tree()
    for cmd, out, proc in worker_examples:
        assert f"{SHORT_CASE:<48} ok" in proc.stdout, cmd.source
        for name, container_only in listed.items():
            path = out / name.replace("<cell>", "local")
            if name.endswith("traces/"):
                assert path.is_dir() == ("--trace" in cmd.args), (cmd.source, name)
            else:
                assert path.exists() != container_only, (cmd.source, name)


def results_tree() -> dict[str, bool]:
    """The run folder's files as README lists them: name -> only in container cells."""
    (tree,) = [b for lang, b, h in fenced_blocks() if not lang and h == "Reading the results"]
    listed = {}
    for row in tree.splitlines()[1:]:
        names, _, what = row.strip().partition("  ")
        first, *rest = [n.strip() for n in names.split(",")]
        folder = first.rsplit("/", 1)[0] + "/" if "/" in first.rstrip("/") else ""
        for name in (first, *(folder + r for r in rest)):
            listed[name] = "(container cells)" in what
    assert "results.parquet" in listed and "<cell>/env.json" in listed
    return listed


@pytest.mark.integration
def test_trace_files_are_named_as_the_readme_says(worker_examples):
    text = " ".join(section("Workloads: training, fine-tuning, data loading").split())
    case, name = re.search(r"\(`([^`]+\[[^`]*\])` -> `([^`]+\.json)`\)", text).groups()
    assert case == SHORT_CASE  # the README's example is the case the runs measured
    traced = [out for cmd, out, _ in worker_examples if "--trace" in cmd.args]
    assert traced, "the README's --trace example should be among the runs"
    for out in traced:
        assert sorted(p.name for p in (out / "local" / "traces").iterdir()) == [name]


@pytest.mark.integration
def test_commands_that_read_runs_run_on_real_runs(runs):
    ran = 0
    for line in readme_lines():
        for cmd in classify(line, runs):
            if cmd.tier != "reads-runs":
                continue
            result = invoke(cmd.args)
            # --fail-on-regression exits 1 when a case is slower: between two runs it may be.
            allowed = {0, 1} if "--fail-on-regression" in cmd.args else {0}
            assert result.exit_code in allowed, f"{cmd.source}: {cmd.args}\n{result.output}"
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                cmd.source,
                result.exception,
            )
            ran += 1
    assert ran >= 10  # list, show, compare per --format and --correction, report


@pytest.mark.integration
def test_other_commands_parse_and_validate(runs):
    parsed = 0
    for line in readme_lines():
        for cmd in classify(line, runs):
            if cmd.tier != "parse":
                continue
            params = parse(cmd.args)
            if cmd.args[0] in ("run", "bench"):
                validate_suite(params)
            else:
                check_cells(params)
            if cmd.args[0] in ("push", "export", "shell") and not is_placeholder(params["cell"]):
                check_cells({"cell": params["cell"]})
            parsed += 1
    assert parsed >= 15


def test_a_readme_command_with_an_unknown_option_or_subcommand_fails(placeholders_only):
    # The checks above must be able to fail: an option that does not exist, a subcommand that
    # does not exist, a misspelt make target, a line the test does not know.
    with pytest.raises(AssertionError, match="has no"):
        classify(Line("cudastack run --bench gemm --fast", "", "test"), placeholders_only)
    with pytest.raises(AssertionError, match="no subcommand"):
        classify(Line("cudastack benchmark", "", "test"), placeholders_only)
    with pytest.raises(AssertionError, match="make -n failed"):
        classify(Line("make benchmarks", "", "test"), placeholders_only)
    with pytest.raises(AssertionError, match="not classified"):
        classify(Line("docker run cudastack", "", "test"), placeholders_only)
    (cmd,) = classify(Line("cudastack push CELL", "", "test"), placeholders_only)
    with pytest.raises(Exception, match="registry"):  # a required option left out
        parse(cmd.args)
    with pytest.raises(Exception, match="unknown bench"):
        validate_suite(parse(["run", "--bench", "gemm,nope"]))
    with pytest.raises(AssertionError, match="not in the matrix"):
        check_cells(parse(["lock", "--cell", "cu99.9-torch0.0.0-py3.12"]))


# --- the Python examples --------------------------------------------------------------------


@pytest.mark.integration
def test_reading_the_results_example_runs_on_a_real_run(runs):
    (code,) = [
        b for lang, b, h in fenced_blocks() if lang == "python" and h == "Reading the results"
    ]
    code = code.replace("results/<run_id>/results.parquet", str(runs.a / "results.parquet"))
    tree = ast.parse(code)
    *body, last = tree.body
    namespace: dict = {}
    exec(compile(ast.Module(body, []), "README", "exec"), namespace)
    medians = eval(compile(ast.Expression(last.value), "README", "eval"), namespace)
    assert isinstance(medians, pd.Series)
    # The case, and the fp32 ceiling the worker measured before it (also in TFLOP/s).
    assert list(medians.index) == ["ceiling[what=matmul,dtype=fp32]", SHORT_CASE]
    assert (medians > 0).all()


@pytest.mark.integration
def test_the_example_bench_is_listed_and_runs(tmp):
    (code,) = [
        b for lang, b, h in fenced_blocks() if lang == "python" and h == "Writing a benchmark"
    ]
    bench_dir = tmp / "my_bench"
    bench_dir.mkdir()
    (bench_dir / "my_op.py").write_text(code, encoding="utf-8")  # as it stands, no edit
    doc = ast.get_docstring(ast.parse(code))
    listed = invoke(["list", "--bench-dir", str(bench_dir)])
    assert listed.exit_code == 0, (listed.output, listed.exception)
    assert "my_op" in listed.output and doc in listed.output
    proc = cli(
        "run", "--bench-dir", str(bench_dir), "--profile", "quick", "--out", str(tmp / "mine")
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    df = results.load_table(tmp / "mine")
    assert (df["status"] == "ok").all(), df[["case", "reason"]]
    # PROFILES' quick override applies to both dtypes of PARAMS; its CEILING has the worker
    # measure fp32's GEMM ceiling first (a CPU measures no bf16 one).
    mine = df[df["bench"] == "my_op"]
    assert set(mine["case"]) == {"my_op[dtype=fp32,n=256]", "my_op[dtype=bf16,n=256]"}
    assert set(df.loc[df["bench"] == "ceiling", "case"]) == {"ceiling[what=matmul,dtype=fp32]"}
    assert {"latency", "tflops"} <= set(mine["metric"])
    fp32 = mine[mine["case"] == "my_op[dtype=fp32,n=256]"]
    assert "pct_of_achievable" in set(fp32["metric"])


# --- the README's lists against the code -----------------------------------------------------


def test_suite_and_cell_options_exist_on_run_and_bench():
    text = " ".join(section("Command line").split())
    for kind in ("Suite options:", "Cell options:"):
        listed = text.split(kind, 1)[1].split(". ", 1)[0]
        named = set(re.findall(r"`(--[\w-]+)", listed))
        assert len(named) >= 5, kind
        for name in ("run", "bench"):
            assert named <= option_names(name), (kind, name, named - option_names(name))


def test_the_profiles_the_readme_offers_are_accepted():
    text = " ".join(section("Command line").split())
    choices = re.search(r"`--profile ([\w|]+)`", text).group(1).split("|")
    assert set(choices) == {"auto", *suite.PROFILES}
    for profile in choices:
        SuiteArgs(benches=["gemm"], profile=profile).validate()
        listed = invoke(["list", "--cases", "--profile", profile])
        assert listed.exit_code == 0, (listed.output, listed.exception)


def test_list_auto_shows_the_profile_a_run_here_picks():
    # No NVIDIA GPU here means a run's auto is quick: list auto must show the quick cases, not
    # the bench files' unprofiled grids.
    from cudastack.host.cells.doctor import nvml_host

    here = "standard" if nvml_host().gpus else "quick"
    auto = invoke(["list", "--cases", "--profile", "auto"])
    picked = invoke(["list", "--cases", "--profile", here])
    assert auto.exit_code == 0 and auto.output == picked.output


def test_every_option_in_backticks_exists():
    # Options named in the prose (the code blocks' are checked line by line above).
    known = set().union(*(option_names(c) for c in ROOT.commands)) | OTHER_OPTIONS
    spans = re.findall(r"`([^`\n]+)`", prose())
    named = {o for s in spans for o in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", s)}
    assert len(named) >= 15
    assert named <= known, sorted(named - known)


def test_metric_names_and_units_are_the_schema_s():
    text = " ".join(section("Reading the results").split())
    paragraph = text[text.index("Metric names and their units") :].split(". ", 1)[0]
    listed = dict(re.findall(r"`(\w+)` \(([^)]*)\)", paragraph))
    assert set(listed) == set(schema.UNITS) | {"items_per_s"}
    for metric, unit in schema.UNITS.items():
        if unit:  # "" is the case's own items unit, which the text explains instead
            assert listed[metric].split(":")[0] == unit, metric
        else:
            assert "items_per_s" in listed[metric], metric


def test_columns_are_the_schema_s():
    text = " ".join(section("Reading the results").split())
    version, columns = re.search(r"columns \(schema version (\d+)\): `([^`]+)`", text).groups()
    assert int(version) == schema.SCHEMA_VERSION
    assert [c.strip() for c in columns.split(",")] == list(schema.COLUMNS)


def test_the_bench_table_names_every_bench():
    table = section("What it measures")
    named = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert sorted(named) == sorted(suite.discover(suite.DEFAULT_BENCH_DIR))


def test_the_data_parallel_benches_are_those_the_readme_names():
    text = " ".join(section("Workloads: training, fine-tuning, data loading").split())
    listed = re.search(r"runs the benches that support it \(([^)]*)\)", text).group(1)
    specs = suite.discover(suite.DEFAULT_BENCH_DIR)
    assert set(re.findall(r"`(\w+)`", listed)) == {n for n, s in specs.items() if s.data_parallel}


def test_profiles_and_the_quick_budget():
    text = " ".join(section("How it measures").split())
    names = re.search(r"Profiles: (.*?)\.(?:\s|$)", text).group(1)
    assert re.findall(r"`(\w+)` \(", names) == list(suite.PROFILES)
    budget = float(re.search(r"`quick` \([^)]*?([\d.]+) s per case\)", text).group(1))
    assert budget == suite.PROFILES["quick"].budget_s


def test_the_gpus_with_spec_peaks():
    text = " ".join(section("Reading the results").split())
    listed = re.search(r"spec sheet \(([^)]*)\)", text).group(1).split(", ")
    assert sorted(listed) == sorted(board.board for board in peaks.BOARDS)


def test_container_mounts_and_environment_are_as_described(tmp_path):
    text = " ".join(section("The container matrix").split())
    paragraph = text[text.index("Each cell runs the worker in a container") :].split(". ", 1)[0]
    weights = tmp_path / "weights"
    weights.mkdir()
    args = SuiteArgs(overrides=[f"weights={weights}"])
    kwargs = container.container_kwargs(
        "img", args, tmp_path / "cell", "c", "r", "", container.ContainerOptions()
    )
    mounts = {v["bind"]: v["mode"] for v in kwargs["volumes"].values()}
    described = re.findall(r"(read-only|read-write) (at|under) `(/[^`]*)`", paragraph)
    assert len(described) == 4, described
    for mode, how, path in described:
        binds = [b for b in mounts if b == path or (how == "under" and b.startswith(path))]
        assert binds, path
        assert {mounts[b] for b in binds} == {"ro" if mode == "read-only" else "rw"}, path
    assert kwargs["volumes"][str((tmp_path / "cell").resolve())]["bind"] == "/results"
    for key, value in re.findall(r"`([A-Z_]+)=([^`]+)`", paragraph):
        assert kwargs["environment"][key] == value, key
    assert "`PYTHONPATH`" in paragraph and kwargs["environment"]["PYTHONPATH"] == "/harness/src"
    assert "16 GB of `/dev/shm`" in paragraph and kwargs["shm_size"] == "16g"


def test_results_reference_is_described_truthfully():
    text = (REPO / "results" / "README.md").read_text(encoding="utf-8")
    runs_there = [p for p in (REPO / "results" / "reference").iterdir() if p.is_dir()]
    # Each committed reference run carries its COMMAND.md; with none, the text must say so.
    for run in runs_there:
        assert (run / "COMMAND.md").is_file(), run
    if not runs_there:
        assert "holds none yet" in text


def test_every_code_block_is_exercised():
    # sh blocks: the commands above; python: the two examples run above; the blocks without a
    # language are the run folder's listing and the code layout (checked below). A block of
    # another kind would go unchecked.
    kinds = [(lang, h) for lang, _, h in fenced_blocks() if lang != "sh"]
    assert sorted(kinds) == [
        ("", "Developing"),
        ("", "Reading the results"),
        ("python", "Reading the results"),
        ("python", "Writing a benchmark"),
    ]


def test_the_code_layout_names_every_module_and_only_modules_that_exist():
    """The Developing section's tree names each module of the package (the entry points at its
    top and the three packages below), and no other."""
    (tree,) = [body for lang, body, h in fenced_blocks() if h == "Developing" and not lang]
    named = {w.strip(",:;") for w in tree.split() if w.strip(",:;").endswith(".py")}
    package = REPO / "src" / "cudastack"
    modules = {
        p.name
        for p in package.glob("**/*.py")
        if p.name != "__init__.py" and "bench" not in p.relative_to(package).parts
    }
    assert named == modules, (sorted(modules - named), sorted(named - modules))


def test_the_table_of_recognised_failures_is_the_code_s():
    from cudastack.contract.failures import KNOWN

    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `") and " | " in line]
    table = {line.split("`")[1]: line for line in rows}
    for known in KNOWN:
        assert table.get(known.name) == f"| `{known.name}` | {known.diagnosis} | {known.fix} |"
