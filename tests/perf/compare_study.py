"""How often `compare` is wrong on this machine: A/A false alarms and the power to see a slowdown.

Three sides run the suite (`quick` unless --profile) in this environment: A1 and A2 unchanged,
B with every timed call or training step made a known fraction slower (--extra-work). Each side
gets --repeat worker processes, taking turns (A1, B, A2, A1, B, A2, ...) as `cudastack run
--repeat` does across cells. Then A1 is compared with A2 (every "faster" or "slower" is a false
alarm) and with B (every case should be "slower"), with `cudastack compare`.
Run: ``.venv/bin/python tests/perf/compare_study.py [--repeat 5] [--extra-work 0.15] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from cudastack.host.analysis import results

SIDES = {"A1": 0.0, "B": None, "A2": 0.0}  # None: the injected slowdown


def run_process(
    cell_dir: Path, side: str, process: int, extra: float, args: argparse.Namespace
) -> None:
    cmd = [sys.executable, "-m", "cudastack.worker", "--out", str(cell_dir), "--run-id", side]
    cmd += ["--profile", args.profile, "--process", str(process)]
    if args.bench:
        cmd += ["--bench", args.bench]
    if extra:
        cmd += ["--extra-work", str(extra)]
    subprocess.run(cmd, check=True, capture_output=True)


def verdicts(a: Path, b: Path) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "cudastack", "compare", str(a), str(b), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(proc.stdout)["comparison"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--extra-work", type=float, default=0.15)
    p.add_argument("--repeat", type=int, default=5, help="worker processes per side")
    p.add_argument("--bench", default="")
    p.add_argument("--profile", default="quick")
    p.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="cudastack-study-")))
    args = p.parse_args()
    for process in range(args.repeat):
        for side, extra in SIDES.items():
            cell_dir = args.out / side / "local"
            cell_dir.mkdir(parents=True, exist_ok=True)
            run_process(cell_dir, side, process, args.extra_work if extra is None else 0.0, args)
            print(f"round {process + 1}/{args.repeat}: {side} done", flush=True)
    for side in SIDES:
        results.ingest_run(args.out / side)
    aa, ab = verdicts(args.out / "A1", args.out / "A2"), verdicts(args.out / "A1", args.out / "B")
    unit = {r["unit_of_n"] for r in aa}
    print(f"{args.repeat} process(es) a side; compare's unit: {', '.join(sorted(unit))}")
    alarms = [r for r in aa if r["verdict"] in ("faster", "slower")]
    print(
        f"A/A: {len(alarms)} of {len(aa)} cases flagged as changed "
        f"({100 * len(alarms) / len(aa):.1f} %); verdicts {dict(Counter(r['verdict'] for r in aa))}"
    )
    for r in alarms:
        print(f"  false alarm: {r['case']} ratio {r['ratio']:.3f} ({r['verdict']})")
    slower = [r for r in ab if r["verdict"] == "slower"]
    print(
        f"power at +{100 * args.extra_work:.0f} % work: {len(slower)} of {len(ab)} cases detected "
        f"as slower ({100 * len(slower) / len(ab):.1f} %); verdicts "
        f"{dict(Counter(r['verdict'] for r in ab))}"
    )
    ratios = sorted(r["ratio"] for r in ab)
    print(
        f"  B/A ratio: median {ratios[len(ratios) // 2]:.3f}, "
        f"range {ratios[0]:.3f}-{ratios[-1]:.3f}"
    )
    print(f"runs kept in {args.out}")


if __name__ == "__main__":
    main()
