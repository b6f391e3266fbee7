"""Container run arguments and the doctor's verdicts, without an engine."""

import os
from pathlib import Path

from cudastack import containers, doctor, matrix, suite
from cudastack.containers import ContainerOptions
from cudastack.runners import SuiteArgs


def kwargs(tmp_path, **opts):
    args = SuiteArgs(["gemm"], ["dtype=bf16"], "quick")
    return containers.container_kwargs(
        "cudastack/x:1", args, tmp_path, "cellA", "run1", "sha256:abc", ContainerOptions(**opts)
    )


def test_harness_read_only_results_read_write_and_user(tmp_path):
    kw = kwargs(tmp_path)
    vols = kw["volumes"]
    assert vols[str(containers.HARNESS_SRC)] == {"bind": "/harness/src", "mode": "ro"}
    assert vols[str(Path(suite.DEFAULT_BENCH_DIR).resolve())]["mode"] == "ro"
    assert vols[str(tmp_path.resolve())] == {"bind": "/results", "mode": "rw"}
    assert kw["user"] == f"{os.getuid()}:{os.getgid()}"
    assert kw["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert kw["environment"]["PYTHONPATH"] == "/harness/src"
    cmd = kw["command"]
    assert cmd[:3] == ["python", "-m", "cudastack.worker"]
    for flag, value in (
        ("--out", "/results"),
        ("--cell", "cellA"),
        ("--run-id", "run1"),
        ("--image-digest", "sha256:abc"),
        ("--bench-dir", "/harness/bench"),
        ("--bench", "gemm"),
        ("--select", "dtype=bf16"),
        ("--profile", "quick"),
    ):
        assert cmd[cmd.index(flag) + 1] == value, flag
    assert "privileged" not in kw


def test_gpu_requests(tmp_path):
    (req,) = kwargs(tmp_path, gpus="all")["device_requests"]
    assert req["Count"] == -1 and req["Capabilities"] == [["gpu"]]
    (req,) = kwargs(tmp_path, gpus="0,1")["device_requests"]
    assert req["DeviceIDs"] == ["0", "1"]
    (req,) = kwargs(tmp_path, gpus="GPU-1234-abcd")["device_requests"]
    assert req["DeviceIDs"] == ["GPU-1234-abcd"]
    assert kwargs(tmp_path, gpus="none")["device_requests"] == []


def test_shared_memory_and_limits(tmp_path):
    kw = kwargs(tmp_path)
    assert kw["shm_size"] == "16g" and "ipc_mode" not in kw
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in kw["ulimits"]}
    assert limits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    kw = kwargs(tmp_path, ipc_host=True)
    assert kw["ipc_mode"] == "host" and "shm_size" not in kw


def test_gpu_runtime_detection():
    assert doctor.gpu_runtime({"Runtimes": {"runc": {}, "nvidia": {}}})[0]
    found, how = doctor.gpu_runtime(
        {"DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=all"}]}
    )
    assert found and "nvidia.com/gpu=all" in how
    assert not doctor.gpu_runtime({"Runtimes": {"runc": {}}})[0]


def test_cell_verdicts_follow_driver_and_runtime():
    cells = {c.index: c for c in matrix.load(matrix.DEFAULT_MATRIX)}
    new = doctor.HostReport(driver="580.95.05", gpus=["NVIDIA H200"], gpu_runtime=True)
    old = doctor.HostReport(driver="535.104.05", gpus=["NVIDIA A100"], gpu_runtime=True)
    none = doctor.HostReport()
    assert doctor.cell_verdict(cells["cu130"], new, "all")[0]
    ok, why = doctor.cell_verdict(cells["cu130"], old, "all")
    assert not ok and "too old for CUDA 13.0" in why
    ok, why = doctor.cell_verdict(cells["cu128"], old, "all")
    assert ok and "minor-version compatibility" in why
    ok, why = doctor.cell_verdict(cells["cu128"], none, "all")
    assert not ok and "no NVIDIA GPU" in why
    assert doctor.cell_verdict(cells["cpu"], none, "all")[0]
    no_runtime = doctor.HostReport(driver="580.95.05", gpus=["x"], gpu_runtime=False)
    ok, why = doctor.cell_verdict(cells["cu128"], no_runtime, "all")
    assert not ok and "no GPU runtime" in why
