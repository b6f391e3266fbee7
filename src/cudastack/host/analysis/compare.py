"""Compare cells or runs: ratio of medians, bootstrap interval, Mann–Whitney U, verdicts.

A change counts only when it is significant after correcting for the number of comparisons
AND larger than an effect threshold (asv's rule; TorchBench's fixed threshold alone flooded its
maintainers with noise). Ratios are oriented by `better`, so a ratio above 1 always means the
compared side is better than the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy.stats import binom, mannwhitneyu, ttest_ind

from cudastack.contract.errors import CudastackError
from cudastack.contract.stats import NOISY_REL_IQR
from cudastack.host.analysis.results import bench_kinds, headline_rank

VERDICTS = ("faster", "slower", "same", "noisy")


def verdict_counts(table: pd.DataFrame) -> str:
    """How many rows of a comparison ``table`` got each verdict, e.g. '2 faster, 0 slower, ...'."""
    counts = table["verdict"].value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


KEYS = ["bench", "case", "metric", "unit", "better"]
# From this many worker processes a side (--repeat N), each process's median is one
# observation: on a shared machine a process's speed moves more from one process to the next
# than its own samples scatter, so treating every sample as independent would call that
# process-to-process drift a change.
MIN_PROCESSES = 3


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
    ok = df[(df["status"] == "ok") & (df["metric"] != "pct_of_peak")]
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


def compare(
    df: pd.DataFrame, baseline: Optional[str] = None, settings: Optional[Settings] = None
) -> pd.DataFrame:
    """One row per (case, compared side): medians, oriented ratio, 95 % CI, p, verdict."""
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
            by_process = min(len(per_process[key]), len(per_process[other_key])) >= MIN_PROCESSES
            a = samples
            if by_process:
                a, b = per_process[key], per_process[other_key]
            ma, mb = float(np.median(a)), float(np.median(b))
            boot_a, boot_b = _boot_medians(a, settings, rng), _boot_medians(b, settings, rng)
            if better == "higher":
                ratio, boots = mb / ma, boot_b / boot_a
            else:
                ratio, boots = ma / mb, boot_a / boot_b
            lo, hi = np.percentile(boots, [2.5, 97.5])
            p = _p_value(a, b, by_process)
            out.append(
                {
                    "bench": bench,
                    "case": case,
                    "metric": metric,
                    "unit": unit,
                    "better": better,
                    "baseline": base,
                    "side": other,
                    "median_base": ma,
                    "median_side": mb,
                    "n_base": len(a),
                    "n_side": len(b),
                    "unit_of_n": "processes" if by_process else "samples",
                    "ratio": ratio,
                    "ci_low": float(lo),
                    "ci_high": float(hi),
                    "p": p,
                    "noisy_base": _rel_iqr(a) > NOISY_REL_IQR,
                    "noisy_side": _rel_iqr(b) > NOISY_REL_IQR,
                }
            )
    table = pd.DataFrame(out)
    if table.empty:
        raise CompareError(f"no case was measured both in {base} and in another side")
    table["p_adj"] = adjust(table["p"].to_numpy(), settings.correction)
    table["verdict"] = [verdict(r, settings) for r in table.to_dict("records")]
    kinds = bench_kinds(df)  # kernel | workload, as declared: what explain tells them apart by
    table["kind"] = [kinds.get(b, "") for b in table["bench"]]
    return table


def _p_value(a: np.ndarray, b: np.ndarray, by_process: bool) -> float:
    """Mann–Whitney U over samples; over a few process medians, Welch's t-test on their logs:
    a rank test on 3-10 values per side cannot reach a corrected significance level (its
    smallest p for 5 against 5 is 0.008), while the medians of whole processes are close to
    log-normal, the t-test's assumption."""
    if min(len(a), len(b)) < 2:
        return 1.0
    if by_process:
        log_a, log_b = np.log(a), np.log(b)
        if np.ptp(log_a) == 0 and np.ptp(log_b) == 0:
            # No spread on either side: a certain difference if the values differ, else none.
            return 0.0 if log_a[0] != log_b[0] else 1.0
        return float(ttest_ind(log_a, log_b, equal_var=False).pvalue)
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def verdict(row: dict, s: Settings) -> str:
    """faster / slower only when significant, beyond the threshold, with an interval that
    excludes no change, on quiet data; noisy when either side is too noisy to tell; else same."""
    changed = (
        row["p_adj"] < s.alpha
        and abs(row["ratio"] - 1) >= s.threshold
        and (row["ci_low"] > 1 or row["ci_high"] < 1)
    )
    if row["noisy_base"] or row["noisy_side"]:
        return "noisy"
    if changed:
        return "faster" if row["ratio"] > 1 else "slower"
    return "same"
