"""Copy bandwidth: device copy (bytes read + written) and host<->device copies, in GB/s."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from cudastack.environment.context import Context, Metric

KIND = "kernel"
HEADLINE = "gbps"
# % of achievable: of the best device copy; the host-link cases, stated against h2d, have none.
CEILING = "mem"
PARAMS = {
    "copy": ["d2d", "h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"],
    "size_mib": [256],
}
PROFILES = {
    "smoke": {"size_mib": [4]},
    "quick": {"size_mib": [64]},
    "full": {"size_mib": [16, 256, 1024]},
}

CHECK_SAMPLES = 2**20  # a copy is exact; a strided sample this big catches any chunk it missed


def _check(ctx: Context, dst: Tensor, src: Tensor) -> None:
    # Every step-th element: a copy that skipped or misplaced any run of `step` elements or more
    # (256 bytes at 256 MiB) is caught, without moving the whole buffer through fp64 on the host.
    step = max(1, src.numel() // CHECK_SAMPLES)
    ctx.check_close(dst[::step], src[::step], rtol=0, atol=0, what="copy")


def _flush_l2(ctx: Context, nbytes: int) -> bool:
    """Flush L2 before each copy only when the copy is small enough to be served from it."""
    # A copy several times larger than L2 streams through it: at most the tail of the previous
    # copy is still cached, and the flush would leave L2 full of dirty lines whose write-back
    # lands inside the timed copy. A copy that fits (full's 16 MiB) would be flattered without.
    if not ctx.is_cuda:
        return False
    props = ctx.torch.cuda.get_device_properties(ctx.device)
    l2 = getattr(props, "L2_cache_size", 0) or 128 * 2**20  # older torch: assume the largest
    return nbytes < 4 * l2


def _device_copy(ctx: Context, n: int) -> list[Metric]:
    src = ctx.randn(n)
    dst = ctx.torch.empty_like(src)

    def call() -> Tensor:
        return dst.copy_(src)

    call()
    _check(ctx, dst, src)
    # Every byte is read once and written once: the memory traffic is twice the buffer, which is
    # what the spec-sheet bandwidth counts (nvbandwidth's "bytes copied" would be half of it).
    nbytes = src.numel() * src.element_size()
    return ctx.measure(call, nbytes=2 * nbytes, peak="mem", flush_l2=_flush_l2(ctx, nbytes))


def run(ctx: Context, copy: str, size_mib: int) -> list[Metric]:
    torch = ctx.torch
    n = size_mib * 2**20 // 4  # float32 elements
    if copy == "d2d":
        # On a CPU run the device is host memory: this is a plain memory copy, counted the same.
        # The CPU timer flushes no cache, so a copy that fits the last-level cache measures it.
        return _device_copy(ctx, n)
    direction, memory = copy.split("_")
    # On a CPU run host and device memory are the same: there is no link to measure.
    ctx.require_cuda(f"{direction} copy from {memory} host memory")
    pinned = memory == "pinned"
    host = torch.empty(n, dtype=torch.float32, pin_memory=pinned)
    dev = ctx.randn(n)
    if direction == "h2d":
        host.copy_(dev)  # random contents for the check; dev is overwritten by every call
        dev.zero_()
        src, dst = host, dev
    else:
        src, dst = dev, host

    def call() -> Tensor:
        # Pinned memory is copied by DMA, asynchronously to the host; pageable memory is staged
        # through a pinned buffer by the host, and copy_ returns only once that is done.
        return dst.copy_(src, non_blocking=pinned)

    call()
    ctx.sync()
    _check(ctx, dst, src)
    # Each byte crosses the link once, in one direction: bytes copied, against the per-direction
    # link peak. Pinned: CUDA events time the DMA itself, as nvbandwidth does (L2 plays no part,
    # so no flush). Pageable: the host does the staging with its own memcpys and is blocked until
    # they are done, so the cost is the host's: the host clock times the call up to a synchronize,
    # which is what a program using pageable memory waits for.
    return ctx.measure(
        call, nbytes=n * 4, peak="h2d", flush_l2=False, clock="device" if pinned else "host"
    )
