"""Terminal rendering of result tables with rich."""

from __future__ import annotations

import math

import pandas as pd
from rich.markup import escape
from rich.table import Table


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
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in cases.to_dict("records"):
        lead = [escape(row["cell"])] if multi_cell else []
        if row["status"] != "ok":
            style = "yellow" if row["status"] == "skipped" else "red"
            table.add_row(
                *lead,
                escape(row["case"]),
                f"[{style}]{row['status']}[/]",
                f"[{style}]{escape(row['reason'])}[/]",
                "",
                "",
                "",
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
