"""The GPU check script, run on this CPU as a dry run: both parts, the record of how, the table."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "scripts/gpu_check.py", "--python", sys.executable, "--out", str(out)]
    return subprocess.run(
        [*cmd, "--device", "cpu", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_the_gpu_check_runs_smoke_then_standard_and_says_how(tmp_path):
    run = tmp_path / "h200-2026-11-30"
    proc = gpu_check(run, "--smoke-bench", "launch", "--standard-bench", "launch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_parquet(run / "results.parquet")
    assert set(table["cell"]) == {"smoke", "standard"}
    assert set(table["status"]) == {"ok", "skipped"}  # CUDA graphs skip on a CPU, nothing fails
    assert len(table[(table["cell"] == "standard") & (table["status"] == "ok")]) > 0
    command = (run / "COMMAND.md").read_text()
    for cell in ("smoke", "standard"):
        assert f"--cell {cell} " in command
        assert f"- `{cell}` (" in command and "exit 0" in command
    assert "no GPU" in command  # what it ran on


def test_a_folder_that_holds_a_check_is_refused(tmp_path):
    (tmp_path / "smoke").mkdir()
    proc = gpu_check(tmp_path, "--smoke-bench", "launch", "--standard-bench", "")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "already holds a GPU check" in proc.stderr
