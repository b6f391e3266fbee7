"""compare and report on real run folders, and the HTML report in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli

from cudastack.contract.schema import SCHEMA_VERSION
from cudastack.host.analysis import results
from cudastack.host.analysis.roofline import INTENSITY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"


# case -> (bench, metric, better, centre): what make_run measures unless told otherwise.
CASES = {
    "gemm[n=1]": ("gemm", "tflops", "higher", 100.0),
    "conv[layer=a]": ("conv", "tflops", "higher", 50.0),
    "train_resnet[bs=1]": ("train_resnet", "items_per_s", "higher", 300.0),
    "launch[mode=eager]": ("launch", "latency_us", "lower", 5.0),
}


def make_run(
    root: Path,
    run_id: str,
    factors: dict,
    torch: str,
    gpu: str,
    started_at: str = "2026-11-28T10:00:00+00:00",
    processes: int = 1,
    noise: dict | None = None,
    extra: list[dict] | None = None,
    env: dict | None = None,
    cases: dict = CASES,
) -> Path:
    """A run folder as a worker leaves it: samples of ``cases`` scaled by ``factors``, from
    ``processes`` worker processes (--repeat), with a relative spread of 0.5 % (``noise``: per
    case), then the ``extra`` rows (see ``row``); env.json updated with ``env``."""
    # Seeded by the run's name through crc32: hash() of a str differs in every process.
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))
    rows = []
    for case, (bench, metric, better, centre) in cases.items():
        spread = (noise or {}).get(case, 0.005)
        values = centre * factors.get(case, 1.0) * (1 + rng.normal(0, spread, 40 * processes))
        for rep, v in enumerate(values):
            rows.append(
                {
                    "schema_version": SCHEMA_VERSION,
                    "run_id": run_id,
                    "cell": "local",
                    "bench": bench,
                    "case": case,
                    "params": "{}",
                    "metric": metric,
                    "unit": "x",
                    "better": better,
                    "rep": rep,
                    "value": float(v),
                    "status": "ok",
                    "device": "cuda",
                    "gpu_name": gpu,
                    "started_at": started_at,
                    "process": rep // 40,
                }
            )
    rows.append(
        {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "cell": "local",
            "bench": "sdpa",
            "case": "sdpa[backend=cudnn]",
            "status": "skipped",
            "reason": "cuDNN attention is not available here",
        }
    )
    base = {"run_id": run_id, "gpu_name": gpu, "started_at": started_at}
    rows += [{**row(**base), **r} for r in extra or []]
    run_dir = root / run_id
    (run_dir / "local").mkdir(parents=True)
    results.write_tables(results.to_frame(rows), run_dir)
    fingerprint = {
        "torch": {"version": torch, "cudnn": "9.1.0"},
        "gpu": {"name": gpu},
        "threads": 8,
    }
    (run_dir / "local" / "env.json").write_text(json.dumps({**fingerprint, **(env or {})}))
    return run_dir


def row(**fields) -> dict:
    """One ok record of cell local with ``fields`` set; the rest as a worker writes them."""
    return {
        "schema_version": SCHEMA_VERSION,
        "cell": "local",
        "params": "{}",
        "unit": "x",
        "better": "higher",
        "rep": 0,
        "process": 0,
        "status": "ok",
        "device": "cuda",
        **fields,
    }


def samples(case: str, metric: str, values, params: dict | None = None, **fields) -> list[dict]:
    """The rows of ``values`` of one case's ``metric``, its bench and params from its id."""
    params = (
        params
        if params is not None
        else dict(p.split("=", 1) for p in case[case.index("[") + 1 : -1].split(","))
    )
    return [
        {
            "bench": case.split("[")[0],
            "case": case,
            "params": json.dumps(params),
            "metric": metric,
            "rep": rep,
            "value": float(v),
            **fields,
        }
        for rep, v in enumerate(np.atleast_1d(values))
    ]


@pytest.fixture
def runs(tmp_path):
    a = make_run(tmp_path, "run-a", {}, "2.8.0", "NVIDIA H100 80GB HBM3")
    # B: conv and training 20 % slower, launch 10 % faster, gemm unchanged; newer torch.
    b = make_run(
        tmp_path,
        "run-b",
        {"conv[layer=a]": 0.8, "train_resnet[bs=1]": 0.8, "launch[mode=eager]": 0.9},
        "2.9.1",
        "NVIDIA H200",
        started_at="2026-11-28T12:14:00+00:00",
    )
    return a, b


def test_compare_finds_the_changes_and_explains_them(runs):
    a, b = runs
    proc = cli("compare", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "1 faster, 2 slower, 1 same, 0 inconclusive (of 4 cases); 4 provisional" in out
    # Separate runs: how far apart they ran, and what to do for a decision.
    assert "note: run-b ran 2 h 14 min after run-a, as a separate run" in out
    assert "warning: run-b vs run-a: different hardware" in proc.stderr
    assert "GPU NVIDIA H100 80GB HBM3 vs NVIDIA H200" in proc.stderr
    assert (
        "explain: train_resnet[bs=1] -20 % (run-b vs run-a); kernels: conv -20 %, gemm ±0 %, "
        "launch +11 %; torch 2.8.0 -> 2.9.1"
    ) in out


def test_fail_on_regression_and_formats(runs):
    a, b = runs
    # One process a side: the slower rows are named, but provisional, so they do not fail.
    provisional = cli("compare", str(a), str(b), "--fail-on-regression")
    assert provisional.returncode == 0, provisional.stderr
    named = [x for x in provisional.stderr.splitlines() if "regression" in x]
    assert [x.split(": ")[1].split(" on ")[0] for x in named] == [
        "conv[layer=a]",
        "train_resnet[bs=1]",
    ]
    assert all(x.startswith("provisional regression (not failing): ") for x in named)
    assert all(
        x.endswith("1 process per side: use --repeat 3 or more to trust a verdict") for x in named
    )
    assert cli("compare", str(b), str(a), "--bench", "gemm", "--fail-on-regression").returncode == 0
    as_json = json.loads(cli("compare", str(a), str(b), "--format", "json").stdout)
    verdicts = {r["case"]: r["verdict"] for r in as_json["comparison"]}
    assert verdicts == {
        "gemm[n=1]": "same",
        "conv[layer=a]": "slower",
        "train_resnet[bs=1]": "slower",
        "launch[mode=eager]": "faster",
    }
    csv = cli("compare", str(a), str(b), "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("bench,case,metric") and len(csv) == 5
    md = cli("compare", str(a), str(b), "--format", "md").stdout
    assert "| `conv[layer=a]` | run-b |" in md and "**slower**" in md
    assert "- run-b ran 2 h 14 min after run-a, as a separate run" in md
    assert as_json["notes"] == [line[2:] for line in md.splitlines() if "as a separate run" in line]
    assert as_json["summary"].startswith("1 faster, 2 slower, 1 same, 0 inconclusive (of 4")


def test_fail_on_regression_fails_on_slower_rows_from_three_processes(tmp_path):
    a = make_run(tmp_path, "run-a", {}, "2.8.0", "NVIDIA H100", processes=3)
    b = make_run(tmp_path, "run-b", {"conv[layer=a]": 0.8}, "2.8.0", "NVIDIA H100", processes=3)
    failing = cli("compare", str(a), str(b), "--fail-on-regression")
    assert failing.returncode == 1, failing.stdout + failing.stderr
    (line,) = [x for x in failing.stderr.splitlines() if "regression" in x]
    assert line.startswith("regression: conv[layer=a] on run-b: ratio 0.8")
    # The same runs the other way round: conv is faster, nothing fails.
    assert cli("compare", str(b), str(a), "--fail-on-regression").returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["compare", "nope"],
            "error: no run nope: neither a run folder nor a run id under results",
        ),
        (["compare", "A"], "error: nothing to compare: the results have one side (local)"),
        (["compare", "A", "B", "--baseline", "x"], "error: unknown baseline 'x'; choose one of: "),
        (["compare", "A", "B", "--format", "xml"], "error: unknown --format 'xml'"),
        (["compare", "A", "B", "--bench", "zz"], "error: unknown bench zz in these runs"),
        (
            ["report", "A", "B", "-o", "no/such/dir/r.html"],
            "error: folder no/such/dir does not exist",
        ),
    ],
)
def test_bad_input(runs, args, message):
    a, b = runs
    args = [str(a) if x == "A" else str(b) if x == "B" else x for x in args]
    proc = cli(*args, cwd=a.parent)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1


def test_markdown_report(runs, tmp_path):
    a, b = runs
    proc = cli("report", str(a), str(b), "--format", "md", "-o", str(tmp_path / "r.md"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "r.md").read_text()
    assert text.startswith("### cudastack: compared with `run-a`")
    assert "- `run-b` vs `run-a`: torch 2.8.0 → 2.9.1" in text
    # Without -o, markdown goes to report.md, never into a file named .html.
    here = tmp_path / "here"
    here.mkdir()
    assert cli("report", str(a), str(b), "--format", "md", cwd=here).returncode == 0
    assert sorted(p.name for p in here.iterdir()) == ["report.md"]
    assert (here / "report.md").read_text() == text


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed"
)


@contextmanager
def browser_page(report: Path, width: int = 1300) -> Iterator:
    """``report`` open in real headless Chromium (Debian's, offline), ``width`` px wide; the
    page's console errors and uncaught exceptions are in ``page.errors``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": width, "height": 900})
        errors: list = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        page.errors = errors
        try:
            yield page
        finally:
            browser.close()


@needs_chromium
def test_html_report_in_a_real_browser(runs, tmp_path):
    a, b = runs
    out = tmp_path / "report.html"
    proc = cli("report", str(a), str(b), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "http" not in out.read_text().split("<body>")[0]  # opens offline: nothing external
    ARTIFACTS.mkdir(exist_ok=True)
    with browser_page(out) as page:
        assert page.errors == []
        assert page.locator("h2", has_text="Comparison with run-a").count() == 1
        assert page.locator("table").count() >= 4
        assert page.locator("td.slower").count() == 2 and page.locator("td.faster").count() == 1
        assert page.locator("svg.plot").count() == 1  # the speed-up plot
        assert page.locator("img").count() >= 1  # training throughput
        assert page.evaluate("Array.from(document.images).every(i => i.naturalWidth > 100)")
        assert page.get_by_text("cuDNN attention is not available here").count() == 2  # per run
        # No telemetry and no intensity in these runs: neither section, nor a throttled column.
        assert page.locator("h2", has_text="Clocks, power and temperature").count() == 0
        assert page.locator("img.telemetry").count() == 0
        assert page.locator("th", has_text="throttled").count() == 0
        assert page.locator("h2", has_text="Roofline").count() == 0
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


# --- a GPU-like pair of runs: ceilings, intensities, telemetry, noise, a coloured failure ------

DIGEST = "sha256:" + "0123456789abcdef" * 4
# A case id as long as a real elementwise one with every parameter spelled out.
LONG_CASE = (
    "elementwise[op=layer_norm,dtype=bf16,rows=1048576,cols=8192,eps=1e-05,"
    "elementwise_affine=true,memory_format=contiguous,fused=false]"
)
# case -> (headline TFLOP/s, FLOP per byte); dtype and params from the id.
KERNELS = {
    "gemm[dtype=bf16,n=4096]": (620.0, 4096 / 3),  # 2 n^3 FLOP over 3 n^2 bf16 values
    "gemm[dtype=fp32,n=4096]": (48.0, 4096 / 6),
    "conv[dtype=bf16,layer=c2_3x3]": (310.0, 180.0),
    LONG_CASE: (0.9, 0.6),
}
CEILINGS = {
    "ceiling[what=matmul,dtype=bf16]": ("tflops", 700.0),
    "ceiling[what=matmul,dtype=fp32]": ("tflops", 55.0),
    "ceiling[what=copy]": ("gbps", 2900.0),
}
RED_REASON = (
    "\x1b[31mRuntimeError:\x1b[0m CUDA out of memory.\r\n\x07Tried to allocate 2.00 GiB "
    "(GPU 0; 79.10 GiB total capacity; 77.93 GiB already allocated; 1.06 GiB free; 78.40 GiB "
    "reserved in total by PyTorch) If reserved memory is >> allocated memory try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation"
)


def make_gpu_run(
    root: Path, run_id: str, factors: dict, noise: dict, throttled: dict, started_at: str
) -> Path:
    """A run on an H100 as the suite with ceilings and NVML would record it: kernel cases with
    TFLOP/s and intensity (scaled by ``factors``, spread by ``noise``), the ceiling cases, a
    launch latency, telemetry per case (``throttled``: case -> % of its window), and a failed
    case whose reason is coloured with ANSI escapes."""
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))
    extra: list[dict] = []
    for case, (tflops, intensity) in KERNELS.items():
        n = 40
        values = tflops * factors.get(case, 1.0) * (1 + rng.normal(0, noise.get(case, 0.01), n))
        extra += samples(case, "tflops", values, unit="TFLOP/s", headline="tflops", kind="kernel")
        extra += samples(
            case, INTENSITY, [intensity] * n, unit="FLOP/B", headline="tflops", kind="kernel"
        )
        pct = throttled.get(case, 0.0)
        for metric, value in (
            ("sm_clock_mhz", 1980.0 - 4 * pct),
            ("power_w", 690.0 if pct else 610.0),
            ("temp_c", 71.0 + pct / 5),
            ("throttled", 1.0 if pct else 0.0),
            ("throttled_pct", pct),
        ):
            extra += samples(case, metric, value, headline="tflops", kind="kernel")
    for case, (metric, value) in CEILINGS.items():
        values = value * np.linspace(0.99, 1.01, 21)  # median: exactly ``value``
        extra += samples(case, metric, values, headline=metric, kind="kernel")
    latency = 6.0 * factors.get("launch[mode=eager]", 1.0) * (1 + rng.normal(0, 0.01, 40))
    extra += samples(
        "launch[mode=eager]",
        "latency_us",
        latency,
        better="lower",
        headline="latency_us",
        kind="kernel",
    )
    extra += [
        {
            "bench": "sdpa",
            "case": "sdpa[dtype=bf16,seq=4096]",
            "params": json.dumps({"dtype": "bf16", "seq": 4096}),
            "status": "failed",
            "reason": RED_REASON,
        }
    ]
    return make_run(
        root,
        run_id,
        {},
        "2.9.1",
        "NVIDIA H100 80GB HBM3",
        started_at=started_at,
        extra=extra,
        env={"image_digest": DIGEST, "lock": {"hash": "f" * 64}},
        cases={"train_resnet[bs=1]": CASES["train_resnet[bs=1]"]},
    )


@pytest.fixture(scope="module")
def gpu_report(tmp_path_factory) -> Path:
    """A report of two GPU-like runs: B has conv 20 % slower (quiet), fp32 gemm at 0.6 but with
    30 % noise, launch 10 % faster, and its elementwise case throttled for 35 % of its window."""
    root = tmp_path_factory.mktemp("gpu")
    a = make_gpu_run(root, "run-a", {}, {}, {}, "2026-11-28T10:00:00+00:00")
    b = make_gpu_run(
        root,
        "run-b",
        {
            "conv[dtype=bf16,layer=c2_3x3]": 0.8,
            "gemm[dtype=fp32,n=4096]": 0.6,
            "launch[mode=eager]": 0.9,
        },
        {"gemm[dtype=fp32,n=4096]": 0.3},
        {LONG_CASE: 35.0},
        "2026-11-28T11:00:00+00:00",
    )
    out = root / "report.html"
    proc = cli("report", str(a), str(b), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def gpu_page(gpu_report):
    """The GPU-like report in Chromium at 1200 px, the width it must fit."""
    if CHROMIUM is None and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed")
    with browser_page(gpu_report, width=1200) as page:
        assert page.errors == []
        yield page


def test_roofline_has_both_roofs_the_ridges_and_a_point_per_kernel_case(gpu_page):
    figures = gpu_page.locator("figure.roofline")
    assert figures.count() == 2  # one per side
    for i in range(2):
        svg = gpu_page.locator(f"figure.roofline >> nth={i} >> svg")
        # Every kernel case with an intensity, and none of the ceiling or launch cases.
        assert svg.locator(f"g[id^='s{i}-point-']").count() == len(KERNELS)
        assert svg.locator(f"g[id='s{i}-point-gemm[dtype=bf16,n=4096]']").count() == 1
        assert svg.locator(f"g[id^='s{i}-point-ceiling']").count() == 0
        assert svg.locator(f"g[id='s{i}-roof-memory']").count() == 1
        compute = svg.locator(f"g[id^='s{i}-roof-compute-']")
        assert sorted(compute.evaluate_all("gs => gs.map(g => g.id)")) == [
            f"s{i}-roof-compute-bf16",
            f"s{i}-roof-compute-fp32",
        ]
        assert svg.locator(f"g[id^='s{i}-ridge-']").count() == 2
        # Each point's tooltip names its case and numbers.
        title = svg.locator(f"g[id='s{i}-point-gemm[dtype=bf16,n=4096]'] > title").text_content()
        assert title.startswith("gemm[dtype=bf16,n=4096]: 1.37e+03 FLOP/B, ")
    caption = gpu_page.locator("figure.roofline >> nth=0 >> figcaption").text_content()
    assert "bf16 700 TFLOP/s" in caption and "memory 2900 GB/s, measured (ceiling)" in caption


def test_heatmap_colours_only_significant_quiet_changes(gpu_page):
    def heat(bench: str) -> dict:
        return gpu_page.locator(f"td.heat[data-bench='{bench}']").evaluate(
            "td => ({...td.dataset, text: td.textContent, cls: td.className})"
        )

    # fp32 gemm at 0.6 is called slower, but its side's samples scatter by 30 %: neutral.
    verdicts = gpu_page.locator("tr", has=gpu_page.locator("td", has_text="gemm[dtype=fp32"))
    assert verdicts.locator("td.slower").count() == 1
    gemm = heat("gemm")
    assert gemm["text"] == "— (0 of 2 changed)" and gemm["ratio"] == ""
    assert gemm["noisy"] == "1" and "neutral" in gemm["cls"]
    conv = heat("conv")
    assert conv["text"] == "0.80 (1 of 1)" and "changed" in conv["cls"]
    assert float(conv["ratio"]) == pytest.approx(0.8, rel=0.02)
    assert heat("launch")["text"].endswith("(1 of 1)")  # latency 10 % lower: faster
    colours = gpu_page.locator("td.heat").evaluate_all(
        "tds => tds.map(td => [td.dataset.bench, getComputedStyle(td).backgroundColor])"
    )
    by_bench = dict(colours)
    assert by_bench["gemm"] == "rgb(230, 230, 230)"  # neutral grey
    assert by_bench["conv"] != by_bench["gemm"]


def test_speedup_axis_is_logarithmic_and_labelled_in_ratios(gpu_page):
    ticks = gpu_page.locator("svg[aria-label^='speed-up'] text").evaluate_all(
        """ts => ts.filter(t => /^[0-9.]+$/.test(t.textContent.trim()))
                   .map(t => { const r = t.getBoundingClientRect();
                               return [t.textContent.trim(), r.x + r.width / 2]; })"""
    )
    x = dict(ticks)
    assert "1" in x and len(x) >= 4, x  # ratios as numbers (0.5, 1, 2), not powers of ten
    # On a log axis a tick's place is linear in the logarithm of its ratio: equal ratios, equal
    # distances (0.8 and 1.25 as far from 1; 0.5 about 3.1 times as far as 0.8).
    logs = np.log([float(t) for t in x])
    places = np.array(list(x.values()))
    slope, offset = np.polyfit(logs, places, 1)
    assert np.abs(places - (slope * logs + offset)).max() < 1.5  # px
    assert slope > 0


def test_no_escape_codes_anywhere_in_the_page(gpu_report, gpu_page):
    source = gpu_report.read_text(encoding="utf-8")
    page_text = gpu_page.evaluate("document.body.innerText")
    for text in (source, page_text, gpu_page.content()):
        assert "\x1b" not in text and "\x07" not in text and "[31m" not in text
    assert "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in page_text


def test_the_page_fits_1200_px_and_long_values_are_whole_on_hover(gpu_page):
    assert gpu_page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    # Nor does any table need its own scroll box: the comparison's 13 columns fit too.
    assert (
        gpu_page.locator("div.wide").evaluate_all(
            "ds => ds.filter(d => d.scrollWidth > d.clientWidth).length"
        )
        == 0
    )
    # Long tokens are cut on screen, whole in the title: the image digest, the long case id.
    for value in (DIGEST, LONG_CASE):
        cut = gpu_page.locator(f"span.cut[title='{value}']").first
        assert cut.text_content() == value
        assert cut.evaluate("e => e.scrollWidth > e.clientWidth")  # shown with an ellipsis
    # A reason wraps: all of it readable, inside the page.
    reason = gpu_page.locator("td.wrap", has_text="PYTORCH_CUDA_ALLOC_CONF").first
    box = reason.bounding_box()
    assert box["x"] + box["width"] <= 1200 and box["height"] > 30


def test_telemetry_strip_and_throttled_marks(gpu_page):
    assert gpu_page.locator("h2", has_text="Clocks, power and temperature").count() == 1
    assert gpu_page.locator("img.telemetry").evaluate("i => i.naturalWidth > 500")
    results = gpu_page.locator("h2:text('Results per case') + div table")
    marked = results.locator("tr", has=gpu_page.locator("td", has_text="⚠ throttled 35 %"))
    assert marked.count() == 1
    assert marked.locator("td").nth(0).text_content() == "run-b"
    assert results.locator("td", has_text="⚠ throttled").count() == 1


def test_gpu_report_screenshot(gpu_page):
    ARTIFACTS.mkdir(exist_ok=True)
    gpu_page.screenshot(path=str(ARTIFACTS / "report-gpu.png"), full_page=True)
    assert (ARTIFACTS / "report-gpu.png").stat().st_size > 50_000
