"""Data-parallel processes under torchrun: this process's rank, the world's size, its backend.

Environment side: standard library and torch only. A plain run is a world of one.
"""

from __future__ import annotations

import datetime
import gc
import inspect
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    """Where this process stands among the data-parallel processes torchrun started."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the results; the other ranks only take part in the collectives."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for each process it starts."""
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def backend(device: Any) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(torch: Any, world: World, device: Any, wait_s: float) -> None:
    """Join the process group. ``wait_s`` bounds how long a collective may wait for the other
    ranks: longer than a case, since ranks wait while rank 0 measures its one-process baseline
    (NCCL's default is 10 minutes)."""
    if world.distributed and not torch.distributed.is_initialized():
        timeout = datetime.timedelta(seconds=wait_s)
        torch.distributed.init_process_group(
            backend(device), timeout=timeout, **init_options(torch, device)
        )


def init_options(torch: Any, device: Any) -> dict[str, Any]:
    """``device_id`` for a GPU where init_process_group takes it (torch >= 2.3): the process
    group is bound to this rank's GPU from the start, so neither NCCL's first collective nor
    barrier() has to infer which GPU a rank uses."""
    if device.type != "cuda":
        return {}
    params = inspect.signature(torch.distributed.init_process_group).parameters
    return {"device_id": device} if "device_id" in params else {}


def leave(torch: Any, world: World, finished: bool) -> None:
    """Leave the process group, so that no gloo or NCCL thread outlives it into interpreter exit.

    Objects in reference cycles (a DDP model's reducer holds the group) can keep the group alive
    past ``destroy_process_group`` until the interpreter's own teardown, which then aborted
    (SIGABRT, "terminate called without an active exception") in about one two-rank gloo run
    in twelve on a loaded 2-core machine; collecting the cycles first made 30 runs in a row
    clean. After a clean finish every rank also waits for the others, so nobody
    tears down while a peer completes the last collective; after a failure nobody waits (the
    peers may never arrive).
    """
    if not world.distributed:
        return
    if finished:
        torch.distributed.barrier()
    gc.collect()
    torch.distributed.destroy_process_group()


def barrier(torch: Any, world: World) -> None:
    if world.distributed:
        torch.distributed.barrier()


def max_over_ranks(torch: Any, world: World, device: Any, values: list[float]) -> list[float]:
    """Element-wise maximum across ranks: a data-parallel step lasts as long as its slowest rank."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [float(v) for v in t.cpu()]
