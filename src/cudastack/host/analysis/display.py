"""Terminal rendering of result tables with rich."""

from __future__ import annotations

import math

import pandas as pd
from rich.markup import escape
from rich.table import Table

from cudastack.contract.stats import NOISY_REL_IQR


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}"


def case_summary(cases: pd.DataFrame, title: str) -> Table:
    """One line per case: headline median, unit, relative IQR, noisy flag, % of peak."""
    table = Table(title=title, title_justify="left")
    multi_cell = cases["cell"].nunique() > 1
    if multi_cell:
        table.add_column("cell")
    for name, justify in (
        ("case", "left"),
        ("median", "right"),
        ("unit", "left"),
        ("rel IQR", "right"),
        ("noisy", "center"),
        ("% peak", "right"),
    ):
        # Case ids fold onto more lines rather than being cut: they are what people grep for.
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in cases.to_dict("records"):
        lead = [escape(row["cell"])] if multi_cell else []
        if row["status"] != "ok":
            # The reason goes under the table, whole; the row only says what happened.
            style = "yellow" if row["status"] == "skipped" else "red"
            table.add_row(
                *lead, escape(row["case"]), f"[{style}]{row['status']}[/]", "", "", "", ""
            )
            continue
        table.add_row(
            *lead,
            escape(row["case"]),
            _num(row["median"]),
            str(row["unit"]),
            f"{100 * row['rel_iqr']:.1f}%",
            "yes" if row["noisy"] else "",
            _num(row["pct_of_peak"]),
        )
    return table


def cell_matrix(cases: pd.DataFrame, title: str) -> Table:
    """Cases down, cells across: each cell's headline median, or why the case did not run."""
    cells = list(dict.fromkeys(cases["cell"]))
    table = Table(title=title, title_justify="left")
    table.add_column("case", overflow="fold")
    table.add_column("unit")
    for cell in cells:
        table.add_column(escape(cell), justify="right")
    for case, rows in cases.groupby("case", sort=False):
        by_cell = {r["cell"]: r for r in rows.to_dict("records")}
        units = [str(r["unit"]) for r in by_cell.values() if r["status"] == "ok"]
        cols = []
        for cell in cells:
            r = by_cell.get(cell)
            if r is None:
                cols.append("")
            elif r["status"] != "ok":
                style = "yellow" if r["status"] == "skipped" else "red"
                cols.append(f"[{style}]{r['status']}[/]")
            else:
                cols.append(_num(r["median"]) + ("*" if r["noisy"] else ""))
        table.add_row(escape(str(case)), units[0] if units else "", *cols)
    table.caption = "* noisy (relative IQR > 10 %); why a case was skipped or failed: below"
    return table


def reasons(cases: pd.DataFrame) -> list:
    """'case: reason' for every case that did not run, to print under a table."""
    not_ok = cases[cases["status"] != "ok"]
    prefix = not_ok["cell"] + ": " if cases["cell"].nunique() > 1 else ""
    return list(prefix + not_ok["case"] + " " + not_ok["status"] + ": " + not_ok["reason"])


VERDICT_STYLE = {"faster": "green", "slower": "red", "same": "", "inconclusive": "yellow"}


def _rel_iqr(value: float) -> str:
    text = f"{100 * value:.0f}%"
    return f"[yellow]{text}[/]" if value > NOISY_REL_IQR else text


def comparison(table: pd.DataFrame, title: str) -> Table:
    """One line per compared case: medians, oriented ratio with its 95 % interval, each side's
    relative IQR (yellow when noisy), verdict and what to know before trusting it."""
    out = Table(title=title, title_justify="left")
    for name in (
        "case",
        "side",
        "baseline",
        "compared",
        "unit",
        "ratio",
        "95% CI",
        "p adj",
        "rel IQR",
        "verdict",
        "note",
    ):
        out.add_column(
            name,
            overflow="fold",
            justify="left" if name in ("case", "side", "unit", "verdict", "note") else "right",
        )
    for r in table.to_dict("records"):
        style = VERDICT_STYLE[r["verdict"]]
        verdict = f"[{style}]{r['verdict']}[/]" if style else r["verdict"]
        out.add_row(
            escape(r["case"]),
            escape(str(r["side"])),
            _num(r["median_base"]),
            _num(r["median_side"]),
            str(r["unit"]),
            f"{r['ratio']:.3f}",
            f"{r['ci_low']:.3f}–{r['ci_high']:.3f}",
            f"{r['p_adj']:.2g}",
            f"{_rel_iqr(r['rel_iqr_base'])} / {_rel_iqr(r['rel_iqr_side'])}",
            verdict,
            escape(r["note"]),
        )
    out.caption = (
        "ratio > 1: the compared side is better (higher rate or lower time); rel IQR: baseline"
        " / compared, yellow above 10 %"
    )
    return out
