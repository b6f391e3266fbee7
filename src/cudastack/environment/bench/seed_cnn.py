"""Small CNN trained with Adam on a folder of real JPEG files through a DataLoader, in img/s."""

# The first model of a practitioner's guide: conv -> ReLU -> max-pool -> two linear layers,
# cross-entropy and Adam, fed by ImageFolder + Resize + ToTensor + DataLoader from files on disk.
# The data-wait share of each window tells an input-bound step from a compute-bound one.
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import Tensor

    from cudastack.environment.context import Context, Metric
    from cudastack.environment.training import Step

KIND = "workload"
HEADLINE = "items_per_s"  # img/s
PARAMS = {
    "num_workers": [0, 4, 8],
    "pin_memory": [False, True],
    "batch": [64],
    "image": [224],
}
PROFILES = {
    "smoke": {"num_workers": [2], "pin_memory": [False, True], "batch": [4], "image": [32]},
    "quick": {"num_workers": [0, 2], "pin_memory": [False], "batch": [16], "image": [64]},
}
BATCHES_PER_EPOCH = 4  # every window is one epoch: the same four batches each time


def run(ctx: Context, num_workers: int, pin_memory: bool, batch: int, image: int) -> list[Metric]:
    from cudastack.environment import jpegs, training

    torch = ctx.torch
    batches = jpegs.image_batches(ctx, BATCHES_PER_EPOCH, image, batch, num_workers, pin_memory)
    # Data wait is the time the loader keeps the step waiting; the copy to the device belongs
    # to the step (from pageable memory it also waits for the GPU's queue, which is not data).
    next_batch = jpegs.forever(batches).__next__

    def to_device(t: Tensor) -> Tensor:
        return t.to(ctx.device, non_blocking=pin_memory)  # asynchronous from pinned memory

    def make_step(wrap: Callable[[Any], Any]) -> Step:
        nn = torch.nn
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * (image // 2) ** 2, 128),
            nn.ReLU(),
            nn.Linear(128, jpegs.CLASSES),
        ).to(ctx.device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net = wrap(net)
        loss_fn = nn.CrossEntropyLoss()
        return training.optimizer_step(
            lambda b: loss_fn(net(to_device(b[0])), to_device(b[1])), opt
        )

    # The loader's worker processes end with it, when this case's objects are collected.
    return training.measure(
        ctx,
        training.Workload(
            make_step, next_batch, cycle=len(batches), items_per_step=batch, unit="img/s"
        ),
    )
