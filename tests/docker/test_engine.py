"""Build and run cells on a real Docker engine, with a base image and wheelhouse made here."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile

import pytest
from conftest import cli
from docker_env import TORCH, cpu_cell, write_matrix

from cudastack.contract.errors import EXIT_FAILED, EXIT_INTERRUPTED
from cudastack.host.analysis import results
from cudastack.host.cells import doctor, images, matrix
from cudastack.host.run import pipeline
from cudastack.host.run.container import NO_GPU_RUNTIME

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("images_made_here")]


def test_build_streams_logs_then_hits_the_cache(engine, good_matrix, wheelhouse, tmp_path):
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    env = {**os.environ, "HTTP_PROXY": "http://builder:s3cret@127.0.0.1:3128"}
    (cell,) = matrix.load(good_matrix)
    tag = cell.image_tag(matrix.DEFAULT_MATRIX.parent / "Dockerfile", good_matrix.parent / "locks")
    if images.exists(engine, tag):  # start from no image, so this build really builds
        engine.images.remove(tag, force=True)
    first = cli(
        "build",
        "--matrix",
        str(good_matrix),
        "--wheelhouse",
        str(wheelhouse),
        "--ca-file",
        str(ca),
        env=env,
        timeout=1200,
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    assert "test-cpu | Step 1/" in first.stdout  # the build log streamed live
    assert "torch.version.cuda ''" in first.stdout  # the build's own wheel check ran
    again = cli("build", "--matrix", str(good_matrix), "--wheelhouse", str(wheelhouse))
    assert again.returncode == 0 and f"test-cpu: {tag} up to date" in again.stdout

    image = engine.images.get(tag)
    labels = image.labels
    assert labels["dev.cudastack.cell"] == "test-cpu"
    assert labels["dev.cudastack.inputs"] == cell.inputs_hash(
        matrix.DEFAULT_MATRIX.parent / "Dockerfile", good_matrix.parent / "locks"
    )
    assert image.attrs["Config"]["User"] == "cudastack"  # not root by default
    # Build-only inputs stay out of the final image: no wheels, no CA, no proxy credentials.
    history = json.dumps(image.history()) + json.dumps(image.attrs["Config"])
    assert "s3cret" not in history and "/tmp/inputs" not in history
    names = " -o ".join(f"-name '{w.name}'" for w in wheelhouse.iterdir())
    leftovers = engine.containers.run(
        tag,
        [
            "sh",
            "-c",
            f"ls /tmp/inputs 2>&1; find / -xdev \\( {names} -o -name ca.crt "
            "-o -name corp-ca.pem \\) 2>/dev/null; echo end",
        ],
        remove=True,
    ).decode()
    assert "No such file" in leftovers
    assert leftovers.strip().splitlines()[1:] == ["end"], leftovers  # nothing found
    # The builder stage's image is gone. Scoped to the images this build's log named: another
    # build on the same engine may hold builder images of its own at this moment.
    made_here = set(re.findall(r"---> ([0-9a-f]{12})\b", first.stdout))
    assert made_here
    left = engine.images.list(filters={"dangling": True, "label": "dev.cudastack.stage=builder"})
    assert not [i.id for i in left if i.id.split(":")[-1][:12] in made_here]


def test_cell_runs_the_suite_in_its_container(engine, good_matrix, wheelhouse, tmp_path):
    proc = cli(
        "run",
        "--cell",
        "test-cpu",
        "--matrix",
        str(good_matrix),
        "--wheelhouse",
        str(wheelhouse),
        "--bench",
        "gemm",
        "--select",
        "n=512",
        "--profile",
        "quick",
        "--out",
        "run",
        cwd=tmp_path,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    df = results.load_table(tmp_path / "run")
    (cell,) = matrix.load(good_matrix)
    tag = cell.image_tag(matrix.DEFAULT_MATRIX.parent / "Dockerfile", good_matrix.parent / "locks")
    image_id = engine.images.get(tag).id
    assert set(df["cell"]) == {"test-cpu"}
    assert set(df["status"]) == {"ok"}
    assert set(df["image_digest"]) == {image_id}  # a local image: identified by its ID
    cases = {"gemm[dtype=fp32,n=512]", "gemm[dtype=bf16,n=512]"}
    assert set(df["case"]) == cases | {"ceiling[what=matmul,dtype=fp32]"}  # measured first
    assert set(df["torch"]) == {f"{TORCH}+cpu"}
    env = json.loads((tmp_path / "run" / "test-cpu" / "env.json").read_text())
    assert env["image_digest"] == image_id and env["cell"] == "test-cpu"
    records = tmp_path / "run" / "test-cpu" / "records.jsonl"
    assert records.stat().st_uid == os.getuid()  # written as the invoking user
    assert (tmp_path / "run" / "test-cpu" / "log.txt").read_text().count("gemm[") >= 2
    assert not engine.containers.list(all=True, filters={"label": "dev.cudastack.cell=test-cpu"})


# A DataLoader whose one batch is larger than the container's /dev/shm: its worker cannot hand
# the batch over (shared memory), whatever the machine, as with Docker's default 64 MB.
BIG_BATCHES = '''"""Batches larger than /dev/shm, through DataLoader workers."""

KIND = "workload"
HEADLINE = "items_per_s"
PARAMS = {"mib": [96]}


def run(ctx, mib):
    torch = ctx.torch

    class Big(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.ones(mib * 2**20 // 4)

    for _ in torch.utils.data.DataLoader(Big(), batch_size=None, num_workers=1):
        pass
    ctx.skip("unreachable: the batch cannot pass through /dev/shm")
'''


def test_a_full_dev_shm_says_its_size_and_the_option_to_raise_it(
    engine, good_matrix, wheelhouse, tmp_path
):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bigbatch.py").write_text(BIG_BATCHES)
    proc = cli(
        "run",
        "--cell",
        "test-cpu",
        "--matrix",
        str(good_matrix),
        "--wheelhouse",
        str(wheelhouse),
        "--bench-dir",
        str(bench),
        "--shm-size",
        "64m",
        "--out",
        "run",
        cwd=tmp_path,
        timeout=1200,
    )
    assert proc.returncode == EXIT_FAILED, proc.stdout[-3000:] + proc.stderr
    (row,) = results.load_table(tmp_path / "run").to_dict("records")
    assert (row["case"], row["status"]) == ("bigbatch[mib=96]", "failed")
    assert "/dev/shm is full" in row["reason"] and "--shm-size" in row["reason"], row["reason"]
    assert row["reason"].endswith("(/dev/shm here: 64 MiB)"), row["reason"]
    assert "Traceback" in (tmp_path / "run" / "test-cpu" / "log.txt").read_text()


def test_a_failed_build_keeps_the_other_cell(engine, base_image, wheelhouse, tmp_path):
    # torch 2.12.0 is not in the wheelhouse: that cell's pip install fails inside the build.
    path = write_matrix(tmp_path / "m", cpu_cell("test-cpu"), cpu_cell("broken", torch="2.12.0"))
    proc = cli(
        "bench",
        "--matrix",
        str(path),
        "--wheelhouse",
        str(wheelhouse),
        "--bench",
        "gemm",
        "--select",
        "n=512",
        "--select",
        "dtype=fp32",
        "--out",
        "run",
        cwd=tmp_path,
        timeout=1200,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    df = results.load_table(tmp_path / "run")
    good = df[df["cell"] == "test-cpu"]
    assert len(good) > 0 and set(good["status"]) == {"ok"}
    (bad,) = df[df["cell"] == "broken"].to_dict("records")
    assert bad["status"] == "failed" and bad["case"] == "harness[stage=build]"
    assert bad["reason"].startswith("build of broken failed: ")
    assert "torch==2.12.0" in bad["reason"]  # the log's last lines say what pip could not find
    assert "broken" in proc.stdout and "failed" in proc.stdout
    # One short line, no terminal escapes, no RUN script.
    assert len(bad["reason"]) <= 400 and "\x1b" not in bad["reason"], bad["reason"]
    assert "/bin/sh -c" not in bad["reason"]
    # `build` says the same as the run's row.
    built = cli("build", "--cell", "broken", "--matrix", str(path), "--wheelhouse", str(wheelhouse))
    assert built.returncode == EXIT_FAILED and bad["reason"] in built.stdout + built.stderr


def test_a_base_tag_the_registry_lacks_fails_its_cell_and_runs_nothing_else(
    engine, registry, tmp_path
):
    # Unlike an unreachable registry (skipped: a fact about this host), a tag that does not
    # exist is a mistake in the matrix: the cell fails, and bench does not quietly run the
    # suite here instead.
    path = write_matrix(
        tmp_path / "m",
        cpu_cell("retired").replace("cudastack-test-base:bookworm", f"{registry}/cuda:retired"),
    )
    proc = cli("bench", "--matrix", str(path), "--bench", "gemm", "--out", "run", cwd=tmp_path)
    assert proc.returncode == EXIT_FAILED, proc.stdout[-3000:] + proc.stderr
    assert "no cell of the matrix could run here" not in proc.stdout
    df = results.load_table(tmp_path / "run")
    (row,) = df.to_dict("records")
    assert (row["cell"], row["status"]) == ("retired", "failed")
    assert row["reason"].startswith(f"base image {registry}/cuda:retired does not exist: ")
    assert "hint: the base image's tag is not in its registry" in row["reason"], row["reason"]


def test_gpu_request_without_gpu_runtime_says_how_to_fix_it(
    engine, good_matrix, wheelhouse, tmp_path
):
    if "nvidia" in (engine.info().get("Runtimes") or {}):
        pytest.skip("this engine has a GPU runtime")
    proc = cli(
        "run",
        "--cell",
        "test-cpu",
        "--matrix",
        str(good_matrix),
        "--wheelhouse",
        str(wheelhouse),
        "--gpus",
        "all",
        "--bench",
        "gemm",
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    (row,) = results.load_table(tmp_path / "run").to_dict("records")
    assert row["status"] == "failed" and row["reason"] == NO_GPU_RUNTIME
    doctor = cli("doctor", "--matrix", str(good_matrix))
    assert "docker engine:" in doctor.stdout
    assert "gpu runtime: none: install the NVIDIA Container Toolkit" in doctor.stdout
    assert "test-cpu: CPU build: runs anywhere" in doctor.stdout
    assert "disk for images: " in doctor.stdout  # the images to build against the free disk


def test_a_cell_past_its_time_limit_is_stopped_and_recorded(
    engine, good_matrix, wheelhouse, tmp_path
):
    proc = cli(
        "run",
        "--cell",
        "test-cpu",
        "--matrix",
        str(good_matrix),
        "--wheelhouse",
        str(wheelhouse),
        "--timeout",
        "1",
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    rows = results.load_table(tmp_path / "run")
    last = rows.iloc[-1]
    assert last["case"] == "harness[stage=run]" and last["reason"].startswith("timed out after 1 s")
    assert not engine.containers.list(all=True, filters={"label": "dev.cudastack.cell=test-cpu"})


def _lock_lines(wheelhouse) -> list:
    lines = []
    for wheel in sorted(wheelhouse.iterdir()):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} --hash=sha256:{digest}")
    return lines


def test_a_lock_file_is_installed_with_hashes_required(engine, base_image, wheelhouse, tmp_path):
    path = write_matrix(tmp_path / "m", cpu_cell("locked"))
    lock = tmp_path / "m" / "locks" / "locked.txt"
    lock.parent.mkdir()
    lines = _lock_lines(wheelhouse)
    lock.write_text("\n".join(lines) + "\n")
    built = cli("build", "--matrix", str(path), "--wheelhouse", str(wheelhouse), timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    (cell,) = matrix.load(path)
    tag = pipeline.BuildInputs.for_matrix(path).tag(cell)
    inside = engine.containers.run(tag, ["cat", "/opt/venv/cudastack-lock.txt"], remove=True)
    assert inside.decode() == lock.read_text()  # the image was installed from this lock
    # A lock edited by hand: one hash no longer matches its wheel, and the build refuses it.
    bad = [line[:-8] + "00000000" if line.startswith("torch==") else line for line in lines]
    lock.write_text("\n".join(bad) + "\n")
    refused = cli("build", "--matrix", str(path), "--wheelhouse", str(wheelhouse), timeout=1200)
    assert refused.returncode == 2
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in refused.stdout  # pip's own words, streamed
    assert refused.stderr.startswith("error: build of locked failed: ")
    assert refused.stderr.count("\n") == 1 and "\x1b" not in refused.stderr
    assert "torch==" in refused.stderr  # the package whose hash differs
    assert refused.stderr.endswith("re-run `cudastack lock --cell CELL`\n")
    # `run` on the same cell records the same line as the cell's failed row, and exits 1.
    ran = cli(
        "run",
        "--cell",
        "locked",
        "--matrix",
        str(path),
        "--wheelhouse",
        str(wheelhouse),
        "--bench",
        "gemm",
        "--out",
        "run",
        cwd=tmp_path,
        timeout=1200,
    )
    assert ran.returncode == EXIT_FAILED, ran.stdout[-3000:] + ran.stderr
    (row,) = results.load_table(tmp_path / "run").to_dict("records")
    assert (row["case"], row["status"]) == ("harness[stage=build]", "failed")
    assert refused.stderr == f"error: {row['reason']}\n"


def test_ctrl_c_removes_the_container_and_keeps_what_finished(
    engine, good_matrix, wheelhouse, tmp_path
):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cudastack",
            "run",
            "--cell",
            "test-cpu",
            "--matrix",
            str(good_matrix),
            "--wheelhouse",
            str(wheelhouse),
            "--profile",
            "quick",
            "--out",
            "run",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: a shell's background job (how CI may start pytest) ignores SIGINT,
        # and a child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "[  2/" in line:  # the first case has finished and been written
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == EXIT_INTERRUPTED, rest
    assert "interrupted: containers removed" in rest
    assert not engine.containers.list(all=True, filters={"label": "dev.cudastack.cell=test-cpu"})
    df = results.load_table(tmp_path / "run")
    assert (df["status"] == "ok").any() or (df["status"] == "skipped").any()
    assert df.iloc[-1]["reason"] == "interrupted by the user"


def test_bench_runs_here_when_no_cell_can_get_its_base(engine, tmp_path):
    path = write_matrix(
        tmp_path / "m",
        cpu_cell("offline").replace("cudastack-test-base:bookworm", "127.0.0.1:1/nowhere:latest"),
    )
    proc = cli(
        "bench",
        "--matrix",
        str(path),
        "--bench",
        "gemm",
        "--select",
        "n=512",
        "--select",
        "dtype=fp32",
        "--profile",
        "quick",
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "no cell of the matrix could run here" in proc.stdout
    df = results.load_table(tmp_path / "run")
    (skipped,) = df[df["cell"] == "offline"].to_dict("records")
    assert skipped["status"] == "skipped"
    assert skipped["reason"].startswith("base image 127.0.0.1:1/nowhere:latest cannot be pulled")
    assert set(df[df["cell"] == "local"]["status"]) == {"ok"}


NO_GPU = "no NVIDIA GPU on this host; --gpus none runs CUDA cells on the CPU"


def test_without_a_gpu_doctor_and_bench_skip_cuda_cells_before_pulling(
    engine, good_matrix, request, tmp_path
):
    if doctor.nvml_host().driver:
        pytest.skip("NVML sees an NVIDIA GPU here")
    # A CUDA cell whose base nobody can pull: had bench tried, its row would say "cannot be
    # pulled" and its folder would hold a build log.
    base = "127.0.0.1:1/nowhere/cuda:12.8.1-runtime"
    path = write_matrix(
        tmp_path / "m",
        cpu_cell("test-cpu"),
        f"""
        [[cell]]
        name = "test-cuda"
        base_image = "{base}"
        cuda = "12.8"
        torch = "2.9.1"
        index = "cu128"
        python = "3.12"
        """,
    )
    # test-cpu's tag is good_matrix's: the image the module built is reused, if it is there.
    cpu = matrix.load(path)[0]
    tag = cpu.image_tag(matrix.DEFAULT_MATRIX.parent / "Dockerfile", path.parent / "locks")
    build = (
        []
        if images.exists(engine, tag)
        else ["--wheelhouse", str(request.getfixturevalue("wheelhouse"))]
    )

    said = cli("doctor", "--matrix", str(path)).stdout
    assert f"skip  test-cuda: {NO_GPU}" in said, said
    assert "runs  test-cpu: CPU build: runs anywhere" in said, said

    proc = cli(
        "bench",
        "--matrix",
        str(path),
        *build,
        "--bench",
        "gemm",
        "--select",
        "n=512",
        "--select",
        "dtype=fp32",
        "--profile",
        "quick",
        "--out",
        "run",
        cwd=tmp_path,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    df = results.load_table(tmp_path / "run")
    (skipped,) = df[df["cell"] == "test-cuda"].to_dict("records")
    assert skipped["status"] == "skipped" and skipped["reason"] == NO_GPU  # doctor's words
    assert skipped["case"] == "harness[stage=doctor]"  # decided by the plan, not by a build
    assert not (tmp_path / "run" / "test-cuda" / "build.log").exists()  # no build, no pull
    assert not images.exists(engine, base)
    assert set(df[df["cell"] == "test-cpu"]["status"]) == {"ok"}  # the CPU cell still ran


def test_a_local_images_own_requirement_decides_over_its_tag(engine, tmp_path):
    """Where the image is on the engine, its NVIDIA_REQUIRE_CUDA is read (never pulled): NVIDIA's
    images admit older driver branches on some brands, which no tag says."""
    repo, tag = "cudastack-test-require", "cuda12.8"
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w"):
        pass
    engine.api.import_image_from_data(
        empty.getvalue(),
        repository=repo,
        tag=tag,
        changes=['ENV NVIDIA_REQUIRE_CUDA="cuda>=12.8 brand=tesla,driver>=535,driver<536"'],
    )
    try:
        path = write_matrix(
            tmp_path,
            f"""
            [[cell]]
            name = "test-require"
            base_image = "{repo}:{tag}"
            cuda = "12.8"
            torch = "2.9.1"
            index = "cu128"
            python = "3.12"
            """,
        )
        cells = matrix.load(path)
        inputs = pipeline.BuildInputs.for_matrix(path)

        def plan(brand: str) -> tuple:
            # An R535 host (CUDA 12.2) as NVML would describe it; the engine is the real one.
            host = doctor.HostReport(
                driver="535.104.05", cuda="12.2", gpus=["GPU"], gpu_runtime=True, brand=brand
            )
            ((_, ok, why),) = pipeline.plan_cells(cells, host, "all", engine, inputs)
            return ok, why

        ok, why = plan("tesla")  # the image's own branch clause admits it
        assert ok and "minor-version compatibility" in why
        ok, why = plan("geforce")  # no clause for this brand: the runtime would refuse
        assert not ok and "this cell's image requires cuda>=12.8" in why
        # Without the engine only the tag can speak, and this base's tag says nothing.
        host = doctor.HostReport(
            driver="535.104.05", cuda="12.2", gpus=["GPU"], gpu_runtime=True, brand="geforce"
        )
        assert pipeline.plan_cells(cells, host, "all", None, inputs)[0][1]
    finally:
        engine.images.remove(f"{repo}:{tag}", force=True)
