"""Sides x benchmarks as an HTML table coloured only by the changes a comparison calls real."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import pandas as pd

from cudastack.contract.stats import NOISY_REL_IQR
from cudastack.host.analysis.markup import plain, text

CHANGED = ("faster", "slower")
# Colour strength grows with |log2 ratio| and is full from a 2x change; a significant change
# is never paler than MIN_STRENGTH, so 6 % faster still reads as green, not as white.
MIN_STRENGTH = 0.3
GREEN, RED, WHITE = (26, 127, 55), (207, 34, 46), (255, 255, 255)
NEUTRAL = "#e6e6e6"


class Cell(NamedTuple):
    """One (side, bench) of the heatmap."""

    side: str
    bench: str
    ratio: Optional[float]  # geometric mean of the changed rows' ratios; None when none changed
    changed: int  # rows called faster or slower, neither side noisy
    total: int  # rows compared
    noisy: int  # rows called faster or slower but left out because a side was noisy

    @property
    def label(self) -> str:
        """'1.21 (3 of 8)', or '— (0 of 8 changed)'."""
        if self.ratio is None:
            return f"— (0 of {self.total} changed)"
        return f"{self.ratio:.2f} ({self.changed} of {self.total})"


def cells(table: pd.DataFrame) -> list[Cell]:
    """The heatmap's cells of a comparison ``table`` (compare.compare's), sides and benches in
    table order. Only rows called faster or slower with neither side noisy colour a cell: an
    A/A rerun once showed gemm at 0.58 (red) from the plain mean of noisy ratios while every
    gemm row was "same". Same, inconclusive, not comparable and noisy rows count as neutral."""
    changed = table["verdict"].isin(CHANGED)
    quiet = ~(table["noisy_base"].astype(bool) | table["noisy_side"].astype(bool))
    frame = table.assign(changed=changed & quiet, left_out=changed & ~quiet)
    out = []
    for (side, bench), rows in frame.groupby(["side", "bench"], sort=False):
        ratios = rows.loc[rows["changed"], "ratio"]
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if len(ratios) else None
        out.append(
            Cell(str(side), str(bench), geo, len(ratios), len(rows), int(rows["left_out"].sum()))
        )
    return out


def colour(ratio: Optional[float]) -> str:
    """A cell's background: green above 1, red below, stronger the larger the change; grey
    for a neutral cell."""
    if ratio is None:
        return NEUTRAL
    strength = MIN_STRENGTH + (1 - MIN_STRENGTH) * min(1.0, abs(math.log2(ratio)))
    base = GREEN if ratio > 1 else RED
    r, g, b = (round(w + (c - w) * strength) for c, w in zip(base, WHITE))
    return f"#{r:02x}{g:02x}{b:02x}"


def _td(cell: Cell) -> str:
    strong = cell.ratio is not None and abs(math.log2(cell.ratio)) > 0.4
    style = f"background:{colour(cell.ratio)};color:{'#fff' if strong else '#222'}"
    why = f"{cell.changed} of {cell.total} cases changed significantly"
    if cell.noisy:
        why += f"; {cell.noisy} more called faster or slower but noisy, left neutral"
    ratio = "" if cell.ratio is None else f"{cell.ratio:.6g}"
    return (
        f"<td class='heat {'changed' if cell.ratio is not None else 'neutral'}' "
        f"style='{style}' title='{text(why)}' data-side='{text(cell.side)}' "
        f"data-bench='{text(cell.bench)}' data-ratio='{ratio}' data-changed='{cell.changed}' "
        f"data-total='{cell.total}' data-noisy='{cell.noisy}'>{text(cell.label)}</td>"
    )


def html(table: pd.DataFrame) -> str:
    """The heatmap of a comparison ``table`` as an HTML table, with a line saying how to read
    it: its numbers stay text a reader can copy and a test can read."""
    grid = {(c.side, c.bench): c for c in cells(table)}
    sides = list(dict.fromkeys(c.side for c in grid.values()))
    benches = list(dict.fromkeys(c.bench for c in grid.values()))
    head = "<th class='l'>side</th>" + "".join(f"<th>{text(b)}</th>" for b in benches)
    rows = []
    for side in sides:
        tds = (_td(grid[side, b]) if (side, b) in grid else "<td></td>" for b in benches)
        rows.append(f"<tr><th class='l'>{text(side)}</th>{''.join(tds)}</tr>")
    base = plain(table["baseline"].iloc[0])
    return (
        f"<p>Each cell: the geometric mean of the ratios against {text(base)} of the cases "
        "called faster or slower with neither side noisy (relative IQR at most "
        f"{100 * NOISY_REL_IQR:.0f} %), and how "
        "many of the bench's cases those are. Grey: none changed; same, inconclusive, not "
        "comparable and noisy cases count as no change.</p>"
        f"<div class='wide'><table class='heatmap'><tr>{head}</tr>{''.join(rows)}</table></div>"
    )
