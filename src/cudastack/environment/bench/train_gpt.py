"""GPT-2-style causal LM training (transformers, built from config), in tokens/s and MFU."""

# Model FLOPs per token, as in PaLM (appendix B) and nanoGPT's estimate_mfu:
#   6 * N  +  12 * L * H * Q * T
# N: parameters without the position embeddings (the token embedding counts once: it is tied to
# the LM head, whose matmul it performs); 6N is 2 FLOPs per multiply-add for the forward and
# twice that for the backward. The second term is attention's two T x T matmuls per layer (L
# layers, H heads of size Q, sequence T), again x3 for forward + backward. MFU is that times
# tokens/s over the device's dense peak for the precision in use.
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from cudastack.environment.context import Context, Metric
    from cudastack.environment.training import Step

KIND = "workload"
HEADLINE = "items_per_s"  # tokens/s
DATA_PARALLEL = True
PARAMS = {
    "size": ["124m"],
    "seq_len": [1024],
    "precision": ["amp_bf16", "tf32", "fp32"],
    "compile": [True, False],
    "batch": [32],
}
PROFILES = {
    "smoke": {"size": ["tiny"], "seq_len": [32], "precision": ["amp_bf16"], "batch": [2]},
    "quick": {
        "size": ["tiny"],
        "seq_len": [128],
        "precision": ["fp32"],
        "compile": [False],
        "batch": [4],
    },
    "standard": {"precision": ["amp_bf16"]},
}
# (layers, heads, width, vocabulary). 50304 is GPT-2's 50257 padded to a multiple of 64, as
# nanoGPT and llm.c do for faster kernels; "tiny" keeps a CPU step well under a second.
SIZES = {"124m": (12, 12, 768, 50304), "tiny": (2, 4, 128, 8192)}
PEAK = {"amp_bf16": "bf16", "amp_fp16": "fp16", "tf32": "tf32", "fp32": "fp32"}
DISTINCT_BATCHES = 4


def flops_per_token(n_params: int, layers: int, heads: int, width: int, seq_len: int) -> int:
    return 6 * n_params + 12 * layers * heads * (width // heads) * seq_len


def run(
    ctx: Context, size: str, seq_len: int, precision: str, compile: bool, batch: int
) -> list[Metric]:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from a config: never touch the network
    from cudastack.environment import training
    from cudastack.environment.precision import autocast

    torch = ctx.torch
    transformers = ctx.require("transformers")
    amp = autocast(ctx, precision)
    training.check_compile(ctx, compile)
    layers, heads, width, vocab = SIZES[size]
    config = transformers.GPT2Config(
        n_layer=layers,
        n_head=heads,
        n_embd=width,
        vocab_size=vocab,
        n_positions=seq_len,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
    tokens = [
        torch.randint(0, vocab, (batch, seq_len), generator=gen).to(ctx.device)
        for _ in range(DISTINCT_BATCHES)
    ]
    next_batch = itertools.cycle(tokens).__next__

    def make_step(wrap: Callable[[Any], Any]) -> Step:
        model = transformers.GPT2LMHeadModel(config).to(ctx.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=ctx.is_cuda)
        model = wrap(model)
        forward = training.compiled(ctx, model, compile)
        return training.optimizer_step(
            lambda ids: forward(input_ids=ids, labels=ids).loss, opt, amp
        )

    # Counted from the config (tied embedding once, position embeddings left out).
    n = vocab * width + layers * (12 * width * width + 13 * width) + 2 * width
    return training.measure(
        ctx,
        training.Workload(
            make_step,
            next_batch,
            cycle=DISTINCT_BATCHES,
            items_per_step=batch * seq_len,
            unit="tokens/s",
            flops_per_item=flops_per_token(n, layers, heads, width, seq_len),
            peak=PEAK[precision],
        ),
    )
