"""Comparison statistics on synthetic samples with known answers."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from cudastack.host.analysis import compare
from cudastack.host.analysis.compare import Settings


def samples(side, case, values, metric="tflops", better="higher", run="r1", process=0):
    return pd.DataFrame(
        {
            "run_id": run,
            "cell": side,
            "bench": case.split("[")[0],
            "case": case,
            "metric": metric,
            "unit": "TFLOP/s" if metric == "tflops" else "ms",
            "better": better,
            "status": "ok",
            "value": values,
            "rep": range(len(values)),
            "process": process,
        }
    )


def rng(seed=1):
    return np.random.default_rng(seed)


def table(*parts):
    return pd.concat(parts, ignore_index=True)


def test_equal_distributions_are_the_same():
    r = rng()
    df = table(
        samples("a", "gemm[n=1]", 100 + r.normal(0, 1, 200)),
        samples("b", "gemm[n=1]", 100 + r.normal(0, 1, 200)),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["verdict"] == "same"
    assert row["ci_low"] < 1 < row["ci_high"]


@pytest.mark.parametrize(
    ("better", "factor", "expected"),
    [
        ("higher", 1.10, "faster"),
        ("higher", 0.90, "slower"),
        ("lower", 0.90, "faster"),
        ("lower", 1.10, "slower"),
    ],
)
def test_a_ten_percent_shift_is_found_with_the_right_sign(better, factor, expected):
    r = rng()
    metric = "tflops" if better == "higher" else "latency"
    df = table(
        samples("a", "x[n=1]", 100 + r.normal(0, 1, 50), metric, better),
        samples("b", "x[n=1]", factor * (100 + r.normal(0, 1, 50)), metric, better),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["verdict"] == expected
    oriented = factor if better == "higher" else 1 / factor
    assert row["ratio"] == pytest.approx(oriented, rel=0.01)
    assert row["ci_low"] <= row["ratio"] <= row["ci_high"]


@pytest.mark.parametrize(("factor", "expected"), [(1.0, "inconclusive"), (0.5, "slower")])
def test_noise_widens_the_interval_and_never_overrides_a_verdict(factor, expected):
    # Both sides spread about 50 % (relative IQR): flagged noisy, yet a halving is still
    # called slower, and no change is inconclusive, never "same".
    r = rng()
    df = table(
        samples("a", "x[n=1]", 100 * r.lognormal(0, 0.4, 30)),
        samples("b", "x[n=1]", factor * 100 * r.lognormal(0, 0.4, 30)),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["verdict"] == expected
    assert row["noisy_base"] and row["noisy_side"]
    assert row["rel_iqr_base"] > 0.3 and row["rel_iqr_side"] > 0.3


def test_small_changes_below_the_threshold_are_the_same():
    r = rng()
    df = table(
        samples("a", "x[n=1]", 100 + r.normal(0, 0.2, 400)),
        samples("b", "x[n=1]", 102 + r.normal(0, 0.2, 400)),
    )
    (row,) = compare.compare(df, settings=Settings(threshold=0.05)).to_dict("records")
    assert row["p_adj"] < 1e-6 and row["verdict"] == "same"  # significant, but only 2 %
    (row,) = compare.compare(df, settings=Settings(threshold=0.01)).to_dict("records")
    assert row["verdict"] == "faster"


def test_holm_and_bh_adjustments_match_hand_computed_values():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert compare.adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert compare.adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    with pytest.raises(compare.CompareError, match="unknown correction"):
        compare.adjust(p, "bonferroni-ish")


def test_the_correction_is_applied_across_cases():
    # Forty cases: one weakly shifted (uncorrected p about 0.01) among 39 unchanged ones.
    r = rng(7)
    parts = []
    for i in range(40):
        shift = 1.06 if i == 0 else 1.0
        parts.append(samples("a", f"x[i={i}]", 100 + r.normal(0, 4, 12)))
        parts.append(samples("b", f"x[i={i}]", shift * (100 + r.normal(0, 4, 12))))
    out = compare.compare(table(*parts), settings=Settings(threshold=0.0))
    weak = out[out["case"] == "x[i=0]"].iloc[0]
    assert weak["p"] < 0.05 <= weak["p_adj"]
    assert (out["p_adj"] >= out["p"]).all()


def test_baseline_and_sides():
    r = rng()
    df = table(
        samples("a", "x[n=1]", 100 + r.normal(0, 1, 20)),
        samples("b", "x[n=1]", 100 + r.normal(0, 1, 20)),
        samples("c", "x[n=1]", 100 + r.normal(0, 1, 20)),
    )
    out = compare.compare(df, baseline="b")
    assert set(out["side"]) == {"a", "c"} and set(out["baseline"]) == {"b"}
    with pytest.raises(compare.CompareError, match="unknown baseline 'z'; choose one of: a, b, c"):
        compare.compare(df, baseline="z")
    with pytest.raises(compare.CompareError, match="nothing to compare"):
        compare.compare(samples("a", "x[n=1]", [1.0, 2.0]))


def test_runs_become_sides_when_several_are_given():
    r = rng()
    df = table(
        samples("local", "x[n=1]", 100 + r.normal(0, 1, 20), run="r1"),
        samples("local", "x[n=1]", 100 + r.normal(0, 1, 20), run="r2"),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert (row["baseline"], row["side"]) == ("r1", "r2")


def test_only_the_headline_metric_is_compared():
    r = rng()
    df = table(
        samples("a", "x[n=1]", 10 + r.normal(0, 0.1, 20)),
        samples("a", "x[n=1]", 5 + r.normal(0, 0.1, 20), "latency", "lower"),
        samples("b", "x[n=1]", 10 + r.normal(0, 0.1, 20)),
        samples("b", "x[n=1]", 5 + r.normal(0, 0.1, 20), "latency", "lower"),
    )
    out = compare.compare(df)
    assert list(out["metric"]) == ["tflops"]
    # A bench that declares its headline (schema 4 on) is compared by it, whatever the order of
    # the metrics it records; and the row says which kind of bench it is.
    declared = df.assign(headline="latency", kind="kernel")
    (row,) = compare.compare(declared).to_dict("records")
    assert (row["metric"], row["kind"]) == ("latency", "kernel")
    assert compare.compare(df.assign(bench="gemm"))["kind"].tolist() == ["kernel"]  # LEGACY_KINDS
    assert compare.compare(df)["kind"].tolist() == [""]  # an unknown bench of an old run


def processes(side, case, centres, r, spread=0.002, per=40):
    """Worker processes with their own centre each, and tight samples around it."""
    return [
        samples(side, case, c * (1 + r.normal(0, spread, per)), process=i)
        for i, c in enumerate(centres)
    ]


def test_process_to_process_drift_is_not_a_change_once_processes_are_the_unit():
    r = rng(3)
    # Each process lands 0-8 % apart, samples within a process agree to 0.2 %: per sample,
    # two single processes 6 % apart look decisively different...
    one_each = table(*processes("a", "gemm[n=1]", [100], r), *processes("b", "gemm[n=1]", [94], r))
    (row,) = compare.compare(one_each).to_dict("records")
    assert row["unit_of_n"] == "samples" and row["verdict"] == "slower"
    # ... which is why such a verdict is provisional, and says so on its row.
    assert row["provisional"] and row["processes"] == 1
    assert row["note"] == "1 process per side: use --repeat 3 or more to trust a verdict"
    # ... while five processes a side drawn from the same spread are the same.
    five = table(
        *processes("a", "gemm[n=1]", [100, 94, 97, 101, 96], r),
        *processes("b", "gemm[n=1]", [95, 100, 98, 94, 99], r),
    )
    (row,) = compare.compare(five).to_dict("records")
    assert row["unit_of_n"] == "processes" and row["n_base"] == row["n_side"] == 5
    assert row["verdict"] == "same" and not row["provisional"] and row["note"] == ""


def test_two_processes_a_side_are_provisional_and_say_how_many():
    r = rng(6)
    df = table(
        *processes("a", "gemm[n=1]", [100, 99], r), *processes("b", "gemm[n=1]", [80, 81], r)
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["provisional"] and row["processes"] == 2
    assert row["note"] == "2 processes per side: use --repeat 3 or more to trust a verdict"


def test_a_fifteen_percent_slowdown_is_found_across_processes():
    r = rng(4)
    centres = np.array([100, 97, 99, 101, 98])
    df = table(
        *processes("a", "gemm[n=1]", centres, r),
        *processes("b", "gemm[n=1]", centres / 1.15 * r.normal(1, 0.01, 5), r),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["unit_of_n"] == "processes" and row["verdict"] == "slower"
    assert row["ratio"] == pytest.approx(1 / 1.15, rel=0.03) and row["ci_high"] < 1


def test_a_lower_is_better_metric_half_as_long_across_processes_is_twice_as_fast():
    # Latency in ms, the side's processes at exactly half the baseline's: the ratio of the
    # geometric means, oriented so that > 1 is better, is 2, and Welch's interval on the logs
    # (the same spread both sides) lies above 1.
    base = [10.0, 11.0, 12.0]
    df = table(
        *[samples("a", "x[n=1]", [v], "latency", "lower", process=i) for i, v in enumerate(base)],
        *[
            samples("b", "x[n=1]", [v / 2], "latency", "lower", process=i)
            for i, v in enumerate(base)
        ],
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["unit_of_n"] == "processes" and row["verdict"] == "faster"
    assert row["ratio"] == pytest.approx(2.0, rel=1e-12)
    half = student_t.ppf(0.975, 4) * np.sqrt(2 * np.var(np.log(base), ddof=1) / 3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        (2 * np.exp(-half), 2 * np.exp(half)), rel=1e-9
    )


def test_processes_without_spread_that_differ_are_a_change():
    df = table(
        *[samples("a", "x[n=1]", [100.0] * 5, process=i) for i in range(3)],
        *[samples("b", "x[n=1]", [80.0] * 5, process=i) for i in range(3)],
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["unit_of_n"] == "processes" and row["p"] == 0.0 and row["verdict"] == "slower"


# A row that meets every condition for a change: a corrected p under alpha, 10 % away from 1
# (the threshold is 5 %), a 95 % interval clear of 1, and both sides quiet.
QUIET = {"noisy_base": False, "noisy_side": False}
FASTER = {"p": 0.001, "p_adj": 0.001, "ratio": 1.10, "ci_low": 1.05, "ci_high": 1.15, **QUIET}
SLOWER = {"p": 0.001, "p_adj": 0.001, "ratio": 0.90, "ci_low": 0.85, "ci_high": 0.95, **QUIET}


def test_a_row_meeting_every_condition_is_a_change():
    assert compare.verdict(FASTER, Settings()) == "faster"
    assert compare.verdict(SLOWER, Settings()) == "slower"


@pytest.mark.parametrize(
    ("row", "broken"),
    [
        # Significant before the correction only: the raw p is still 0.001.
        (FASTER, {"p_adj": 0.2}),
        (SLOWER, {"p_adj": 0.2}),
        (FASTER, {"p_adj": 0.05}),  # alpha itself is not below alpha
        # Certain, but smaller than the threshold, and the interval reaches past it.
        (FASTER, {"ratio": 1.04, "ci_low": 1.02, "ci_high": 1.06}),
        (SLOWER, {"ratio": 0.96, "ci_low": 0.94, "ci_high": 0.98}),
        # Beyond the threshold and significant, but the interval still holds no change.
        (FASTER, {"ci_low": 0.99}),
        (SLOWER, {"ci_high": 1.01}),
    ],
)
def test_a_row_failing_one_condition_of_a_change_is_inconclusive_not_same(row, broken):
    assert compare.verdict({**row, **broken}, Settings()) == "inconclusive"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.95, 1.05, "same"),  # the equivalence bounds are inclusive: exactly ±5 % is same
        (0.96, 1.04, "same"),
        (0.9499, 1.0, "inconclusive"),
        (1.0, 1.0501, "inconclusive"),
        (0.7, 1.3, "inconclusive"),  # a wide interval around 1 is "don't know", not "same"
    ],
)
def test_same_needs_the_whole_interval_within_the_threshold(low, high, expected):
    row = {"p": 1.0, "p_adj": 1.0, "ratio": 1.0, "ci_low": low, "ci_high": high}
    assert compare.verdict(row, Settings(threshold=0.05)) == expected


@pytest.mark.parametrize(
    ("ratio", "expected"), [(1.05, "faster"), (1.0499, "same"), (0.95, "slower"), (0.9501, "same")]
)
def test_a_certain_change_at_the_threshold_is_a_change_and_below_it_same(ratio, expected):
    # A certain change (interval of width zero) of exactly 5 % is a change; a hair less is
    # shown equal within 5 %.
    row = {"p": 0.0, "p_adj": 0.0, "ratio": ratio, "ci_low": ratio, "ci_high": ratio}
    assert compare.verdict(row, Settings(threshold=0.05)) == expected


@pytest.mark.parametrize("row", [FASTER, SLOWER])
@pytest.mark.parametrize("side", ["noisy_base", "noisy_side"])
def test_a_noisy_side_never_overrides_a_change(row, side):
    assert compare.verdict({**row, side: True}, Settings()) == compare.verdict(row, Settings())


def test_the_settings_alpha_and_threshold_are_the_ones_applied():
    assert compare.verdict(FASTER, Settings(alpha=0.001)) == "inconclusive"  # 0.001 not below
    # 10 % is below a 15 % threshold, and the interval 1.05-1.15 lies within ±15 %.
    assert compare.verdict(FASTER, Settings(threshold=0.15)) == "same"


def process_medians(side, case, values):
    """One sample per process: the process medians are the values themselves."""
    return [samples(side, case, [v], process=i) for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("base", "side", "expected"),
    [
        # Half the speed, the processes spread ±20 %: slower (Welch on logs: p about 0.014,
        # interval about 0.32-0.79).
        ([80, 100, 120], [40, 50, 60], "slower"),
        # The same values a side, tight (±1 %): shown equal within 5 %.
        ([99, 100, 101], [101, 99, 100], "same"),
        # The same values a side, spread ±25 %: no evidence either way.
        ([75, 100, 125], [125, 75, 100], "inconclusive"),
    ],
)
def test_known_answers_on_three_process_medians_a_side(base, side, expected):
    df = table(*process_medians("a", "x[n=1]", base), *process_medians("b", "x[n=1]", side))
    (row,) = compare.compare(df).to_dict("records")
    assert row["unit_of_n"] == "processes" and not row["provisional"]
    assert row["verdict"] == expected
    if expected != "inconclusive":  # a decided row needs no more processes
        assert pd.isna(row["processes_to_decide"]) and row["note"] == ""


def test_welch_interval_and_p_on_the_logs_of_process_medians():
    # Logs a side: log 100 + (-0.1, 0, 0.1) and that + 0.2, so the ratio of geometric means is
    # e^0.2, each side's log variance 0.01, the standard error sqrt(0.02 / 3), 4 degrees of
    # freedom: the interval is e^(0.2 ± t(0.975, 4) * se) and p = 2 * t.sf(0.2 / se, 4).
    spread = np.exp([-0.1, 0.0, 0.1])
    df = table(
        *process_medians("a", "x[n=1]", 100 * spread),
        *process_medians("b", "x[n=1]", 100 * math.exp(0.2) * spread),
    )
    (row,) = compare.compare(df).to_dict("records")
    se, t = math.sqrt(0.02 / 3), student_t.ppf(0.975, 4)
    assert row["ratio"] == pytest.approx(math.exp(0.2))
    assert row["ci_low"] == pytest.approx(math.exp(0.2 - t * se))
    assert row["ci_high"] == pytest.approx(math.exp(0.2 + t * se))
    assert row["p"] == pytest.approx(2 * student_t.sf(0.2 / se, 4))
    # 0.2 - t * se < 0: the interval holds 1, so no verdict yet. With the spread as it is, a
    # 95 % interval of half-width 1.96 * sqrt(0.02 / n) clears no change from n = 2, and one
    # more than the 3 now is the least that could decide: about 4 processes a side.
    assert row["verdict"] == "inconclusive" and row["processes_to_decide"] == 4
    assert row["note"] == "about 4 processes a side would decide it"


def test_processes_to_decide_scales_with_the_spread():
    # The same shape with 5x the spread: n = (1.96 / 0.2)^2 * 0.02 * 25 = 48.02 -> 49.
    spread = np.exp([-0.5, 0.0, 0.5])
    df = table(
        *process_medians("a", "x[n=1]", 100 * spread),
        *process_medians("b", "x[n=1]", 100 * math.exp(0.2) * spread),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["processes_to_decide"] == 49
    # Two such cases: a change must clear the corrected level, alpha / 2 (Bonferroni, which
    # bounds Holm's first step): z(1 - 0.0125) = 2.241, n = (2.241 / 0.2)^2 * 0.5 = 62.8 -> 63.
    two = table(df, df.assign(case="y[n=1]"))
    assert compare.compare(two)["processes_to_decide"].tolist() == [63, 63]
    # Around no change, the interval must fit within ±5 %: n = (1.96 / log 1.05)^2 * 0.5 = 807,
    # more than anyone would run.
    df = table(
        *process_medians("a", "x[n=1]", 100 * spread),
        *process_medians("b", "x[n=1]", 100 * spread[::-1]),
    )
    out = compare.compare(df)
    (row,) = out.to_dict("records")
    assert row["verdict"] == "inconclusive" and pd.isna(row["processes_to_decide"])
    assert row["note"] == "more than 100 processes a side would be needed to decide"
    assert out["processes_to_decide"].dtype == "Int64"  # whole numbers or <NA>, also all <NA>


def undecided(log_ratio: float, log_variance: float, processes: int = 3) -> dict:
    return {
        "verdict": "inconclusive",
        "log_ratio": log_ratio,
        "log_variance": log_variance,
        "processes": processes,
    }


UP, DOWN = math.log1p(0.05), math.log1p(-0.05)  # the ±5 % threshold as log ratios


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        # Within the band, nearer its upper edge: the interval's half-width 1.96 * sqrt(v / n)
        # must fit in log 1.05 - 0.01 = 0.0388: n = (1.96 / 0.0388)^2 * 0.002 = 5.1 -> 6.
        (undecided(0.01, 0.002), 6),
        # Nearer the lower edge: 0.03 + log 0.95 = 0.0213 left, (1.96 / 0.0213)^2 * 0.001 = 8.5.
        (undecided(-0.03, 0.001), 9),
        # Exactly on an edge is beyond the band: it must clear no change, (1.96 / 0.0488)^2 *
        # 0.005 = 8.1 and (1.96 / 0.0513)^2 * 0.005 = 7.3.
        (undecided(UP, 0.005), 9),
        (undecided(DOWN, 0.005), 8),
        # Exactly the most that is said: (1.96 / 0.2)^2 * v = 99.5 -> 100.
        (undecided(0.2, 99.5 * (0.2 / 1.959963984540054) ** 2), 100),
        # One more than now at least: (1.96 / 0.2)^2 * 0.001 = 0.1, but 3 did not decide it.
        (undecided(0.2, 0.001), 4),
        # Per-sample rows have no variance across processes: nothing to say.
        (undecided(0.01, math.nan), None),
    ],
)
def test_processes_to_decide_known_answers(row, expected):
    assert compare._processes_to_decide(row, Settings(), 1) == expected


def test_no_number_of_processes_decides_a_ratio_of_exactly_one_at_a_zero_threshold():
    assert compare._processes_to_decide(undecided(0.0, 0.01), Settings(threshold=0.0), 1) is None


def test_verdict_counts_say_how_many_of_how_many_and_which_are_provisional():
    rows = pd.DataFrame(
        {
            "verdict": ["faster", "slower", "slower", "same", "inconclusive"],
            "provisional": [False, False, True, False, False],
        }
    )
    assert compare.verdict_counts(rows) == (
        "1 faster, 2 slower, 1 same, 1 inconclusive (of 5 cases); 1 provisional: fewer than 3 "
        "processes a side, use --repeat 3 or more to trust a verdict"
    )
    assert compare.verdict_counts(rows[:1].assign(provisional=False)) == (
        "1 faster, 0 slower, 0 same, 0 inconclusive (of 1 case)"
    )


def test_adjustments_keep_their_order_and_stay_at_most_one():
    # Holm: sorted p x (m, m-1, ...) = 0.02, 0.011, then a running maximum: 0.02, 0.02.
    # BH: sorted p x m / rank = 0.02, 0.011, then a running minimum from the top: 0.011, 0.011.
    p = np.array([0.01, 0.011])
    assert compare.adjust(p, "holm") == pytest.approx([0.02, 0.02])
    assert compare.adjust(p, "bh") == pytest.approx([0.011, 0.011])
    assert compare.adjust(np.array([0.6, 0.7]), "holm").tolist() == [1.0, 1.0]  # 1.2, 1.4 capped


@pytest.mark.parametrize(
    ("correction", "p_adj", "expected"),
    [("holm", 7 / 126, "inconclusive"), ("bh", 1 / 126, "faster")],
)
def test_the_named_correction_decides_the_verdict(correction, p_adj, expected):
    # Seven cases, each five samples a side with no overlap (20 % faster): Mann-Whitney's
    # exact two-sided p is 2 / C(10, 5) = 1/126, under alpha alone. Holm multiplies the
    # smallest of seven equal p by 7: 7/126 = 0.056, not significant. BH keeps them at 1/126.
    parts = []
    for i in range(7):
        parts.append(samples("a", f"x[i={i}]", [100.0, 101.0, 102.0, 103.0, 104.0]))
        parts.append(samples("b", f"x[i={i}]", [120.0, 121.0, 122.0, 123.0, 124.0]))
    out = compare.compare(table(*parts), settings=Settings(correction=correction))
    assert out["p"].tolist() == pytest.approx([1 / 126] * 7)
    assert out["p_adj"].tolist() == pytest.approx([p_adj] * 7)
    assert out["ratio"].tolist() == pytest.approx([122 / 102] * 7) and (out["ci_low"] > 1).all()
    assert set(out["verdict"]) == {expected}


@pytest.mark.parametrize(
    ("n_base", "n_side", "unit"),
    [(3, 3, "processes"), (2, 2, "samples"), (3, 2, "samples"), (2, 3, "samples")],
)
def test_processes_become_the_unit_from_three_on_each_side(n_base, n_side, unit):
    # MIN_PROCESSES = 3: from three worker processes on BOTH sides, one median per process.
    r = rng(5)
    df = table(
        *processes("a", "x[n=1]", [100, 101, 99][:n_base], r, per=10),
        *processes("b", "x[n=1]", [100, 101, 99][:n_side], r, per=10),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["unit_of_n"] == unit
    per = 1 if unit == "processes" else 10  # one value per process, or its 10 samples
    assert (row["n_base"], row["n_side"]) == (n_base * per, n_side * per)


def test_runs_with_several_cells_are_labelled_run_slash_cell():
    # Two runs, one of them with two cells: neither the run nor the cell alone names a side.
    df = table(
        samples("a", "x[n=1]", [100.0, 101.0, 102.0], run="r1"),
        samples("b", "x[n=1]", [100.0, 101.0, 102.0], run="r1"),
        samples("a", "x[n=1]", [100.0, 101.0, 102.0], run="r2"),
    )
    out = compare.compare(df)
    assert set(out["baseline"]) == {"r1/a"}
    assert out["side"].tolist() == ["r1/b", "r2/a"]


def test_rows_carry_the_case_keys_and_both_medians():
    df = table(
        samples("a", "gemm[n=1]", [1.0, 2.0, 3.0, 4.0, 50.0]),
        samples("b", "gemm[n=1]", [2.0, 4.0, 6.0, 8.0, 10.0]),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert (row["bench"], row["case"], row["metric"]) == ("gemm", "gemm[n=1]", "tflops")
    assert (row["unit"], row["better"]) == ("TFLOP/s", "higher")
    assert (row["median_base"], row["median_side"]) == (3.0, 6.0)
    assert row["ratio"] == 2.0  # higher is better: side over base


def test_cases_keep_the_order_they_were_measured_in():
    # Not sorted by name: the table reads in the order of the run.
    df = table(
        samples("a", "zeta[n=1]", [1.0, 2.0, 3.0]),
        samples("a", "alpha[n=1]", [1.0, 2.0, 3.0]),
        samples("b", "zeta[n=1]", [1.0, 2.0, 3.0]),
        samples("b", "alpha[n=1]", [1.0, 2.0, 3.0]),
    )
    assert compare.compare(df)["case"].tolist() == ["zeta[n=1]", "alpha[n=1]"]


def test_failed_rows_do_not_enter_the_medians():
    failed = samples("b", "x[n=1]", [1000.0, 1000.0, 1000.0, 1000.0]).assign(status="error")
    df = table(
        samples("a", "x[n=1]", [10.0, 11.0, 12.0]),
        samples("b", "x[n=1]", [20.0, 21.0, 22.0]),
        failed,
    )
    (row,) = compare.compare(df).to_dict("records")
    assert (row["median_side"], row["n_side"]) == (21.0, 3)


def test_a_case_without_a_headline_metric_compares_its_own_metric_but_not_pct_of_peak():
    # "iters" is not a headline metric: it is still the case's metric, and pct_of_peak (a
    # derived share of the hardware peak) is never compared.
    parts = []
    for side in ("a", "b"):
        parts.append(samples(side, "x[n=1]", [5.0, 6.0, 7.0], "iters"))
        parts.append(samples(side, "x[n=1]", [50.0, 60.0, 70.0], "pct_of_peak"))
    assert compare.compare(table(*parts))["metric"].tolist() == ["iters"]


def test_pct_of_peak_alone_leaves_nothing_to_compare():
    df = table(
        samples("a", "x[n=1]", [50.0, 60.0, 70.0], "pct_of_peak"),
        samples("b", "x[n=1]", [50.0, 60.0, 70.0], "pct_of_peak"),
    )
    with pytest.raises(
        compare.CompareError, match="no case was measured both in a and in another side"
    ):
        compare.compare(df)


def test_sides_without_a_common_case_are_an_error_that_says_so():
    df = table(samples("a", "x[n=1]", [1.0, 2.0]), samples("b", "y[n=1]", [1.0, 2.0]))
    with pytest.raises(
        compare.CompareError, match="no case was measured both in a and in another side"
    ):
        compare.compare(df)


def test_one_side_only_says_how_to_get_two():
    with pytest.raises(
        compare.CompareError, match=r"one side \(a\); give two runs, or a run with two cells"
    ):
        compare.compare(samples("a", "x[n=1]", [1.0, 2.0]))


def test_one_correction_of_one_p_value_still_checks_the_method():
    assert compare.adjust(np.array([0.3]), "holm").tolist() == [0.3]
    with pytest.raises(compare.CompareError, match="unknown correction"):
        compare.adjust(np.array([0.3]), "bonferroni-ish")


def test_the_interval_is_reproducible_from_the_seed():
    r = rng()
    df = table(
        samples("a", "x[n=1]", 100 + r.normal(0, 1, 30)),
        samples("b", "x[n=1]", 100 + r.normal(0, 1, 30)),
    )
    first, again = compare.compare(df), compare.compare(df)
    assert first["ci_low"].tolist() == again["ci_low"].tolist()
    assert first["ci_high"].tolist() == again["ci_high"].tolist()
    other = compare.compare(df, settings=Settings(seed=1))
    assert other["ci_low"].tolist() != first["ci_low"].tolist()


def median_at_most(n: int, k: int) -> float:
    """P(the median of n draws with replacement from n sorted values is <= the k-th): at least
    n // 2 + 1 of the draws land among the k smallest, each with probability k / n (taking the
    upper middle value as the median when n is even)."""
    p = k / n
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(n // 2 + 1, n + 1))


def test_the_interval_holds_the_exact_bootstrap_quantiles_of_the_median():
    # The baseline is constant, so the ratio's bootstrap distribution is the side's median's:
    # the 2.5 % and 97.5 % quantiles are the first sorted value whose cumulative probability
    # reaches 0.025 and 0.975. Nine values put 3.0 % on "at most the 2nd", fourteen put 98.3 %
    # on "at most the 11th": both clear of 3.5 % and 98.5 %, so a shifted percentile would land
    # on the next value. 200 000 draws make the sampled quantiles land on the exact ones.
    parts = []
    for n in (9, 14):
        parts.append(samples("a", f"x[n={n}]", [100.0] * n))
        parts.append(samples("b", f"x[n={n}]", 100.0 + np.arange(n)))
    out = compare.compare(table(*parts), settings=Settings(n_boot=200_000)).set_index("case")

    def quantile_value(n: int, q: float) -> float:
        k = next(k for k in range(1, n + 1) if median_at_most(n, k) >= q)
        return 100.0 + (k - 1)

    assert median_at_most(9, 2) == pytest.approx(0.0304, abs=1e-4)
    assert median_at_most(14, 11) == pytest.approx(0.9830, abs=1e-4)
    for n in (9, 14):
        assert out.loc[f"x[n={n}]", "ci_low"] == quantile_value(n, 0.025) / 100
        assert out.loc[f"x[n={n}]", "ci_high"] == quantile_value(n, 0.975) / 100


def test_bootstrap_medians_are_drawn_from_their_exact_distribution():
    # Three values: a resample's median is the smallest when at least two of three draws are,
    # 7/27; the largest likewise 7/27; the middle 13/27. Every value, the largest included.
    draws = compare._boot_medians(
        np.array([3.0, 1.0, 2.0]), Settings(n_boot=270_000), np.random.default_rng(5)
    )
    values, counts = np.unique(draws, return_counts=True)
    assert values.tolist() == [1.0, 2.0, 3.0]
    assert (counts / len(draws)).tolist() == pytest.approx([7 / 27, 13 / 27, 7 / 27], abs=0.005)
    assert median_at_most(3, 1) == pytest.approx(7 / 27)


def test_a_relative_iqr_of_exactly_ten_percent_is_not_noisy():
    # 90, 95, 100, 105, 110: quartiles 95 and 105 around a median of 100, a relative IQR of
    # exactly 0.10, the limit itself; raising the lower quartile a hair (94.99) tips it over.
    at_limit = [90.0, 95.0, 100.0, 105.0, 110.0]
    over = [90.0, 94.99, 100.0, 105.0, 110.0]
    (row,) = compare.compare(
        table(samples("a", "x[n=1]", at_limit), samples("b", "x[n=1]", at_limit))
    ).to_dict("records")
    assert (row["noisy_base"], row["noisy_side"]) == (False, False)
    (row,) = compare.compare(
        table(samples("a", "x[n=1]", over), samples("b", "x[n=1]", over))
    ).to_dict("records")
    # IQR 10.01 over a median of 100: 0.1001, just above the limit.
    assert (row["noisy_base"], row["noisy_side"]) == (True, True)


def test_a_zero_median_is_infinitely_noisy():
    # All zeros: no spread, but no scale either; a relative spread cannot call it quiet.
    df = table(
        samples("a", "x[n=1]", [0.0, 0.0, 0.0], "latency", "lower"),
        samples("b", "x[n=1]", [1.0, 1.0, 1.0], "latency", "lower"),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert (row["noisy_base"], row["noisy_side"]) == (True, False)
    assert row["rel_iqr_base"] == math.inf and row["rel_iqr_side"] == 0.0
    # 0 ms is no measurement: no ratio, no verdict, and a note that says why.
    assert row["verdict"] == "inconclusive" and math.isnan(row["ratio"])
    assert row["note"] == "a side has a zero, negative or infinite value: no ratio"


@pytest.mark.parametrize(
    ("base", "side"),
    [
        ([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0], [math.inf] * 3),
        ([-1.0] * 3, [1.0] * 3),
    ],
)
@pytest.mark.parametrize("per_process", [False, True])
@pytest.mark.filterwarnings("error")  # nor a numpy warning on the user's terminal
def test_values_a_ratio_cannot_take_are_inconclusive_not_a_crash(base, side, per_process):
    # A zero rate divided into, a log of zero: with one value per process, three processes a
    # side, or three samples of one process.
    if per_process:
        df = table(*process_medians("a", "x[n=1]", base), *process_medians("b", "x[n=1]", side))
    else:
        df = table(samples("a", "x[n=1]", base), samples("b", "x[n=1]", side))
    (row,) = compare.compare(df).to_dict("records")
    assert row["verdict"] == "inconclusive" and pd.isna(row["processes_to_decide"])


def test_two_samples_a_side_get_a_rank_test_and_one_gets_none():
    # Two against two with no overlap: Mann-Whitney's exact two-sided p is 2 / C(4, 2) = 1/3.
    df = table(samples("a", "x[n=1]", [1.0, 2.0]), samples("b", "x[n=1]", [3.0, 4.0]))
    (row,) = compare.compare(df).to_dict("records")
    assert row["p"] == pytest.approx(1 / 3)
    # A single sample cannot tell anything: p is 1, the largest a probability can be.
    df = table(samples("a", "x[n=1]", [1.0]), samples("b", "x[n=1]", [3.0]))
    (row,) = compare.compare(df).to_dict("records")
    assert row["p"] == 1.0
    # Nor can it bound anything: one sample a side equal to the other is not "same".
    df = table(samples("a", "x[n=1]", [1.0]), samples("b", "x[n=1]", [1.0]))
    (row,) = compare.compare(df).to_dict("records")
    assert row["ratio"] == 1.0 and row["verdict"] == "inconclusive"
    assert (row["ci_low"], row["ci_high"]) == (0.0, math.inf)


def test_processes_without_spread_that_agree_are_no_change():
    df = table(
        *[samples("a", "x[n=1]", [100.0] * 5, process=i) for i in range(3)],
        *[samples("b", "x[n=1]", [100.0] * 5, process=i) for i in range(3)],
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["unit_of_n"] == "processes" and row["p"] == 1.0 and row["verdict"] == "same"


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's two-sided t-test by hand: t over the unpooled standard error, with the
    Welch-Satterthwaite degrees of freedom."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(2 * student_t.sf(abs(t), dof))


@pytest.mark.parametrize("constant_side", ["a", "b"])
@pytest.mark.filterwarnings("error")  # scipy's precision-loss warning is not the user's concern
def test_one_side_without_spread_still_gets_welchs_test_on_logs(constant_side):
    # Only one side has no spread: no certainty either way, Welch's test on the logs decides.
    # With one variance zero, its degrees of freedom are the other side's n - 1 = 2 (a pooled
    # test would have 4).
    flat, spread = [100.0, 100.0, 100.0], [90.0, 95.0, 99.0]
    base, side = (flat, spread) if constant_side == "a" else (spread, flat)
    df = table(
        *[samples("a", "x[n=1]", [v] * 4, process=i) for i, v in enumerate(base)],
        *[samples("b", "x[n=1]", [v] * 4, process=i) for i, v in enumerate(side)],
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["unit_of_n"] == "processes"
    assert row["p"] == pytest.approx(welch_p(np.log(base), np.log(side)), rel=1e-9)
    assert 0.01 < row["p"] < 0.5


def test_a_change_of_exactly_the_threshold_counts():
    # 1.25 - 1 is exactly 0.25 in binary floating point: at the threshold, not below it.
    row = {**FASTER, "ratio": 1.25, "ci_low": 1.2, "ci_high": 1.3}
    assert compare.verdict(row, Settings(threshold=0.25)) == "faster"


@pytest.mark.parametrize("edge", [{"ci_low": 1.0}, {"ci_high": 1.0}])
def test_an_interval_that_touches_one_holds_no_change(edge):
    row = FASTER if "ci_low" in edge else SLOWER
    assert compare.verdict({**row, **edge}, Settings()) == "inconclusive"


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5])
def test_alpha_is_a_level_between_zero_and_one(alpha):
    with pytest.raises(compare.CompareError, match=f"--alpha {alpha:g}: give a level between"):
        Settings(alpha=alpha)


def test_a_ratio_of_exactly_one_is_never_slower():
    row = {**SLOWER, "ratio": 1.0}
    assert compare.verdict(row, Settings(threshold=0.0)) != "slower"


def test_a_ratio_of_exactly_one_is_never_faster():
    row = {**FASTER, "ratio": 1.0}
    assert compare.verdict(row, Settings(threshold=0.0)) != "faster"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threshold": -1.0}, "--threshold -1: give a fraction from 0 to below 1"),
        ({"threshold": 1.0}, "--threshold 1: give a fraction"),
        ({"alpha": 0.0}, "--alpha 0: give a level between 0 and 1"),
        ({"alpha": 1.5}, "--alpha 1.5: give a level"),
        ({"correction": "bonferroni"}, "--correction 'bonferroni': choose holm or bh"),
    ],
)
def test_settings_that_cannot_decide_anything_are_refused(settings, message):
    with pytest.raises(compare.CompareError, match=f"^{message}"):
        compare.Settings(**settings)


def dated(run, start, end, cell="local"):
    """Two samples of one case in ``run``, taken at the ISO times ``start`` and ``end``."""
    return samples(cell, "x[n=1]", [100.0, 101.0], run=run).assign(started_at=[start, end])


AFTER = (
    "as a separate run: a machine that drifts between runs reads as a change; where both "
    "stacks can run together, put both cells in one `cudastack bench --repeat 3`, whose "
    "processes take turns"
)
OVERLAPPED = (
    "r2 and r1 are separate runs that overlapped in time: their processes took turns, or "
    "competed for the machine"
)


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (
            dated("r2", "2026-11-28T12:14:00+00:00", "2026-11-28T12:30:00+00:00"),
            f"r2 ran 2 h 14 min after r1, {AFTER}",
        ),
        (
            dated("r2", "2026-11-25T09:00:00+00:00", "2026-11-25T10:00:00+00:00"),
            f"r2 ran 3 d 0 h before r1, {AFTER}",
        ),
        (
            dated("r2", "2026-11-28T10:00:45+00:00", "2026-11-28T10:01:00+00:00"),
            f"r2 ran 45 s after r1, {AFTER}",
        ),
        (  # a minute is no longer seconds, and under an hour it is minutes alone
            dated("r2", "2026-11-28T10:01:00+00:00", "2026-11-28T10:02:00+00:00"),
            f"r2 ran 1 min after r1, {AFTER}",
        ),
        (  # the same moment in another time zone: 12:12 UTC
            dated("r2", "2026-11-28T14:12:00+02:00", "2026-11-28T14:30:00+02:00"),
            f"r2 ran 2 h 12 min after r1, {AFTER}",
        ),
        (  # ISO 8601 with and without fractions of a second, in one column
            dated("r2", "2026-11-28T10:00:30.250000+00:00", "2026-11-28T10:00:40+00:00"),
            f"r2 ran 30 s after r1, {AFTER}",
        ),
        (
            dated("r2", "2026-11-28T09:59:00+00:00", "2026-11-28T10:00:30+00:00"),
            OVERLAPPED,
        ),
        # Runs that touch, one starting the second the other ended, overlap.
        (dated("r2", "2026-11-28T10:00:00+00:00", "2026-11-28T10:05:00+00:00"), OVERLAPPED),
        (dated("r2", "2026-11-28T09:55:00+00:00", "2026-11-28T10:00:00+00:00"), OVERLAPPED),
    ],
)
def test_separate_runs_say_how_far_apart_they_ran(side, expected):
    df = table(dated("r1", "2026-11-28T10:00:00+00:00", "2026-11-28T10:00:00+00:00"), side)
    assert compare.time_apart(df, compare.compare(df)) == [expected]


def test_a_start_time_that_does_not_parse_is_left_out_of_the_span():
    side = dated("r2", "2026-11-28T10:02:00+00:00", "not a time")
    df = table(dated("r1", "2026-11-28T10:00:00+00:00", "2026-11-28T10:00:00+00:00"), side)
    assert compare.time_apart(df, compare.compare(df)) == [f"r2 ran 2 min after r1, {AFTER}"]


def test_a_cell_of_the_baselines_run_does_not_hide_a_separate_run_after_it():
    df = table(
        dated("r1", "2026-11-28T10:00:00+00:00", "2026-11-28T10:00:00+00:00", cell="a"),
        dated("r1", "2026-11-28T10:00:00+00:00", "2026-11-28T10:00:00+00:00", cell="b"),
        dated("r2", "2026-11-28T10:12:00+00:00", "2026-11-28T10:12:00+00:00", cell="a"),
    )
    out = compare.compare(df)
    assert list(out["side"]) == ["r1/b", "r2/a"]
    assert compare.time_apart(df, out) == [f"r2/a ran 12 min after r1/a, {AFTER}"]


def test_sides_measured_on_other_devices_are_named():
    def on(cell, *devices):
        return pd.concat(
            samples(cell, "x[n=1]", [100.0, 101.0], process=i).assign(device_name=d)
            for i, d in enumerate(devices)
        )

    h100, a100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100"
    df = table(on("a", h100), on("b", h100, a100))
    assert compare.other_devices(df, compare.compare(df)) == [
        f"b ran on {a100} and {h100}, a on {h100}: different devices, so a change is the "
        "hardware's as much as the stack's (on Slurm, pin the node type with --constraint or "
        "--gres gpu:TYPE:N)"
    ]
    assert compare.other_devices(df, compare.compare(df))[0] in compare.notes(
        df, compare.compare(df)
    )
    two_in_base = table(on("a", h100, a100), on("b", h100))
    (line,) = compare.other_devices(two_in_base, compare.compare(two_in_base))
    assert line.startswith(f"b ran on {h100}, a on {a100} and {h100}: different devices")
    same = table(on("a", h100), on("b", h100))
    assert compare.other_devices(same, compare.compare(same)) == []
    # A process that recorded no device name is no other device.
    unnamed = table(on("a", h100, ""), on("b", h100))
    assert compare.other_devices(unnamed, compare.compare(unnamed)) == []


def test_cells_of_one_run_are_not_dated_against_each_other():
    df = table(
        dated("r1", "2026-11-28T10:00:00+00:00", "2026-11-28T10:05:00+00:00", cell="a"),
        dated("r1", "2026-11-28T12:00:00+00:00", "2026-11-28T12:05:00+00:00", cell="b"),
    )
    assert compare.time_apart(df, compare.compare(df)) == []


def test_cases_only_one_side_measured_are_named_not_dropped():
    df = table(
        samples("a", "x[n=1]", [1.0, 2.0, 3.0]),
        samples("a", "y[n=1]", [1.0, 2.0, 3.0]),
        samples("a", "z[n=1]", [1.0, 2.0, 3.0]),
        samples("b", "x[n=1]", [1.0, 2.0, 3.0]),
        samples("b", "y[n=1]", [9.0]).assign(status="failed"),  # failed: not measured
        samples("b", "w[n=1]", [1.0, 2.0, 3.0]),
    )
    out = compare.compare(df)
    assert out["case"].tolist() == ["x[n=1]"]
    assert compare.one_sided(df, out) == [
        "2 cases measured in a but not in b, so not compared: y[n=1], z[n=1]",
        "1 case measured in b but not in a, so not compared: w[n=1]",
    ]
    many = table(
        *(samples("a", f"c[i={i}]", [1.0]) for i in range(5)), samples("b", "c[i=0]", [1.0])
    )
    (line,) = compare.one_sided(many, compare.compare(many))
    assert line.endswith("not compared: c[i=1], c[i=2], c[i=3] and 1 more")
    three = table(
        *(samples("a", f"c[i={i}]", [1.0]) for i in range(4)), samples("b", "c[i=0]", [1.0])
    )
    (line,) = compare.one_sided(three, compare.compare(three))
    assert line.endswith("not compared: c[i=1], c[i=2], c[i=3]")


def telemetry(side, case, metric, values, run="r1"):
    """A case's NVML window metric (one value a window), as the worker records it."""
    return samples(side, case, values, metric=metric, better="lower", run=run)


def clocked(base_clock, side_clock, throttled_side=0.0):
    """gemm measured 20 % slower on side b, with each side's SM clock and b's throttling."""
    r = rng(7)
    return table(
        samples("a", "gemm[n=1]", 100 * (1 + r.normal(0, 0.005, 40))),
        samples("b", "gemm[n=1]", 80 * (1 + r.normal(0, 0.005, 40))),
        telemetry("a", "gemm[n=1]", "sm_clock_mhz", [base_clock] * 3),
        telemetry("b", "gemm[n=1]", "sm_clock_mhz", [side_clock] * 3),
        telemetry("a", "gemm[n=1]", "throttled_pct", [0.0] * 3),
        telemetry("b", "gemm[n=1]", "throttled_pct", [0.0, throttled_side, 0.0]),
    )


def test_a_throttled_side_is_not_comparable_and_says_why():
    out = compare.compare(clocked(1980, 1980, throttled_side=35.0)).iloc[0]
    assert out["verdict"] == "not comparable"
    assert out["note"] == (
        "b throttled in 35 % of a window: not comparable (--ignore-clocks compares anyway)"
    )
    assert pd.isna(out["processes_to_decide"])


@pytest.mark.parametrize(
    "side_clock, expected",
    [(1980 * 0.94, "not comparable"), (1980 * 0.96, "slower"), (1980 * 1.06, "not comparable")],
)
def test_sm_clocks_more_than_five_percent_apart_are_not_comparable(side_clock, expected):
    out = compare.compare(clocked(1980, side_clock)).iloc[0]
    assert out["verdict"] == expected
    if expected == "not comparable":
        assert out["note"].startswith(f"SM clock {side_clock:.0f} MHz vs 1980 MHz in a: ")


def test_a_side_throttled_in_under_one_percent_and_at_another_clock_says_both():
    out = compare.compare(clocked(1980, 1500, throttled_side=0.6)).iloc[0]
    assert out["note"] == (
        "b throttled in 1 % of a window; SM clock 1500 MHz vs 1980 MHz in a: not comparable "
        "(--ignore-clocks compares anyway)"
    )


def test_ignore_clocks_keeps_the_verdict_and_still_names_the_clocks():
    out = compare.compare(clocked(1980, 1500), settings=Settings(ignore_clocks=True)).iloc[0]
    assert out["verdict"] == "slower"
    # What the statistics say still follows: one process a side is provisional.
    assert out["note"] == (
        "SM clock 1500 MHz vs 1980 MHz in a (compared anyway: --ignore-clocks); "
        "1 process per side: use --repeat 3 or more to trust a verdict"
    )


@pytest.mark.parametrize("base_clock, side_clock", [(0.0, 1980), (1980, 0.0), (0.0, 0.0)])
def test_a_zero_clock_is_no_clock_not_a_crash(base_clock, side_clock):
    out = compare.compare(clocked(base_clock, side_clock)).iloc[0]
    assert (out["verdict"], out["clocks"]) == ("slower", "")


def test_ceilings_are_not_cases_to_compare():
    r = rng(3)
    ceiling = "ceiling[what=matmul,dtype=fp32]"
    out = compare.compare(
        table(
            samples("a", "gemm[n=1]", 100 * (1 + r.normal(0, 0.005, 40))),
            samples("b", "gemm[n=1]", 100 * (1 + r.normal(0, 0.005, 40))),
            samples("a", ceiling, [120.0]),
            samples("b", ceiling, [60.0]),
        )
    )
    assert list(out["case"]) == ["gemm[n=1]"]


def test_rows_without_telemetry_keep_their_verdict():
    plain = clocked(1980, 1500).query("metric == 'tflops'")
    out = compare.compare(plain).iloc[0]
    assert (out["verdict"], out["clocks"]) == ("slower", "")


def test_verdict_counts_count_not_comparable_rows_only_when_there_are_some():
    out = compare.compare(clocked(1980, 1500))
    assert compare.verdict_counts(out).startswith(
        "0 faster, 0 slower, 0 same, 0 inconclusive, 1 not comparable (of 1 case)"
    )
    plain = compare.compare(clocked(1980, 1980))
    assert "not comparable" not in compare.verdict_counts(plain)
