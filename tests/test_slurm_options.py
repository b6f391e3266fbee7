"""Slurm's options are checked before anything is written: one line, exit 2."""

from __future__ import annotations

import pytest
from conftest import cli

from cudastack.contract.errors import EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--launcher", "sge"], "error: --launcher 'sge': choose auto or slurm"),
        (["--partition", "gpu"], "error: --partition for Slurm: add --launcher slurm"),
        (
            ["--gres", "gpu:1", "--sbatch-arg=--exclusive"],
            "error: --gres, --sbatch-arg for Slurm: add --launcher slurm",
        ),
        (
            ["--launcher", "slurm", "--partition", "gpu; rm -rf ~"],
            "error: --partition 'gpu; rm -rf ~': not a value sbatch takes",
        ),
        (
            ["--launcher", "slurm", "--sbatch-arg", "exclusive"],
            "error: --sbatch-arg 'exclusive': give one sbatch option as --name=value",
        ),
        (
            ["--launcher", "slurm", "--cell", "a,b\necho pwned"],
            "error: --cell 'b\\necho pwned': on Slurm a cell is named with letters",
        ),
        (["--launcher", "slurm", "--cell", "slurm"], "error: --cell 'slurm': on Slurm a cell"),
        (["--launcher", "slurm", "--cell", "../x"], "error: --cell '../x': on Slurm a cell"),
        (
            ["--launcher", "slurm", "--constraint", "h100|a100&ib"],
            "error: --constraint 'h100|a100&ib': alternatives are node features",
        ),
        (["--container", "docker"], "error: --container for Slurm: add --launcher slurm"),
        (
            ["--launcher", "slurm", "--container", "podman"],
            "error: --container 'podman': choose none, docker, apptainer, pyxis",
        ),
        (
            ["--launcher", "slurm", "--container", "docker"],
            "error: --container docker runs cells' images: name them with --cell",
        ),
        (
            ["--launcher", "slurm", "--container", "pyxis", "--cell", "a"],
            "error: --container pyxis pulls each cell's image from a registry",
        ),
        (
            ["--launcher", "slurm", "--gpus", "0"],
            "error: --gpus picks this host's GPUs: on Slurm a task gets the GPUs its job asks",
        ),
        (
            ["--launcher", "slurm", "--shm-size", "2g"],
            "error: --shm-size applies on Slurm to --container docker only (with --container "
            "none a task shares the node's /dev/shm, IPC and network)",
        ),
        (
            ["--launcher", "slurm", "--container", "apptainer", "--cell", "a", "--network", "none"],
            "error: --network applies on Slurm to --container docker only",
        ),
        (
            ["--launcher", "slurm", "--container", "apptainer", "--cell", "a", "--ipc-host"],
            "error: --ipc-host applies on Slurm to --container docker only",
        ),
        (
            [
                "--launcher",
                "slurm",
                "--container",
                "apptainer",
                "--cell",
                "a",
                "--minor-version-compat",
            ],
            "error: --minor-version-compat applies on Slurm to --container docker and pyxis "
            "only (with --container apptainer a task has no NVIDIA requirement check",
        ),
        (
            ["--launcher", "slurm", "--container", "docker", "--cell", "a", "--shm-size", "lots"],
            "error: --shm-size 'lots': give a size such as 16g",
        ),
    ],
)
def test_bad_slurm_options_are_one_line(tmp_path, args, message):
    out = tmp_path / "run"
    proc = cli("run", *args, "--out", str(out))
    assert proc.returncode == EXIT_BAD_INPUT and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(message), proc.stderr
    assert not out.exists()  # nothing written


def test_a_run_folder_sbatch_cannot_name_is_one_line(tmp_path):
    out = tmp_path / "my results" / "run"
    proc = cli("run", "--launcher", "slurm", "--out", str(out))
    assert proc.returncode == EXIT_BAD_INPUT and proc.stderr.count("\n") == 1, proc.stderr
    assert "sbatch cannot take a run folder path with whitespace" in proc.stderr
    assert not out.exists()
