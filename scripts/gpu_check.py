"""The GPU check: the smoke profile, then the standard profile's headline benches, as one run.

Run it on a GPU host, in the Python environment that holds torch (no Docker needed):

    make gpu-check                      # or: PYTHONPATH=src python3 scripts/gpu_check.py

It writes one run folder (default ``results/reference/<gpu>-<date>/``) with two cells, ``smoke``
and ``standard``, each the worker's own records.jsonl and env.json, plus ``COMMAND.md`` saying
exactly what ran, on what, and how long each part took. With pandas installed it also stores
the run's table (results.parquet / results.csv), which ``cudastack show RUN`` prints. Exits 1
when any case failed, 0 otherwise (skips allowed: a CPU skips the GPU-only paths).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The standard profile's benches with a published anchor in the project's reference notes
# (bf16 GEMM, device copy and pinned H2D, attention, ResNet-50 AMP, GPT-2 124M MFU); the rest
# of the standard profile does not fit a short lease of a GPU.
STANDARD_BENCHES = "gemm,bandwidth,sdpa,train_resnet,train_gpt"


def _gpu_slug(python: str, device: str) -> str:
    if device == "cpu":
        return "cpu"
    name = subprocess.run(
        [python, "-c", "import torch; print(torch.cuda.get_device_name(0))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return re.sub(r"[^A-Za-z0-9]+", "-", name.removeprefix("NVIDIA ")).strip("-").lower() or "gpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default="python3", help="the interpreter that holds torch")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: a dry run)")
    p.add_argument("--out", type=Path, help="run folder (default results/reference/<gpu>-<date>)")
    p.add_argument("--smoke-bench", default="", help="benches for the smoke part (default all)")
    p.add_argument("--standard-bench", default=STANDARD_BENCHES, help="'' skips the part")
    p.add_argument(
        "--select", action="append", default=[], help="key=value filter for the standard part"
    )
    a = p.parse_args(argv)

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    run = a.out or ROOT / "results" / "reference" / f"{_gpu_slug(a.python, a.device)}-{date}"
    run = run.resolve()
    # Commands run from the repository root, and COMMAND.md shows them with paths from there.
    shown = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run
    if (run / "smoke").exists() or (run / "standard").exists():
        print(f"error: {run} already holds a GPU check; choose another --out", file=sys.stderr)
        return 2
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-gpucheck")
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    parts = [("smoke", "smoke", a.smoke_bench, [])]
    if a.standard_bench:
        parts.append(("standard", "standard", a.standard_bench, a.select))
    lines, worst = [], 0
    for cell, profile, benches, select in parts:
        cmd = [a.python, "-m", "cudastack.worker", "--out", str(shown / cell), "--cell", cell]
        cmd += ["--run-id", run_id, "--profile", profile, "--device", a.device]
        if benches:
            cmd += ["--bench", benches]
        for item in select:
            cmd += ["--select", item]
        print(f"== {cell}: {shlex.join(cmd)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(cmd, env=env, cwd=ROOT).returncode
        wall = time.perf_counter() - start
        # A worker killed by a signal (negative code) left its case without a row: a failure.
        worst = max(worst, 1 if code < 0 else code)
        lines.append(f"- `{cell}` ({wall:.0f} s, exit {code}): `PYTHONPATH=src {shlex.join(cmd)}`")
    _write_command(run, a, lines)
    failed = _tables(run)
    return max(worst, 1 if failed else 0)  # the worker's codes: 2 is bad input


def _write_command(run: Path, a: argparse.Namespace, lines: list[str]) -> None:
    """COMMAND.md: how the run was made and on what, for whoever reads results/reference."""
    probe = (
        "import torch; c = torch.cuda.is_available(); "
        "print(torch.__version__, torch.version.cuda, "
        "torch.cuda.get_device_name(0) if c else 'no GPU', sep=' | ')"
    )
    torch_line = subprocess.run(
        [a.python, "-c", probe], capture_output=True, text=True
    ).stdout.strip()
    driver = (
        subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if shutil.which("nvidia-smi")
        else "none"
    )
    text = [
        "# GPU check",
        "",
        f"Made by `scripts/gpu_check.py {shlex.join(sys.argv[1:])}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- torch | CUDA | device: {torch_line}",
        f"- NVIDIA driver: {driver or 'unknown'}",
        f"- host: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}",
        "",
        "Parts (wall time, worker exit code, the exact command from the repository root):",
        "",
        *lines,
        "",
    ]
    run.mkdir(parents=True, exist_ok=True)
    (run / "COMMAND.md").write_text("\n".join(text), encoding="utf-8")


def _tables(run: Path) -> bool:
    """Store the run's table where pandas exists; True when any case failed."""
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from cudastack.host.analysis import results
    except ImportError:  # no pandas here: the host makes the table later (cudastack show)
        print(f"records in {run}; make the table with: cudastack show {run}")
        return False
    df = results.ingest_run(run)
    counts = df.drop_duplicates(["cell", "case"])["status"].value_counts().to_dict()
    print(f"{run}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return bool(counts.get("failed", 0))


if __name__ == "__main__":
    sys.exit(main())
