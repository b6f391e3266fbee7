"""The terminal summary of a run, on a real one (gemm and sdpa, smoke profile, on this CPU): a
block per bench with only the parameters that vary as columns, what did not run counted once
per reason under the tables, 100 columns wide, cells as columns."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli
from rich.console import Console, RenderableType
from typer.testing import CliRunner, Result

from cudastack.contract.runfolder import RECORDS
from cudastack.contract.schema import rows_of
from cudastack.host.analysis import results
from cudastack.host.analysis.display import results_view
from cudastack.host.cli.main import app as APP

pytestmark = pytest.mark.integration

NUMBER = re.compile(r"(?<![\w.=])\d+(?:\.\d+)?(?:e[+-]\d+)?\*?(?![\w.=])")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    """A real run of about 20 cases (about 6 s): gemm and sdpa, some skipped on a CPU."""
    root = tmp_path_factory.mktemp("display")
    proc = cli(
        "run", "--profile", "smoke", "--bench", "gemm,sdpa", "--device", "cpu",
        "--out", str(root / "run"), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return root / "run", proc.stdout


@pytest.fixture(scope="module")
def two_cells(run) -> Path:
    """The run with a second cell `other`: its records relabelled, twice as fast, and one case
    failed there with a coloured two-line reason."""
    run_dir = run[0].parent / "two"
    shutil.copytree(run[0], run_dir)
    lines = (run_dir / "local" / RECORDS).read_text().splitlines()
    rows = [r for line in lines for r in rows_of(json.loads(line))]  # a line a sample
    for row in rows:
        row["cell"] = "other"
        if row["value"] is not None:
            row["value"] *= 2
        if row["case"] == "gemm[dtype=bf16,n=256]":
            row.update(status="failed", value=None, reason="\x1b[31mout of memory\x1b[0m\nat x")
    results.append_records(run_dir / "other", rows)
    results.ingest_run(run_dir)
    return run_dir


def show(*args: str) -> Result:
    """`cudastack show ...` in this process (a piped console, as in a CI log: 200 wide)."""
    return CliRunner().invoke(APP, ["show", *args])


def render(run_dir: Path, width: int, verbose: bool = False) -> str:
    df = results.load_table(run_dir)
    kinds = results.bench_kinds(df)
    return printed(
        results_view(results.case_table(df), "run", verbose, kinds, "show -v lists"), width
    )


def printed(view: RenderableType, width: int) -> str:
    """What a terminal ``width`` columns wide shows of ``view``, without colours."""
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False).print(view)
    return out.getvalue()


def summary_of(stdout: str) -> list[str]:
    """The lines the end of a run prints: from the run's title to the results line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"run \S+", line.strip()))
    end = next(i for i, line in enumerate(lines) if line.startswith("results: "))
    return lines[start:end]


def header_after(text: str, label: str) -> list[str]:
    """The column names of the block whose title line starts with ``label``."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(label))
    return lines[at + 1].split()


def skipped_ids(run_dir: Path) -> list[str]:
    table = results.case_table(results.load_table(run_dir))
    return list(table.loc[table["status"] == "skipped", "case"])


def test_the_end_of_a_run_fits_100_columns_with_a_block_per_bench(run):
    lines = summary_of(run[1])  # piped: the console is 200 wide, the summary keeps to 100
    assert max(map(len, lines)) <= 100, "\n".join(lines)
    text = "\n".join(lines)
    for bench in ("gemm", "sdpa"):
        assert len(re.findall(rf"^{bench} \(kernel\)", text, re.M)) == 1, text
    assert "[" not in text.replace("(kernel)", "")  # no case id: the parameters say which
    assert max(map(len, render(run[0], 100).splitlines())) <= 100


def test_only_the_parameters_that_vary_in_a_bench_are_columns(run):
    text = render(run[0], 100)
    (gemm,) = [line for line in text.splitlines() if line.startswith("gemm (kernel)")]
    assert "· n=256" in gemm  # n is one value in smoke: said once, in the title
    assert header_after(text, "gemm (kernel)")[:3] == ["dtype", "median", "TFLOP/s"]
    sdpa = header_after(text, "sdpa (kernel)")
    assert sdpa[:2] == ["backend", "direction"] and "causal" in sdpa
    assert "dtype" not in sdpa and "heads" not in sdpa  # constants: in sdpa's title
    assert "spread" in sdpa and "% spec" not in text  # no spec peaks on a CPU


def test_cases_that_did_not_run_are_counted_once_per_reason(run):
    text = render(run[0], 100)
    words = " ".join(text.split())  # a long reason wraps
    for backend in ("efficient", "cudnn"):
        line = f"skipped 4 cases: no {backend} SDPA kernel for this case on cpu:"
        assert words.count(line) == 1, text
    assert words.count("skipped 1 case: tf32 needs") == 1, text
    assert words.count("skipped ") == len(re.findall(r"^skipped \d+ cases?:", text, re.M))
    assert "(show -v lists)" in text
    assert not any(case in text for case in skipped_ids(run[0]))


def test_verbose_lists_each_case_that_did_not_run_under_its_reason(run):
    shown = show(str(run[0]), "--verbose")
    assert shown.exit_code == 0, shown.output
    for case in skipped_ids(run[0]):
        assert shown.stdout.count(case) == 1, case
    lines = shown.stdout.splitlines()
    tf32 = next(i for i, line in enumerate(lines) if re.match(r"skipped 1 case: +tf32", line))
    assert lines[tf32 + 1].strip() == "gemm[dtype=tf32,n=256]"
    assert "--verbose lists them" not in shown.stdout
    plain = show(str(run[0]))
    assert "gemm[dtype=tf32,n=256]" not in plain.stdout
    assert f"(cudastack show {run[0]} --verbose lists them)" in plain.stdout


def test_several_cells_are_columns_of_medians_and_a_failure_stands_out(two_cells):
    shown = show(str(two_cells))
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert max(map(len, text.splitlines())) <= 100, text
    assert re.search(r"^gemm \(kernel\) · n=256 — median TFLOP/s$", text, re.M), text
    assert header_after(text, "gemm (kernel)") == ["dtype", "local", "other"]
    assert "spread" not in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line[:4] == "fp32"}
    local, other = (float(v.rstrip("*")) for v in rows["fp32"])
    assert other == pytest.approx(2 * local, rel=1e-3)
    assert re.search(r"^bf16 +[\d.]+\*? +failed", text, re.M), text
    # Failed first, one line, colours and the second line gone; its case named without -v.
    after = text[text.index("failed ") :].splitlines()
    assert " ".join(after[0].split()) == "failed 1 case in 1 cell: out of memory", text
    assert after[1].strip() == "other: gemm[dtype=bf16,n=256]"
    assert "\x1b" not in text and "at x" not in text
    assert " ".join(text.split()).count("skipped 4 cases in 2 cells: no cudnn SDPA") == 1


def test_at_80_columns_parameters_fold_and_no_number_is_cut(run, two_cells):
    for run_dir in (run[0], two_cells):
        narrow, wide = render(run_dir, 80), render(run_dir, 200)
        assert max(map(len, narrow.splitlines())) <= 80, narrow
        numbers = sorted(NUMBER.findall(narrow))
        assert numbers == sorted(NUMBER.findall(wide)), narrow
        assert len(numbers) > 10


def view_of(table: pd.DataFrame) -> str:
    return printed(results_view(table, "run"), 100)


def test_peak_columns_show_when_some_row_has_a_value(run):
    table = results.case_table(results.load_table(run[0]))
    no_column = table.drop(columns=["pct_of_achievable"], errors="ignore")
    no_value = table.assign(pct_of_achievable=float("nan"), pct_of_peak=float("nan"))
    for text in (view_of(no_column), view_of(no_value)):
        assert "% achv" not in text and "% spec" not in text
    gemm = table["bench"] == "gemm"
    with_peaks = table.assign(
        pct_of_peak=table["median"].where(gemm) * 10, pct_of_achievable=float("nan")
    )
    with_peaks.loc[gemm & (with_peaks["status"] == "ok"), "pct_of_achievable"] = 55.5
    text = view_of(with_peaks)
    assert " ".join(header_after(text, "gemm ·")).endswith("spread % spec % achv")
    assert "% spec" not in " ".join(header_after(text, "sdpa ·"))  # no value in sdpa's block
    assert re.search(r"^fp32 .* 55\.5 *$", text, re.M), text
    assert "\n% achv: of the peak measured on the device\n" in text


def test_an_empty_constant_parameter_is_left_out_and_commas_in_values_kept(run):
    table = results.case_table(results.load_table(run[0]))
    gemm = table[table["bench"] == "gemm"].copy()
    gemm["case"] = gemm["case"].str.replace("]", ",weights=,path=a,b]", regex=False)
    text = view_of(gemm)
    assert "weights" not in text
    assert "· path=a,b" in text


def test_a_reason_is_shown_as_written_not_read_as_markup(run):
    table = results.case_table(results.load_table(run[0]))
    skipped = table["status"] == "skipped"
    table.loc[skipped, "reason"] = "needs [bold]sdpa[x=1][/bold]\x1b[0m"
    assert f"skipped {skipped.sum()} cases: needs [bold]sdpa[x=1][/bold]\n" in view_of(table)


@pytest.mark.parametrize("command", ["run", "bench", "show"])
def test_verbose_is_an_option_of_each_command_that_prints_the_summary(command):
    shown = CliRunner().invoke(APP, [command, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert re.search(r"--verbose\s+-v\s", shown.output), shown.output
