"""The worker's command line, written once: what the host writes, the worker reads back."""

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import worker

from cudastack.contract.request import SuiteRequest, parser
from cudastack.environment.isolation import child_argv
from cudastack.host.run.suite_args import SuiteArgs

OUT = Path("results/run 1/local")

REQUESTS = [
    SuiteRequest(out=OUT),  # every other field at its default
    SuiteRequest(out=Path("o"), benches=(), select=(), overrides=()),
    SuiteRequest(
        out=Path("/tmp/with spaces/out"),
        cell="cu128 torch2.9",
        run_id="20261128-231502-3f9a1c",
        profile="quick",
        bench_dir=Path("/my benches"),
        device="cuda:1",
        benches=("gemm", "sdpa", "conv"),
        select=("dtype=bf16,fp16", "n=8192", "dtype=fp32"),
        threads=4,
        case_timeout=12.5,
        extra_work=0.25,
        overrides=("batch=128", "weights=/models/a b"),
        trace=True,
        process=3,
        image_digest="sha256:0123abcd",
        group=1,
    ),
    # Values argparse would take for options unless written as --flag=value.
    SuiteRequest(
        out=Path("-out"),
        cell="-",
        run_id="--run-id",
        profile="-x",
        bench_dir=Path("-bench"),
        device="--device",
        benches=("-gemm", "--x"),
        select=("-k=v", "--select", "-"),
        threads=-1,
        case_timeout=-0.5,
        extra_work=-1e-9,
        overrides=("-batch=-1",),
        process=-2,
        image_digest="-sha",
        group=-1,
    ),
    # Empty strings and values equal to another option's name or holding '='.
    SuiteRequest(
        out=Path("."),
        cell="",
        run_id="x=y",
        select=("",),
        overrides=("", "k=v=w"),
        image_digest=" leading space",
        group=0,
    ),
    SuiteRequest(out=Path("o"), case_timeout=1e-300, extra_work=1.0000000000000002, threads=1),
]


@pytest.mark.parametrize("request_", REQUESTS)
def test_from_argv_reads_back_what_to_argv_writes(request_):
    assert SuiteRequest.from_argv(request_.to_argv()) == request_


def test_only_values_other_than_the_default_are_written():
    assert SuiteRequest(out=OUT).to_argv() == ["--out", str(OUT)]
    assert SuiteRequest(out=OUT, trace=True, threads=2, group=0).to_argv() == [
        "--out", str(OUT), "--threads", "2", "--trace", "--group", "0",
    ]  # fmt: skip
    assert SuiteRequest(out=OUT, benches=("a", "b")).to_argv()[2:] == ["--bench", "a,b"]
    assert SuiteRequest(out=OUT, select=("-k=v",)).to_argv()[2:] == ["--select=-k=v"]


def test_the_worker_command_line_reads_as_before():
    """Defaults and forms of the worker's flags as its argparse parser always read them."""
    assert SuiteRequest.from_argv(["--out", "o"]) == SuiteRequest(out=Path("o"))
    req = SuiteRequest.from_argv(
        ["--out", "o", "--bench", "a,,b", "--bench", "c,d", "--select", "x=1", "--select", "y=2",
         "--set", "batch=2", "--case-timeout", "3", "--trace", "--group", "2"]
    )  # fmt: skip
    assert req.benches == ("c", "d")  # the last --bench wins; empty names are dropped
    assert req.select == ("x=1", "y=2") and req.overrides == ("batch=2",)
    assert req.case_timeout == 3.0 and req.trace and req.group == 2
    assert SuiteRequest.from_argv(["--out", "o", "--bench", ""]).benches == ()
    assert SuiteRequest.from_argv(["--out=o", "--threads=-1"]).threads == -1


def test_lists_compare_as_tuples_and_a_bench_name_must_survive_a_comma_list():
    assert SuiteRequest(out=OUT, benches=["a"], select=["k=v"]) == SuiteRequest(
        out=OUT, benches=("a",), select=("k=v",)
    )
    for bad in (("a,b",), ("",)):
        with pytest.raises(ValueError, match="bench names"):
            SuiteRequest(out=OUT, benches=bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "o", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--bench", "gemm"], "the following arguments are required: --out"),
        (["--out", "o", "--threads", "two"], "argument --threads: invalid int value: 'two'"),
        (["--out", "o", "--select", "-k=v"], "argument --select: expected one argument"),
    ],
)
def test_bad_input_exits_2_as_argparse_does(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        SuiteRequest.from_argv(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_real_worker_refuses_an_unknown_flag_with_exit_2(tmp_path):
    proc = worker("--out", str(tmp_path / "out"), "--bnech", "gemm")
    assert proc.returncode == 2
    assert "unrecognized arguments: --bnech" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_worker_help_names_every_option_but_the_hidden_one():
    proc = subprocess.run(
        [sys.executable, "-m", "cudastack.worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m cudastack.worker")
    assert "Environment side entry point" in proc.stdout  # the worker's docstring
    for f in dataclasses.fields(SuiteRequest):
        option = f.metadata["option"]
        shown = f" {option.flag} " in proc.stdout or f" {option.flag}\n" in proc.stdout
        assert shown != option.hidden, option.flag
        if not option.hidden:
            assert option.help.split()[0] in proc.stdout, option.flag


def test_every_field_is_an_option_of_the_parser():
    flags = {a.dest: a.option_strings for a in parser()._actions}
    for f in dataclasses.fields(SuiteRequest):
        assert flags[f.name] == [f.metadata["option"].flag]
    assert set(flags) == {f.name for f in dataclasses.fields(SuiteRequest)} | {"help"}


def test_an_isolated_group_reruns_the_same_request_limited_to_its_group():
    req = REQUESTS[2]
    cmd = child_argv(dataclasses.replace(req, group=None), 4)
    assert cmd[:3] == [sys.executable, "-m", "cudastack.worker"]
    assert SuiteRequest.from_argv(cmd[3:]) == dataclasses.replace(req, group=4)


def test_the_host_writes_for_the_worker_what_the_cli_was_given():
    args = SuiteArgs(
        benches=["gemm", "conv"],
        select=["dtype=bf16"],
        profile="quick",
        device="cpu",
        threads=2,
        extra_work=0.5,
        overrides=["batch=8"],
        trace=True,
    )
    argv = args.worker_argv(OUT, "cellA", "run1", Path("/harness/bench"), "sha256:-x", 2)
    assert SuiteRequest.from_argv(argv) == SuiteRequest(
        out=OUT,
        cell="cellA",
        run_id="run1",
        profile="quick",
        bench_dir=Path("/harness/bench"),
        device="cpu",
        benches=("gemm", "conv"),
        select=("dtype=bf16",),
        threads=2,
        extra_work=0.5,
        overrides=("batch=8",),
        trace=True,
        process=2,
        image_digest="sha256:-x",
    )


ISOLATING_BENCH = '''
"""Two isolated modes, each in a process of its own."""

PARAMS = {"mode": ["a", "b"], "n": [1, 2, 3], "k": [1]}
ISOLATE = ["mode"]
KIND = "kernel"
HEADLINE = "tflops"

def run(ctx, mode, n, k):
    x = ctx.randn(8, 8)
    return ctx.measure(lambda: x @ x, flops=2 * 8**3)
'''


def test_the_worker_and_its_isolated_groups_run_what_the_host_wrote(tmp_path):
    """End to end: the host's argv, through the real worker and the children it starts for
    each ISOLATE group, ends in rows that carry every value the host gave."""
    bench_dir = tmp_path / "my benches"
    bench_dir.mkdir()
    (bench_dir / "iso.py").write_text(textwrap.dedent(ISOLATING_BENCH))
    out = tmp_path / "run 1" / "cell"
    out.mkdir(parents=True)  # a later process of the cell appends to the folder
    args = SuiteArgs(
        benches=["iso"], select=["n=1,3"], profile="smoke", device="cpu", threads=1,
        overrides=["k=5"],
    )  # fmt: skip
    argv = args.worker_argv(out, "my cell", "run-7", bench_dir, "-digest with space", 2)
    proc = worker(*argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["case"] for r in rows} == {
        f"iso[mode={m},n={n},k=5]" for m in ("a", "b") for n in (1, 3)
    }
    assert {r["status"] for r in rows} == {"ok"}
    assert len({r["pid"] for r in rows}) == 2  # one process per mode
    for key, value in [
        ("cell", "my cell"), ("run_id", "run-7"), ("image_digest", "-digest with space"),
        ("process", 2),
    ]:  # fmt: skip
        assert {r[key] for r in rows} == {value}, key
    assert json.loads((out / "done.json").read_text())["process"] == 2
