"""Fine-tuning throughput counts each batch's real tokens (or samples), never its padding."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_known_flops import bench as load_bench
from test_training_math import Clock

from cudastack.environment import precision, suite, training
from cudastack.environment.context import Context

SEQ_LEN, BATCH = 32, 2  # the smoke profile's
# The real lengths of the rows of the bench's 4 fixed batches, chosen here in place of its
# long-tailed draw (within its MIN_LEN 16 .. seq_len): 36 + 49 + 40 + 47 = 172 real tokens in a
# pass over the batches, of the 4 x 2 x 32 = 256 positions the padded rows hold.
LENGTHS = [[16, 20], [32, 17], [24, 16], [19, 28]]
STEP_S = 0.25  # every step takes this long on the controlled clock: 1.0 s a window of 4 steps
WINDOWS = training.SCHEDULES["smoke"].windows


def run_on_clock(monkeypatch: pytest.MonkeyPatch, model: str, layout: str) -> dict[str, Any]:
    """The real bench (tiny model built from its config, fp32, smoke schedule) with the
    padded rows' lengths from LENGTHS and every training step lasting STEP_S."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the bench sets these: kept to this test
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    bench = load_bench("finetune")
    rows = iter(LENGTHS)

    def chosen_lengths(rng: Any, count: int, seq_len: int) -> list[int]:
        assert (count, seq_len) == (BATCH, SEQ_LEN)
        return next(rows)

    monkeypatch.setattr(bench, "_lengths", chosen_lengths)
    clock = Clock()
    monkeypatch.setattr(training, "time", clock)
    real_step = training.optimizer_step

    def timed_step(*args: Any, **kwargs: Any) -> training.Step:
        inner = real_step(*args, **kwargs)

        def step(batch: Any) -> Any:
            clock.advance(STEP_S)
            return inner(batch)

        return step

    monkeypatch.setattr(training, "optimizer_step", timed_step)
    ctx = Context(torch, torch.device("cpu"), suite.PROFILES["smoke"], None)
    tf32 = precision.tf32_flags(torch)
    try:
        metrics = bench.run(
            ctx,
            model=model,
            size="tiny",
            mode="full",
            layout=layout,
            precision="fp32",
            seq_len=SEQ_LEN,
            batch=BATCH,
            weights="",
        )
    finally:
        precision.restore_tf32_flags(torch, tf32)  # the precision's math flags: as the worker does
    return {m.name: (m.unit, m.values) for m in metrics}


# (model, layout, unit, rate): a window is one pass over the 4 batches in 4 x 0.25 = 1.0 s.
# GPT-2 padded: its 172 real tokens, not the 256 positions, so 172 tokens/s. GPT-2 packed:
# every position is a real token, 256 tokens/s. BERT (padded) counts samples, 4 x 2 = 8 a
# window, however long each row is.
@pytest.mark.parametrize(
    ("model", "layout", "unit", "rate"),
    [
        ("gpt2", "padded", "tokens/s", 172.0),
        ("gpt2", "packed", "tokens/s", 256.0),
        ("bert", "padded", "samples/s", 8.0),
    ],
)
def test_throughput_counts_real_tokens_per_step_over_the_step_time(
    monkeypatch, model, layout, unit, rate
):
    got = run_on_clock(monkeypatch, model, layout)
    assert got["items_per_s"] == (unit, [rate] * WINDOWS)
    assert got["latency"] == ("ms", [1e3 * STEP_S] * WINDOWS)  # the clock really timed the steps
