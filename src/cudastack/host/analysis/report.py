"""Reports people read: one self-contained HTML file (inline CSS and images) or markdown."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from cudastack.contract import runfolder
from cudastack.host.analysis import compare, explain, results

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.faster { color: #1a7f37; font-weight: 600; } .slower { color: #cf222e; font-weight: 600; }
.noisy, .inconclusive { color: #9a6700; } .failed { color: #cf222e; } .skipped { color: #9a6700; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def speedup_plot(table: pd.DataFrame) -> str:
    """Oriented ratio per case with its 95 % interval, one colour per compared side."""
    plt = _plt()
    cases = list(dict.fromkeys(table["case"]))
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(cases) + 1.5))
    for i, (side, rows) in enumerate(table.groupby("side", sort=False)):
        pos = [cases.index(c) + 0.15 * i for c in rows["case"]]
        err = [rows["ratio"] - rows["ci_low"], rows["ci_high"] - rows["ratio"]]
        ax.errorbar(rows["ratio"], pos, xerr=err, fmt="o", ms=4, capsize=2, label=str(side))
    ax.axvline(1.0, color="#888", lw=1)
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels(cases, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"ratio vs {table['baseline'].iloc[0]} (> 1 is better)")
    ax.legend(fontsize=8)
    return _png(fig)


def heatmap(table: pd.DataFrame) -> str:
    """Sides x benchmarks: geometric-mean ratio against the baseline."""
    plt = _plt()
    import numpy as np

    geo = table.assign(log=np.log(table["ratio"])).pivot_table(
        index="side", columns="bench", values="log", aggfunc="mean", sort=False
    )
    ratio = np.exp(geo)
    fig, ax = plt.subplots(figsize=(1.1 * ratio.shape[1] + 2, 0.6 * ratio.shape[0] + 1.5))
    span = max(0.05, float(np.nanmax(np.abs(geo.to_numpy()))))
    im = ax.imshow(geo.to_numpy(), cmap="RdYlGn", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(ratio.shape[1]), ratio.columns, rotation=30, ha="right")
    ax.set_yticks(range(ratio.shape[0]), ratio.index)
    for (y, x), value in np.ndenumerate(ratio.to_numpy()):
        if value == value:
            ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="log ratio")
    return _png(fig)


def bar_plot(cases: pd.DataFrame, metric: str, label: str) -> str:
    """A horizontal bar per (case, side) of one metric's median."""
    plt = _plt()
    pivot = cases.pivot_table(index="case", columns="side", values="median", sort=False)
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(pivot) * max(1, pivot.shape[1]) ** 0.5 + 1.5))
    pivot.plot.barh(ax=ax, width=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8)
    return _png(fig)


def _table_html(
    frame: pd.DataFrame,
    left: tuple = ("case", "side", "cell", "field", "reason", "verdict", "status", "unit"),
) -> str:
    head = "".join(
        f"<th class='{'l' if c in left else ''}'>{html.escape(str(c))}</th>" for c in frame.columns
    )
    rows = []
    for record in frame.to_dict("records"):
        cells = []
        for c, v in record.items():
            if v is None or (isinstance(v, float) and v != v):
                text = ""  # no value: a CPU has no spec peak, a failed case no median
            else:
                text = f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))
            cls = " ".join(
                x
                for x in ("l" if c in left else "", str(v) if c in ("verdict", "status") else "")
                if x
            )
            cells.append(f"<td class='{cls}'>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _env_table(envs: dict) -> pd.DataFrame:
    fields = {
        label: [explain._get(env, path) for env in envs.values()]
        for label, path in explain.FINGERPRINT
    }
    frame = pd.DataFrame(fields, index=list(envs)).T.reset_index(names="field")
    return frame.fillna("")


def html_report(
    df: pd.DataFrame,
    envs: dict,
    baseline: Optional[str] = None,
    settings: Optional[compare.Settings] = None,
) -> str:
    """The whole report as one HTML string; ``df`` has a ``side`` column."""
    cases = results.case_table(df.assign(cell=df["side"])).rename(columns={"cell": "side"})
    parts = [
        f"<h1>cudastack report</h1><p>runs: {html.escape(', '.join(df['run_id'].unique()))}"
        f" · generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        "<h2>Environments</h2>",
        _table_html(_env_table(envs)),
    ]
    comparable = (df["status"] == "ok").groupby(df["side"]).any().sum() > 1
    if comparable:
        # Sides that share no case (a cell that did not run) leave nothing to compare.
        try:
            table = compare.compare(df, baseline, settings)
        except compare.CompareError as exc:
            if baseline is not None:
                raise
            parts.append(f"<p>No comparison: {html.escape(str(exc))}.</p>")
            comparable = False
    if comparable:
        base = table["baseline"].iloc[0]
        diffs = explain.side_diffs(table, envs)
        parts += [
            f"<h2>Comparison with {html.escape(str(base))}</h2><p>"
            + compare.verdict_counts(table)
            + "</p>"
        ]
        notes = compare.notes(df, table) + explain.explain(table, diffs)
        parts += [f"<p>{html.escape(line)}</p>" for line in notes]
        shown = table[
            [
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
        ]
        parts += [
            _table_html(shown),
            f"<img alt='speedup per case' src='{speedup_plot(table)}'>",
            "<h2>Cells × benchmarks</h2>",
            f"<img alt='heatmap of cells and benchmarks' src='{heatmap(table)}'>",
        ]
    ok = cases[cases["status"] == "ok"]
    peak = df[(df["metric"] == "pct_of_peak") & (df["status"] == "ok")]
    if len(peak):
        pct = results.summarize(peak.assign(cell=peak["side"])).rename(columns={"cell": "side"})
        parts += [
            "<h2>Achieved % of peak</h2>",
            f"<img alt='percent of peak' src='{bar_plot(pct, 'pct_of_peak', '% of peak')}'>",
        ]
    workloads = ok[ok["metric"] == "items_per_s"]
    if len(workloads):
        parts.append("<h2>Training and workload throughput</h2>")
        # One plot per unit: images, tokens and samples per second do not share an axis.
        for unit, rows in workloads.groupby("unit", sort=True):
            alt = html.escape(f"throughput in {unit}")
            parts.append(f"<img alt='{alt}' src='{bar_plot(rows, 'items_per_s', str(unit))}'>")
    parts += [
        "<h2>Results per case</h2>",
        _table_html(ok[["side", "case", "median", "unit", "rel_iqr", "n", "pct_of_peak"]]),
    ]
    noisy = ok[ok["noisy"].astype(bool)][["side", "case", "rel_iqr"]]
    bad = cases[cases["status"] != "ok"][["side", "case", "status", "reason"]]
    parts += [
        "<h2>Noisy, skipped and failed cases</h2>",
        f"<p>{len(noisy)} noisy (relative IQR &gt; 10 %), {len(bad)} did not run.</p>",
        _table_html(noisy) if len(noisy) else "",
        _table_html(bad) if len(bad) else "",
    ]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>cudastack report</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def markdown(table: pd.DataFrame, diffs: dict, notes: list[str]) -> str:
    """The comparison as a markdown table, for a pull-request comment; ``notes`` are lines to
    list under it (runs apart in time, explanations)."""
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
            f"| `{r['case']}` | {r['side']} | {r['median_base']:.4g} | "
            f"{r['median_side']:.4g} | {r['unit']} | {r['ratio']:.3f} | "
            f"{r['ci_low']:.3f}–{r['ci_high']:.3f} | "
            f"{100 * r['rel_iqr_base']:.0f} % / {100 * r['rel_iqr_side']:.0f} % | {mark} | "
            f"{r['note']} |"
        )
    lines += ["", compare.verdict_counts(table)]
    for side, diff in diffs.items():
        if diff:
            lines.append(
                f"- `{side}` vs `{base}`: "
                + "; ".join(f"{label} {va} → {vb}" for label, va, vb in diff)
            )
    lines += [f"- {line}" for line in notes]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Atomically: a reader never sees half a report."""

    def put(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    runfolder.atomic_write(path, put)
