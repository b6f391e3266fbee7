"""The report's matplotlib figures as inline PNG or SVG, and the speed-up and bar plots."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from typing import Any

import pandas as pd

from cudastack.host.analysis.markup import plain, short

# Ratio ticks on a log axis: 1-2-5 per decade, and finer ones near 1 where a narrow range
# would otherwise show a single tick.
COARSE_TICKS = tuple(m * 10.0**e for e in range(-3, 4) for m in (1, 2, 5))
FINE_TICKS = (0.8, 0.9, 1.1, 1.25)


def pyplot() -> Any:
    """matplotlib.pyplot, drawing to files only (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> str:
    """``fig`` as a data: URI for an ``<img>``; the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# Groups matplotlib names itself (figure_1, axes_1, xtick_1, ...): every figure has the same
# ones, so several inline SVGs would repeat ids in one page. Only our own gids are kept.
_AUTO_ID = re.compile(r' id="[A-Za-z][A-Za-z0-9.]*_\d+"')


def svg(fig: Any, label: str, titles: dict[str, str] | None = None) -> str:
    """``fig`` as an inline ``<svg>`` element (aria-label ``label``), its text kept as text so a
    browser can find it, and a ``<title>`` (a tooltip) in each group whose gid ``titles`` names.
    The figure is closed."""
    plt = pyplot()
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    body = buf.getvalue()
    body = body[body.index("<svg") :]  # no XML declaration or DOCTYPE inside HTML
    body = re.sub(r"<metadata>.*?</metadata>", "", body, flags=re.S)
    body = _AUTO_ID.sub("", body)
    for gid, title in (titles or {}).items():
        opening = f'<g id="{gid}">'  # a gid() slug: nothing to escape
        body = body.replace(opening, f"{opening}<title>{html.escape(title)}</title>", 1)
    label = html.escape(label, quote=True)
    return body.replace("<svg ", f"<svg class='plot' role='img' aria-label='{label}' ", 1)


def gid(*parts: str) -> str:
    """An SVG group id made of ``parts`` joined by '-', each character outside
    ``A-Za-z0-9_.=,[]-`` made '_': safe in an attribute and free of whitespace."""
    return "-".join(re.sub(r"[^A-Za-z0-9_.=,\[\]-]", "_", p) for p in parts)


def ratio_ticks(low: float, high: float) -> list[float]:
    """Ticks for a log axis of ratios from ``low`` to ``high``: 0.5, 1, 2 ... (1-2-5 per
    decade), with 0.8, 0.9, 1.1, 1.25 added when fewer than three of those fall inside, and
    only powers of ten when more than ten would."""
    coarse = [t for t in COARSE_TICKS if low <= t <= high]
    ticks = coarse
    if len(coarse) < 3:
        ticks = sorted(set(coarse) | {t for t in FINE_TICKS if low <= t <= high})
    if len(ticks) > 10:
        ticks = [t for t in ticks if math.log10(t).is_integer()]
    return ticks


def ratio_axis(ax: Any, low: float, high: float) -> None:
    """A log x axis from ``low`` to ``high`` labelled in ratios (0.5, 1, 2), not powers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(FixedLocator(ratio_ticks(low, high)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def _ratio_limits(table: pd.DataFrame) -> tuple[float, float]:
    """An x range holding every finite ratio and interval end, and at least 0.8 to 1.25, so
    a change of a few per cent never fills the plot."""
    ends = pd.concat([table["ratio"], table["ci_low"], table["ci_high"]])
    ends = ends[(ends > 0) & (ends < math.inf)]
    low = min(0.8, float(ends.min()) / 1.1) if len(ends) else 0.8
    high = max(1.25, float(ends.max()) * 1.1) if len(ends) else 1.25
    return low, high


def speedup_plot(table: pd.DataFrame) -> str:
    """Oriented ratio per case with its 95 % interval, one colour per compared side, on a log
    axis: ratios multiply, so 0.5 and 2 lie as far from 1, and one 10x outlier does not squash
    every other case against 1. An inline SVG."""
    plt = pyplot()
    cases = list(dict.fromkeys(table["case"]))
    low, high = _ratio_limits(table)
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(cases) + 1.5))
    for i, (side, rows) in enumerate(table.groupby("side", sort=False)):
        rows = rows[(rows["ratio"] > 0) & (rows["ratio"] < math.inf)]  # no ratio: nothing to draw
        pos = [cases.index(c) + 0.15 * i for c in rows["case"]]
        # An unbounded interval (one sample) is drawn to the edge of the plot.
        lo, hi = rows["ci_low"].clip(lower=low), rows["ci_high"].clip(upper=high)
        err = [(rows["ratio"] - lo).clip(lower=0), (hi - rows["ratio"]).clip(lower=0)]
        ax.errorbar(rows["ratio"], pos, xerr=err, fmt="o", ms=4, capsize=2, label=plain(side))
    ax.axvline(1.0, color="#888", lw=1)
    ratio_axis(ax, low, high)
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels([short(c) for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"ratio vs {plain(table['baseline'].iloc[0])} (> 1 is better; log scale)")
    ax.legend(fontsize=8)
    ax.set_gid("speedup-axes")
    return svg(fig, "speed-up per case, log scale")


def bar_plot(cases: pd.DataFrame, label: str) -> str:
    """A horizontal bar per (case, side) of one metric's median, as a PNG data: URI."""
    plt = pyplot()
    pivot = cases.pivot_table(index="case", columns="side", values="median", sort=False)
    pivot.index = [short(c) for c in pivot.index]
    pivot.columns = [plain(c) for c in pivot.columns]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(pivot) * max(1, pivot.shape[1]) ** 0.5 + 1.5))
    pivot.plot.barh(ax=ax, width=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(plain(label))
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8)
    return png(fig)
