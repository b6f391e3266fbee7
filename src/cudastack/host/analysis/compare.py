"""Compare cells or runs: oriented ratios, their 95 % intervals, p-values and verdicts.

A change counts only when it is significant after correcting for the number of comparisons
AND larger than an effect threshold (asv's rule; TorchBench's fixed threshold alone flooded its
maintainers with noise); "same" only when the whole interval lies within the threshold (an
equivalence test, so "not shown to differ" is never read as "no regression"); anything else is
inconclusive. Noise widens the interval and never overrides a verdict. Ratios are oriented by
`better`, so a ratio above 1 always means the compared side is better than the baseline.
A case whose GPU throttled, or ran at another SM clock than the baseline's, is "not comparable":
its ratio measures the clocks as much as the stack.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
from scipy.stats import binom, mannwhitneyu, norm, ttest_ind

from cudastack.contract.errors import CudastackError
from cudastack.contract.schema import CEILING_BENCH
from cudastack.contract.stats import NOISY_REL_IQR
from cudastack.host.analysis import clocks
from cudastack.host.analysis.results import PERCENT_COLUMNS, bench_kinds, headline_rank

VERDICTS = ("faster", "slower", "same", "inconclusive")
NOT_COMPARABLE = "not comparable"
# Median SM clocks further apart than this make a case not comparable: a GPU's rate follows its
# clock, so a 5 % lower clock alone reads as a 5 % "slower" stack.
CLOCK_TOLERANCE = 0.05


def verdict_counts(table: pd.DataFrame) -> str:
    """'2 faster, 0 slower, 5 same, 1 inconclusive (of 8 cases)' for a comparison ``table``,
    with how many of them are provisional (too few processes a side to trust)."""
    counts = table["verdict"].value_counts()
    cases = f"{len(table)} case" + ("s" if len(table) != 1 else "")
    shown = VERDICTS + ((NOT_COMPARABLE,) if counts.get(NOT_COMPARABLE, 0) else ())
    line = ", ".join(f"{counts.get(v, 0)} {v}" for v in shown) + f" (of {cases})"
    provisional = int(table["provisional"].sum())
    if provisional:
        line += (
            f"; {provisional} provisional: fewer than {MIN_PROCESSES} processes a side, "
            f"use --repeat {MIN_PROCESSES} or more to trust a verdict"
        )
    return line


KEYS = ["bench", "case", "metric", "unit", "better"]
# From this many worker processes a side (--repeat N), each process's median is one
# observation: on a shared machine a process's speed moves more from one process to the next
# than its own samples scatter, so treating every sample as independent would call that
# process-to-process drift a change.
MIN_PROCESSES = 3
# Past this many processes a side an inconclusive row is called undecidable in practice.
MAX_PROCESSES_TO_DECIDE = 100


class CompareError(CudastackError):
    """Sides that cannot be compared as asked (an unknown baseline, no shared case, ...)."""


@dataclass(frozen=True)
class Settings:
    """How strict a comparison is."""

    threshold: float = 0.05  # smallest change worth reporting (5 %)
    alpha: float = 0.05  # family-wise (holm) or false-discovery (bh) rate
    correction: str = "holm"
    n_boot: int = 2000
    seed: int = 0
    ignore_clocks: bool = False  # keep verdicts of throttled or clock-shifted cases

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise CompareError(
                f"--threshold {self.threshold:g}: give a fraction from 0 to below 1 (0.05 = 5 %)"
            )
        if not 0 < self.alpha < 1:
            raise CompareError(f"--alpha {self.alpha:g}: give a level between 0 and 1, e.g. 0.05")
        if self.correction not in ("holm", "bh"):
            raise CompareError(f"--correction {self.correction!r}: choose holm or bh")


def label_sides(df: pd.DataFrame) -> pd.Series:
    """What a column of the comparison is: the cell in one run, else the run (and cell)."""
    if df["run_id"].nunique() == 1:
        return df["cell"]
    per_run = df.groupby("run_id")["cell"].nunique()
    if (per_run == 1).all():
        return df["run_id"]
    return df["run_id"] + "/" + df["cell"]


def headline_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Ok rows of each case's headline metric only: one metric per case, so a change in
    latency and the same change in TFLOP/s are not counted as two discoveries. The headline is
    the one its bench declares (HEADLINE); runs recorded before benches declared one are read
    by results.HEADLINE_METRICS."""
    # A ceiling (bench `ceiling`) is what % of achievable is against, one best sample a process,
    # not a case of the suite: its gemm cases compare the same products.
    ok = df[
        (df["status"] == "ok")
        & ~df["metric"].isin(PERCENT_COLUMNS)
        & (df["bench"] != CEILING_BENCH)
    ]
    rank = headline_rank(ok["metric"], ok.get("headline", ""))
    best = rank.groupby([ok["side"], ok["case"]]).transform("min")
    return ok[rank == best]


def adjust(p: np.ndarray, method: str) -> np.ndarray:
    """Holm (family-wise) or Benjamini–Hochberg (false discovery rate) adjusted p-values."""
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adj = np.minimum.accumulate(m / np.arange(m, 0, -1) * ranked[::-1])[::-1]
    else:
        raise CompareError(f"unknown correction {method!r}; use holm or bh")
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def _rel_iqr(values: np.ndarray) -> float:
    # An infinite sample (a rate over a zero time) leaves the spread undefined: NaN, without
    # numpy's warning about inf - inf on the user's terminal.
    with np.errstate(invalid="ignore"):
        q1, med, q3 = np.percentile(values, [25, 50, 75])
    return float((q3 - q1) / abs(med)) if med else float("inf")


def _boot_medians(values: np.ndarray, s: Settings, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the median, drawn from their exact distribution.

    A resample's median is at or below the k-th smallest value exactly when at least half the
    draws are, a Binomial(n, k/n) event; sampling the order statistic from that distribution
    costs O(n + n_boot) instead of O(n * n_boot) for resampling (Maritz & Jarrett). For even n
    this takes the upper middle order statistic as the median, a negligible shift for a CI.
    """
    x = np.sort(values)
    n = len(x)
    cdf = binom.sf(n // 2, n, np.arange(1, n + 1) / n)  # P(median of a resample <= x[k-1])
    return x[np.minimum(np.searchsorted(cdf, rng.random(s.n_boot)), n - 1)]


def _process_medians(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (side, case, metric, process): that worker process's median."""
    keys = ["side", *KEYS, "process"]
    return rows.groupby(keys, sort=False, observed=True)["value"].median().reset_index()


def _groups(rows: pd.DataFrame) -> dict:
    """(side, bench, case, metric, unit, better) -> value array, without a slow groupby-apply."""
    grouped = rows.groupby(["side", *KEYS], sort=False, observed=True)
    codes = grouped.ngroup().to_numpy()
    values = rows["value"].to_numpy()[np.argsort(codes, kind="stable")]
    arrays = np.split(values, np.cumsum(np.bincount(codes))[:-1])
    return dict(zip(grouped.size().index, arrays))


class Estimate(NamedTuple):
    """One comparison's oriented ratio (> 1: the side is better), its 95 % interval and the
    two-sided p-value; with processes as the unit, also the oriented log ratio and the variance
    of a one-process-a-side difference, from which ``_processes_to_decide`` projects."""

    ratio: float
    ci_low: float
    ci_high: float
    p: float
    log_ratio: float = math.nan
    log_variance: float = math.nan


# No data either way: the row is inconclusive whatever the threshold.
_UNKNOWN = Estimate(math.nan, 0.0, math.inf, 1.0)


def compare(
    df: pd.DataFrame, baseline: Optional[str] = None, settings: Optional[Settings] = None
) -> pd.DataFrame:
    """One row per (case, compared side): medians, oriented ratio, 95 % CI, p, verdict, noise.

    ``df`` is the results table (results.load_table). Raises CompareError when fewer than two
    sides, an unknown baseline, or no shared case leave nothing to compare."""
    settings = settings or Settings()
    df = df.assign(side=label_sides(df))
    names = list(dict.fromkeys(df["side"]))
    if len(names) < 2:
        raise CompareError(
            f"nothing to compare: the results have one side ({names[0]}); give two "
            "runs, or a run with two cells"
        )
    base = baseline or names[0]
    if base not in names:
        raise CompareError(f"unknown baseline {base!r}; choose one of: {', '.join(names)}")
    rows = headline_rows(df)
    groups = _groups(rows)
    per_process = _groups(_process_medians(rows))
    rng = np.random.default_rng(settings.seed)
    out = []
    for key, samples in groups.items():
        side, bench, case, metric, unit, better = key
        if side != base:
            continue
        for other in names:
            other_key = (other, bench, case, metric, unit, better)
            b = groups.get(other_key)
            if other == base or b is None:
                continue
            processes = min(len(per_process[key]), len(per_process[other_key]))
            a = samples
            if processes >= MIN_PROCESSES:
                a, b = per_process[key], per_process[other_key]
            if not _measurable(a, b):
                est = _UNKNOWN  # a ratio needs positive, finite values on both sides
            elif processes >= MIN_PROCESSES:
                est = _by_process(a, b, better)
            else:
                est = _by_sample(a, b, better, settings, rng)
            out.append(
                {
                    "bench": bench,
                    "case": case,
                    "metric": metric,
                    "unit": unit,
                    "better": better,
                    "baseline": base,
                    "side": other,
                    "median_base": float(np.median(a)),
                    "median_side": float(np.median(b)),
                    "n_base": len(a),
                    "n_side": len(b),
                    "unit_of_n": "processes" if processes >= MIN_PROCESSES else "samples",
                    "processes": processes,
                    **est._asdict(),
                    "rel_iqr_base": _rel_iqr(a),
                    "rel_iqr_side": _rel_iqr(b),
                }
            )
    table = pd.DataFrame(out)
    if table.empty:
        raise CompareError(f"no case was measured both in {base} and in another side")
    table["noisy_base"] = table["rel_iqr_base"] > NOISY_REL_IQR
    table["noisy_side"] = table["rel_iqr_side"] > NOISY_REL_IQR
    table["p_adj"] = adjust(table["p"].to_numpy(), settings.correction)
    table["verdict"] = [verdict(r, settings) for r in table.to_dict("records")]
    table["clocks"] = clock_reasons(df, table)
    if not settings.ignore_clocks:
        table.loc[table["clocks"] != "", "verdict"] = NOT_COMPARABLE
    table["provisional"] = table["processes"] < MIN_PROCESSES
    table["processes_to_decide"] = pd.array(
        [_processes_to_decide(r, settings, len(table)) for r in table.to_dict("records")],
        dtype="Int64",
    )
    table["note"] = [_note(r) for r in table.to_dict("records")]
    table = table.drop(columns=["log_ratio", "log_variance"])
    kinds = bench_kinds(df)  # kernel | workload, as declared: what explain tells them apart by
    table["kind"] = [kinds.get(b, "") for b in table["bench"]]
    return table


def clock_reasons(df: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """For each row of the comparison ``table``: why its sides ran at different speeds of the
    GPU itself, or ''. A side is throttled when any of its windows had a power, thermal or
    slowdown clock reason (NVML telemetry: ``throttled``, ``throttled_pct``); the clocks differ
    when the median ``sm_clock_mhz`` of the two sides is more than CLOCK_TOLERANCE apart. Rows
    without telemetry (a CPU, a GPU without NVML) get ''."""
    telemetry = clocks.per_case(df.assign(side=label_sides(df)))
    if telemetry.empty:
        return [""] * len(table)
    # Worst window for throttling, median window for the clock (clocks.per_case).
    stats = telemetry.set_index(["side", "case"])

    def stat(side: str, case: str, metric: str) -> float:
        key = (side, case)
        return float(stats.at[key, metric]) if key in stats.index else math.nan

    reasons = []
    for base, side, case in zip(table["baseline"], table["side"], table["case"]):
        parts = [
            f"{name} throttled in {pct:.0f} % of a window"
            for name in (base, side)
            if (pct := stat(name, case, "throttled_pct")) > 0
        ]
        clock_base = stat(base, case, "sm_clock_mhz")
        clock_side = stat(side, case, "sm_clock_mhz")
        # Only clocks that were read: no NVML value is NaN, a zero is no clock either.
        read = clock_base > 0 and clock_side > 0
        if read and abs(clock_side / clock_base - 1) > CLOCK_TOLERANCE:
            parts.append(f"SM clock {clock_side:.0f} MHz vs {clock_base:.0f} MHz in {base}")
        reasons.append("; ".join(parts))
    return reasons


def _by_sample(
    a: np.ndarray, b: np.ndarray, better: str, s: Settings, rng: np.random.Generator
) -> Estimate:
    """Ratio of medians with a bootstrap interval and Mann–Whitney's p, every sample one
    observation: all there is with fewer than MIN_PROCESSES processes a side, and it
    understates the spread between processes, so such verdicts are provisional."""
    boot_a, boot_b = _boot_medians(a, s, rng), _boot_medians(b, s, rng)
    ma, mb = float(np.median(a)), float(np.median(b))
    if better == "higher":
        ratio, boots = mb / ma, boot_b / boot_a
    else:
        ratio, boots = ma / mb, boot_a / boot_b
    lo, hi = np.percentile(boots, [2.5, 97.5])
    if min(len(a), len(b)) < 2:
        return _UNKNOWN._replace(ratio=ratio)  # one sample cannot bound anything
    p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return Estimate(ratio, float(lo), float(hi), p)


def _measurable(a: np.ndarray, b: np.ndarray) -> bool:
    """Every value positive and finite: what a ratio (and its logarithm) needs. A zero or an
    infinity is no measurement; such a row is inconclusive, never a crash."""
    both = np.concatenate([a, b])
    return bool(np.all(np.isfinite(both)) and np.all(both > 0))


def _by_process(a: np.ndarray, b: np.ndarray, better: str) -> Estimate:
    """Welch's t on the logarithms of the process medians: the ratio of their geometric means,
    its t-interval and p. Whole processes' medians are close to log-normal, and a rank test on
    3-10 values a side cannot reach a corrected significance level (its smallest p for 5
    against 5 is 0.008). The interval's half-width shrinks as 1/sqrt(n), which says roughly
    how many processes a side would take an inconclusive row to a verdict."""
    log_a, log_b = np.log(a), np.log(b)
    sign = 1.0 if better == "higher" else -1.0  # oriented: > 0 means the side is better
    diff = sign * (log_b.mean() - log_a.mean())
    if np.ptp(log_a) == 0 and np.ptp(log_b) == 0:
        # No spread on either side: a certain difference if the values differ, else none.
        ratio = float(np.exp(diff))
        return Estimate(ratio, ratio, ratio, 0.0 if diff else 1.0)
    with warnings.catch_warnings():
        # One side without spread is expected here (identical process medians): scipy warns of
        # precision loss for "nearly identical" data, yet its zero variance is exact and
        # Welch's degrees of freedom come from the other side (the tests check p against an
        # independent Welch computation).
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        test = ttest_ind(log_b, log_a, equal_var=False)
    ci = test.confidence_interval(0.95)
    lo, hi = sorted((sign * ci.low, sign * ci.high))
    variance = log_a.var(ddof=1) + log_b.var(ddof=1)  # of a difference of one process a side
    return Estimate(
        float(np.exp(diff)),
        float(np.exp(lo)),
        float(np.exp(hi)),
        float(test.pvalue),
        diff,
        variance,
    )


def _processes_to_decide(row: dict, s: Settings, comparisons: int) -> Optional[int]:
    """For an inconclusive row with processes as the unit: roughly how many processes a side
    would narrow the interval of the oriented log ratio enough for a verdict, if the spread
    stays as it is. Beyond the threshold, it must clear no change at the corrected level
    (Bonferroni's alpha / ``comparisons``, which bounds Holm's and BH's first step); within,
    its 95 % interval must fit within ±threshold. The normal quantile stands in for Student's
    t. None for a decided row, per-sample statistics, or more than MAX_PROCESSES_TO_DECIDE."""
    diff, variance = row["log_ratio"], row["log_variance"]
    if row["verdict"] != "inconclusive" or not (math.isfinite(diff) and math.isfinite(variance)):
        return None
    up, down = math.log1p(s.threshold), math.log1p(-s.threshold)
    if down < diff < up:
        margin, z = min(up - diff, diff - down), norm.ppf(0.975)
    else:
        margin, z = abs(diff), norm.ppf(1 - s.alpha / (2 * comparisons))
    n = math.ceil((z / margin) ** 2 * variance) if margin > 0 else math.inf
    n = max(n, row["processes"] + 1)  # at least one more than now: this many did not decide it
    return int(n) if n <= MAX_PROCESSES_TO_DECIDE else None


def _note(row: dict) -> str:
    """What a reader must know to trust a row's verdict, or '': the clocks first."""
    clocks = row["clocks"]
    if clocks:
        if row["verdict"] == NOT_COMPARABLE:
            return f"{clocks}: not comparable (--ignore-clocks compares anyway)"
        clocks += " (compared anyway: --ignore-clocks)"
    return "; ".join(filter(None, (clocks, _trust(row))))


def _trust(row: dict) -> str:
    """What the statistics leave a reader to know: no ratio, too few processes, how many
    would decide an inconclusive row; or ''."""
    if not math.isfinite(row["ratio"]):
        return "a side has a zero, negative or infinite value: no ratio"
    if row["provisional"]:
        count = f"{row['processes']} process{'es' if row['processes'] > 1 else ''}"
        return f"{count} per side: use --repeat {MIN_PROCESSES} or more to trust a verdict"
    if row["verdict"] != "inconclusive":
        return ""
    needed = row["processes_to_decide"]
    if pd.isna(needed):
        return f"more than {MAX_PROCESSES_TO_DECIDE} processes a side would be needed to decide"
    return f"about {int(needed)} processes a side would decide it"


def verdict(row: dict, s: Settings) -> str:
    """One of VERDICTS for a row with ``ratio``, ``ci_low``, ``ci_high`` and ``p_adj``:

    - faster / slower: significant after the correction (p_adj < alpha), the whole interval
      beyond 1 in that direction, and the ratio at least the threshold away from 1;
    - same: the whole interval within 1 ± threshold (shown equal within the threshold);
    - inconclusive: neither.
    The bounds are inclusive; a hair of tolerance keeps a ratio computed to be exactly at the
    threshold (1.05 - 1 = 0.05000000000000004) on the side it was meant to be."""
    lo, hi, ratio, t = row["ci_low"], row["ci_high"], row["ratio"], s.threshold
    eps = 1e-12
    significant = row["p_adj"] < s.alpha
    if significant and lo > 1 and ratio > 1 and ratio - 1 >= t - eps:
        return "faster"
    if significant and hi < 1 and ratio < 1 and 1 - ratio >= t - eps:
        return "slower"
    if lo >= 1 - t - eps and hi <= 1 + t + eps:
        return "same"
    return "inconclusive"


def notes(df: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """What a reader of the comparison ``table`` of ``df`` must know beside its rows: cases
    only one side measured, sides measured on different devices, and separate runs' distance
    in time."""
    return one_sided(df, table) + other_devices(df, table) + time_apart(df, table)


def other_devices(df: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """A line for each compared side whose cases ran on another device model than the
    baseline's (``device_name``: the GPU, or the CPU model): on a cluster the array's tasks
    land on whichever nodes are free, and a change then belongs to the hardware as much as to
    the stack."""
    if "device_name" not in df:
        return []
    rows = headline_rows(df.assign(side=label_sides(df)))
    devices = rows.groupby("side")["device_name"].agg(lambda d: sorted(set(d) - {""}))
    base = table["baseline"].iloc[0]
    lines = []
    for side in dict.fromkeys(table["side"]):
        have, had = devices.get(side, []), devices.get(base, [])
        if have and had and have != had:
            lines.append(
                f"{side} ran on {' and '.join(have)}, {base} on {' and '.join(had)}: different "
                "devices, so a change is the hardware's as much as the stack's (on Slurm, pin "
                "the node type with --constraint or --gres gpu:TYPE:N)"
            )
    return lines


def one_sided(df: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """A line for each compared side with cases that only one of it and the baseline measured
    (ok on one side; skipped, failed or absent on the other), which no verdict covers: a
    case that stopped running must not vanish from a comparison unremarked."""
    rows = headline_rows(df.assign(side=label_sides(df)))
    cases = rows.groupby("side", sort=False)["case"].agg(lambda c: list(dict.fromkeys(c)))
    base = table["baseline"].iloc[0]
    lines = []
    for side in dict.fromkeys(table["side"]):
        for have, lack in ((base, side), (side, base)):
            lacking = set(cases.get(lack, []))
            only = [c for c in cases.get(have, []) if c not in lacking]
            if only:
                listed = ", ".join(only[:3]) + (
                    f" and {len(only) - 3} more" if len(only) > 3 else ""
                )
                lines.append(
                    f"{len(only)} case{'s' if len(only) > 1 else ''} measured in {have} but not "
                    f"in {lack}, so not compared: {listed}"
                )
    return lines


def time_apart(df: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """A line for each compared side that is a separate run from the baseline: how far apart
    in time the two ran (from the cases' ``started_at``), and why that matters. Two runs one
    after the other once gave an 8 % "slower" on an unchanged stack because the host slowed
    between them; cells of one run take turns and share any drift."""
    if "started_at" not in df:
        return []
    at = pd.to_datetime(df["started_at"], utc=True, errors="coerce", format="ISO8601")
    frame = df.assign(side=label_sides(df), at=at)
    spans = frame.groupby("side")["at"].agg(["min", "max"])
    runs = frame.groupby("side")["run_id"].agg(frozenset)
    base = table["baseline"].iloc[0]
    lines = []
    for side in dict.fromkeys(table["side"]):
        if runs[side] == runs[base] or spans.loc[[side, base]].isna().any(axis=None):
            continue
        (start, end), (base_start, base_end) = spans.loc[side], spans.loc[base]
        if base_end < start or end < base_start:
            gap = start - base_end if base_end < start else base_start - end
            when = "after" if base_end < start else "before"
            lines.append(
                f"{side} ran {_duration(gap)} {when} {base}, as a separate run: a machine that "
                "drifts between runs reads as a change; where both stacks can run together, put "
                "both cells in one `cudastack bench --repeat 3`, whose processes take turns"
            )
        else:
            lines.append(
                f"{side} and {base} are separate runs that overlapped in time: their processes "
                "took turns, or competed for the machine"
            )
    return lines


def _duration(span: pd.Timedelta) -> str:
    """'45 s', '12 min', '2 h 14 min', '3 d 4 h': as precise as a reader needs."""
    seconds = int(span.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"
