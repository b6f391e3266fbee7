"""The real quick suite on this CPU with real torch: every record must be sane."""

import copy
import importlib.util
import json
import math
import re
import warnings

import pandas as pd
import pytest
from conftest import cli

from cudastack.contract.schema import COLUMNS, STATUSES, UNITS
from cudastack.environment import suite
from cudastack.environment.context import Context
from cudastack.environment.suite import DEFAULT_BENCH_DIR
from cudastack.host.analysis import results

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("integration")
    proc = cli("run", "--profile", "quick", "--out", "run", cwd=root, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return root / "run", proc


SPECS = suite.discover(DEFAULT_BENCH_DIR)
# The achievable ceilings the worker measures before the kernel cases: rows of their own bench,
# which no file declares (ceilings.declared gives their kind and headline).
CEILING = "ceiling"


def declared_headline(bench: str, case: str) -> str:
    if bench == CEILING:
        return "tflops" if "what=matmul" in case else "gbps"
    return SPECS[bench].headline


def test_every_bench_produced_rows(quick_run):
    run_dir, proc = quick_run
    df = results.load_table(run_dir)
    assert set(df["bench"]) == set(SPECS) | {CEILING}
    assert {SPECS[b].kind for b in SPECS} == {"kernel", "workload"}
    assert "profile quick" in proc.stdout
    assert "run " in proc.stdout and "median" in proc.stdout  # the summary table


def test_every_row_carries_its_bench_s_declarations(quick_run):
    df = results.load_table(quick_run[0])
    for bench, rows in df.groupby("bench"):
        assert set(rows["kind"]) == {SPECS[bench].kind if bench != CEILING else "kernel"}, bench
        assert set(rows["headline"]) == {declared_headline(bench, c) for c in rows["case"]}, bench


def test_every_ok_case_states_its_declared_headline(quick_run):
    df = results.load_table(quick_run[0])
    ok = df[df["status"] == "ok"]
    for case, rows in ok.groupby("case"):
        headline = declared_headline(rows["bench"].iloc[0], case)
        assert len(rows[rows["metric"] == headline]) >= 1, case
    summary = results.case_table(df).dropna(subset=["metric"])
    expected = [declared_headline(b, c) for b, c in zip(summary["bench"], summary["case"])]
    assert (summary["metric"] == expected).all()


def test_every_record_is_sane(quick_run):
    run_dir, _ = quick_run
    df = results.load_table(run_dir)
    assert list(df.columns) == list(COLUMNS)
    assert set(df["status"]) <= set(STATUSES)
    assert (df["status"] != "failed").all(), df[df["status"] == "failed"][["case", "reason"]]
    ok = df[df["status"] == "ok"]
    assert len(ok) > 0
    assert ok["value"].map(math.isfinite).all()
    can_be_zero = ok["metric"].isin(
        ["output_err", "data_wait_pct", "data_wait_ms"]
    )  # fp32's own error is 0
    assert (ok.loc[~can_be_zero, "value"] > 0).all() and (ok["value"] >= 0).all()
    for metric, unit in UNITS.items():
        if not unit:
            continue
        assert (ok.loc[ok["metric"] == metric, "unit"] == unit).all(), metric
    assert set(ok["better"]) <= {"higher", "lower"}
    assert (ok.loc[ok["metric"].isin(["latency", "latency_us"]), "better"] == "lower").all()
    assert (ok.loc[ok["metric"].isin(["tflops", "gbps"]), "better"] == "higher").all()
    not_ok = df[df["status"] != "ok"]
    assert (not_ok["reason"] != "").all() and not_ok["value"].isna().all()
    # every ok case has a latency and repeated samples, numbered from 0 (a ceiling is one
    # number, the best sample of its sweep)
    for case, rows in ok[ok["bench"] != CEILING].groupby("case"):
        lat = rows[rows["metric"].isin(["latency", "latency_us"])]
        assert len(lat) >= 3, case
        assert sorted(lat["rep"]) == list(range(len(lat))), case
    for column in ("run_id", "cell", "device", "device_name", "torch", "harness_rev", "started_at"):
        assert (df[column] != "").all(), column
    assert (df["cell"] == "local").all() and (df["device"] == "cpu").all()


def test_params_round_trip_into_case_ids(quick_run):
    df = results.load_table(quick_run[0]).drop_duplicates("case")
    for case, params in zip(df["case"], df["params"]):
        decoded = json.loads(params)
        assert all(f"{k}=" in case for k in decoded), case


def test_fingerprint_fields(quick_run):
    env = json.loads((quick_run[0] / "local" / results.ENV).read_text())
    for key in ("python", "torch", "cpu", "flags", "env", "packages", "harness_rev", "threads"):
        assert key in env, key
    assert env["torch"]["version"] and env["python"]["version"]
    assert env["cpu"]["torch_threads"] == env["threads"] >= 1
    assert set(env["flags"]) >= {"matmul_allow_tf32", "cudnn_benchmark", "cudnn_deterministic"}


def test_csv_matches_parquet(quick_run):
    run_dir = quick_run[0]
    parquet = results.load_table(run_dir)
    csv = pd.read_csv(run_dir / results.CSV, keep_default_na=False, na_values={"value": [""]})
    assert len(csv) == len(parquet)
    assert (csv["case"] == parquet["case"]).all()
    assert csv["value"].equals(parquet["value"]) or (
        (csv["value"] - parquet["value"]).abs().max() < 1e-9 * parquet["value"].abs().max()
    )


def test_show_prints_the_same_run(quick_run):
    proc = cli("show", str(quick_run[0]))
    assert proc.returncode == 0, proc.stderr
    # gemm[dtype=fp32,n=1024] as the show command shows it: a row of gemm's block, whose
    # columns are the parameters that vary in it.
    block = r"^gemm \(kernel\)\s*\n\s*dtype +n +median TFLOP/s\b(.*\n)*?fp32 +1024 +[\d.]+ "
    assert re.search(block, proc.stdout, re.M), proc.stdout


TRAINING_UNITS = {"train_resnet": "img/s", "train_gpt": "tokens/s", "seed_cnn": "img/s"}


def _metric(rows, name):
    return rows.loc[rows["metric"] == name, "value"].tolist()


def test_every_training_case_learns_and_states_its_throughput(quick_run):
    df = results.load_table(quick_run[0])
    ok = df[(df["status"] == "ok") & df["bench"].isin([*TRAINING_UNITS, "finetune"])]
    assert set(ok["bench"]) == {*TRAINING_UNITS, "finetune"}
    for case, rows in ok.groupby("case"):
        (start,), (end,) = _metric(rows, "loss_start"), _metric(rows, "loss_end")
        assert end < start, case
        rate = rows[rows["metric"] == "items_per_s"]
        assert len(rate) == 6 and (rate["value"] > 0).all(), case  # one sample per window
        bench = rows["bench"].iloc[0]
        expected = TRAINING_UNITS.get(bench) or (
            "samples/s" if "model=bert" in case else "tokens/s"
        )
        assert (rate["unit"] == expected).all(), case
        wait = _metric(rows, "data_wait_pct")
        assert len(wait) == 6 and all(0 <= w < 100 for w in wait), case
        step = [a + b for a, b in zip(_metric(rows, "data_wait_ms"), _metric(rows, "compute_ms"))]
        assert step == pytest.approx(_metric(rows, "latency")), case  # the split adds up
        assert not _metric(rows, "peak_mem"), "peak_mem is a GPU measurement"


def test_lora_trains_fewer_parameters_than_full_fine_tuning(quick_run):
    df = results.load_table(quick_run[0])
    ft = df[(df["bench"] == "finetune") & (df["metric"] == "trainable_params")]
    for model in ("bert", "gpt2"):
        rows = ft[ft["case"].str.contains(f"model={model},")]
        full = rows[rows["case"].str.contains("mode=full")]["value"]
        lora = rows[rows["case"].str.contains("mode=lora")]["value"]
        assert len(full) and len(lora)
        assert lora.max() < full.min() / 20, model


def test_gpt_states_model_flops_and_mfu_only_against_a_known_peak(quick_run):
    df = results.load_table(quick_run[0])
    gpt = df[(df["bench"] == "train_gpt") & (df["status"] == "ok")]
    assert (gpt.loc[gpt["metric"] == "tflops", "value"] > 0).all()
    # A CPU's peak is its fp32 and fp64 FLOP rate, where cores, clock and ISA are known: MFU
    # for fp32 training there, never for bf16 (amp_bf16 in quick), which no CPU peak states.
    env = json.loads((quick_run[0] / "local" / results.ENV).read_text())
    known = env["cpu"]["peaks"]["values"] or {}
    for case, rows in gpt.groupby("case"):
        precision = json.loads(rows["params"].iloc[0])["precision"]
        assert ("mfu" in set(rows["metric"])) == (precision == "fp32" and "fp32" in known), case


def test_the_run_measured_the_ceilings_its_kernels_name_and_states_shares_of_them(quick_run):
    df = results.load_table(quick_run[0])
    ok = df[df["status"] == "ok"]
    ceilings = ok[ok["bench"] == CEILING]
    # A CPU measures fp32's GEMM (gemm and conv name it; bf16 has no CPU ceiling), then the
    # copy (bandwidth and elementwise name mem).
    assert list(ceilings["case"]) == ["ceiling[what=matmul,dtype=fp32]", "ceiling[what=copy]"]
    # Kernels stated against fp32 or mem have a share of its ceiling; workloads have none.
    table = results.case_table(df).set_index("case")
    gemm = table.loc["gemm[dtype=fp32,n=1024]"]
    assert gemm["pct_of_achievable"] > 0
    workloads = [b for b, s in SPECS.items() if s.kind == "workload"]
    assert not set(ok.loc[ok["bench"].isin(workloads), "metric"]) & {"pct_of_achievable"}


def _errors_against_fp64(params: dict) -> dict[str, float]:
    """Each precision's relative error against a float64 run of the same model and input,
    computed here independently of the bench's own measurement."""
    import torch

    spec = importlib.util.spec_from_file_location(
        "infer_precision", DEFAULT_BENCH_DIR / "infer_precision.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)  # the bench's weights
    model = bench._encoder(torch, params["layers"], params["width"]).eval()
    ctx = Context(torch, torch.device("cpu"), suite.PROFILES["quick"], None)  # seed 0, as rank 0
    x = ctx.randn(params["batch"], params["seq_len"], params["width"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        int8 = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )
    with torch.inference_mode():
        ref = copy.deepcopy(model).double()(x.double())
        outs = {
            "fp32": model(x),
            "bf16": copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16)),
            "int8_dynamic": int8(x),
        }
    return {k: float((o.double() - ref).norm() / ref.norm()) for k, o in outs.items()}


def test_inference_records_its_error_against_fp32(quick_run):
    df = results.load_table(quick_run[0])
    inf = df[(df["bench"] == "infer_precision") & (df["metric"] == "output_err")]
    err = {json.loads(p)["precision"]: v for p, v in zip(inf["params"], inf["value"])}
    expected = _errors_against_fp64(json.loads(inf["params"].iloc[0]))
    # fp32 is within 1e-5 of float64 here, a thousandth of the other precisions' errors, so
    # their error against fp32 (what the bench records) is their error against float64.
    assert expected["fp32"] < 1e-3 * min(expected["bf16"], expected["int8_dynamic"])
    assert err["bf16"] == pytest.approx(expected["bf16"], rel=1e-3)
    assert err["int8_dynamic"] == pytest.approx(expected["int8_dynamic"], rel=1e-3)
    skipped = df[(df["bench"] == "infer_precision") & (df["status"] == "skipped")]
    assert skipped["case"].str.contains("precision=fp16").all()


def test_a_cpu_run_samples_no_telemetry_and_says_so(quick_run):
    env = json.loads((quick_run[0] / "local" / results.ENV).read_text())
    assert env["telemetry"] == "none: no NVIDIA GPU in use (device cpu)"
    df = results.load_table(quick_run[0])
    assert not set(df["metric"]) & {"power_w", "sm_clock_mhz", "energy_per_item", "throttled"}
