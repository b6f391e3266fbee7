"""Launch overhead: wall time per tiny op (a 1-element add), eager and CUDA-graph replay, in us."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from cudastack.environment.context import Metric

if TYPE_CHECKING:
    from cudastack.environment.context import Context

KIND = "kernel"
HEADLINE = "latency_us"
PARAMS = {"mode": ["eager", "graph"], "ops": [1, 1000]}
PROFILES = {
    "smoke": {"ops": [10]},
    "quick": {"ops": [1, 100]},
    "full": {"ops": [1, 10, 100, 1000]},
}


def _graph(ctx: Context, eager: Callable[[], None]) -> Callable[[], Any]:
    """Capture ``eager`` (all its ops) into one CUDA graph; returns its replay."""
    torch = ctx.torch
    # Capture must not record first-use work (lazy init, allocator), so the ops run once on a
    # side stream first, as the torch.cuda.graph documentation does.
    side = torch.cuda.Stream(device=ctx.device)
    side.wait_stream(torch.cuda.current_stream(ctx.device))
    with torch.cuda.stream(side):
        eager()
    torch.cuda.current_stream(ctx.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        eager()
    return graph.replay


def run(ctx: Context, mode: str, ops: int) -> list[Metric]:
    torch = ctx.torch
    if mode == "graph":
        ctx.require_cuda("CUDA graph replay")
    total = torch.zeros(1, device=ctx.device)
    step = ctx.randn(1)

    def eager() -> None:
        # In place, so no allocation is timed: what is left is Python, the dispatcher and the
        # kernel launch, the cost a PyTorch program pays for every small op.
        for _ in range(ops):
            total.add_(step)

    call = _graph(ctx, eager) if mode == "graph" else eager
    total.zero_()
    call()
    ctx.sync()
    # Every op must have run once: the sum of `ops` fp32 adds of one value is within ops * 2^-24
    # of the exact product, so 1e-4 holds up to 1000 ops and a missing op (1e-3 off) fails.
    ctx.check_close(total, step.double() * ops, rtol=1e-4, atol=0, what="sum of the adds")
    # Host clock over a batch of `ops` launches and one synchronize at the end: a GPU runs each
    # tiny kernel faster than the host can issue the next, so the wall time is the issue cost.
    # One op a batch is a full round trip (launch + synchronize); 1000 ops amortise the
    # synchronize to ~0 and give the steady launch rate. A graph issues all ops in one launch,
    # so what is left is the GPU's own cost per graph node.
    # No L2 flush: the two operands are 4 bytes each and meant to stay cached.
    seconds = ctx.time(call, flush_l2=False, clock="host")
    return [Metric("latency_us", "us", "lower", [s / ops * 1e6 for s in seconds])]
