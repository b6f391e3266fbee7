"""Harness overhead: gemm fp32 n=2048 as the suite reports it vs a bare torch.mm loop.

Both run in this process with the same thread count, interleaved in rounds so that drift on a
shared machine hits both alike. Run: ``.venv/bin/python tests/perf/gemm_overhead.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

from cudastack.environment.context import Context
from cudastack.environment.envinfo import usable_cores
from cudastack.environment.suite import DEFAULT_BENCH_DIR, PROFILES


def bare_tflops(n: int, seconds: float) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=out)
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e12


def harness_tflops(gemm, n: int) -> float:
    ctx = Context(torch, torch.device("cpu"), PROFILES["standard"], None)
    metrics = {m.name: m for m in gemm.run(ctx, dtype="fp32", n=n)}
    return statistics.median(metrics["tflops"].values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=usable_cores())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("gemm", DEFAULT_BENCH_DIR / "gemm.py")
    gemm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gemm)
    harness, bare = [], []
    for _ in range(args.rounds):
        harness.append(harness_tflops(gemm, args.n))
        bare.append(bare_tflops(args.n, PROFILES["standard"].budget_s))
    h, b = statistics.median(harness), statistics.median(bare)
    print(f"gemm fp32 n={args.n}, {args.threads} threads, {args.rounds} interleaved rounds")
    print(f"  harness median TFLOP/s: {h:.4f}  rounds {[round(x, 4) for x in harness]}")
    print(f"  bare    median TFLOP/s: {b:.4f}  rounds {[round(x, 4) for x in bare]}")
    print(f"  harness / bare = {h / b:.3f}")


if __name__ == "__main__":
    main()
