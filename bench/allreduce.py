"""All-reduce bus bandwidth between data-parallel processes (NCCL on GPUs, gloo on CPUs)."""

# nccl-tests: algbw = bytes / time; busbw = algbw x 2(n-1)/n, the traffic each link carries in a
# ring all-reduce, comparable across process counts and with the link's peak. Each sample is a
# window of calls timed by the slowest rank, since the collective ends when its last rank does.
# The count of calls is fixed, not time-budgeted: every rank must make the same number of calls.
import time

DATA_PARALLEL = True
PARAMS = {"size_mb": [1, 16, 256, 1024], "dtype": ["fp32", "bf16"]}
PROFILES = {"quick": {"size_mb": [1, 16], "dtype": ["fp32"]}}
CALLS = {
    "quick": (3, 5, 4),
    "standard": (5, 10, 10),
    "full": (10, 20, 20),
}  # warm-up, windows, per window


def run(ctx, size_mb, dtype):
    from cudastack import world
    from cudastack.context import CheckFailed, Metric

    torch = ctx.torch
    w = ctx.world
    if not w.distributed:
        ctx.skip("all-reduce needs more than one process: run with --nproc N (N >= 2)")
    dist = torch.distributed
    dt = ctx.dtype(dtype)
    nbytes = size_mb * 2**20
    numel = nbytes // torch.tensor([], dtype=dt).element_size()
    buf = torch.full((numel,), float(w.rank + 1), dtype=dt, device=ctx.device)
    dist.all_reduce(buf)
    expected = w.size * (w.size + 1) / 2
    if float(buf[0]) != expected or float(buf[-1]) != expected:
        raise CheckFailed(f"all-reduce gave {float(buf[0])}, expected {expected}")
    warmup, windows, per_window = CALLS[ctx.profile.name]
    for _ in range(warmup):
        dist.all_reduce(buf)
    ctx.sync()
    seconds = []
    with ctx.sampler() as sampler:
        for _ in range(windows):
            buf.fill_(1.0)  # repeated sums would overflow to inf over a long profile
            ctx.sync()
            start = time.perf_counter()
            for _ in range(per_window):
                dist.all_reduce(buf)
            ctx.sync()
            seconds.append((time.perf_counter() - start) / per_window)
    seconds = world.max_over_ranks(torch, w, ctx.device, seconds)
    if not w.is_main:
        return []
    algbw = [nbytes / s / 1e9 for s in seconds]
    factor = 2 * (w.size - 1) / w.size
    return [
        Metric("gbps", "GB/s", "higher", [a * factor for a in algbw]),  # bus bandwidth
        Metric("algbw_gbps", "GB/s", "higher", algbw),
        Metric("latency", "ms", "lower", [1e3 * s for s in seconds]),
        *ctx.telemetry(sampler),
    ]
