"""What a GPU host needs that a CPU run never shows, seen without a GPU: the build's architectures
against the device's, bf16 only on hardware that has it, TF32 through the API this torch has,
and the GPU a process group is bound to. Stand-ins replace only what cannot exist here (a GPU's
answers, an older torch's API, an NCCL process group); the code under test is the real one."""

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from test_known_flops import bench

from cudastack.contract.schema import rows_of
from cudastack.environment import envinfo, precision, suite, worker
from cudastack.environment import world as worldmod
from cudastack.environment.context import Context, Skip
from cudastack.host.run import launcher

# torch.cuda.get_arch_list() of the PyTorch wheels, as torch's own release table
# (torch/cuda/__init__.py, PYTORCH_RELEASES_CODE_CC, x86_64) lists them: machine code only, no PTX.
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize(
    "capability, arch_list, runs",
    [
        ((9, 0), CU126, True),  # H100/H200: sm_90 is in the list
        ((8, 9), CU126, True),  # L4/L40/RTX 4090: sm_80 and sm_86 machine code run on 8.9
        ((12, 0), CU126, False),  # RTX 5090 / RTX PRO 6000: Blackwell needs CUDA 12.8+ wheels
        ((10, 0), CU126, False),  # B200
        ((7, 0), CU130, False),  # V100: CUDA 13 dropped Volta
        ((7, 5), CU130, True),  # T4
        ((9, 0), ["sm_80", "compute_80"], True),  # no sm_9x, but PTX for 8.0 is JIT-compiled
        ((8, 6), ["sm_90", "compute_90"], False),  # PTX runs on its capability or newer only
        ((9, 0), ["sm_80", "sm_90a"], True),  # sm_90a is for exactly 9.0
        ((10, 0), ["sm_80", "sm_90a"], False),  # ... and not for a newer GPU
        ((9, 0), ["sm_80", "compute_90a"], True),
        ((10, 0), ["sm_80", "compute_90a"], False),  # arch-specific PTX is not forward compatible
        ((8, 0), [], True),  # a build that lists no architectures: nothing to say
    ],
)
def test_a_build_runs_where_its_machine_code_or_ptx_can(capability, arch_list, runs):
    reason = envinfo.arch_problem("2.x", "12.6", capability, arch_list)
    assert (reason == "") is runs, reason


def test_the_reason_names_the_build_the_gpu_and_what_to_use_instead():
    blackwell = envinfo.arch_problem("2.7.1+cu126", "12.6", (12, 0), CU126)
    assert blackwell == (
        "torch 2.7.1+cu126 was built for sm_50, sm_60, sm_70, sm_75, sm_80, sm_86, sm_90 "
        "(no PTX); this GPU is sm_120: use a cell with CUDA 12.8 or newer"
    )
    volta = envinfo.arch_problem("2.9.0+cu130", "13.0", (7, 0), CU130)
    assert volta.endswith(
        "(no PTX); this GPU is sm_70: CUDA 13 dropped it: use a cell with CUDA 12"
    )
    ptx = envinfo.arch_problem("2.x", "12.4", (8, 6), ["sm_90", "compute_90"])
    assert "built for sm_90 (PTX compute_90); this GPU is sm_86" in ptx


MARKER_BENCH = '''
"""Leaves a file behind when any of its cases runs."""
import os
from pathlib import Path

KIND = "kernel"
HEADLINE = "tflops"
PARAMS = {"n": [1, 2, 3]}

def run(ctx, n):
    Path(os.environ["CASE_RAN"]).touch()
    ctx.skip("ran")
'''


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch sees one CUDA device of the given capability, and is a build for the given CUDA and
    arch list: the hardware queries answer as on such a host; everything else is this torch."""
    threads = torch.get_num_threads()  # the worker sets them for this process

    def install(capability, cuda, arch_list, name="NVIDIA GeForce RTX 5090"):
        props = SimpleNamespace(
            name=name,
            major=capability[0],
            minor=capability[1],
            total_memory=32 * 2**30,
            multi_processor_count=170,
            L2_cache_size=96 * 2**20,
            uuid="4f1c0ef2-5c0e-4b1e-9d3a-6f2b8e9c1a77",
        )
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # cuDNN's check counts them
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: telemetry says so

    yield install
    torch.set_num_threads(threads)


def test_a_gpu_the_build_cannot_run_gets_one_cell_row_and_no_case_runs(
    fake_gpu, make_bench, tmp_path, monkeypatch, capsys
):
    fake_gpu((12, 0), "12.6", CU126)
    folder = make_bench("marker", MARKER_BENCH)
    ran = tmp_path / "case-ran"
    monkeypatch.setenv("CASE_RAN", str(ran))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--bench-dir", str(folder), "--device", "cuda", "--threads", "1"]
    code = worker.main([*argv, "--profile", "quick", "--cell", "cu12.6", "--run-id", "r1"])
    assert code == 0
    assert not ran.exists()  # every case would have failed with "no kernel image is available"
    (line,) = (out / "records.jsonl").read_text().splitlines()
    (row,) = rows_of(json.loads(line))
    assert row["bench"] == "harness" and row["case"] == "harness[stage=arch]"
    assert row["status"] == "skipped" and row["value"] is None
    assert row["reason"].startswith(f"torch {torch.__version__} was built for sm_50, sm_60")
    assert row["reason"].endswith("this GPU is sm_120: use a cell with CUDA 12.8 or newer")
    assert json.loads(row["params"]) == {"stage": "arch"}
    assert (row["cell"], row["run_id"]) == ("cu12.6", "r1")
    assert row["gpu_name"] == "NVIDIA GeForce RTX 5090"
    env = json.loads((out / "env.json").read_text())  # the evidence is kept
    assert env["gpu"]["arch_list"] == CU126 and env["gpu"]["capability"] == "12.0"
    assert env["gpu"]["nvml"]["available"] is False
    done = json.loads((out / "done.json").read_text())
    assert done["skipped"] == 1 and done["ok"] == done["failed"] == 0
    assert "cell skipped: torch" in capsys.readouterr().out
    # The host reads the same done.json a container's worker leaves: the cell is skipped, not ok.
    cell = launcher.finished_cell("cu12.6", out, build_s=1.0, run_s=2.0)
    assert (cell.status, cell.reason) == ("skipped", row["reason"])


def gpu_context(capability, monkeypatch):
    """A Context on a CUDA device of ``capability``. torch.cuda.is_bf16_supported() answers as
    torch does there: yes, even before 8.0, since by default it counts emulation."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    profile = suite.resolve_profile("quick", has_gpu=True)
    return Context(torch, torch.device("cuda", 0), profile, None)


@pytest.fixture
def fp32_math():
    """autocast sets this process's TF32 switches; they are put back after the test."""
    saved = precision.tf32_flags(torch)
    yield
    precision.restore_tf32_flags(torch, saved)


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])  # V100, T4
def test_bf16_cases_skip_on_gpus_without_bf16_hardware(capability, monkeypatch, fp32_math):
    ctx = gpu_context(capability, monkeypatch)
    with pytest.raises(
        Skip, match=rf"compute capability 8.0 or newer; this one is {capability[0]}"
    ):
        ctx.dtype("bf16")
    with pytest.raises(Skip, match="where bf16 is only emulated"):
        precision.autocast(ctx, "amp_bf16")


@pytest.mark.parametrize("capability", [(8, 0), (9, 0), (12, 0)])
def test_bf16_cases_run_from_ampere_on(capability, monkeypatch, fp32_math):
    ctx = gpu_context(capability, monkeypatch)
    assert ctx.dtype("bf16") is torch.bfloat16
    assert precision.autocast(ctx, "amp_bf16").dtype is torch.bfloat16


def test_bf16_still_runs_on_a_cpu(fp32_math):
    ctx = Context(torch, torch.device("cpu"), suite.resolve_profile("quick", has_gpu=False), None)
    assert ctx.dtype("bf16") is torch.bfloat16
    assert precision.autocast(ctx, "amp_bf16").dtype is torch.bfloat16


def best_matmul_s(a: torch.Tensor, calls: int) -> float:
    """The best of ``calls`` timed ``a @ a`` after one untimed, on one thread: two threads on a
    loaded two-core machine wait for each other, and noise only ever adds time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a @ a
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - start)
        return min(times)
    finally:
        torch.set_num_threads(threads)


def test_the_bf16_probe_agrees_with_what_this_cpu_does():
    # A 256^2 bf16 matmul took 50x fp32's time on one thread of an AVX2-only EPYC, whose oneDNN
    # has no bf16 kernels; with them it is about as fast.
    a = torch.randn(256, 256)
    # Many fp32 calls (0.4 ms each): their best is a clean one; bf16's noise only adds.
    ratio = best_matmul_s(a.bfloat16(), 5) / best_matmul_s(a, 50)
    if precision.cpu_has_bf16_kernels(torch):
        assert ratio < 5, ratio
    else:
        assert ratio > 10, ratio


@pytest.mark.parametrize("kernels", [False, True])
def test_amp_bf16_resnet_skips_only_where_the_probe_finds_no_bf16_kernels(
    kernels, monkeypatch, fp32_math
):
    # Where it says no, the case skips with the reason instead of timing a fallback into the
    # case limit; where it says yes, it goes on (here to torchvision, made to stop it there).
    monkeypatch.setattr(precision, "cpu_has_bf16_kernels", lambda torch: kernels)
    ctx = Context(torch, torch.device("cpu"), suite.resolve_profile("quick", has_gpu=False), None)
    monkeypatch.setattr(ctx, "require", lambda module: ctx.skip(f"{module} was reached"))
    reason = "amp_bf16 convolutions on this CPU are a slow fallback"
    with pytest.raises(Skip, match="torchvision was reached" if kernels else reason):
        bench("train_resnet").run(ctx, "resnet18", "amp_bf16", True, False, 8, 64)


TF32_BENCH = '''
"""Cases that change fp32 math: as library code does with torch >= 2.9's switches, and through
the harness's helper. Each reports the switches it found at its start, as torch reads them."""
from cudastack.environment import precision
from cudastack.environment.context import Metric

KIND = "kernel"
HEADLINE = "matmul_none"  # what each case finds when it starts clean
PARAMS = {"step": ["library", "helper", "last"]}

def run(ctx, step):
    torch = ctx.torch
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    found = [Metric("matmul_" + matmul.fp32_precision, "", "higher", [1.0]),
             Metric("conv_" + conv.fp32_precision, "", "higher", [1.0])]
    if step == "library":
        matmul.fp32_precision, conv.fp32_precision = "tf32", "ieee"
    if step == "helper":
        precision.set_tf32(torch, True)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        assert precision.tf32_enabled(torch) == {"matmul": True, "cudnn_conv": True}
        precision.set_tf32(torch, False)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert precision.tf32_enabled(torch) == {"matmul": False, "cudnn_conv": False}
        precision.set_tf32(torch, True)
    return found
'''


@pytest.mark.skipif(
    not hasattr(torch.backends.cudnn, "conv"), reason="torch before 2.9 has no fp32_precision"
)
def test_tf32_switches_through_the_new_api_without_warnings_and_each_case_starts_clean(
    make_bench, tmp_path
):
    folder = make_bench("tf32", TF32_BENCH)
    out = tmp_path / "out"
    # Warnings as errors: a warning in the worker's save or restore ends the run, one inside a
    # case fails it. A fresh process: torch warns about a mixed API once per process.
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "cudastack.worker", "--out", str(out),
         "--bench-dir", str(folder), "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * 6, [r["reason"] for r in rows]
    found = {}
    for r in rows:
        found.setdefault(json.loads(r["params"])["step"], []).append(r["metric"])
    # torch's defaults: matmul "none" (IEEE), cuDNN conv "tf32"; each case found them again
    assert found == {step: ["matmul_none", "conv_tf32"] for step in ("library", "helper", "last")}
    flags = json.loads((out / "env.json").read_text())["flags"]
    assert flags["tf32_api"] == "fp32_precision"
    assert (flags["matmul_fp32_precision"], flags["cudnn_conv_fp32_precision"]) == ("none", "tf32")
    assert (flags["matmul_allow_tf32"], flags["cudnn_allow_tf32"]) == (False, True)


class TorchBefore29:
    """The slice of torch < 2.9 that TF32 goes through: allow_tf32 flags, one precision setting
    that the matmul flag follows, and no fp32_precision anywhere."""

    def __init__(self):
        self.backends = SimpleNamespace(
            cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False)),
            cudnn=SimpleNamespace(allow_tf32=True, benchmark=False, deterministic=False),
        )
        self._precision = "highest"

    def get_float32_matmul_precision(self):
        return self._precision

    def set_float32_matmul_precision(self, value):
        self._precision = value
        self.backends.cuda.matmul.allow_tf32 = value != "highest"


def test_tf32_goes_through_the_allow_tf32_flags_on_torch_before_2_9():
    old = TorchBefore29()
    saved = worker._flags(old)
    precision.set_tf32(old, True)
    assert (old.backends.cuda.matmul.allow_tf32, old.backends.cudnn.allow_tf32) == (True, True)
    assert precision.tf32_enabled(old) == {"matmul": True, "cudnn_conv": True}
    precision.set_tf32(old, False)
    assert precision.tf32_enabled(old) == {"matmul": False, "cudnn_conv": False}
    old.set_float32_matmul_precision("high")  # as a library might
    old.backends.cudnn.benchmark = True
    worker._restore_flags(old, saved)
    assert (old.backends.cuda.matmul.allow_tf32, old.backends.cudnn.allow_tf32) == (False, True)
    assert old.get_float32_matmul_precision() == "highest" and not old.backends.cudnn.benchmark
    record = precision.tf32_record(old)
    assert record["tf32_api"] == "allow_tf32" and record["float32_matmul_precision"] == "highest"


def test_nccl_groups_are_bound_to_the_ranks_gpu_where_torch_takes_device_id():
    gpu = torch.device("cuda", 1)
    # this torch (>= 2.3) takes it; a CPU group (gloo) has no device to bind
    assert worldmod.init_options(torch, gpu) == {"device_id": gpu}
    assert worldmod.init_options(torch, torch.device("cpu")) == {}

    def before_2_3(backend, timeout=None):  # init_process_group without device_id
        pass

    old = SimpleNamespace(distributed=SimpleNamespace(init_process_group=before_2_3))
    assert worldmod.init_options(old, gpu) == {}


def test_init_passes_device_id_to_init_process_group():
    calls = []

    def init_process_group(backend, timeout=None, device_id=None):  # torch.distributed's, here
        calls.append((backend, device_id))

    fake = SimpleNamespace(
        distributed=SimpleNamespace(
            init_process_group=init_process_group, is_initialized=lambda: False
        )
    )
    gpu = torch.device("cuda", 1)
    worldmod.init(fake, worldmod.World(rank=1, size=2, local_rank=1), gpu, wait_s=60)
    assert calls == [("nccl", gpu)]
