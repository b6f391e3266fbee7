"""Terminal rendering of result tables with rich."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
from rich import box
from rich.console import Group, RenderableType
from rich.constrain import Constrain
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cudastack.contract.failures import clean
from cudastack.contract.stats import NOISY_REL_IQR
from cudastack.host.analysis.results import case_params


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}"


# Text under the tables (what did not run, the legend) keeps to a width read at a glance, also on
# a wider terminal or in a log (piped, the console is 200 columns wide).
TEXT_WIDTH = 100
# Each failed case needs looking at: its id is shown without --verbose up to this many a reason.
FAILED_SHOWN = 3
_STATUS_STYLE = {"skipped": "yellow"}  # any other status that is not ok: failed, in red


def results_view(
    cases: pd.DataFrame,
    title: str,
    verbose: bool = False,
    kinds: Mapping[str, str] | None = None,
    more: str = "",
) -> Group:
    """A run's case table (``results.case_table``) for the terminal, modelled on
    torch.utils.benchmark's Compare: one block per bench of the cases that ran, only the
    parameters that vary within it as columns (the constant ones in its title), one column per
    cell when there are several; then one line per (status, reason) of the cases that did not
    run, with each case's id when ``verbose``. ``kinds`` (bench -> kernel | workload) labels the
    blocks; ``more`` says what lists the cases left unlisted (e.g. `show --verbose`)."""
    ran = cases[cases["status"] == "ok"]
    # A cell where nothing ran (skipped whole, failed to build) is no column: a line says why.
    cells = list(dict.fromkeys(ran["cell"]))
    parts: list[RenderableType] = [Text(title, style="bold")]
    for bench, rows in cases[cases["bench"].isin(set(ran["bench"]))].groupby("bench", sort=False):
        ids = list(dict.fromkeys(rows.loc[rows["status"] == "ok", "case"]))
        varying, constant = _split_params(ids)
        kind = (kinds or {}).get(str(bench), "")
        label = Text.assemble(
            ("\n" + str(bench), "bold"),
            (f" ({kind})" if kind else "", "dim"),
            *(f" · {c}" for c in constant),
        )
        if len(cells) > 1:
            # The cells' columns hold medians alone: their one unit is said once, here.
            units = set(rows.loc[rows["status"] == "ok", "unit"].astype(str))
            label.append(f" — median {units.pop()}" if len(units) == 1 else "", "dim")
            table = _matrix(rows, ids, cells, varying)
        else:
            table = _stats(rows, varying)
        # A long one wraps at whitespace even on a console that soft-wraps (host.console).
        label.no_wrap, label.overflow = False, "fold"
        parts += [Constrain(label, TEXT_WIDTH), table]
    legend = _legend(ran, len(cells) > 1) if len(ran) else None
    below = [legend, _not_run(cases, verbose, more)]
    parts += [Constrain(part, TEXT_WIDTH) for part in below if part is not None]
    return Group(*parts)


def _split_params(ids: list[str]) -> tuple[list[str], list[str]]:
    """The parameter names whose values differ among the cases ``ids``, and the others as
    ``key=value``, both in case-id order; a constant empty value (`weights=`: none given) says
    nothing and is left out."""
    params = [case_params(case) for case in ids]
    keys = list(dict.fromkeys(k for p in params for k in p))
    varying = [k for k in keys if len({p.get(k, "") for p in params}) > 1]
    first = params[0] if params else {}
    return varying, [f"{k}={first[k]}" for k in keys if k not in varying and first.get(k)]


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")


def _param_columns(table: Table, varying: list[str]) -> None:
    for key in varying:
        # A long value (a path, a layer name) folds onto more lines; numbers stay whole.
        table.add_column(escape(key), overflow="fold")


def _stats(rows: pd.DataFrame, varying: list[str]) -> Table:
    """One cell's cases that ran: a row each with the varying parameters' values, the headline
    median, its spread (relative IQR) and % of the spec or achievable peak where known."""
    ran = rows[rows["status"] == "ok"]
    units = list(dict.fromkeys(ran["unit"].astype(str)))
    peaks = [
        (name, column)
        for name, column in (("% spec", "pct_of_peak"), ("% achv", "pct_of_achievable"))
        if ran.get(column) is not None and ran[column].notna().any()
    ]
    table = _table()
    _param_columns(table, varying)
    table.add_column(f"median {units[0]}".strip() if len(units) == 1 else "median", justify="right")
    if len(units) > 1:
        table.add_column("unit")
    table.add_column("spread", justify="right")
    for name, _ in peaks:
        table.add_column(name, justify="right")
    for r in ran.to_dict("records"):
        params = case_params(r["case"])
        unit = [str(r["unit"])] if len(units) > 1 else []
        # One sample (a ceiling: the best one) has no spread to show, not a spread of 0.
        text = f"{100 * r['rel_iqr']:.1f}%" if r["n"] > 1 else "1 sample"
        spread = Text(text + ("*" if r["noisy"] else " "))
        if r["noisy"]:
            spread.stylize("yellow")
        table.add_row(
            *(escape(params.get(k, "")) for k in varying),
            _value(r["median"]),
            *unit,
            spread,
            *(_pct(r[column]) for _, column in peaks),
        )
    return table


def _matrix(rows: pd.DataFrame, ids: list[str], cells: list[str], varying: list[str]) -> Table:
    """Cases that ran in some cell down, cells across: each cell's headline median, `*` when
    noisy, or what became of the case there."""
    by_case = {
        case: {r["cell"]: r for r in group.to_dict("records")}
        for case, group in rows.groupby("case", sort=False)
    }
    units = list(dict.fromkeys(rows.loc[rows["status"] == "ok", "unit"].astype(str)))
    table = _table()
    _param_columns(table, varying)
    if len(units) > 1:
        table.add_column("unit")
    for cell in cells:
        # Cell names are long (cu12.8-torch2.9.1-py3.12): a line a part keeps the column narrow.
        header = "\n".join(cell.split("-")) if len(cell) > 12 else cell
        table.add_column(escape(header), justify="right")
    for case in ids:
        by_cell = by_case[case]
        params = case_params(case)
        unit = next(str(r["unit"]) for r in by_cell.values() if r["status"] == "ok")
        table.add_row(
            *(escape(params.get(k, "")) for k in varying),
            *([unit] if len(units) > 1 else []),
            *(_cell_value(by_cell.get(cell)) for cell in cells),
        )
    return table


def _cell_value(row: dict | None) -> Text:
    if row is None:
        return Text("")
    if row["status"] != "ok":
        return Text(f"{row['status']} ", style=_STATUS_STYLE.get(row["status"], "red"))
    # The mark, or a space, after every number keeps the digits of a column aligned.
    return Text(_value(row["median"]) + ("*" if row["noisy"] else " "))


def _value(value: float) -> str:
    """Four significant digits, without an exponent from 0.0001 to 999999."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    if -4 <= magnitude < 6:
        return f"{value:.{max(0, 3 - magnitude)}f}"
    return f"{value:.3e}"


def _pct(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.1f}"


def _legend(ran: pd.DataFrame, multi_cell: bool) -> Text:
    """What the columns' marks and names mean: once, under all the blocks."""
    if multi_cell:
        return Text(f"\n* noisy: relative IQR above {NOISY_REL_IQR:.0%}", style="dim")
    parts = [f"\nspread: relative IQR of the samples, * above {NOISY_REL_IQR:.0%} (noisy)"]
    if ran["pct_of_peak"].notna().any():
        parts.append("% spec: of the data sheet's peak")
    achievable = ran.get("pct_of_achievable")
    if achievable is not None and achievable.notna().any():
        parts.append("% achv: of the peak measured on the device")
    return Text("\n".join(parts), style="dim")


def _reason(reason: str) -> str:
    """A reason as one line: its first line with text, escape codes and control characters
    stripped."""
    lines = (clean(line) for line in str(reason).splitlines())
    return next((line for line in lines if line), "no reason given")


def _not_run(cases: pd.DataFrame, verbose: bool, more: str) -> Group | None:
    """One line per (status, reason) of what did not run, failed first, saying how many cases
    (each case's id under it when ``verbose``, a failed one's up to FAILED_SHOWN anyway) or
    which cells (named always: a whole cell is rare and big)."""
    not_ok = cases[cases["status"] != "ok"]
    if not len(not_ok):
        return None
    not_ok = not_ok.assign(why=not_ok["reason"].map(_reason))
    multi_cell = cases["cell"].nunique() > 1
    groups = sorted(
        not_ok.groupby(["status", "why"], sort=False), key=lambda g: g[0][0] == "skipped"
    )
    heads = [_heading(str(status), group, multi_cell) for (status, _), group in groups]
    lines: list[RenderableType] = []
    unlisted = False
    for ((status, why), group), head in zip(groups, heads):
        # A grid a line, its first column as wide as the widest: the reasons start in one
        # column and wrap under themselves; the ids below take the whole width.
        line = Table.grid(padding=(0, 1))
        line.add_column(no_wrap=True, min_width=max(len(h) for h in heads))
        line.add_column(overflow="fold")
        line.add_row(Text(head, _STATUS_STYLE.get(str(status), "bold red")), Text(str(why)))
        lines.append(line)
        each = group[group["bench"] != "harness"]
        shown = len(each) if verbose or (status != "skipped" and len(each) <= FAILED_SHOWN) else 0
        unlisted = unlisted or shown < len(each)
        listed = [
            f"cell {c}" for c in dict.fromkeys(group.loc[group["bench"] == "harness", "cell"])
        ]
        listed += [
            f"{c}: {k}" if multi_cell else k for c, k in each[["cell", "case"]].values[:shown]
        ]
        # Case ids wrap as the console wraps: host.console keeps them whole, to copy and grep.
        lines += [Text(f"  {item}", style="dim") for item in listed]
    if unlisted and more:
        lines.append(Text(f"({more})", style="dim"))
    return Group(*lines)


def _heading(status: str, group: pd.DataFrame, multi_cell: bool) -> str:
    """``skipped 3 cases:``, ``failed 2 cases in 1 cell:`` (several cells), ``skipped 1 cell:``
    (a whole cell's row, bench `harness`), or both joined by `and`."""
    each = group[group["bench"] != "harness"]
    whole = group.loc[group["bench"] == "harness", "cell"].nunique()
    what = [_count(each["case"].nunique(), "case"), _count(whole, "cell")]
    if multi_cell and len(each):
        what[0] += f" in {_count(each['cell'].nunique(), 'cell')}"
    return f"{status} {' and '.join(w for w in what if w)}:"


def _count(n: int, what: str) -> str:
    return "" if n == 0 else f"{n} {what}" if n == 1 else f"{n} {what}s"


VERDICT_STYLE = {
    "faster": "green",
    "slower": "red",
    "same": "",
    "inconclusive": "yellow",
    "not comparable": "magenta",
}


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
