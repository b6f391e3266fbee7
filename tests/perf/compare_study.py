"""How often `compare` is wrong on this machine: A/A false alarms, power, and inconclusive rows.

Four sides run the suite (`quick` unless --profile) in this Python environment, each in
--repeat worker processes taking turns (A1, B, H, A2, A1, B, ...), as `cudastack run --repeat`
does across cells, so a drift of the machine touches every side alike:
- A1 and A2 unchanged: every `faster` or `slower` between them is a false alarm;
- B with every timed call or training step made --extra-work slower (15 % by default);
- H with half the CPU: the worker pinned to one core (`taskset`), about 2x slower where
  compute-bound.
A1 is then compared with A2, B and H using the first 1, 3 and 5 processes of each side (one
collection of processes serves every count), with Holm's and with Benjamini-Hochberg's
correction, and the verdicts are tabulated. Keep the machine otherwise idle while it runs: a
burst of other work during one process reads as that process's noise.
Run: ``.venv/bin/python tests/perf/compare_study.py [--repeat 5] [--bench gemm,conv] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from cudastack.host.analysis import compare, results

SIDES = ("A1", "B", "H", "A2")
COUNTS = (1, 3, 5)


def run_process(cell_dir: Path, side: str, process: int, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "cudastack.worker", "--out", str(cell_dir), "--run-id", side]
    cmd += ["--profile", args.profile, "--process", str(process)]
    if args.bench:
        cmd += ["--bench", args.bench]
    if side == "B":
        cmd += ["--extra-work", str(args.extra_work)]
    if side == "H":
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    subprocess.run(cmd, check=True, capture_output=True)


def share(rows: pd.DataFrame, verdicts: tuple[str, ...]) -> str:
    hits = int(rows["verdict"].isin(verdicts).sum())
    return f"{hits}/{len(rows)} ({100 * hits / len(rows):.0f} %)"


def study(tables: dict[str, pd.DataFrame], count: int, correction: str) -> dict[str, str]:
    """One line of the table: verdict shares with ``count`` processes a side."""
    first = {side: t[t["process"] < count] for side, t in tables.items()}
    settings = compare.Settings(correction=correction)

    def against(side: str) -> pd.DataFrame:
        both = pd.concat([first["A1"], first[side]], ignore_index=True)
        return compare.compare(both, settings=settings)

    aa, slow, half = against("A2"), against("B"), against("H")
    compute_bound = half[half["bench"].isin(["gemm", "conv"])]
    return {
        "processes a side": str(count),
        "correction": correction,
        "A/A changed": share(aa, ("faster", "slower")),
        "A/A same": share(aa, ("same",)),
        "A/A inconclusive": share(aa, ("inconclusive",)),
        "+15 % slower": share(slow, ("slower",)),
        "+15 % inconclusive": share(slow, ("inconclusive",)),
        "half CPU slower": share(half, ("slower",)),
        "half CPU gemm+conv slower": share(compute_bound, ("slower",))
        if len(compute_bound)
        else "-",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--extra-work", type=float, default=0.15)
    p.add_argument("--repeat", type=int, default=5, help="worker processes per side")
    p.add_argument("--bench", default="")
    p.add_argument("--profile", default="quick")
    p.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="cudastack-study-")))
    p.add_argument("--analyse-only", action="store_true", help="tabulate runs already in --out")
    args = p.parse_args()
    if not args.analyse_only:
        for process in range(args.repeat):
            for side in SIDES:
                cell_dir = args.out / side / "local"
                cell_dir.mkdir(parents=True, exist_ok=True)
                run_process(cell_dir, side, process, args)
                print(f"round {process + 1}/{args.repeat}: {side} done", flush=True)
    tables = {side: results.ingest_run(args.out / side) for side in SIDES}
    rows = [study(tables, n, c) for n in COUNTS if n <= args.repeat for c in ("holm", "bh")]
    print("| " + " | ".join(rows[0]) + " |")  # a markdown table: the README quotes it
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")
    print(f"runs kept in {args.out}")


if __name__ == "__main__":
    main()
