"""The HTML report's parts with known answers, no browser: heatmap, ratio axis, roofline roofs,
telemetry marks and plain text."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
from test_report import CASES, DIGEST, KERNELS, RED_REASON, make_gpu_run, make_run, row, samples

from cudastack.contract.schema import CEILING_BENCH
from cudastack.host.analysis import clocks, heatmap, plots, report, results, roofline
from cudastack.host.cli.reading import load_runs


def comparison(rows: list[tuple]) -> pd.DataFrame:
    """A comparison table (compare.compare's columns that the heatmap reads) of rows
    (bench, verdict, ratio, noisy_base, noisy_side), side b against a."""
    return pd.DataFrame(
        [
            {
                "bench": bench,
                "case": f"{bench}[i={i}]",
                "side": "b",
                "baseline": "a",
                "verdict": verdict,
                "ratio": ratio,
                "noisy_base": noisy_base,
                "noisy_side": noisy_side,
            }
            for i, (bench, verdict, ratio, noisy_base, noisy_side) in enumerate(rows)
        ]
    )


def test_heatmap_is_the_geometric_mean_of_significant_quiet_rows_only():
    table = comparison(
        [
            # gemm: the A/A case that showed 0.58 in red: a noisy "slower" and a "same".
            ("gemm", "slower", 0.5, False, True),
            ("gemm", "same", 1.0, False, False),
            # conv: 1.25 and 0.8 changed (geometric mean exactly 1; the arithmetic one 1.025),
            # an inconclusive 3.0 and a not-comparable 0.1 count for nothing.
            ("conv", "faster", 1.25, False, False),
            ("conv", "slower", 0.8, False, False),
            ("conv", "inconclusive", 3.0, False, False),
            ("conv", "not comparable", 0.1, False, False),
            ("launch", "faster", 1.21, False, False),
        ]
    )
    cells = {c.bench: c for c in heatmap.cells(table)}
    assert cells["gemm"] == heatmap.Cell("b", "gemm", None, 0, 2, 1)
    assert cells["gemm"].label == "— (0 of 2 changed)"
    assert cells["conv"].ratio == pytest.approx(1.0)
    assert (cells["conv"].changed, cells["conv"].total) == (2, 4)
    assert cells["conv"].label == "1.00 (2 of 4)"
    assert cells["launch"].label == "1.21 (1 of 1)"
    html = heatmap.html(table)
    assert "data-bench='gemm' data-ratio='' data-changed='0' data-total='2'" in html
    assert "1 more called faster or slower but noisy, left neutral" in html


def test_heatmap_colours():
    assert heatmap.colour(None) == heatmap.NEUTRAL
    # Full strength from 2x either way, symmetric in the log, never paler than the minimum.
    assert heatmap.colour(2.0) == heatmap.colour(8.0) == "#1a7f37"
    assert heatmap.colour(0.5) == "#cf222e"
    faint = heatmap.colour(1.0001)
    assert faint != "#ffffff" and faint.startswith("#")
    assert heatmap.colour(1.2) != heatmap.colour(1.5)


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (0.8, 1.25, [0.8, 0.9, 1, 1.1, 1.25]),
        (0.45, 1.25, [0.5, 0.8, 0.9, 1, 1.1, 1.25]),
        (0.3, 12.0, [0.5, 1, 2, 5, 10]),
        (0.001, 1000.0, [0.001, 0.01, 0.1, 1, 10, 100, 1000]),
    ],
)
def test_ratio_ticks(low, high, ticks):
    assert plots.ratio_ticks(low, high) == pytest.approx(ticks)


def test_speedup_plot_is_an_svg_on_a_log_axis_labelled_in_ratios():
    table = pd.DataFrame(
        {
            "case": ["a[x=1]", "b[x=1]", "c[x=1]"],
            "side": "b",
            "baseline": "a",
            "ratio": [0.5, 1.0, 10.0],
            "ci_low": [0.45, 0.99, 0.0],  # one interval unbounded: one sample a side
            "ci_high": [0.55, 1.01, math.inf],
        }
    )
    svg = plots.speedup_plot(table)
    assert svg.startswith("<svg class='plot' role='img' aria-label='speed-up per case, log")
    labels = re.findall(r">([0-9.]+)</text>", svg)
    assert labels == ["0.5", "1", "2", "5", "10"]
    assert 'id="figure_1"' not in svg and "<metadata>" not in svg


def gpu_frame(tmp_path) -> tuple[pd.DataFrame, dict]:
    """One GPU-like run's rows and env.json: its one side is its cell, ``local``."""
    run = make_gpu_run(tmp_path, "run-a", {}, {}, {}, "2026-11-28T10:00:00+00:00")
    return load_runs([str(run)], tmp_path)


def test_roofs_are_the_ceilings_measured(tmp_path):
    df, envs = gpu_frame(tmp_path)
    ok = df[df["status"] == "ok"]
    pts = roofline.points(ok)
    assert [p.case for p in pts] == list(KERNELS)
    gemm = pts[0]
    assert (gemm.dtype, gemm.intensity) == ("bf16", pytest.approx(4096 / 3))
    measured = ok[(ok["case"] == gemm.case) & (ok["metric"] == "tflops")]["value"]
    assert gemm.tflops == pytest.approx(measured.median())
    r = roofline.roofs(ok, envs["local"], {"bf16"})
    assert r.compute == {"bf16": pytest.approx(700.0), "fp32": pytest.approx(55.0)}
    assert r.memory == pytest.approx(2900.0)
    assert r.compute_source == r.memory_source == "measured (ceiling)"
    # The ridge: where 700 TFLOP/s meets 2900 GB/s x intensity / 1000.
    assert r.ridge("bf16") == pytest.approx(700_000 / 2900)
    html = "".join(roofline.section(df, envs))
    assert html.count('<g id="s0-point-') == len(KERNELS)
    assert html.count('<g id="s0-roof-compute-') == 2 and html.count('<g id="s0-roof-memory"') == 1


PEAKS = {"board": "H100 SXM", "values": {"bf16": 989.4, "fp32": 67, "mem": 3350}, "source": "x"}


def without_ceilings(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["bench"] != CEILING_BENCH]


def test_a_run_without_ceilings_falls_back_to_the_data_sheet(tmp_path):
    run = make_gpu_run(tmp_path, "run-a", {}, {}, {}, "2026-11-28T10:00:00+00:00")
    env_path = run / "local" / "env.json"
    env = json.loads(env_path.read_text())
    env["gpu"]["peaks"] = PEAKS
    env_path.write_text(json.dumps(env))
    df, envs = load_runs([str(run)], tmp_path)
    df = without_ceilings(df)
    ok = df[df["status"] == "ok"]
    # Compute roofs only for the dtypes the points have (no fp8 line nobody measured).
    r = roofline.roofs(ok, envs["local"], {"bf16"})
    assert r == roofline.Roofs(
        {"bf16": 989.4}, 3350.0, "data sheet (H100 SXM)", "data sheet (H100 SXM)"
    )
    html = "".join(roofline.section(df, envs))
    assert "data sheet (H100 SXM)" in html and html.count('<g id="s0-point-') == len(KERNELS)


def test_a_run_without_ceilings_or_peaks_has_a_note_instead(tmp_path):
    df, envs = gpu_frame(tmp_path)
    parts = roofline.section(without_ceilings(df), envs)
    assert "<svg" not in "".join(parts)
    assert parts[-1] == (
        "<p>local: no roofline: its run measured no ceilings (bench ceiling) and its env.json has "
        "no data-sheet peaks for its device.</p>"
    )


def test_no_intensity_no_roofline_section(tmp_path):
    df, envs = load_runs([str(make_run(tmp_path, "run-a", {}, "2.9.1", "cpu"))], tmp_path)
    assert roofline.section(df, envs) == []


def test_case_params_are_read_from_the_case_id():
    assert results.case_params("ceiling[what=matmul,dtype=bf16]") == {
        "what": "matmul",
        "dtype": "bf16",
    }
    # A value may hold a comma; a key cannot, so only ",key=" starts the next parameter.
    assert results.case_params("x[layers=a,b,n=4]") == {"layers": "a,b", "n": "4"}
    assert results.case_params("x") == {}


def test_telemetry_per_case_and_throttled_marks(tmp_path):
    run = make_gpu_run(
        tmp_path, "run-a", {}, {}, {"gemm[dtype=fp32,n=4096]": 35.0}, "2026-11-28T10:00:00+00:00"
    )
    df, _ = load_runs([str(run)], tmp_path)
    table = clocks.per_case(df)
    assert list(table["case"]) == list(KERNELS)  # run order
    hot = table[table["case"] == "gemm[dtype=fp32,n=4096]"].iloc[0]
    assert (hot["sm_clock_mhz"], hot["throttled_pct"], hot["throttled"]) == (1840.0, 35.0, 1.0)
    assert clocks.marks(table) == {("local", "gemm[dtype=fp32,n=4096]"): "⚠ throttled 35 %"}
    assert clocks.mark({"throttled": 1.0, "throttled_pct": math.nan}) == "⚠ throttled"
    assert clocks.mark({"throttled": 0.0, "throttled_pct": 0.0}) == ""
    # The worst window counts: one throttled window of three.
    windows = pd.DataFrame(
        [
            {**row(run_id="r", side="s", bench="g", case="g[a=1]"), "metric": m, "value": v}
            for m, v in (("throttled_pct", 0.0), ("throttled_pct", 20.0), ("throttled_pct", 0.0))
        ]
    )
    assert clocks.marks(clocks.per_case(windows)) == {("s", "g[a=1]"): "⚠ throttled 20 %"}


def test_no_telemetry_no_strip(tmp_path):
    df, _ = load_runs([str(make_run(tmp_path, "run-a", {}, "2.9.1", "cpu"))], tmp_path)
    telemetry = clocks.per_case(df)
    assert telemetry.empty and clocks.marks(telemetry) == {}
    assert clocks.section(telemetry, ["local"]) == []


def test_every_text_in_the_report_is_plain(tmp_path):
    a = make_gpu_run(tmp_path, "run-a", {}, {}, {}, "2026-11-28T10:00:00+00:00")
    b = make_run(
        tmp_path,
        "run-b",
        {},
        "2.9.1",
        "NVIDIA H100 80GB HBM3",
        cases={"train_resnet[bs=1]": CASES["train_resnet[bs=1]"]},
        extra=[
            *samples("gemm[dtype=bf16,n=4096]", "tflops", [600.0] * 5),
            {
                "bench": "x",
                "case": "x[\x1b[1mbold\x1b[0m=1]",
                "status": "failed",
                "reason": RED_REASON,
            },
        ],
        env={"image_digest": "\x1b]0;title\x07" + DIGEST},
    )
    df, envs = load_runs([str(a), str(b)], tmp_path)
    html = report.html_report(df, envs)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", html)
    assert "[31m" not in html and "[1m" not in html and "]0;" not in html
    assert "x[bold=1]" in html and f"title='{DIGEST}'" in html
    assert "RuntimeError: CUDA out of memory. Tried" in html


def test_kernels_are_stated_as_pct_of_achievable_beside_pct_of_peak(tmp_path):
    extra = samples("gemm[n=1]", "pct_of_achievable", [91.0] * 5, unit="%", headline="tflops")
    run = make_run(tmp_path, "run-a", {}, "2.9.1", "cpu", extra=extra)
    df, envs = load_runs([str(run)], tmp_path)
    page = report.html_report(df, envs)
    assert "<h2>Achieved % of achievable</h2>" in page
    assert "Achieved % of the data-sheet peak" not in page  # no pct_of_peak rows in this run
    per_case = page[page.index("<h2>Results per case</h2>") :]
    assert ">pct_<wbr>of_<wbr>achievable</th>" in per_case  # a break allowed at each _
    assert "<td class='l'>gemm[n=1]</td>" in per_case and "<td class=''>91</td>" in per_case
