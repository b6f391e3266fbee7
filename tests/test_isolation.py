"""ISOLATE: cases that differ in an isolated parameter run in worker processes of their own."""

import json

import pytest
from conftest import worker

from cudastack.contract.schema import rows_of
from cudastack.environment import suite
from cudastack.environment.isolation import case_statuses
from cudastack.host.analysis import results

SPECS = suite.discover(suite.DEFAULT_BENCH_DIR)


def groups_for(profile, benches):
    return suite.process_groups(SPECS, suite.plan(SPECS, profile, benches))


@pytest.mark.parametrize("profile", ["quick", "standard"])
def test_conv_benchmark_values_never_share_a_process(profile):
    cases = suite.plan(SPECS, profile, ["conv"])
    groups = suite.process_groups(SPECS, cases)
    values = [{c.params["benchmark"] for c in g} for g in groups]
    # quick lists benchmark=false only: one group, no extra process; standard has both.
    assert values == ([{False}] if profile == "quick" else [{False}, {True}])
    for g in groups:  # each group keeps the planned order
        assert g == [c for c in cases if c in g]
    assert sorted(c.id for g in groups for c in g) == sorted(c.id for c in cases)


def test_benches_without_isolate_stay_in_the_first_group_in_order():
    assert groups_for("standard", ["gemm", "sdpa"]) == [
        suite.plan(SPECS, "standard", ["gemm", "sdpa"])
    ]
    everything = suite.plan(SPECS, "standard")
    first, second = suite.process_groups(SPECS, everything)
    assert first == [c for c in everything if c.params.get("benchmark") is not True]
    assert all(c.bench == "conv" and c.params["benchmark"] is True for c in second)
    assert suite.process_groups(SPECS, []) == [[]]


ISOLATING_BENCH = '''
"""A bench that isolates mode; one case kills its own process."""
import os
import signal

KIND = "kernel"
HEADLINE = "tflops"
PARAMS = {"mode": ["live", "die"], "n": [1, 2]}
ISOLATE = ["mode"]

def run(ctx, mode, n):
    if mode == "die" and n == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    x = ctx.randn(16, 16)
    return ctx.measure(lambda: x @ x, flops=2 * 16**3)
'''


@pytest.mark.parametrize(
    "source, message",
    [
        (
            'PARAMS = {"a": [1]}\nISOLATE = ["b"]\n',
            "ISOLATE names ['b'], which PARAMS does not have",
        ),
        ('PARAMS = {"a": [1]}\nISOLATE = "a"\n', "ISOLATE must be a list of parameter names"),
        (
            'DATA_PARALLEL = True\nPARAMS = {"a": [1]}\nISOLATE = ["a"]\n',
            "a DATA_PARALLEL bench cannot ISOLATE parameters",
        ),
    ],
)
def test_isolate_must_name_parameters_of_a_single_process_bench(make_bench, source, message):
    folder = make_bench("b", source)
    with pytest.raises(suite.SuiteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        suite.discover(folder)


def read(out):
    """The records' rows, one per sample (a records.jsonl line holds a metric's samples)."""
    lines = (out / "records.jsonl").read_text().splitlines()
    return [row for line in lines for row in rows_of(json.loads(line))]


def test_a_real_conv_run_puts_each_benchmark_value_in_its_own_process(tmp_path):
    out = tmp_path / "out"
    proc = worker(
        "--out", str(out), "--bench", "conv", "--profile", "standard", "--device", "cpu",
        "--select", "layer=c2_3x3", "--select", "direction=fwd", "--select", "layout=nchw",
        "--select", "dtype=fp32", "--set", "batch=1", "--threads", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = read(out)
    pids = {r["case"]: r["pid"] for r in rows}
    ceiling, false_id, true_id = (
        "ceiling[what=matmul,dtype=fp32]",  # the parent measures it for both groups
        "conv[layer=c2_3x3,direction=fwd,layout=nchw,benchmark=false,dtype=fp32,batch=1]",
        "conv[layer=c2_3x3,direction=fwd,layout=nchw,benchmark=true,dtype=fp32,batch=1]",
    )
    assert set(pids) == {ceiling, false_id, true_id}
    assert len({pids[ceiling], pids[false_id], pids[true_id]}) == 3
    assert len({r["run_id"] for r in rows}) == 1  # one run, though no --run-id was given
    table = results.read_records(out / "records.jsonl")
    status = dict(zip(table["case"], table["status"]))
    assert status == {ceiling: "ok", false_id: "ok", true_id: "skipped"}  # benchmark=true: CUDA
    assert set(table["process"]) == {0}
    done = json.loads((out / "done.json").read_text())
    assert (done["ok"], done["skipped"], done["failed"]) == (1, 1, 0)
    assert json.loads((out / "env.json").read_text())["cases"] == 2
    assert "[  1/2]" in proc.stdout and "[  2/2]" in proc.stdout


def test_a_process_that_dies_fails_its_own_cases_and_the_other_group_runs(make_bench, tmp_path):
    folder = make_bench("isolating", ISOLATING_BENCH)
    out = tmp_path / "out"
    proc = worker("--out", str(out), "--bench-dir", str(folder), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    by_case = {r["case"]: r for r in read(out)}
    live = [by_case[f"isolating[mode=live,n={n}]"] for n in (1, 2)]
    assert [r["status"] for r in live] == ["ok", "ok"]
    died, never = by_case["isolating[mode=die,n=1]"], by_case["isolating[mode=die,n=2]"]
    assert died["status"] == "failed"
    assert died["reason"] == "its worker process ended with signal SIGKILL during this case"
    assert never["reason"] == (
        "not run: its worker process ended with signal SIGKILL during isolating[mode=die,n=1]"
    )
    done = json.loads((out / "done.json").read_text())
    assert (done["ok"], done["skipped"], done["failed"]) == (2, 0, 2)


def test_identical_cases_in_a_row_count_as_two():
    def row(case, metric, rep, status="ok"):
        return {"case": case, "metric": metric, "rep": rep, "status": status}

    rows = [row("a", "t", 0), row("a", "t", 1), row("a", "t", 0), row("a", "t", 1)]
    rows += [row("b", "", 0, "failed"), row("b", "", 0, "skipped"), row("c", "t", 0)]
    assert case_statuses(rows) == ["ok", "ok", "failed", "skipped", "ok"]


# Cases stated against fp32's ceiling, each value of n in a process of its own.
CEILING_BENCH = '''
"""A matrix product per process group, each stating its share of the fp32 ceiling."""
KIND = "kernel"
HEADLINE = "tflops"
CEILING = "fp32"
PARAMS = {"n": [32, 48]}
ISOLATE = ["n"]

def run(ctx, n):
    x = ctx.randn(n, n)
    return ctx.measure(lambda: x @ x, flops=2 * n**3, peak="fp32")
'''


def test_the_ceilings_reach_every_process_group_measured_once(make_bench, tmp_path):
    folder = make_bench("isolated", CEILING_BENCH)
    out = tmp_path / "out"
    proc = worker("--out", str(out), "--bench-dir", str(folder), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    rows = read(out)
    (ceiling,) = [r for r in rows if r["bench"] == "ceiling"]  # once, not once a group
    assert proc.stdout.count("[ceiling]") == 1
    cases = {r["case"]: r["pid"] for r in rows if r["bench"] == "isolated"}
    assert len(set(cases.values()) | {ceiling["pid"]}) == 3  # the parent and two children
    for case in cases:
        tflops = [r["value"] for r in rows if r["case"] == case and r["metric"] == "tflops"]
        share = [
            r["value"] for r in rows if r["case"] == case and r["metric"] == "pct_of_achievable"
        ]
        assert share == pytest.approx([100 * t / ceiling["value"] for t in tflops]), case
