"""Re-plays the audit's plausible bugs one at a time and checks a named test catches each.

Each mutation is applied to a copy of the working tree (never to the tree itself), then the
tests named for it run against that copy; a mutation that every named test survives is a
failure of this script. Usage: `.venv/bin/python tests/mutants/audit.py [-k NAME]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail with the mutation in place


MUTATIONS = [
    Mutation(
        "gemm: FLOPs per call 2n^3 -> n^3",
        "src/cudastack/environment/bench/gemm.py",
        "return 2 * n**3",
        "return n**3",
        ("tests/test_known_flops.py::test_gemm_reports_torch_count_of_one_mm",),
    ),
    Mutation(
        "sdpa: causal factor 0.5 -> 1.0",
        "src/cudastack/environment/bench/sdpa.py",
        "(0.5 if causal else 1.0)",
        "(1.0 if causal else 1.0)",
        ("tests/test_known_flops.py::test_sdpa_reports_fused_attention_count_halved_when_causal",),
    ),
    Mutation(
        "training: throughput loses steps_per_window",
        "src/cudastack/environment/training.py",
        "items = work.items_per_step * w.steps_per_window * w1.size",
        "items = work.items_per_step * w1.size",
        (
            "tests/test_training_math.py::"
            "test_one_process_rates_and_step_split_from_known_step_times",
        ),
    ),
    Mutation(
        "training: data-parallel total loses its x N",
        "src/cudastack/environment/training.py",
        "items = work.items_per_step * w.steps_per_window * w1.size",
        "items = work.items_per_step * w.steps_per_window",
        (
            "tests/test_training_math.py::"
            "test_two_data_parallel_processes_total_their_items_over_the_slowest_window",
        ),
    ),
    Mutation(
        "training: injected slowdown removed from the steps",
        "src/cudastack/environment/training.py",
        "step = ctx.slowed(step)",
        "pass",
        ("tests/test_workloads.py::test_the_injected_slowdown_reaches_training_steps",),
    ),
    Mutation(
        "timers: a spent budget stops at min_reps instead of 3 samples",
        "src/cudastack/environment/timing.py",
        "n >= min(s.min_reps, 3)",
        "n >= s.min_reps",
        ("tests/test_timing.py::test_a_spent_budget_stops_at_three_samples_even_below_min_reps",),
    ),
    Mutation(
        "compare: verdict from the raw p instead of the corrected one",
        "src/cudastack/host/analysis/compare.py",
        'row["p_adj"] < s.alpha',
        'row["p"] < s.alpha',
        (
            "tests/test_compare.py::"
            "test_a_row_failing_one_condition_of_a_change_is_inconclusive_not_same",
        ),
    ),
    Mutation(
        "compare: the 'interval excludes 1' condition deleted",
        "src/cudastack/host/analysis/compare.py",
        "if significant and lo > 1 and ratio > 1 and ratio - 1 >= t - eps:",
        "if significant and ratio > 1 and ratio - 1 >= t - eps:",
        (
            "tests/test_compare.py::"
            "test_a_row_failing_one_condition_of_a_change_is_inconclusive_not_same",
        ),
    ),
    Mutation(
        "results: atomic_write writes straight to the target",
        "src/cudastack/contract/runfolder.py",
        "            write(Path(tmp))\n"
        "            os.chmod(tmp, 0o666 & ~_umask())\n"
        "            os.replace(tmp, path)\n",
        "            write(path)\n",
        ("tests/test_atomic.py",),
    ),
    Mutation(
        "archive: import's lock sha check deleted",
        "src/cudastack/host/cells/handoff.py",
        'if hashlib.sha256(lock).hexdigest() != manifest["lock_sha256"]:',
        "if False:",
        ("tests/test_archive.py::test_a_same_size_change_fails_its_sha_check_and_nothing_loads",),
    ),
    Mutation(
        "matrix: EXTRA_PACKAGES left out of the content hash",
        "src/cudastack/host/cells/matrix.py",
        "digest.update(json.dumps(self.build_args(), sort_keys=True).encode())",
        "args = {k: v for k, v in self.build_args().items() if k != 'EXTRA_PACKAGES'}\n"
        "        digest.update(json.dumps(args, sort_keys=True).encode())",
        ("tests/test_matrix.py::test_every_field_that_reaches_the_image_changes_the_tag",),
    ),
    Mutation(
        "matrix: the lock's file name hashed instead of its content",
        "src/cudastack/host/cells/matrix.py",
        'digest.update(lock.read_bytes() if lock.is_file() else b"no lock")',
        'digest.update(lock.name.encode() if lock.is_file() else b"no lock")',
        (
            "tests/test_matrix.py::"
            "test_the_lock_and_dockerfile_count_by_content_not_by_where_they_are",
        ),
    ),
    Mutation(
        "run_here: a local run always reports success",
        "src/cudastack/host/run/local.py",
        "        if code != 0:\n",
        "        if False:\n",
        ("tests/test_cli.py::test_a_local_run_whose_worker_dies_exits_1_and_keeps_what_finished",),
    ),
    Mutation(
        "ceilings: the copy counted as bytes copied, not read + written",
        "src/cudastack/environment/ceilings.py",
        "return 2 * nbytes / seconds / 1e9",
        "return nbytes / seconds / 1e9",
        ("tests/test_ceilings.py::test_the_copy_counts_each_byte_read_and_written",),
    ),
    Mutation(
        "context: % of achievable of the first rate, not the peak's",
        "src/cudastack/environment/context.py",
        "shared = rates.get(rate) if rate else next(iter(rates.values()), None)",
        "shared = next(iter(rates.values()), None)",
        (
            "tests/test_context.py::"
            "test_measure_gives_both_rates_and_states_each_share_in_the_peak_s_unit",
        ),
    ),
    Mutation(
        "gemm: bytes moved leave out the product written",
        "src/cudastack/environment/bench/gemm.py",
        "return n * n * (2 * in_size + out_size)",
        "return n * n * 2 * in_size",
        (
            "tests/test_known_flops.py::"
            "test_gemm_counts_its_operands_read_and_its_product_written_once",
        ),
    ),
    Mutation(
        "cpu peak: hyperthreads counted as cores",
        "src/cudastack/environment/cpu_peak.py",
        'return len({(c.get("physical id", "0"), c["core id"]) for c in mine}), ""',
        'return len(mine), ""',
        ("tests/test_cpu_peak.py::test_cores_are_the_physical_cores_torch_s_threads_may_use",),
    ),
]


def copy_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a commit of the tree would hold."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def apply(root: Path, m: Mutation) -> None:
    path = root / m.path
    text = path.read_text(encoding="utf-8")
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.name}: {m.old!r} occurs {text.count(m.old)} times in {m.path}")
    path.write_text(text.replace(m.old, m.new), encoding="utf-8")


def run_tests(root: Path, tests: tuple[str, ...]) -> int:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    opts = parser.parse_args()
    chosen = [m for m in MUTATIONS if opts.k.lower() in m.name.lower()]
    survived = 0
    with tempfile.TemporaryDirectory(prefix="cudastack-audit-") as tmp:
        pristine = Path(tmp) / "pristine"
        copy_tree(pristine)
        # The unmutated tree must pass the same tests, or a "catch" would mean nothing.
        for m in chosen:
            code = run_tests(pristine, m.tests)
            if code != 0:
                print(f"BROKEN  {m.name}: its tests fail without the mutation (exit {code})")
                return 1
        for m in chosen:
            root = Path(tmp) / "mutant"
            shutil.copytree(pristine, root)
            apply(root, m)
            start = time.monotonic()
            code = run_tests(root, m.tests)
            caught = code == 1  # pytest: 1 = tests failed; other codes are not a catch
            survived += not caught
            verdict = "caught " if caught else "SURVIVED"
            print(f"{verdict} {m.name}  ({time.monotonic() - start:.0f} s)  {' '.join(m.tests)}")
            shutil.rmtree(root)
    print(f"{len(chosen) - survived} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
