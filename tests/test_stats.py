"""Statistics on known samples, and agreement between the two sides' implementations."""

import math

import pandas as pd
import pytest

from cudastack.contract.stats import NOISY_REL_IQR, quantile, summarize
from cudastack.host.analysis import results


def test_quantile_matches_linear_interpolation():
    values = [1.0, 2.0, 3.0, 4.0]
    assert quantile(values, 0.5) == 2.5
    assert quantile(values, 0.25) == 1.75
    assert quantile(values, 0.75) == 3.25
    assert quantile([7.0], 0.9) == 7.0


def test_quantile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_summary_of_known_samples():
    s = summarize([10.0, 12.0, 11.0, 13.0, 9.0])
    assert (s.median, s.q1, s.q3, s.n) == (11.0, 10.0, 12.0, 5)
    assert s.iqr == 2.0
    assert s.rel_iqr == pytest.approx(2 / 11)
    assert s.noisy  # 18 % > 10 %


def test_noisy_threshold_is_ten_percent():
    assert NOISY_REL_IQR == 0.10
    assert not summarize([100.0, 104.0, 100.0, 104.0, 102.0]).noisy  # rel IQR 3.9 %
    assert summarize([100.0, 130.0, 100.0, 130.0, 115.0]).noisy


def test_zero_median_has_infinite_rel_iqr():
    assert math.isinf(summarize([0.0, 0.0, 0.0]).rel_iqr)


def test_host_summary_agrees_with_environment_side_stats():
    values = [3.1, 2.9, 3.0, 3.6, 2.2, 3.3, 5.0]
    df = results.to_frame(
        {
            "status": "ok",
            "cell": "c",
            "bench": "b",
            "case": "b[x=1]",
            "metric": "latency",
            "unit": "ms",
            "better": "lower",
            "rep": i,
            "value": v,
        }
        for i, v in enumerate(values)
    )
    row = results.summarize(df).iloc[0]
    s = summarize(values)
    assert row["median"] == pytest.approx(s.median)
    assert row["q1"] == pytest.approx(s.q1)
    assert row["q3"] == pytest.approx(s.q3)
    assert row["n"] == s.n
    assert row["rel_iqr"] == pytest.approx(s.rel_iqr)
    assert bool(row["noisy"]) == s.noisy
    assert isinstance(df, pd.DataFrame)


def test_quantile_of_nothing_says_so():
    with pytest.raises(ValueError, match=r"^quantile of no values$"):
        quantile([], 0.25)
