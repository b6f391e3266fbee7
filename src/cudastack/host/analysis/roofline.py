"""Roofline per side: kernel cases at (FLOP per byte, TFLOP/s) under the ceilings measured."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import pandas as pd

from cudastack.contract.schema import CEILING_BENCH
from cudastack.host.analysis.markup import paragraphs, plain, text
from cudastack.host.analysis.plots import gid, pyplot, svg
from cudastack.host.analysis.results import case_params

INTENSITY = "flop_per_byte"  # arithmetic intensity a kernel case records: FLOP per byte moved


class Point(NamedTuple):
    """One kernel case of one side: its median intensity and rate."""

    case: str
    dtype: str  # from the case's parameters; '' when it has none
    intensity: float  # FLOP per byte
    tflops: float


class Roofs(NamedTuple):
    """What a side's cases are drawn against; a source says where each roof came from."""

    compute: dict[str, float]  # dtype -> TFLOP/s
    memory: Optional[float]  # GB/s
    compute_source: str  # "measured (ceiling)", "data sheet (<board>)" or ""
    memory_source: str

    def ridge(self, dtype: str) -> Optional[float]:
        """The intensity (FLOP/byte) where ``dtype``'s compute roof meets the memory roof."""
        if self.memory is None or dtype not in self.compute:
            return None
        return self.compute[dtype] * 1000 / self.memory  # TFLOP/s over GB/s, in FLOP per byte


def _medians(rows: pd.DataFrame, metric: str) -> pd.Series:
    """case -> median of ``metric``, positive and finite only (a log axis)."""
    picked = rows[rows["metric"] == metric]
    med = picked.groupby("case", sort=False)["value"].median()
    return med[(med > 0) & (med < math.inf)]


def points(rows: pd.DataFrame) -> list[Point]:
    """The kernel cases among one side's ok ``rows`` that record both TFLOP/s and their
    intensity, in the rows' order; the ceiling cases themselves are the roofs, not points."""
    rows = rows[rows["bench"] != CEILING_BENCH]
    tflops, intensity = _medians(rows, "tflops"), _medians(rows, INTENSITY)
    both = [str(case) for case in tflops.index if case in intensity.index]
    return [
        Point(case, case_params(case).get("dtype", ""), float(intensity[case]), float(tflops[case]))
        for case in both
    ]


def _measured(rows: pd.DataFrame, what: str, metric: str) -> dict[str, float]:
    """dtype -> the best case median of ``metric`` among the ceiling cases measuring
    ``what``: a ceiling is the most the machine was seen to reach."""
    out: dict[str, float] = {}
    medians = _medians(rows[rows["bench"] == CEILING_BENCH], metric)
    for case, value in medians.items():
        found = case_params(str(case))
        if found.get("what") == what:
            dtype = found.get("dtype", "")
            out[dtype] = max(out.get(dtype, 0.0), float(value))
    return out


def roofs(rows: pd.DataFrame, env: dict, dtypes: set[str]) -> Roofs:
    """One side's roofs: the ceilings its run measured (``ceiling[what=matmul,dtype=...]``'s
    TFLOP/s, one roof per dtype; ``ceiling[what=copy]``'s GB/s), each else the data-sheet
    peak in its env.json (compute roofs only for ``dtypes``, those its points have), else none.
    Measured ceilings come first: a data sheet states boost clocks and no real kernel's mix."""
    compute = _measured(rows, "matmul", "tflops")
    copies = _measured(rows, "copy", "gbps")
    memory = max(copies.values()) if copies else None
    compute_source = "measured (ceiling)" if compute else ""
    memory_source = "measured (ceiling)" if memory else ""
    sheet = _sheet(env)
    if sheet is not None:
        board, values = sheet
        if not compute:
            compute = {d: float(values[d]) for d in sorted(dtypes) if _positive(values.get(d))}
            compute_source = f"data sheet ({board})" if compute else ""
        if memory is None and _positive(values.get("mem")):
            memory, memory_source = float(values["mem"]), f"data sheet ({board})"
    return Roofs(compute, memory, compute_source, memory_source)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0 < value < math.inf


def _sheet(env: dict) -> Optional[tuple[str, dict]]:
    """(board, peaks) from env.json's ``gpu.peaks``, which the worker writes when it knew the
    board; None otherwise (a CPU, an unknown GPU, an older run)."""
    gpu = env.get("gpu") if isinstance(env, dict) else None
    peaks = gpu.get("peaks") if isinstance(gpu, dict) else None
    if isinstance(peaks, dict) and isinstance(peaks.get("values"), dict):
        return str(peaks.get("board", "")), peaks["values"]
    return None


def figure(side: str, pts: list[Point], r: Roofs, index: int) -> str:
    """One side's roofline as an inline SVG: log-log, the memory roof a diagonal (TFLOP/s =
    FLOP/byte x GB/s / 1000), one flat compute roof per dtype from its ridge on, the ridges
    marked, the points coloured by dtype. Its groups carry ids s<index>-roof-memory,
    s<index>-roof-compute-<dtype>, s<index>-ridge-<dtype> and s<index>-point-<case>."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    prefix = f"s{index}"
    dtypes = sorted({p.dtype for p in pts} | set(r.compute))
    colours = {d: f"C{i % 10}" for i, d in enumerate(dtypes)}
    ridges = {d: x for d in r.compute if (x := r.ridge(d)) is not None}
    xs = [p.intensity for p in pts] + list(ridges.values())
    x_lo, x_hi = min(xs) / 4, max(xs) * 4
    ys = [p.tflops for p in pts] + list(r.compute.values())
    if r.memory is not None:
        # The diagonal up to the highest flat roof, or across the plot when there is none.
        x_end = max(ridges.values()) if ridges else x_hi
        ax.plot(
            [x_lo, x_end],
            [x_lo * r.memory / 1000, x_end * r.memory / 1000],
            color="#444",
            lw=2,
            label=f"memory {r.memory:.4g} GB/s, {r.memory_source}",
            gid=gid(prefix, "roof-memory"),
        )
        ys.append(x_lo * r.memory / 1000)
    for dtype, peak in r.compute.items():
        ridge = ridges.get(dtype)
        ax.plot(
            [ridge or x_lo, x_hi],
            [peak, peak],
            color=colours[dtype],
            lw=2,
            label=f"{dtype or 'compute'} {peak:.4g} TFLOP/s, {r.compute_source}",
            gid=gid(prefix, "roof-compute", dtype),
        )
        if ridge is not None:
            ax.plot(
                [ridge],
                [peak],
                "D",
                color=colours[dtype],
                mfc="white",
                mew=2,
                gid=gid(prefix, "ridge", dtype),
            )
            ax.annotate(
                f"ridge {ridge:.3g} FLOP/B",
                (ridge, peak),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=7,
                color=colours[dtype],
            )
    for dtype in dtypes:  # one legend entry per dtype of points, not one per point
        if any(p.dtype == dtype for p in pts):
            ax.plot([], [], "o", color=colours[dtype], label=f"{dtype or 'cases'} cases")
    for p in pts:
        ax.plot(
            [p.intensity],
            [p.tflops],
            "o",
            ms=6,
            color=colours[p.dtype],
            mec="#222",
            mew=0.5,
            gid=gid(prefix, "point", p.case),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(min(ys) / 2, max(ys) * 2)
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(plain(side), fontsize=10)
    ax.grid(True, which="major", color="#eee")
    ax.legend(fontsize=7, loc="lower right")
    titles = {
        gid(prefix, "point", p.case): f"{plain(p.case)}: {p.intensity:.3g} FLOP/B, "
        f"{p.tflops:.3g} TFLOP/s"
        for p in pts
    }
    return svg(fig, f"roofline of {plain(side)}", titles)


def section(df: pd.DataFrame, envs: dict) -> list[str]:
    """The report's roofline section for ``df`` (all sides' rows, with ``side``), or nothing
    when no case of any side recorded its intensity. A side without points or roofs gets a
    one-line note instead of a plot."""
    ok = df[df["status"] == "ok"]
    sides = list(dict.fromkeys(df["side"]))
    found = {side: points(ok[ok["side"] == side]) for side in sides}
    if not any(found.values()):
        return []
    parts = [
        "<h2>Roofline</h2>",
        "<p>Each kernel case at its median arithmetic intensity and TFLOP/s (hover for its "
        "name), under the roofs its own run measured: the best matmul TFLOP/s per dtype and "
        "the best copy GB/s of the <code>ceiling</code> cases, else the GPU's data sheet. Left "
        "of a ridge a case is bound by memory bandwidth, right of it by compute.</p>",
    ]
    figures = []
    for index, side in enumerate(sides):
        pts = found[side]
        if not pts:
            parts += paragraphs([f"{side}: no kernel case recorded its intensity ({INTENSITY})."])
            continue
        r = roofs(ok[ok["side"] == side], envs.get(side, {}), {p.dtype for p in pts})
        if not r.compute and r.memory is None:
            parts += paragraphs(
                [
                    f"{side}: no roofline: its run measured no ceilings (bench "
                    f"{CEILING_BENCH}) and its env.json has no data-sheet peaks for its device."
                ]
            )
            continue
        figures.append(
            f"<figure class='roofline' data-side='{text(side)}' data-points='{len(pts)}'>"
            f"{figure(side, pts, r, index)}<figcaption>{text(_caption(r))}</figcaption></figure>"
        )
    if figures:  # side by side where the page is wide enough
        parts.append(f"<div class='rooflines'>{''.join(figures)}</div>")
    return parts


def _caption(r: Roofs) -> str:
    compute = ", ".join(f"{d or 'compute'} {v:.4g} TFLOP/s" for d, v in r.compute.items())
    memory = f"memory {r.memory:.4g} GB/s, {r.memory_source}" if r.memory is not None else ""
    parts = [f"{compute}, {r.compute_source}" if compute else "", memory]
    return "Roofs: " + "; ".join(x for x in parts if x) + "."
