"""JPEG decode + Resize + ToTensor throughput of an ImageFolder DataLoader alone, in img/s."""

# The input pipeline without a model: if this rate is below a training case's img/s with the
# same loader settings, that training case is input-bound, not GPU-bound. On a GPU each batch is
# also copied to the device (the copy pin_memory exists to speed up).
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cudastack.environment.context import Context, Metric

KIND = "workload"
HEADLINE = "items_per_s"  # img/s
PARAMS = {
    "num_workers": [0, 2, 4, 8, 16],
    "pin_memory": [False, True],
    "batch": [64],
    "image": [224],
}
PROFILES = {
    "smoke": {"num_workers": [0, 2], "pin_memory": [False, True], "batch": [4], "image": [32]},
    "quick": {"num_workers": [0, 2], "pin_memory": [False], "batch": [16], "image": [64]},
}
EPOCHS = {"smoke": 3, "quick": 5, "standard": 8, "full": 20}  # one throughput sample per epoch


def run(ctx: Context, num_workers: int, pin_memory: bool, batch: int, image: int) -> list[Metric]:
    from cudastack.environment import jpegs
    from cudastack.environment.context import Metric

    # Sixteen batches an epoch: long enough that worker start-up is not what is timed.
    batches = jpegs.image_batches(ctx, 16, image, batch, num_workers, pin_memory)

    def epoch() -> int:
        n = 0
        for x, _ in batches:
            x = x.to(ctx.device, non_blocking=pin_memory)
            n += x.shape[0]
        ctx.sync()
        return n

    epoch = ctx.slowed(epoch, clock="host")  # the known slowdown `compare` is tested against
    # Warm-up: starts the (persistent) workers and fills the page cache. Its first batch is
    # checked against an independent decode of its files before anything is timed.
    for i, (x, y) in enumerate(batches):
        if i == 0:
            jpegs.check_batch(ctx, x, y, Path(batches.dataset.root), batch, image)
        x.to(ctx.device, non_blocking=pin_memory)
    ctx.sync()
    seconds, items = [], []
    with ctx.sampler() as sampler:
        for _ in range(EPOCHS[ctx.profile.name]):
            start = time.perf_counter()
            items.append(epoch())
            seconds.append(time.perf_counter() - start)
    return [
        Metric("items_per_s", "img/s", "higher", [n / s for n, s in zip(items, seconds)]),
        Metric("latency", "ms", "lower", [1e3 * s * batch / n for n, s in zip(items, seconds)]),
        *ctx.telemetry(sampler, sum(items)),
    ]
