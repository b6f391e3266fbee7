"""Container run arguments and the doctor's verdicts, without an engine."""

import os
from pathlib import Path

import pytest
from conftest import cli

from cudastack.environment import suite
from cudastack.host.cells import doctor, matrix, stacks
from cudastack.host.run import container, loop, pipeline
from cudastack.host.run.container import ContainerOptions
from cudastack.host.run.suite_args import SuiteArgs


def kwargs(tmp_path, **opts):
    args = SuiteArgs(["gemm"], ["dtype=bf16"], "quick")
    return container.container_kwargs(
        "cudastack/x:1", args, tmp_path, "cellA", "run1", "sha256:abc", ContainerOptions(**opts)
    )


def test_harness_read_only_results_read_write_and_user(tmp_path):
    kw = kwargs(tmp_path)
    vols = kw["volumes"]
    assert vols[str(container.HARNESS_PACKAGE)] == {"bind": "/harness/src/cudastack", "mode": "ro"}
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
    new = doctor.HostReport(driver="580.95.05", cuda="13.0", gpus=["NVIDIA H200"], gpu_runtime=True)
    old = doctor.HostReport(
        driver="535.104.05", cuda="12.2", gpus=["NVIDIA A100"], gpu_runtime=True
    )
    none = doctor.HostReport()
    assert doctor.cell_verdict(cells["cu130"], new, "all")[0]
    # With the image's NVIDIA_REQUIRE_CUDA lifted, the driver floors decide (the requirement
    # itself: test_image_requirement_decides_before_minor_version_compatibility).
    ok, why = doctor.cell_verdict(cells["cu130"], old, "all", minor_version_compat=True)
    assert not ok and "too old for CUDA 13.0" in why
    ok, why = doctor.cell_verdict(cells["cu128"], old, "all", minor_version_compat=True)
    assert ok and "minor-version compatibility" in why
    ok, why = doctor.cell_verdict(cells["cu128"], none, "all")
    assert not ok and "no NVIDIA GPU" in why
    assert doctor.cell_verdict(cells["cpu"], none, "all")[0]
    no_runtime = doctor.HostReport(driver="580.95.05", gpus=["x"], gpu_runtime=False)
    ok, why = doctor.cell_verdict(cells["cu128"], no_runtime, "all")
    assert not ok and "no GPU runtime" in why


# Hosts as NVML describes them: each driver branch and the highest CUDA it supports
# (R470 -> 11.4, R535 -> 12.2, R570 -> 12.8, R580 -> 13.0, from the CUDA release notes).
R470 = ("470.82.01", "11.4")
R535 = ("535.104.05", "12.2")
R570 = ("570.124.06", "12.8")
R580 = ("580.95.05", "13.0")
REQUIRES = (
    "driver {driver} supports CUDA {cuda}; this cell's image requires cuda>={need}: upgrade the "
    "driver, or --minor-version-compat to start it anyway"
)


def gpu_host(host, brand="tesla", arch="9.0"):
    driver, cuda = host
    return doctor.HostReport(
        driver=driver, cuda=cuda, gpus=["GPU"], gpu_runtime=True, brand=brand, arch=arch
    )


@pytest.mark.parametrize(
    "host, index, opt_in, runs, why",
    [
        # The image's cuda>=X.Y holds: the driver floors decide as before.
        (R535, "cu121", False, True, "driver 535.104.05 >= 530.30.02 required by CUDA 12.1"),
        (R570, "cu128", False, True, "driver 570.124.06 >= 570.26 required by CUDA 12.8"),
        (R580, "cu118", False, True, "driver 580.95.05 >= 520.61.05 required by CUDA 11.8"),
        (R580, "cu130", False, True, "driver 580.95.05 >= 580.65.06 required by CUDA 13.0"),
        # Opting in changes nothing where the requirement holds anyway.
        (R570, "cu128", True, True, "driver 570.124.06 >= 570.26 required by CUDA 12.8"),
        # The driver's CUDA is below the image's: the runtime refuses it, minor-version
        # compatibility or not (12.2 < 12.8 although R535 >= 525.60.13, the 12.x floor).
        (R535, "cu128", False, False, REQUIRES.format(driver=R535[0], cuda="12.2", need="12.8")),
        (R535, "cu130", False, False, REQUIRES.format(driver=R535[0], cuda="12.2", need="13.0")),
        (R570, "cu129", False, False, REQUIRES.format(driver=R570[0], cuda="12.8", need="12.9")),
        (R470, "cu118", False, False, REQUIRES.format(driver=R470[0], cuda="11.4", need="11.8")),
        # Opted in (NVIDIA_DISABLE_REQUIRE=true): minor-version compatibility decides, and the
        # reason says which requirement was lifted.
        (R535, "cu128", True, True, "lifts the image's cuda>=12.8; driver 535.104.05 is below"),
        (R570, "cu129", True, True, "lifts the image's cuda>=12.9; driver 570.124.06 is below"),
        (R470, "cu118", True, True, "lifts the image's cuda>=11.8; driver 470.82.01 is below"),
        # ... and it cannot carry a new major: 13.x needs R580 even so.
        (R535, "cu130", True, False, "driver 535.104.05 is too old for CUDA 13.0 (needs 580"),
    ],
)
def test_image_requirement_decides_before_minor_version_compatibility(
    host, index, opt_in, runs, why
):
    cells = {c.index: c for c in matrix.load(matrix.DEFAULT_MATRIX)}
    ok, reason = doctor.cell_verdict(cells[index], gpu_host(host), "auto", None, opt_in)
    assert (ok, why in reason) == (runs, True), reason


def test_the_images_own_requirement_is_read_as_the_runtime_reads_it():
    cell = {c.index: c for c in matrix.load(matrix.DEFAULT_MATRIX)}["cu128"]
    # The shape of NVIDIA's 12.x images: cuda>=X.Y OR named brands on older driver branches
    # (the real value lists more brands and branches).
    env = [
        "PATH=/usr/bin",
        "CUDA_VERSION=12.8.1",
        "NVIDIA_REQUIRE_CUDA=cuda>=12.8 brand=tesla,driver>=535,driver<536 "
        "brand=nvidia,driver>=535,driver<536",
    ]
    required = stacks.image_requirements(env)

    def verdict(report):
        return doctor.cell_verdict(cell, report, "all", required)

    ok, why = verdict(gpu_host(R535, brand="tesla"))  # a branch the image admits
    assert ok and "minor-version compatibility" in why
    ok, why = verdict(gpu_host(R535, brand="geforce"))  # not for this brand
    assert not ok and "requires cuda>=12.8" in why
    ok, why = verdict(gpu_host(("550.54.15", "12.4")))  # R550 is not among this image's branches
    assert not ok and "requires cuda>=12.8" in why
    # NVIDIA_REQUIRE_* variables are ANDed: an arch requirement stops an old GPU by itself.
    arch = stacks.image_requirements(
        ["NVIDIA_REQUIRE_CUDA=cuda>=12.8", "NVIDIA_REQUIRE_ARCH=arch>=8.0"]
    )
    ok, why = doctor.cell_verdict(cell, gpu_host(R580, arch="7.0"), "all", arch)
    assert not ok and "requires arch>=8.0" in why
    assert doctor.cell_verdict(cell, gpu_host(R580, arch="8.0"), "all", arch)[0]
    # An image that disables the check itself, and an image older than NVIDIA_REQUIRE_CUDA.
    assert stacks.image_requirements([*env, "NVIDIA_DISABLE_REQUIRE=true"]) == []
    assert stacks.image_requirements(["CUDA_VERSION=11.8.0"]) == ["cuda>=11.8"]
    # A CUDA wheel on a base that is not NVIDIA's sets no requirement: only the floors decide.
    plain = matrix.Cell("plain", "ubuntu:24.04", "2.9.1", "cu128", "3.12", cuda="12.8")
    ok, why = doctor.cell_verdict(plain, gpu_host(R535), "all")
    assert ok and "minor-version compatibility" in why


NO_GPU = "no NVIDIA GPU on this host; --gpus none runs CUDA cells on the CPU"


def test_without_a_gpu_cuda_cells_are_skipped_unless_gpus_none_is_said():
    cells = matrix.load(matrix.DEFAULT_MATRIX)
    no_gpu = doctor.HostReport()
    plan = {c.index: (ok, why) for c, ok, why in pipeline.plan_cells(cells, no_gpu, "auto")}
    assert plan.pop("cpu") == (True, "CPU build: runs anywhere")
    assert set(plan.values()) == {(False, NO_GPU)}  # every CUDA cell, before any image is pulled
    plan = {c.index: (ok, why) for c, ok, why in pipeline.plan_cells(cells, no_gpu, "all")}
    assert set(plan.values()) - {(True, "CPU build: runs anywhere")} == {(False, NO_GPU)}
    # Only --gpus none, said explicitly, runs them on the CPU.
    plan = {c.index: ok for c, ok, _ in pipeline.plan_cells(cells, no_gpu, "none")}
    assert all(plan.values())
    # A GPU the engine cannot hand to containers counts as none either.
    no_runtime = doctor.HostReport(driver=R580[0], cuda=R580[1], gpus=["GPU"])
    ok, why = doctor.cell_verdict(cells[0], no_runtime, "auto")
    assert not ok and "no GPU runtime" in why and "--gpus none runs CUDA cells on the CPU" in why
    # The CPU cells' containers then ask for no GPU.
    assert loop.resolve_gpus("auto", no_gpu) == "none"


def test_doctor_tells_what_bench_will_do_on_a_host_without_a_gpu(tmp_path):
    if doctor.nvml_host().driver:
        pytest.skip("NVML sees an NVIDIA GPU here")
    cells = matrix.load(matrix.DEFAULT_MATRIX)
    auto = cli("doctor").stdout
    for c in cells:
        verdict = "runs  {}: CPU build" if not c.torch_cuda else "skip  {}: " + NO_GPU
        assert verdict.format(c.name) in auto, auto
    explicit = cli("doctor", "--gpus", "none").stdout
    for c in cells:
        if c.torch_cuda:
            assert f"runs  {c.name}: GPUs not requested (--gpus none)" in explicit, explicit


def test_disable_require_only_when_opted_in(tmp_path):
    env = kwargs(tmp_path)["environment"]
    assert not [k for k in env if k.startswith("NVIDIA_")]
    env = kwargs(tmp_path, minor_version_compat=True)["environment"]
    # The variable the NVIDIA container toolkit reads (internal/config/image/cuda_image.go),
    # with a value Go's strconv.ParseBool takes for true.
    assert env["NVIDIA_DISABLE_REQUIRE"] == "true"


def test_a_refusal_by_the_runtime_says_what_to_do(tmp_path):
    from docker.errors import APIError

    class Refused:
        """What the engine answers when the NVIDIA runtime's requirement check fails."""

        removed = False

        def start(self):
            raise APIError(
                "500 Server Error",
                explanation="OCI runtime create failed: nvidia-container-cli: requirement "
                "error: unsatisfied condition: cuda>=12.8, please update your driver",
            )

        def remove(self, force):
            Refused.removed = True

    class Engine:
        class containers:
            @staticmethod
            def create(**kw):
                return Refused()

    outcome = container.run_container(Engine(), {"image": "x"}, tmp_path, 10)
    assert not outcome.ok and Refused.removed
    assert "unsatisfied condition: cuda>=12.8" in outcome.reason
    assert outcome.reason.endswith(
        "upgrade the driver, or --minor-version-compat to start it anyway"
    )
