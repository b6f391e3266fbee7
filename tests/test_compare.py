"""Comparison statistics on synthetic samples with known answers."""

import numpy as np
import pandas as pd
import pytest

from cudastack import compare
from cudastack.compare import Settings


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


def test_heavy_noise_is_noisy_not_a_regression():
    r = rng()
    df = table(
        samples("a", "x[n=1]", 100 * r.lognormal(0, 0.4, 30)),
        samples("b", "x[n=1]", 85 * r.lognormal(0, 0.4, 30)),
    )
    (row,) = compare.compare(df).to_dict("records")
    assert row["verdict"] == "noisy"


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
    with pytest.raises(ValueError, match="unknown correction"):
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
    with pytest.raises(ValueError, match="unknown baseline 'z'; choose one of: a, b, c"):
        compare.compare(df, baseline="z")
    with pytest.raises(ValueError, match="nothing to compare"):
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
    # ... while five processes a side drawn from the same spread are the same.
    five = table(
        *processes("a", "gemm[n=1]", [100, 94, 97, 101, 96], r),
        *processes("b", "gemm[n=1]", [95, 100, 98, 94, 99], r),
    )
    (row,) = compare.compare(five).to_dict("records")
    assert row["unit_of_n"] == "processes" and row["n_base"] == row["n_side"] == 5
    assert row["verdict"] == "same"


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
        # Certain, but smaller than the threshold.
        (FASTER, {"ratio": 1.04, "ci_low": 1.02, "ci_high": 1.06}),
        (SLOWER, {"ratio": 0.96, "ci_low": 0.94, "ci_high": 0.98}),
        # Beyond the threshold and significant, but the interval still holds no change.
        (FASTER, {"ci_low": 0.99}),
        (SLOWER, {"ci_high": 1.01}),
    ],
)
def test_a_row_failing_one_condition_alone_is_the_same(row, broken):
    assert compare.verdict({**row, **broken}, Settings()) == "same"


@pytest.mark.parametrize("row", [FASTER, SLOWER])
@pytest.mark.parametrize("side", ["noisy_base", "noisy_side"])
def test_either_side_noisy_overrides_a_change(row, side):
    assert compare.verdict({**row, side: True}, Settings()) == "noisy"


def test_the_settings_alpha_and_threshold_are_the_ones_applied():
    assert compare.verdict(FASTER, Settings(alpha=0.001)) == "same"  # p_adj 0.001 not below
    assert compare.verdict(FASTER, Settings(threshold=0.15)) == "same"  # 10 % below 15 %


def test_adjustments_keep_their_order_and_stay_at_most_one():
    # Holm: sorted p x (m, m-1, ...) = 0.02, 0.011, then a running maximum: 0.02, 0.02.
    # BH: sorted p x m / rank = 0.02, 0.011, then a running minimum from the top: 0.011, 0.011.
    p = np.array([0.01, 0.011])
    assert compare.adjust(p, "holm") == pytest.approx([0.02, 0.02])
    assert compare.adjust(p, "bh") == pytest.approx([0.011, 0.011])
    assert compare.adjust(np.array([0.6, 0.7]), "holm").tolist() == [1.0, 1.0]  # 1.2, 1.4 capped


@pytest.mark.parametrize(
    ("correction", "p_adj", "expected"), [("holm", 7 / 126, "same"), ("bh", 1 / 126, "faster")]
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
