"""Reports people read: one self-contained HTML file (inline CSS and images) or markdown."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pandas as pd

from cudastack.contract import runfolder
from cudastack.host.analysis import clocks, compare, explain, heatmap, markup, results, roofline
from cudastack.host.analysis.markup import paragraphs, plain, text
from cudastack.host.analysis.plots import bar_plot, speedup_plot

# The page fits 1200 px: long tokens (digests, case ids) are cut with an ellipsis and shown
# whole on hover, prose wraps anywhere, numbers never break, and a table wider than the page
# (many sides) scrolls in its own box instead of the page.
CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1200px;
       color: #222; overflow-wrap: break-word; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
p, figcaption { overflow-wrap: anywhere; }
.wide { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 5px; text-align: right; vertical-align: top; }
td { white-space: nowrap; } th { background: #f4f4f4; } td.l, th.l { text-align: left; }
td.wrap { white-space: normal; overflow-wrap: anywhere; min-width: 12em; max-width: 36em; }
.cut { display: inline-block; max-width: 18em; overflow: hidden; text-overflow: ellipsis;
       white-space: nowrap; vertical-align: bottom; }
.faster { color: #1a7f37; font-weight: 600; } .slower { color: #cf222e; font-weight: 600; }
.noisy, .inconclusive, .not-comparable { color: #9a6700; }
.failed { color: #cf222e; } .skipped { color: #9a6700; }
table.heatmap td, table.heatmap th { text-align: center; } table.heatmap th.l { text-align: left; }
img, svg.plot { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5em 0; }
.rooflines { display: flex; flex-wrap: wrap; gap: 0 1em; }
.rooflines figure { flex: 1 1 520px; max-width: 100%; margin: 1em 0; }
.rooflines svg.plot { width: 100%; }
figcaption { font-size: 13px; color: #555; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _env_table(envs: dict) -> pd.DataFrame:
    fields = {
        label: [explain._get(env, path) for env in envs.values()]
        for label, path in explain.FINGERPRINT
    }
    frame = pd.DataFrame(fields, index=list(envs)).T.reset_index(names="field")
    return frame.fillna("")


def _comparison(df: pd.DataFrame, envs: dict, compared: pd.DataFrame) -> list[str]:
    """The comparison's sections: verdict counts, notes, its table, the speed-up plot and the
    heatmap."""
    base = compared["baseline"].iloc[0]
    diffs = explain.side_diffs(compared, envs)
    notes = compare.notes(df, compared) + explain.explain(compared, diffs)
    columns = [
        "case",
        "side",
        "median_base",
        "median_side",
        "unit",
        "ratio",
        "ci_low",
        "ci_high",
        "p_adj",
        "rel_iqr_base",
        "rel_iqr_side",
        "verdict",
        "note",
    ]
    sides = list(dict.fromkeys(compared["side"]))
    counts = compare.verdict_counts(compared)
    if len(sides) == 1:  # said once above the table: a run id repeated on every row costs width
        columns.remove("side")
        counts = f"{sides[0]} against {base}: {counts}"
    return [
        f"<h2>Comparison with {text(base)}</h2><p>{text(counts)}</p>",
        *paragraphs(notes),
        markup.table(compared[[c for c in columns if c in compared]]),
        speedup_plot(compared),
        "<h2>Cells × benchmarks</h2>",
        heatmap.html(compared),
    ]


def html_report(
    df: pd.DataFrame,
    envs: dict,
    baseline: Optional[str] = None,
    settings: Optional[compare.Settings] = None,
) -> str:
    """The whole report as one HTML string; ``df`` has a ``side`` column. Every text in it
    (reasons, notes, case ids) is plain: ANSI escapes and control characters removed."""
    cases = results.case_table(df.assign(cell=df["side"])).rename(columns={"cell": "side"})
    parts = [
        f"<h1>cudastack report</h1><p>runs: {text(', '.join(df['run_id'].unique()))}"
        f" · generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        "<h2>Environments</h2>",
        markup.table(_env_table(envs)),
    ]
    if (df["status"] == "ok").groupby(df["side"]).any().sum() > 1:
        # Sides that share no case (a cell that did not run) leave nothing to compare.
        try:
            parts += _comparison(df, envs, compare.compare(df, baseline, settings))
        except compare.CompareError as exc:
            if baseline is not None:
                raise
            parts += paragraphs([f"No comparison: {exc}."])
    ok = cases[cases["status"] == "ok"]
    for metric, what in (
        ("pct_of_peak", "the data-sheet peak"),
        ("pct_of_achievable", "achievable"),
    ):
        # % of the spec sheet and % of what this device was measured to reach: two plots, as
        # one bar each per (case, side) would be read as one scale.
        pct = df[(df["metric"] == metric) & (df["status"] == "ok")]
        if len(pct):
            stats = results.summarize(pct.assign(cell=pct["side"]))
            stats = stats.rename(columns={"cell": "side"})
            parts += [
                f"<h2>Achieved % of {what}</h2>",
                f"<img alt='percent of {what}' src='{bar_plot(stats, f'% of {what}')}'>",
            ]
    parts += roofline.section(df, envs)
    workloads = ok[ok["metric"] == "items_per_s"]
    if len(workloads):
        parts.append("<h2>Training and workload throughput</h2>")
        # One plot per unit: images, tokens and samples per second do not share an axis.
        for unit, rows in workloads.groupby("unit", sort=True):
            alt = text(f"throughput in {unit}")
            parts.append(f"<img alt='{alt}' src='{bar_plot(rows, str(unit))}'>")
    telemetry = clocks.per_case(df)
    parts += clocks.section(telemetry, list(dict.fromkeys(df["side"])))
    shown = ok[["side", "case", "median", "unit", "rel_iqr", "n", *results.PERCENT_COLUMNS]]
    throttled = clocks.marks(telemetry)
    if len(telemetry):  # a column only where telemetry was recorded
        shown = shown.assign(
            throttled=[throttled.get((s, c), "") for s, c in zip(shown["side"], shown["case"])]
        )
    noisy = ok[ok["noisy"].astype(bool)][["side", "case", "rel_iqr"]]
    bad = cases[cases["status"] != "ok"][["side", "case", "status", "reason"]]
    parts += [
        "<h2>Results per case</h2>",
        markup.table(shown),
        "<h2>Noisy, skipped and failed cases</h2>",
        f"<p>{len(noisy)} noisy (relative IQR &gt; 10 %), {len(bad)} did not run.</p>",
        markup.table(noisy) if len(noisy) else "",
        markup.table(bad) if len(bad) else "",
    ]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>cudastack report</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def markdown(table: pd.DataFrame, diffs: dict, notes: list[str]) -> str:
    """The comparison as a markdown table, for a pull-request comment; ``notes`` are lines to
    list under it (runs apart in time, explanations). Texts are plain, as in the HTML report."""
    base = table["baseline"].iloc[0]
    lines = [
        f"### cudastack: compared with `{base}`",
        "",
        "| case | side | baseline | compared | unit | ratio | 95% CI | rel IQR | verdict | note |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for r in table.to_dict("records"):
        mark = {"faster": "**faster**", "slower": "**slower**"}.get(r["verdict"], r["verdict"])
        lines.append(
            f"| `{plain(r['case'])}` | {plain(r['side'])} | {r['median_base']:.4g} | "
            f"{r['median_side']:.4g} | {plain(r['unit'])} | {r['ratio']:.3f} | "
            f"{r['ci_low']:.3f}–{r['ci_high']:.3f} | "
            f"{100 * r['rel_iqr_base']:.0f} % / {100 * r['rel_iqr_side']:.0f} % | {mark} | "
            f"{plain(r['note'])} |"
        )
    lines += ["", compare.verdict_counts(table)]
    for side, diff in diffs.items():
        if diff:
            lines.append(
                f"- `{side}` vs `{base}`: "
                + "; ".join(f"{label} {va} → {vb}" for label, va, vb in diff)
            )
    lines += [f"- {plain(line)}" for line in notes]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Atomically: a reader never sees half a report."""

    def put(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    runfolder.atomic_write(path, put)
