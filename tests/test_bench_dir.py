"""A bench folder of the user's: what a bench file must declare, and that a new bench needs no
other edit to be listed, run, summarised, compared and explained as the kind it declares."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import cli

from cudastack.contract import runfolder
from cudastack.contract.schema import SAMPLES
from cudastack.environment import resume, suite, worker
from cudastack.environment.context import Metric, rate_metrics
from cudastack.host.analysis import results

DECLARED = '''"""A toy bench."""
{declarations}
PARAMS = {{"n": [1]}}
'''


@pytest.mark.parametrize(
    ("declarations", "message"),
    [
        ('HEADLINE = "tflops"', 'no KIND; declare KIND = "kernel" .* or KIND = "workload"'),
        ('KIND = "micro"\nHEADLINE = "tflops"', "KIND = 'micro'; declare KIND = \"kernel\""),
        ('KIND = "Kernel"\nHEADLINE = "tflops"', "KIND = 'Kernel'; declare"),
        ('KIND = WORKLOAD\nHEADLINE = "tflops"', 'KIND must be a literal: KIND = "kernel"'),
        ('KIND = "kernel"', 'no HEADLINE; declare the metric .* e.g. HEADLINE = "tflops"'),
        ('KIND = "kernel"\nHEADLINE = ["tflops"]', "HEADLINE = \\['tflops'\\]; declare"),
        ('KIND = "kernel"\nHEADLINE = ""', "HEADLINE = ''; declare"),
    ],
)
def test_a_bench_that_does_not_declare_what_it_is_is_named_with_what_to_write(
    make_bench, declarations, message
):
    folder = make_bench("mine", DECLARED.format(declarations=declarations))
    with pytest.raises(suite.SuiteError, match=f"^mine.py: {message}") as caught:
        suite.discover(folder)
    assert "\n" not in str(caught.value)


def test_declarations_are_read_without_importing_the_file(make_bench):
    # An import would fail on the first line; an annotated declaration counts as a plain one.
    source = DECLARED.format(declarations='KIND: str = "workload"\nHEADLINE = "items_per_s"')
    spec = suite.discover(make_bench("mine", source + "import no_such_module\n"))["mine"]
    assert (spec.kind, spec.headline) == ("workload", "items_per_s")


def test_every_row_carries_the_declarations_and_a_missing_headline_fails_the_case(make_bench):
    source = DECLARED.format(declarations='KIND = "kernel"\nHEADLINE = "tflops"')
    spec = suite.discover(make_bench("mine", source))["mine"]
    case = spec.cases("quick")[0]
    base = {"run_id": "r", **worker.declared(spec)}
    lines = worker.case_lines(base, case, "ok", "", rate_metrics([0.5, 0.25], flops=1e12))
    assert {(r["kind"], r["headline"]) for r in lines} == {("kernel", "tflops")}
    assert {r["status"] for r in lines} == {"ok"}
    assert [(r["metric"], len(r[SAMPLES])) for r in lines] == [("latency", 2), ("tflops", 2)]
    # A case whose numbers lack the one its bench states its result by has no result.
    (row,) = worker.case_lines(base, case, "ok", "", [Metric("latency", "ms", "lower", [1.0])])
    assert row["status"] == "failed" and row[SAMPLES] == [None]
    assert row["reason"] == (
        "returned no 'tflops' metric, which its bench declares as HEADLINE (it returned latency)"
    )
    (skipped,) = worker.case_lines(base, case, "skipped", "no GPU", [])
    assert (skipped["status"], skipped["kind"]) == ("skipped", "kernel")
    # A metric without samples has no line; a case whose metrics all lack them has no result.
    empty = Metric("latency", "ms", "lower", [])
    lines = worker.case_lines(
        base, case, "ok", "", [empty, Metric("tflops", "TFLOP/s", "higher", [2.0])]
    )
    assert [(r["metric"], r[SAMPLES]) for r in lines] == [("tflops", [2.0])]
    (row,) = worker.case_lines(base, case, "ok", "", [empty])
    assert (
        row["status"] == "failed" and row["reason"] == "benchmark returned metrics without samples"
    )


def test_a_resumed_process_reuses_the_ceilings_it_recorded_with_a_value(tmp_path):
    """environment.resume.read: the cases done (ok or skipped) of its own process, and the
    first sample of each ok ceiling line; a ceiling without a finite sample is measured again."""
    ceiling = {"bench": "ceiling", "status": "ok", "process": 0}
    lines = [
        {**ceiling, "case": "ceiling[what=copy]", SAMPLES: [25.5, 24.0]},
        {**ceiling, "case": "ceiling[what=matmul,dtype=fp32]", SAMPLES: [None]},
        {**ceiling, "case": "ceiling[what=matmul,dtype=bf16]", "rep": 0, "value": 3.5},  # schema 4
        {"bench": "mine", "case": "mine[n=1]", "status": "skipped", "process": 0, SAMPLES: [None]},
        {"bench": "mine", "case": "mine[n=2]", "status": "failed", "process": 0, SAMPLES: [None]},
        {"bench": "mine", "case": "mine[n=3]", "status": "ok", "process": 1, SAMPLES: [1.0]},
    ]
    path = tmp_path / "records.jsonl"
    path.write_text(runfolder.jsonl(lines) + '{"bench": "mine", "case": "mine[n=4]", "sta')
    found = resume.read(path, 0)
    assert found.ceilings == {"ceiling[what=copy]": 25.5, "ceiling[what=matmul,dtype=bf16]": 3.5}
    assert found.cases == {line["case"] for line in lines[:4]}


def test_a_rate_and_its_peak_share_one_unit():
    # With both rates the peak's unit must be named: TFLOP/s of a GB/s peak would be nonsense.
    with pytest.raises(ValueError, match="say which rate= the peak is in"):
        rate_metrics([0.5], flops=1e12, nbytes=2e9, peak=8.0)
    names = [m.name for m in rate_metrics([0.5], flops=1e12, nbytes=2e9)]  # no peak: no share
    assert names == ["latency", "tflops", "gbps", "flop_per_byte"]
    (pct,) = [m for m in rate_metrics([0.5], nbytes=2e9, peak=8.0) if m.name == "pct_of_peak"]
    assert pct.values == [50.0]  # 4 GB/s of an 8 GB/s peak


# A workload of the user's: its step sleeps a known time, so its latency is steady, and the
# slowdown the test asks for (TINYJOB_SLOWER) is a longer sleep: a clear change that adds no
# noise (--extra-work's busy-work would, on a shared machine). Its result is the step's latency,
# which it declares as HEADLINE, although it also returns items_per_s (what runs without a
# declared headline are compared by): the comparison must follow the declaration.
WORKLOAD = '''"""A job whose step sleeps a known time: its result is the step's latency."""

KIND = "workload"
HEADLINE = "latency"
PARAMS = {"sleep_ms": [10]}


def run(ctx, sleep_ms):
    import os
    import time

    from cudastack.environment import training

    torch = ctx.torch
    seconds = sleep_ms / 1e3 * float(os.environ.get("TINYJOB_SLOWER", "1"))

    def make_step(wrap):
        calls = []

        def step(batch):
            time.sleep(seconds)
            calls.append(batch)
            return torch.tensor(1.0 / len(calls))  # a loss that falls

        return step

    return training.measure(ctx, training.Workload(make_step, lambda: 0, 4, 1, "img/s"))
'''


@pytest.mark.integration
def test_a_new_bench_folder_is_listed_run_summarised_and_compared_as_it_declares(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    # A kernel: a shipped bench copied under a name the harness has never heard of.
    shutil.copy(suite.DEFAULT_BENCH_DIR / "launch.py", folder / "tinylaunch.py")
    (folder / "tinyjob.py").write_text(WORKLOAD, encoding="utf-8")
    declared = {"tinylaunch": ("kernel", "latency_us"), "tinyjob": ("workload", "latency")}

    listed = cli("list", "--bench-dir", str(folder))
    assert listed.returncode == 0, listed.stderr
    assert "tinylaunch" in listed.stdout and "tinyjob" in listed.stdout

    common = ["run", "--bench-dir", str(folder), "--profile", "quick"]
    for out, extra in (("base", []), ("slow", ["--env", "TINYJOB_SLOWER=3"])):
        proc = cli(*common, *extra, "--out", out, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    df = results.load_table(tmp_path / "base")
    recorded = df[df["status"] == "ok"].drop_duplicates("bench")
    assert {b: (k, h) for b, k, h in recorded[["bench", "kind", "headline"]].values} == declared
    summary = results.case_table(df).dropna(subset=["metric"])
    assert dict(zip(summary["bench"], summary["metric"])) == {
        b: h for b, (_, h) in declared.items()
    }
    shown = cli("show", "base", cwd=tmp_path)  # the job by its latency in ms, not in img/s
    assert shown.returncode == 0, shown.stderr
    # Its block: the one parameter in the title, the median in ms under its header.
    block = r"^tinyjob \(workload\) · sleep_ms=10\s*\n\s*median ms\b.*\n.*\n\s*[\d.]+\s"
    assert re.search(block, shown.stdout, re.M), shown.stdout

    proc = cli("compare", "base", "slow", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    compared = {r["bench"]: (r["kind"], r["metric"]) for r in out["comparison"]}
    assert compared == declared
    job = next(r for r in out["comparison"] if r["bench"] == "tinyjob")
    assert job["verdict"] == "slower", job  # 3x the time: latency is lower-is-better
    # The changed workload is explained by the kernel that moved with it, and by nothing else.
    (line,) = out["explanations"]
    assert re.fullmatch(
        r"tinyjob\[sleep_ms=10\] -\d+ % \(\S+ vs \S+\); kernels: tinylaunch [-+±]\d+ %.*", line
    ), line
