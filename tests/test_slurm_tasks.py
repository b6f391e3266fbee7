"""What a Slurm task runs and asks for, without a cluster: each --container mode's lines of the
batch script, checked as text and by bash's parser (no pyxis or Apptainer is installed here;
docker mode also runs for real in tests/slurm/test_slurm_containers.py), and its time limit."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from cudastack.host.run import slurm
from cudastack.host.run.container import HARNESS_PACKAGE, ContainerOptions
from cudastack.host.run.suite_args import SuiteArgs
from cudastack.host.run.task_container import DOCKER_DEFAULTS, NodeImage

DIGEST = "127.0.0.1:5000/cudastack/c1@sha256:" + "ab" * 32
TAG = "cudastack/c1:0123456789abcdef"
IDENTITY = "sha256:" + "cd" * 32  # what the engine calls the image: every row names it
SECRET = "s3cr3t-value-never-written"


def _script(
    tmp_path: Path,
    mode: str,
    image: NodeImage,
    gpus: bool = True,
    docker: ContainerOptions = DOCKER_DEFAULTS,
) -> str:
    run_dir = tmp_path / "run"
    (run_dir / slurm.SLURM_DIR).mkdir(parents=True)
    args = SuiteArgs(benches=["gemm"], env=[f"HF_TOKEN={SECRET}"], repeat=2)
    launcher = slurm.SlurmLauncher(
        args,
        ["c1"],
        slurm.SlurmOptions(gpus_per_task=1),
        600.0,
        print,
        container=mode,
        node_images=lambda run_dir, cells: {cell: image for cell in cells},
        gpus=gpus,
        docker=docker,
    )
    (task,) = launcher._with_images(run_dir, {"c1": slurm._Task("c1", 0, range(2))}).values()
    text = launcher.script(run_dir, "run-1", [task])
    # bash parses it: quoting holds whatever the paths and arguments are.
    checked = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    assert SECRET not in text  # --env values reach the task from sbatch's environment
    assert f"if [ ! -d {HARNESS_PACKAGE} ]; then" in text
    return text


def _process_lines(text: str) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("process ")]
    assert len(lines) == 2  # one per --repeat process
    return [shlex.split(line.removesuffix(" || exit $?")) for line in lines]


def test_docker_mode_loads_the_archive_once_then_runs_each_process_in_its_image(tmp_path):
    archive = str(tmp_path / "images" / "c1.tar")
    text = _script(tmp_path, "docker", NodeImage(archive, TAG, True, IDENTITY))
    # The limits NCCL needs, tried once on the image; without them where the engine refuses.
    assert "    ulimits=(--ulimit memlock=-1:-1 --ulimit stack=67108864:67108864)" in text
    assert f'    if ! docker run --rm "${{ulimits[@]}}" {TAG} true >> "$run_dir"/c1/log.txt' in text
    # Once per task, outside the processes' --timeout, into the cell's log.
    load = f'    docker load --quiet --input {archive} >> "$run_dir"/c1/log.txt 2>&1 || exit $?'
    assert load in text
    for n, argv in enumerate(_process_lines(text)):
        assert argv[:6] == ["process", "c1", str(n), "docker", "run", "--rm"]
        assert argv[6:8] == ["--init", "${ulimits[@]+${ulimits[@]}}"]  # as shlex reads it
        assert ["--user", f"{os.getuid()}:{os.getgid()}"] == argv[8:10]
        cell_dir = (tmp_path / "run" / "c1").resolve()
        mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
        assert f"{HARNESS_PACKAGE}:/harness/src/cudastack:ro" in mounts
        assert f"{cell_dir}:/results:rw" in mounts
        env = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
        assert "PYTHONPATH=/harness/src" in env and "HF_TOKEN" in env  # by name only
        assert "SLURM_JOB_ID" in env and "SLURMD_NODENAME" in env  # for env.json
        # The job's GPUs by the node's numbering (quoted in the value: Docker reads it as CSV),
        # then the image by its tag, then the worker.
        gpus = argv.index("--gpus")
        assert argv[gpus + 1].startswith('"device=${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:?')
        assert argv[gpus + 2] == TAG
        assert argv[gpus + 3 : gpus + 6] == ["python", "-m", "cudastack.worker"]
        # Process 0 is the worker's default; the repeat says which it is.
        assert (argv[argv.index("--process") + 1] if n else "0") == str(n)
        assert argv[argv.index("--image-digest") + 1] == IDENTITY
        # As a container on one host: Docker's own network, 16 GB of /dev/shm, no host IPC.
        assert argv[argv.index("--network") + 1] == "bridge"
        assert argv[argv.index("--shm-size") + 1] == "16g"
        assert "--privileged" not in argv and "--ipc" not in argv
        assert "NVIDIA_DISABLE_REQUIRE=true" not in env


@pytest.mark.parametrize(
    ("docker", "expected"),
    [
        (
            ContainerOptions(shm_size="2g", network="none", minor_version_compat=True),
            [("--network", "none"), ("--shm-size", "2g"), ("--env", "NVIDIA_DISABLE_REQUIRE=true")],
        ),
        (
            ContainerOptions(ipc_host=True, network="host"),
            [("--network", "host"), ("--ipc", "host")],
        ),
    ],
)
def test_docker_mode_runs_its_containers_with_the_options_a_host_run_takes(
    tmp_path, docker, expected
):
    text = _script(tmp_path, "docker", NodeImage(DIGEST, TAG, False, IDENTITY), docker=docker)
    for argv in _process_lines(text):
        given = list(zip(argv, argv[1:]))
        assert all(pair in given for pair in expected), argv
        # Host IPC brings the host's /dev/shm: no size then, as docker run on one host.
        assert ("--shm-size" in argv) is not docker.ipc_host
    # The limits' trial starts the image as the processes do: with the requirement check off
    # where they have it off (else an old driver fails the trial, not the limits).
    compat = "--env NVIDIA_DISABLE_REQUIRE=true " if docker.minor_version_compat else ""
    assert f'    if ! docker run --rm "${{ulimits[@]}}" {compat}{DIGEST} true >>' in text


def test_pyxis_mode_turns_the_cuda_requirement_check_off_when_asked(tmp_path):
    compat = ContainerOptions(minor_version_compat=True)
    for docker, found in ((DOCKER_DEFAULTS, False), (compat, True)):
        text = _script(tmp_path / str(found), "pyxis", NodeImage(DIGEST, TAG, False), docker=docker)
        for argv in _process_lines(text):
            srun = argv.index("srun")
            assert ("NVIDIA_DISABLE_REQUIRE=true" in argv[4:srun]) is found, argv


def test_docker_mode_pulls_a_registry_image_by_digest_and_asks_for_no_gpu_unasked(tmp_path):
    text = _script(tmp_path, "docker", NodeImage(DIGEST, TAG, False, IDENTITY), gpus=False)
    assert f'    docker pull --quiet {DIGEST} >> "$run_dir"/c1/log.txt 2>&1 || exit $?' in text
    for argv in _process_lines(text):
        assert "--gpus" not in argv
        assert argv[argv.index("python") - 1] == DIGEST
        assert argv[argv.index("--image-digest") + 1] == IDENTITY


@pytest.mark.parametrize(
    ("image", "source"),
    [
        (NodeImage("/shared/c1.tar", TAG, archive=True), "docker-archive:/shared/c1.tar"),
        (NodeImage(DIGEST, TAG, archive=False), f"docker://{DIGEST}"),
    ],
)
def test_apptainer_mode_execs_the_image_with_the_gpus_and_the_same_mounts(tmp_path, image, source):
    text = _script(tmp_path, "apptainer", image)
    for argv in _process_lines(text):
        assert argv[3:6] == ["apptainer", "exec", "--no-home"]
        assert "--nv" in argv and "--cleanenv" not in argv  # --env's variables pass through
        env = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
        assert not [e for e in env if e.startswith("HOME=")]  # Apptainer refuses it
        assert "XDG_CACHE_HOME=/tmp/.cache" in env
        binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
        assert f"{HARNESS_PACKAGE}:/harness/src/cudastack:ro" in binds
        assert argv[argv.index("python") - 1] == source


def test_pyxis_mode_is_an_srun_step_in_the_image_named_as_enroot_names_it(tmp_path):
    text = _script(tmp_path, "pyxis", NodeImage(DIGEST, TAG, archive=False))
    for argv in _process_lines(text):
        srun = argv.index("srun")
        assert argv[3] == "env" and "PYTHONPATH=/harness/src" in argv[4:srun]
        image = "--container-image=127.0.0.1:5000#cudastack/c1@sha256:" + "ab" * 32
        assert argv[srun + 1 : srun + 3] == ["--ntasks=1", image]
        mounts = next(a for a in argv if a.startswith("--container-mounts="))
        assert f"{HARNESS_PACKAGE}:/harness/src/cudastack:ro" in mounts
        assert "--container-workdir=/results" in argv


def test_a_cell_whose_image_cannot_reach_the_nodes_is_left_out_of_the_array(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / slurm.SLURM_DIR).mkdir(parents=True)
    good = NodeImage(DIGEST, TAG, archive=False)
    launcher = slurm.SlurmLauncher(
        SuiteArgs(),
        ["bad", "c1"],
        slurm.SlurmOptions(),
        600.0,
        print,
        container="docker",
        node_images=lambda run_dir, cells: {"bad": "build of bad failed: no torch", "c1": good},
    )
    new = {c: slurm._Task(c, i, range(1)) for i, c in enumerate(["bad", "c1"])}
    kept = launcher._with_images(run_dir, new)
    assert list(kept) == ["c1"]
    assert launcher._refused == {"bad": "build of bad failed: no torch"}
    recorded = (run_dir / slurm.SLURM_DIR / slurm.IMAGES).read_text()
    assert DIGEST in recorded and "bad" not in recorded


def test_a_folder_parameter_reaches_a_task_as_an_absolute_path(tmp_path, monkeypatch):
    # A task's worker runs in its cell's folder: weights=models/bert given here must still be
    # this folder's models/bert there.
    monkeypatch.chdir(tmp_path)
    args = SuiteArgs(overrides=["weights=models/bert", "seq_len=64"]).with_absolute_paths()
    assert args.overrides == [f"weights={tmp_path / 'models' / 'bert'}", "seq_len=64"]


@pytest.mark.parametrize(
    ("limit", "minutes"),
    [("1-12:00:00", 2160), ("2:00:00", 120), ("30:00", 30), ("0:59", 1), ("infinite", 0)],
)
def test_a_partition_s_time_limit_is_read_in_whole_minutes(limit, minutes):
    assert slurm._minutes(limit) == minutes


def test_the_default_time_stays_within_the_partition_s_limit():
    # 3 processes of --timeout 3600 s, each with timeout(1)'s 30 s grace, and 5 min to load
    # the image: 186.5 min; a 2-hour partition would never start it.
    capped = slurm.SlurmOptions(limit_minutes=120).directives(3600.0, 3)
    assert "--time=120" in capped
    assert "--time=187" in slurm.SlurmOptions().directives(3600.0, 3)
    # A --time the user gives is theirs, as sbatch will judge it.
    assert "--time=4:00:00" in slurm.SlurmOptions(time="4:00:00", limit_minutes=120).directives(
        3600.0, 3
    )


@pytest.mark.parametrize(
    ("options", "gpus"),
    [
        (slurm.SlurmOptions(gpus_per_task=1), True),
        (slurm.SlurmOptions(gres="gpu:h100:2"), True),
        (slurm.SlurmOptions(sbatch_args=("--gpus-per-node=4",)), True),
        (slurm.SlurmOptions(gres="nvme:1"), False),  # a gres that is no GPU
        (slurm.SlurmOptions(sbatch_args=("--exclusive",)), False),
    ],
)
def test_a_job_asks_for_gpus_only_by_the_options_that_give_it_some(options, gpus):
    assert options.asks_for_gpus() is gpus
