"""Discovery, case expansion, profiles and selection (no torch needed)."""

import pytest

from cudastack.environment import suite
from cudastack.environment.suite import SuiteError

GRID = '''
"""A toy bench: adds numbers."""
KIND = "kernel"
HEADLINE = "tflops"
PARAMS = {"dtype": ["fp32", "bf16"], "n": [1, 2, 3], "fused": [True, False]}
PROFILES = {"quick": {"n": [1]}}

def run(ctx, dtype, n, fused):
    return []
'''
OTHER = '"""Other."""\nKIND = "workload"\nHEADLINE = "items_per_s"\n'


def test_expansion_is_the_cartesian_product_in_grid_order(make_bench):
    spec = suite.discover(make_bench("toy", GRID))["toy"]
    cases = spec.cases("standard")
    assert len(cases) == 2 * 3 * 2
    assert cases[0].id == "toy[dtype=fp32,n=1,fused=true]"
    assert cases[1].id == "toy[dtype=fp32,n=1,fused=false]"
    assert cases[-1].id == "toy[dtype=bf16,n=3,fused=false]"
    assert spec.doc == "A toy bench: adds numbers."


def test_profile_overrides_only_named_keys(make_bench):
    spec = suite.discover(make_bench("toy", GRID))["toy"]
    assert [c.params["n"] for c in spec.cases("quick")] == [1, 1, 1, 1]
    assert len(spec.cases("full")) == 12  # no override: PARAMS as written


def test_select_filters_by_formatted_value(make_bench):
    specs = suite.discover(make_bench("toy", GRID))
    sel = suite.parse_select(["dtype=bf16", "n=2,3", "fused=true"])
    cases = suite.plan(specs, "standard", None, sel)
    assert [c.id for c in cases] == [
        "toy[dtype=bf16,n=2,fused=true]",
        "toy[dtype=bf16,n=3,fused=true]",
    ]


def test_select_drops_benches_without_the_key(make_bench):
    make_bench("toy", GRID)
    specs = suite.discover(make_bench("other", OTHER + 'PARAMS = {"size": [1]}\n'))
    cases = suite.plan(specs, "standard", None, {"dtype": ["fp32"]})
    assert {c.bench for c in cases} == {"toy"}


@pytest.mark.parametrize(
    ("items", "message"),
    [(["dtype"], "malformed --select"), (["=x"], "malformed --select"), (["n="], "malformed")],
)
def test_malformed_select(items, message):
    with pytest.raises(SuiteError, match=message):
        suite.parse_select(items)


def test_unknown_names_list_the_valid_choices(make_bench):
    specs = suite.discover(make_bench("toy", GRID))
    with pytest.raises(SuiteError, match="unknown bench nope; choose from: toy"):
        suite.plan(specs, "standard", ["nope"])
    with pytest.raises(SuiteError, match="parameters: dtype, fused, n"):
        suite.plan(specs, "standard", None, {"batch": ["1"]})
    with pytest.raises(SuiteError, match="values: fp32, bf16"):
        suite.plan(specs, "standard", None, {"dtype": ["fp8"]})
    with pytest.raises(SuiteError, match="unknown profile 'fast'"):
        suite.resolve_profile("fast", has_gpu=False)


def test_auto_profile_follows_the_device():
    assert suite.resolve_profile("auto", has_gpu=False).name == "quick"
    assert suite.resolve_profile("auto", has_gpu=True).name == "standard"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("PARAMS = {'n': list(range(3))}\n", "must be a literal"),
        ("PARAMS = {'n': []}\n", "non-empty list"),
        ("PARAMS = {'n': [1]}\nPROFILES = {'turbo': {'n': [2]}}\n", "unknown profile 'turbo'"),
        ("PARAMS = {'n': [1]}\nPROFILES = {'quick': {'m': [2]}}\n", "sets unknown"),
        ("def run(:\n", "syntax error on line 1"),
    ],
)
def test_bad_bench_files_are_named(make_bench, source, message):
    folder = make_bench("broken", source)
    with pytest.raises(SuiteError, match=f"broken.py: .*{message}"):
        suite.discover(folder)


def test_empty_or_missing_bench_folder(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        suite.discover(tmp_path / "nowhere")
    with pytest.raises(SuiteError, match="no bench files"):
        suite.discover(tmp_path)


def test_shipped_suite_discovers_and_every_bench_has_a_quick_grid():
    specs = suite.discover(suite.DEFAULT_BENCH_DIR)
    for name in ("gemm", "conv", "sdpa", "bandwidth", "elementwise", "launch"):
        assert name in specs, name
        assert specs[name].doc, f"{name} has no docstring"
        assert specs[name].cases("quick"), f"{name} has no quick cases"


def test_set_replaces_values_with_the_parameters_type(make_bench):
    make_bench("toy", GRID)
    other = OTHER + 'PARAMS = {"n": [1.5], "weights": [""]}\n'
    specs = suite.discover(make_bench("other", other))
    overrides = suite.parse_set(["n=7", "fused=false", "weights=/models/x"], specs)
    assert overrides == {"n": "7", "fused": "false", "weights": "/models/x"}
    cases = suite.plan(specs, "standard", None, None, overrides)
    assert [c.id for c in cases] == [
        "other[n=7.0,weights=/models/x]",  # each bench reads the value as its own type
        "toy[dtype=fp32,n=7,fused=false]",
        "toy[dtype=bf16,n=7,fused=false]",
    ]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["n"], "malformed --set 'n'"),
        (["colour=red"], "no bench has that parameter"),
        (["n=two"], "n takes a number"),
        (["fused=yes"], "write true or false"),
        (["dtype=fp12"], "--set dtype=fp12: toy knows fp32, bf16"),  # text: a listed value
    ],
)
def test_bad_set(make_bench, items, message):
    specs = suite.discover(make_bench("toy", GRID))
    with pytest.raises(SuiteError, match=message):
        suite.parse_set(items, specs)


def test_data_parallel_keeps_only_benches_that_declare_it(make_bench):
    make_bench("toy", GRID)
    specs = suite.discover(make_bench("ddp", OTHER + 'DATA_PARALLEL = True\nPARAMS = {"n": [1]}\n'))
    assert specs["ddp"].data_parallel and not specs["toy"].data_parallel
    assert [c.bench for c in suite.plan(specs, "quick", data_parallel=True)] == ["ddp"]
    with pytest.raises(SuiteError, match="toy does not run data parallel; --nproc applies to: ddp"):
        suite.plan(specs, "quick", ["toy"], data_parallel=True)
