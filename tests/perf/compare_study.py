"""How often `compare` is wrong on this machine: A/A false alarms and the power to see a slowdown.

Runs the suite (`quick` unless --profile) three times in this environment — A1, A2 unchanged
and B with every timed call made a known fraction slower (--extra-work) — then compares A1 with
A2 (every "faster" or
"slower" there is a false alarm) and A1 with B (every case should be "slower").
Run: ``.venv/bin/python tests/perf/compare_study.py [--extra-work 0.15] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(out: Path, extra: float, bench: str, profile: str) -> None:
    cmd = [sys.executable, "-m", "cudastack", "run", "--profile", profile, "--out", str(out)]
    if bench:
        cmd += ["--bench", bench]
    if extra:
        cmd += ["--extra-work", str(extra)]
    subprocess.run(cmd, check=False, capture_output=True)


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
    p.add_argument("--bench", default="")
    p.add_argument("--profile", default="quick")
    p.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="cudastack-study-")))
    args = p.parse_args()
    a1, a2, b = args.out / "A1", args.out / "A2", args.out / "B"
    for folder, extra in ((a1, 0.0), (b, args.extra_work), (a2, 0.0)):  # B between the As
        run(folder, extra, args.bench, args.profile)
    aa, ab = verdicts(a1, a2), verdicts(a1, b)
    alarms = [r for r in aa if r["verdict"] in ("faster", "slower")]
    print(
        f"A/A: {len(alarms)} of {len(aa)} cases flagged as changed "
        f"({100 * len(alarms) / len(aa):.1f} %); noisy {sum(r['verdict'] == 'noisy' for r in aa)}"
    )
    for r in alarms:
        print(f"  false alarm: {r['case']} ratio {r['ratio']:.3f} ({r['verdict']})")
    slower = [r for r in ab if r["verdict"] == "slower"]
    quiet = [r for r in ab if r["verdict"] != "noisy"]
    print(
        f"power at +{100 * args.extra_work:.0f} % work: {len(slower)} of {len(ab)} cases detected "
        f"as slower ({100 * len(slower) / len(ab):.1f} %); of the {len(quiet)} not noisy: "
        f"{100 * len(slower) / max(1, len(quiet)):.1f} %"
    )
    for r in ab:
        if r["verdict"] != "slower":
            print(f"  missed: {r['case']} ratio {r['ratio']:.3f} ({r['verdict']})")
    print(f"runs kept in {args.out}")


if __name__ == "__main__":
    main()
