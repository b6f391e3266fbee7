"""compare and report on real run folders, and the HTML report in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli

from cudastack.contract.schema import SCHEMA_VERSION
from cudastack.host.analysis import results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"


def make_run(
    root: Path,
    run_id: str,
    factors: dict,
    torch: str,
    gpu: str,
    started_at: str = "2026-11-28T10:00:00+00:00",
    processes: int = 1,
) -> Path:
    """A run folder as a worker leaves it: samples per case scaled by ``factors``, from
    ``processes`` worker processes (--repeat)."""
    # Seeded by the run's name through crc32: hash() of a str differs in every process.
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))
    rows = []
    cases = {
        "gemm[n=1]": ("gemm", "tflops", "higher", 100.0),
        "conv[layer=a]": ("conv", "tflops", "higher", 50.0),
        "train_resnet[bs=1]": ("train_resnet", "items_per_s", "higher", 300.0),
        "launch[mode=eager]": ("launch", "latency_us", "lower", 5.0),
    }
    for case, (bench, metric, better, centre) in cases.items():
        values = centre * factors.get(case, 1.0) * (1 + rng.normal(0, 0.005, 40 * processes))
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
    run_dir = root / run_id
    (run_dir / "local").mkdir(parents=True)
    results.write_tables(results.to_frame(rows), run_dir)
    env = {"torch": {"version": torch, "cudnn": "9.1.0"}, "gpu": {"name": gpu}, "threads": 8}
    (run_dir / "local" / "env.json").write_text(json.dumps(env))
    return run_dir


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


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed"
)
def test_html_report_in_a_real_browser(runs, tmp_path):
    from playwright.sync_api import sync_playwright

    a, b = runs
    out = tmp_path / "report.html"
    proc = cli("report", str(a), str(b), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "http" not in out.read_text().split("<body>")[0]  # opens offline: nothing external
    ARTIFACTS.mkdir(exist_ok=True)
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
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        assert errors == []
        assert page.locator("h2", has_text="Comparison with run-a").count() == 1
        assert page.locator("table").count() >= 4
        assert page.locator("td.slower").count() == 2 and page.locator("td.faster").count() == 1
        assert page.locator("img").count() >= 2
        assert page.evaluate("Array.from(document.images).every(i => i.naturalWidth > 100)")
        assert page.get_by_text("cuDNN attention is not available here").count() == 2  # per run
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
