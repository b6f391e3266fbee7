"""The workloads end to end on this CPU with real torch, transformers, peft and torchvision."""

import importlib.util
import json
import sys

import pytest
from conftest import cli

from cudastack.environment import jpegs, suite
from cudastack.environment.context import Context
from cudastack.environment.suite import DEFAULT_BENCH_DIR
from cudastack.host.analysis import results

pytestmark = pytest.mark.integration

LOSS_FLAT_BENCH = '''
"""A training step that learns nothing: the loss cannot fall."""
KIND = "workload"
HEADLINE = "items_per_s"
PARAMS = {"n": [8]}

def run(ctx, n):
    from cudastack.environment import training
    torch = ctx.torch
    x = ctx.randn(n, n)

    def make_step(wrap):
        w = torch.nn.Parameter(torch.zeros(n))
        def step(batch):
            loss = (batch.sum() * 0 + 1.0) + (w * 0).sum()
            loss.backward()
            return loss
        return step

    return training.measure(ctx, training.Workload(make_step, lambda: x, 2, n, "img/s"))
'''


def table(run_dir):
    df = results.load_table(run_dir)
    return df, df[df["status"] == "ok"]


def values(df, case_part, metric):
    rows = df[df["case"].str.contains(case_part, regex=False) & (df["metric"] == metric)]
    return rows["value"].tolist()


def test_seed_cnn_reads_real_jpeg_files_through_imagefolder():
    import torch

    opened = []
    # Python's audit hook sees every file the process opens, Pillow's JPEG reads included.
    sys.addaudithook(lambda event, args: opened.append(args[0]) if event == "open" else None)
    spec = importlib.util.spec_from_file_location("seed_cnn", DEFAULT_BENCH_DIR / "seed_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ctx = Context(torch, torch.device("cpu"), suite.PROFILES["quick"], None)
    metrics = {m.name: m.values for m in module.run(ctx, 0, False, 16, 64)}
    per_class = module.BATCHES_PER_EPOCH * 16 // jpegs.CLASSES
    root = jpegs.folder(jpegs.CLASSES, per_class, round(64 * 8 / 7))
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 64 and all(f.read_bytes()[:3] == b"\xff\xd8\xff" for f in files)
    read = {str(p) for p in opened if isinstance(p, str) and p.endswith(".jpg")}
    assert read == {str(f) for f in files}  # every file of the folder was read and decoded
    assert metrics["loss_end"][0] < metrics["loss_start"][0]
    first_labels = next(iter(jpegs.loader(torch, root, 64, 16, 0, False)))[1]
    assert set(first_labels.tolist()) == set(range(jpegs.CLASSES))  # classes interleaved
    assert all(r > 0 for r in metrics["items_per_s"])


def test_a_step_whose_loss_does_not_fall_fails_with_that_reason(make_bench, tmp_path):
    folder = make_bench("flat", LOSS_FLAT_BENCH)
    proc = cli("run", "--bench-dir", str(folder), "--profile", "quick", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # a failed case fails the run
    df, _ = table(tmp_path / "r")
    assert df["status"].tolist() == ["failed"]
    assert df["reason"].iloc[0].startswith("output check failed: loss did not fall")


def test_weights_dir_loads_a_local_model_and_a_bad_one_is_a_skipped_row(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        num_hidden_layers=1, hidden_size=64, num_attention_heads=2, intermediate_size=96,
        vocab_size=500, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    model.save_pretrained(tmp_path / "tiny-bert")
    n_params = sum(p.numel() for p in model.parameters())
    (tmp_path / "not-a-model").mkdir()
    common = ["run", "--bench", "finetune", "--profile", "quick", "--select", "model=bert"]
    common += ["--select", "layout=padded"]
    proc = cli(*common, "--set", "weights=tiny-bert", "--out", "good", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    df, ok = table(tmp_path / "good")
    assert len(set(ok["case"])) == 2  # full and lora
    assert values(ok, "mode=full", "trainable_params") == [n_params]  # the saved model's size
    assert values(ok, "mode=lora", "trainable_params")[0] < n_params / 10
    assert (df["case"].str.contains("weights=tiny-bert")).all()

    proc = cli(*common, "--set", "weights=not-a-model", "--out", "bad", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df, _ = table(tmp_path / "bad")
    assert set(df["status"]) == {"skipped"}
    assert df["reason"].str.startswith("weights=not-a-model: no config.json there").all()


def test_two_gloo_processes_train_data_parallel_and_reduce(tmp_path):
    proc = cli(
        "run", "--nproc", "2", "--bench", "allreduce,train_gpt", "--profile", "quick",
        "--out", "dp", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "2 data-parallel processes" in proc.stdout
    df, ok = table(tmp_path / "dp")
    assert set(df["status"]) == {"ok"} and set(df["bench"]) == {"allreduce", "train_gpt"}
    assert all(v > 0 for v in values(ok, "allreduce[size_mb=16", "gbps"))
    efficiency = values(ok, "train_gpt", "scaling_efficiency")
    assert len(efficiency) == 6 and all(0 < e < 200 for e in efficiency)
    assert values(ok, "train_gpt", "baseline_items_per_s")[0] > 0
    env = json.loads((tmp_path / "dp" / "local" / results.ENV).read_text())
    assert env["nproc"] == 2


def test_trace_saves_a_chrome_trace_per_case(tmp_path):
    proc = cli(
        "run", "--bench", "gemm", "--select", "n=512", "--select", "dtype=fp32", "--trace",
        "--profile", "quick", "--out", "t", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    traces = list((tmp_path / "t" / "local" / "traces").glob("*.json"))
    assert [t.name for t in traces] == ["gemm_dtype=fp32_n=512.json"]
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any("mm" in str(e.get("name", "")) for e in events)


SLEEPING_STEP_BENCH = '''
"""A training step that sleeps a known time, so its latency has a known lower bound."""
KIND = "workload"
HEADLINE = "items_per_s"
PARAMS = {"sleep_ms": [20]}

def run(ctx, sleep_ms):
    import time
    from cudastack.environment import training
    torch = ctx.torch

    def make_step(wrap):
        calls = []

        def step(batch):
            time.sleep(sleep_ms / 1e3)
            calls.append(batch)
            return torch.tensor(1.0 / len(calls))  # a loss that falls

        return step

    return training.measure(ctx, training.Workload(make_step, lambda: 0, 2, 1, "img/s"))
'''


def test_the_injected_slowdown_reaches_training_steps(make_bench, tmp_path):
    # A sleep never returns early, and --extra-work 2 adds twice a call's own time in busy
    # work: every step lasts at least 3 x 20 ms. Without the slowdown a step is ~20 ms.
    folder = make_bench("sleepy", SLEEPING_STEP_BENCH)
    proc = cli(
        "run", "--bench-dir", str(folder), "--profile", "quick", "--extra-work", "2",
        "--out", "slow", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, ok = table(tmp_path / "slow")
    latency = values(ok, "sleepy", "latency")
    assert len(latency) == 6 and min(latency) >= 3 * 20, latency


def test_weights_dir_runs_only_the_cases_of_its_model_type(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    # Either head loads either folder (transformers has a BERT LM head and a GPT-2 classifier):
    # only config.json's model_type tells a case that the weights are another model's.
    BertForSequenceClassification(
        BertConfig(
            num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            vocab_size=300, num_labels=2,
        )
    ).save_pretrained(tmp_path / "tiny-bert")  # fmt: skip
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300, bos_token_id=0, eos_token_id=0)
    ).save_pretrained(tmp_path / "tiny-gpt2")
    common = ["run", "--bench", "finetune", "--profile", "quick", "--select", "mode=full"]
    common += ["--select", "layout=padded"]
    for held, other in (("bert", "gpt2"), ("gpt2", "bert")):
        out = f"with-{held}"
        proc = cli(*common, "--set", f"weights=tiny-{held}", "--out", out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
        df, _ = table(tmp_path / out)
        model = df["params"].map(lambda p: json.loads(p)["model"])
        assert set(model[df["status"] == "ok"]) == {held}  # its own case trained
        assert df.loc[model == other, ["status", "reason"]].drop_duplicates().values.tolist() == [
            ["skipped", f"weights=tiny-{held} holds a {held} model; this case is {other}"]
        ]
