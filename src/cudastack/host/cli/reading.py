"""Commands that read finished runs: compare and report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple, Optional

import pandas as pd
import typer
from rich.markup import escape

from cudastack.contract.errors import EXIT_FAILED, UserError, shown
from cudastack.host.analysis import compare, explain, report
from cudastack.host.cli.app import ResultsOpt, names, run_folder, run_rows
from cudastack.host.console import console, err

FORMATS = ("table", "md", "csv", "json")
IgnoreClocksOpt = typer.Option(
    False,
    "--ignore-clocks",
    help="Give verdicts to cases whose GPU throttled or ran at another SM clock (default: "
    "'not comparable').",
)


class LoadedRuns(NamedTuple):
    table: pd.DataFrame  # every run's rows, with a ``side`` column as compare labels it
    envs: dict[str, dict]  # side -> its cell's env.json


def load_runs(runs: list[str], results_dir: Path) -> LoadedRuns:
    """All runs' rows in one table, and each side's env.json."""
    frames, dirs = [], {}
    for ref in runs:
        run_dir = run_folder(ref, results_dir)
        df = run_rows(run_dir)
        frames.append(df)
        for run_id in df["run_id"].unique():
            dirs[run_id] = run_dir
    df = pd.concat(frames, ignore_index=True)
    if df["run_id"].nunique() < len(runs):
        raise UserError("the same run was given twice")
    labels = compare.label_sides(df)
    envs = {}
    for (run_id, cell), label in zip(zip(df["run_id"], df["cell"]), labels):
        if label not in envs:
            envs[label] = explain.load_env(dirs[run_id], cell)
    return LoadedRuns(df.assign(side=labels), envs)


def compare_cmd(
    runs: list[str] = typer.Argument(..., help="Run ids (under --results-dir) or run folders."),
    baseline: Optional[str] = typer.Option(
        None, help="Cell or run to compare against (default: the first)."
    ),
    bench: str = typer.Option("", "--bench", help="Comma-separated benches (default: all)."),
    fmt: str = typer.Option("table", "--format", help="table | md | csv | json"),
    threshold: float = typer.Option(0.05, help="Smallest change that counts (0.05 = 5 %)."),
    alpha: float = typer.Option(0.05, help="Significance level after correction."),
    correction: str = typer.Option("holm", help="holm (family-wise) | bh (false discovery)."),
    fail_on_regression: bool = typer.Option(
        False,
        "--fail-on-regression",
        help="Exit 1 when a case is slower (never for inconclusive or provisional ones).",
    ),
    ignore_clocks: bool = IgnoreClocksOpt,
    results_dir: Path = ResultsOpt,
) -> None:
    """Is one cell or run really faster than another, by how much, and why?"""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    settings = compare.Settings(
        threshold=threshold, alpha=alpha, correction=correction, ignore_clocks=ignore_clocks
    )
    df, envs = load_runs(runs, results_dir)
    if bench:
        unknown = sorted(set(names(bench)) - set(df["bench"]))
        if unknown:
            raise UserError(
                f"unknown bench {', '.join(map(shown, unknown))} in these runs; benches: "
                f"{', '.join(sorted(set(df['bench'])))}"
            )
        df = df[df["bench"].isin(names(bench))]
    table = compare.compare(df, baseline, settings)
    base = table["baseline"].iloc[0]
    diffs = explain.side_diffs(table, envs)
    for side, diff in diffs.items():
        warning = explain.hardware_warning(diff)
        if warning:
            err.print(f"warning: {escape(side)} vs {escape(base)}: {escape(warning)}")
    notes = compare.notes(df, table)
    if fmt == "csv":
        print(table.to_csv(index=False), end="")
    elif fmt == "json":
        print(
            json.dumps(
                {
                    # null, not NaN, Infinity or <NA>: strict JSON readers refuse them
                    "comparison": table.replace([math.inf, -math.inf], math.nan)
                    .astype(object)
                    .where(lambda t: t.notna(), None)
                    .to_dict("records"),
                    "summary": compare.verdict_counts(table),
                    "notes": notes,
                    "explanations": explain.explain(table, diffs),
                    "environment": {s: [list(d) for d in v] for s, v in diffs.items()},
                },
                indent=2,
                default=str,
            )
        )
    elif fmt == "md":
        print(report.markdown(table, diffs, notes + explain.explain(table, diffs)))
    else:
        from cudastack.host.analysis.display import comparison

        console.print(comparison(table, f"compared with {base}"))
        console.print(compare.verdict_counts(table))
        for side, diff in diffs.items():
            if diff:
                console.print(
                    f"{escape(side)} vs {escape(base)}: "
                    + "; ".join(f"{label} {va} -> {vb}" for label, va, vb in diff),
                    highlight=False,
                )
        for line in notes:
            console.print(f"note: {escape(line)}", highlight=False)
        for line in explain.explain(table, diffs):
            console.print(f"explain: {escape(line)}", highlight=False)
    if fail_on_regression:
        _fail_on_regression(table)


def _fail_on_regression(table: pd.DataFrame) -> None:
    """Exit 1 when a row is slower, naming each. A provisional one (fewer than 3 processes a
    side) is named but does not fail: one process a side raised false alarms on 13 % of
    unchanged cases on a shared VM, so a gate on it would fail nearly every run."""
    slower = table[table["verdict"] == "slower"]
    for r in slower.to_dict("records"):
        word = "provisional regression (not failing)" if r["provisional"] else "regression"
        note = f"; {r['note']}" if r["provisional"] else ""
        err.print(
            f"{word}: {escape(r['case'])} on {escape(str(r['side']))}: ratio {r['ratio']:.3f} "
            f"({r['ci_low']:.3f}–{r['ci_high']:.3f}){escape(note)}",
            highlight=False,
        )
    if (~slower["provisional"]).any():
        raise typer.Exit(EXIT_FAILED)


def report_cmd(
    runs: list[str] = typer.Argument(..., help="Run ids (under --results-dir) or run folders."),
    out: Optional[Path] = typer.Option(
        None, "-o", "--out", help="File to write (default: report.html, or report.md for md)."
    ),
    fmt: str = typer.Option("html", "--format", help="html | md"),
    baseline: Optional[str] = typer.Option(None, help="Cell or run to compare against."),
    ignore_clocks: bool = IgnoreClocksOpt,
    results_dir: Path = ResultsOpt,
) -> None:
    """One self-contained HTML report (or markdown for a pull-request comment)."""
    if fmt not in ("html", "md"):
        raise UserError(f"unknown --format {fmt!r}; choose html or md")
    out = out or Path(f"report.{fmt}")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist")
    df, envs = load_runs(runs, results_dir)
    settings = compare.Settings(ignore_clocks=ignore_clocks)
    if fmt == "html":
        text = report.html_report(df, envs, baseline, settings)
    else:
        table = compare.compare(df, baseline, settings)
        diffs = explain.side_diffs(table, envs)
        text = report.markdown(
            table, diffs, compare.notes(df, table) + explain.explain(table, diffs)
        )
    report.write(out, text)
    console.print(f"report: {out}", highlight=False)
