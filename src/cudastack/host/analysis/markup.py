"""HTML pieces of the report: plain escaped text, and tables whose long values wrap or truncate."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

import pandas as pd

from cudastack.contract import failures

# Longer than any reason (failures.REASON_LIMIT) or note a run writes: the report cuts nothing
# itself, it only keeps a runaway text (a pasted log) from swamping the page.
TEXT_LIMIT = 4000
# A value longer than this, in a column that is not WRAP, is cut with an ellipsis on screen and
# shown whole on hover (its title): an image digest or a long case id read as one token.
TRUNCATE_AT = 40
LEFT = ("case", "side", "cell", "field", "reason", "verdict", "status", "unit", "note", "throttled")
# Prose: wrapped within the column instead, so all of it stays readable.
WRAP = ("reason", "note")


def short(value: object, limit: int = 48) -> str:
    """``plain(value)`` cut to ``limit`` characters with an ellipsis: a label in a plot, which
    cannot show the rest on hover (the tables beside it do)."""
    return failures.clean(str(value), limit)


def plain(value: object) -> str:
    """``value`` as one line of text a page may show: ANSI escapes (a failed case's coloured
    log, ``\\x1b[31m``) and control characters removed, whitespace runs made one space."""
    return failures.clean(str(value), TEXT_LIMIT)


def text(value: object) -> str:
    """``plain(value)``, escaped for HTML text or a quoted attribute."""
    return html.escape(plain(value), quote=True)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def cell(column: str, value: Any) -> str:
    """One ``<td>``: numbers to 4 significant digits, a long token truncated with its whole value
    in ``title``, prose wrapped; verdict and status cells carry their value as a class."""
    classes = ["l"] if column in LEFT else []
    if column in ("verdict", "status") and not _missing(value):
        classes.append(plain(value).replace(" ", "-"))
    if _missing(value):
        body = ""  # no value: a CPU has no spec peak, a failed case no median
    elif isinstance(value, float):
        body = f"{value:.4g}"
    elif column in WRAP:
        classes.append("wrap")
        body = text(value)
    elif len(plain(value)) > TRUNCATE_AT:
        body = f"<span class='cut' title='{text(value)}'>{text(value)}</span>"
    else:
        body = text(value)
    return f"<td class='{' '.join(classes)}'>{body}</td>"


def table(frame: pd.DataFrame, classes: str = "") -> str:
    """``frame`` as an HTML table in a box that scrolls sideways if it is ever wider than the
    page (many sides), so the page itself never does."""
    # A column name may break after an underscore (median_<wbr>base), never inside a word.
    head = "".join(
        f"<th class='{'l' if c in LEFT else ''}'>{text(c).replace('_', '_<wbr>')}</th>"
        for c in frame.columns
    )
    rows = (
        "<tr>" + "".join(cell(str(c), v) for c, v in record.items()) + "</tr>"
        for record in frame.to_dict("records")
    )
    return (
        f"<div class='wide'><table class='{classes}'><tr>{head}</tr>{''.join(rows)}</table></div>"
    )


def paragraphs(lines: Iterable[object]) -> list[str]:
    """One ``<p>`` of plain text per line."""
    return [f"<p>{text(line)}</p>" for line in lines]
