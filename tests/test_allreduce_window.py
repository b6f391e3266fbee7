"""All-reduce windows: every rank starts together, small sizes run enough calls per window,
and the bandwidths follow from known bytes and times."""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing
from test_training_math import Clock

from cudastack.environment import suite
from cudastack.environment import world as worldmod
from cudastack.environment.context import Context, Skip
from cudastack.environment.world import World

BENCH = suite.DEFAULT_BENCH_DIR / "allreduce.py"
PROFILE = "quick"
WARMUP, WINDOWS, AT_LEAST = 3, 5, 4  # the quick profile's CALLS, checked below
SIZE_MB = 1
DELAY_S = 0.4  # how late rank 1 arrives at each window


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("allreduce_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rank(rank: int, store: str, out: str, delay_s: float, min_window_s: float) -> None:
    """One of two gloo processes running the real bench; rank 1 may arrive late at each window."""
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=120)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timeout
    )
    world, finished = World(rank, 2, rank), False
    try:
        bench = load_bench()
        bench.MIN_WINDOW_S = min_window_s
        seen = {"late": 0, "calls": 0}
        # This process is the test's own and ends with it: patching torch here touches no other.
        all_reduce = torch.distributed.all_reduce

        def counted(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            if tensor.numel() * tensor.element_size() == SIZE_MB * 2**20:  # the bench's buffer
                seen["calls"] += 1
            return all_reduce(tensor, *args, **kwargs)

        torch.distributed.all_reduce = counted
        if rank == 1 and delay_s:
            fill = torch.Tensor.fill_

            def late_fill(self: Any, value: Any) -> Any:
                # The bench refills its buffer just before each window: arrive late there.
                seen["late"] += 1
                time.sleep(delay_s)
                return fill(self, value)

            torch.Tensor.fill_ = late_fill  # type: ignore[method-assign]
        ctx = Context(torch, torch.device("cpu"), suite.PROFILES[PROFILE], None, world=world)
        metrics = {m.name: m.values for m in bench.run(ctx, size_mb=SIZE_MB, dtype="fp32")}
        Path(f"{out}.{rank}").write_text(json.dumps({**metrics, **seen}))
        finished = True
    finally:
        worldmod.leave(torch, world, finished)  # the worker's own way out


def run_two_ranks(tmp_path: Path, delay_s: float, min_window_s: float) -> tuple[dict, dict]:
    out = str(tmp_path / "metrics")
    args = (str(tmp_path / "store"), out, delay_s, min_window_s)
    torch.multiprocessing.spawn(_rank, args=args, nprocs=2)
    return tuple(json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1))  # type: ignore


def test_a_rank_arriving_late_is_not_counted_in_the_window(tmp_path):
    assert load_bench().CALLS[PROFILE] == (WARMUP, WINDOWS, AT_LEAST)
    # MIN_WINDOW_S = 0: each window is the profile's AT_LEAST calls, so without a barrier
    # before it rank 0's window would include the 0.4 s wait for rank 1: >= 100 ms a call.
    main, late = run_two_ranks(tmp_path, DELAY_S, min_window_s=0.0)
    assert late["late"] == WINDOWS  # the delay really came before every window
    assert main["calls"] == 1 + WARMUP + AT_LEAST + WINDOWS * AT_LEAST  # check, first, windows
    assert len(main["latency"]) == WINDOWS
    # 1 MB over gloo takes about a millisecond here; half the delay's share is far above it.
    assert max(main["latency"]) < 1e3 * DELAY_S / AT_LEAST / 2, main["latency"]


def test_small_sizes_run_enough_calls_for_a_window_of_min_window_s(tmp_path):
    main, _ = run_two_ranks(tmp_path, 0.0, min_window_s=0.2)
    per_window = (main["calls"] - 1 - WARMUP - AT_LEAST) / WINDOWS
    assert per_window == int(per_window) and per_window > AT_LEAST
    # The count comes from a first window's pace: the windows then last about 0.2 s each (a
    # loaded 2-core machine's pace moves by 2x between windows).
    window_s = [per_window * ms / 1e3 for ms in main["latency"]]
    assert all(s > 0.05 for s in window_s), window_s


def test_calls_per_window_rule():
    bench = load_bench()
    for per_call in (1e-6, 2e-5, 3e-4, 1e-3, 7e-3):
        n = bench.calls_per_window(per_call, 1)
        assert n == min(bench.MAX_CALLS_PER_WINDOW, math.ceil(bench.MIN_WINDOW_S / per_call))
    assert bench.calls_per_window(1.0, 10) == 10  # never fewer than the profile's count
    assert bench.calls_per_window(0.0, 10) == bench.MAX_CALLS_PER_WINDOW


# Bandwidths on a controlled clock: each rank's clock moves only when an all-reduce moves bytes,
# by bytes / LINK_BYTES_PER_S, so a call of the 1 MiB buffer takes 2**20 / 2**30 s = 1/1024 s
# (binary fractions: every window's sum and mean below is exact).
LINK_BYTES_PER_S = 2**30
BUFFER_BYTES = SIZE_MB * 2**20  # MiB, as the bench's size_mb means


def _rank_on_link(rank: int, size: int, dtype: str, store: str, out: str, fault: str) -> None:
    """One of ``size`` gloo processes running the real bench (smoke profile) on its own Clock;
    ``fault`` ('first' or 'last') makes the first all-reduce wrong in that element only."""
    from cudastack.environment.context import CheckFailed

    threads, all_reduce = torch.get_num_threads(), torch.distributed.all_reduce
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=120)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=size, timeout=timeout
    )
    world, finished = World(rank, size, rank), False
    try:
        bench = load_bench()
        clock = Clock()
        bench.time = clock  # this rank's own module object: no other test sees it
        moved: list[int] = []

        def over_the_link(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            nbytes = tensor.numel() * tensor.element_size()
            moved.append(nbytes)
            clock.advance(nbytes / LINK_BYTES_PER_S)
            done = all_reduce(tensor, *args, **kwargs)
            if fault and len(moved) == 1:
                tensor[0 if fault == "first" else -1] += 1
            return done

        # Restored below: rank 0 runs in the test's own process.
        torch.distributed.all_reduce = over_the_link
        ctx = Context(torch, torch.device("cpu"), suite.PROFILES["smoke"], None, world=world)
        try:
            metrics = bench.run(ctx, size_mb=SIZE_MB, dtype=dtype)
            got: dict[str, Any] = {m.name: [m.unit, m.better, m.values] for m in metrics}
        except CheckFailed as exc:  # every rank checks the same values: all stop here
            got = {"check_failed": str(exc)}
        Path(f"{out}.{rank}").write_text(json.dumps({**got, "moved": moved}))
        finished = True
    finally:
        torch.distributed.all_reduce = all_reduce
        torch.set_num_threads(threads)
        worldmod.leave(torch, world, finished)  # the worker's own way out


def run_ranks_on_link(tmp_path: Path, size: int, dtype: str, fault: str = "") -> dict:
    """Rank 0's metrics and the bytes of each all-reduce it made; ranks 1.. in spawned
    processes, rank 0 in this one (the one that reports)."""
    out, store = str(tmp_path / "metrics"), str(tmp_path / "store")
    spawn = torch.multiprocessing.get_context("spawn")
    peers = [
        spawn.Process(target=_rank_on_link, args=(r, size, dtype, store, out, fault), daemon=True)
        for r in range(1, size)
    ]
    for peer in peers:
        peer.start()
    try:
        _rank_on_link(0, size, dtype, store, out, fault)
        for peer in peers:
            peer.join(timeout=120)
    finally:
        for peer in peers:
            if peer.is_alive():  # rank 0 failed: the peers would wait until the group's timeout
                peer.kill()
    assert [peer.exitcode for peer in peers] == [0] * (size - 1)
    return json.loads(Path(f"{out}.0").read_text())


# (processes, dtype, bus bandwidth in GB/s): algbw is bytes / time = the link's 2**30 B/s =
# 1.073741824 GB/s at every size; busbw is algbw x 2(n-1)/n (nccl-tests' PERFORMANCE.md):
# x 1 for 2 processes, x 1.5 for 4. bf16 and fp32 have 2- and 4-byte elements: bandwidth is
# in bytes, never in elements.
@pytest.mark.parametrize(
    ("size", "dtype", "busbw"), [(2, "fp32", 1.073741824), (4, "bf16", 1.610612736)]
)
def test_algbw_is_bytes_over_time_and_busbw_scales_it_by_2_n_minus_1_over_n(
    tmp_path, size, dtype, busbw
):
    got = run_ranks_on_link(tmp_path, size, dtype)
    warmup, windows, at_least = load_bench().CALLS["smoke"]
    # The buffer all-reduced is the 1 MiB asked for (the 8- and 24-byte ones: the slowest-rank
    # maxima of the first measurement and of the windows).
    assert set(got["moved"]) == {BUFFER_BYTES, 8, 8 * windows}
    # How many times: the check, the warm-up, the first measurement, then windows of as many
    # calls as last MIN_WINDOW_S = 10 ms at its 1/1024 s a call: ceil(10.24) = 11.
    calls = 1 + warmup + at_least + windows * 11
    assert got["moved"].count(BUFFER_BYTES) == calls
    latency = [1e3 * BUFFER_BYTES / LINK_BYTES_PER_S] * windows  # 0.9765625 ms
    assert got["latency"] == ["ms", "lower", latency]
    assert got["algbw_gbps"] == ["GB/s", "higher", pytest.approx([1.073741824] * windows)]
    assert got["gbps"] == ["GB/s", "higher", pytest.approx([busbw] * windows, rel=1e-12)]


@pytest.mark.parametrize(("fault", "first", "last"), [("first", 4.0, 3.0), ("last", 3.0, 4.0)])
def test_an_all_reduce_wrong_in_its_first_or_last_element_fails_its_check(
    tmp_path, fault, first, last
):
    # Two ranks fill their buffers with 1 and 2: every element must sum to 3. The check reads
    # the first element and the last (the two ends of a transfer split in chunks).
    got = run_ranks_on_link(tmp_path, 2, "fp32", fault)
    assert got["check_failed"] == (
        f"all-reduce gave {first} (first element) and {last} (last), expected 3.0"
    )
    assert got["moved"] == [BUFFER_BYTES]  # nothing timed after a failed check


def test_one_process_skips_naming_how_to_run_more():
    bench = load_bench()
    ctx = Context(torch, torch.device("cpu"), suite.PROFILES["smoke"], None, world=World())
    with pytest.raises(Skip) as skipped:
        bench.run(ctx, size_mb=SIZE_MB, dtype="fp32")
    assert str(skipped.value) == (
        "all-reduce needs more than one process: run with --nproc N (N >= 2)"
    )
