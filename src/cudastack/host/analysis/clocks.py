"""NVML telemetry in the report: SM clock, power and temperature per case, and throttled marks."""

from __future__ import annotations

import pandas as pd

from cudastack.host.analysis.markup import paragraphs, plain
from cudastack.host.analysis.plots import png, pyplot

# The strip's panels: metric, axis label. Each is one value per measured window (telemetry.py
# on the environment side): median SM clock, mean power, highest temperature.
STRIP = (("sm_clock_mhz", "SM clock (MHz)"), ("power_w", "power (W)"), ("temp_c", "temp. (°C)"))
# throttled: 1 when any sample of a window had a power, thermal or slowdown clock reason;
# throttled_pct: the share of the window's samples that had one.
THROTTLE = ("throttled", "throttled_pct")


def per_case(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (side, case) that recorded telemetry, in run order (first row of the case in
    ``df``): the median over its windows of each STRIP metric, and the worst window's
    ``throttled`` and ``throttled_pct`` (one throttled window is enough to move a median). Empty
    when ``df`` has none (a CPU run, a GPU without NVML, an older run)."""
    metrics = [m for m, _ in STRIP] + list(THROTTLE)
    rows = df[(df["status"] == "ok") & df["metric"].isin(metrics)]
    if rows.empty:
        return pd.DataFrame(columns=["side", "bench", "case", *metrics])
    grouped = rows.groupby(["side", "bench", "case", "metric"], sort=False)["value"]
    stats = pd.concat([grouped.median().rename("median"), grouped.max().rename("max")], axis=1)
    stats["value"] = stats["median"].where(
        ~stats.index.get_level_values("metric").isin(THROTTLE), stats["max"]
    )
    wide = stats["value"].unstack("metric").reindex(columns=metrics)
    order = df.drop_duplicates(["side", "case"])[["side", "case"]]
    return order.merge(wide.reset_index(), on=["side", "case"], how="inner")


def mark(row: dict) -> str:
    """'⚠ throttled 35 %' for a per_case row whose GPU throttled in some window, else ''."""
    pct, flag = row.get("throttled_pct"), row.get("throttled")
    if pct is not None and pct == pct and pct > 0:
        return f"⚠ throttled {pct:.0f} %"
    if flag is not None and flag == flag and flag > 0:
        return "⚠ throttled"
    return ""


def marks(telemetry: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(side, case) -> its throttled mark, for the cases of a ``per_case`` table that
    throttled."""
    out = {}
    for row in telemetry.to_dict("records"):
        if text := mark(row):
            out[row["side"], row["case"]] = text
    return out


def strip(table: pd.DataFrame) -> str:
    """Small multiples of a ``per_case`` table: a row per side, a panel per STRIP metric, the
    cases in run order along x (labelled by bench where a new one starts), throttled cases in
    red (the section's text says so: a figure legend would cover a panel). A PNG data: URI."""
    plt = pyplot()
    sides = list(dict.fromkeys(table["side"]))
    fig, axes = plt.subplots(
        len(sides), len(STRIP), figsize=(11, 1.9 * len(sides) + 0.9), sharey="col", squeeze=False
    )
    for row, side in zip(axes, sides):
        cases = table[table["side"] == side].reset_index(drop=True)
        hot = cases.apply(lambda r: bool(mark(r.to_dict())), axis=1).to_numpy(dtype=bool)
        starts = cases.index[cases["bench"] != cases["bench"].shift()]
        for ax, (metric, label) in zip(row, STRIP):
            ax.plot(cases.index, cases[metric], "-o", ms=3, lw=1, color="#555")
            ax.plot(cases.index[hot], cases.loc[hot, metric], "o", ms=5, color="#cf222e")
            ax.set_xticks(list(starts), [plain(b) for b in cases.loc[starts, "bench"]])
            ax.tick_params(axis="x", labelsize=7, labelrotation=30)
            ax.set_title(f"{plain(side)}: {label}", fontsize=8)
            ax.grid(True, axis="y", color="#eee")
    fig.tight_layout()
    return png(fig)


def section(telemetry: pd.DataFrame, sides: list[str]) -> list[str]:
    """The report's telemetry section of a ``per_case`` table, naming those of ``sides`` that
    recorded none; nothing when no side did."""
    if telemetry.empty:
        return []
    without = [s for s in sides if s not in set(telemetry["side"])]
    return [
        "<h2>Clocks, power and temperature</h2>",
        "<p>NVML telemetry per case, in the order the cases ran: the median SM clock, the mean "
        "power and the highest temperature of its measured windows; red: the GPU throttled "
        "(power, thermal or slowdown clock reason) in some window.</p>",
        f"<img class='telemetry' alt='SM clock, power and temperature per case' "
        f"src='{strip(telemetry)}'>",
        *paragraphs(
            f"{side}: no telemetry recorded (no NVIDIA GPU or no NVML)." for side in without
        ),
    ]
