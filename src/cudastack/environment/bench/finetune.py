"""Fine-tuning a BERT-class classifier and a GPT-2-class LM: full or LoRA, padded or packed."""

# Models are built from a transformers config, or loaded from weights=DIR (a local folder in the
# Hugging Face format, e.g. `cudastack run --set weights=/models/bert-base-uncased`); the hub is
# never contacted. Sequence lengths follow a long-tailed (log-uniform) spread like instruction
# data: padding every row to seq_len wastes most of each row, packing fills rows with real
# tokens, which is why the layout changes tokens/s several-fold and is a parameter here.
from __future__ import annotations

import itertools
import json
import math
import os
import random
from typing import TYPE_CHECKING, Any, Callable, NoReturn

if TYPE_CHECKING:
    from torch import Tensor

    from cudastack.environment.context import Context, Metric
    from cudastack.environment.training import Step

KIND = "workload"
HEADLINE = "items_per_s"  # tokens/s (GPT-2) or samples/s (BERT)
PARAMS = {
    "model": ["bert", "gpt2"],
    "size": ["base"],
    "mode": ["full", "lora"],
    "layout": ["padded", "packed"],
    "precision": ["amp_bf16"],
    "seq_len": [512],
    "batch": [16],
    "weights": [""],
}
PROFILES = {
    "smoke": {"size": ["tiny"], "seq_len": [32], "batch": [2]},
    "quick": {"size": ["tiny"], "precision": ["fp32"], "seq_len": [128], "batch": [4]},
}
# (layers, heads, width, vocabulary): BERT-base and GPT-2 124M, or a tiny CPU-sized variant.
SIZES = {
    ("bert", "base"): (12, 12, 768, 30522),
    ("gpt2", "base"): (12, 12, 768, 50304),
    ("bert", "tiny"): (2, 2, 128, 8192),
    ("gpt2", "tiny"): (2, 4, 128, 8192),
}
DISTINCT_BATCHES = 4
MIN_LEN = 16
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
LR = {"full": 1e-4, "lora": 2e-3}  # LoRA's few parameters take a larger step


def _check_weights(ctx: Context, weights: str) -> None:
    """A local Hugging Face folder: config.json and a weights file, else a skipped row."""
    if not os.path.isdir(weights):
        ctx.skip(f"weights={weights}: no such folder; give a local Hugging Face model folder")
    names = set(os.listdir(weights))
    if "config.json" not in names:
        ctx.skip(f"weights={weights}: no config.json there; not a Hugging Face model folder")
    if not names & {
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    }:
        ctx.skip(f"weights={weights}: no model.safetensors or pytorch_model.bin there")


def _check_model_type(ctx: Context, weights: str, model: str) -> None:
    """The folder's model must be this case's: BERT weights under model=gpt2 would be measured
    and recorded as GPT-2. config.json's model_type says which it is, without loading it."""
    try:
        with open(os.path.join(weights, "config.json"), encoding="utf-8") as f:
            held = json.load(f).get("model_type", "")
    except (OSError, ValueError, AttributeError) as exc:
        _load_failed(ctx, weights, model, exc)
    if held != model:
        what = f"a {held} model" if held else "a model with no model_type in config.json"
        ctx.skip(f"weights={weights} holds {what}; this case is {model}")


def _load_failed(ctx: Context, weights: str, model: str, exc: Exception) -> NoReturn:
    # A malformed folder is a row with the reason, not a crash.
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    ctx.skip(f"weights={weights}: cannot load it as {model}: {first}")


def _config(ctx: Context, model: str, size: str, weights: str) -> Any:
    """The model's config: read from weights=DIR, else built for the size."""
    # Through ctx.require (run has already): its config classes take their fields as **kwargs,
    # which transformers' own type hints do not say in every version.
    tf = ctx.require("transformers")

    if weights:
        _check_weights(ctx, weights)
        _check_model_type(ctx, weights, model)
        try:
            return tf.AutoConfig.from_pretrained(weights, local_files_only=True, num_labels=2)
        except Exception as exc:
            _load_failed(ctx, weights, model, exc)
    layers, heads, width, vocab = SIZES[(model, size)]
    if model == "bert":
        config = tf.BertConfig(
            num_hidden_layers=layers,
            num_attention_heads=heads,
            hidden_size=width,
            intermediate_size=4 * width,
            vocab_size=vocab,
            num_labels=2,
        )
    else:
        config = tf.GPT2Config(
            n_layer=layers,
            n_head=heads,
            n_embd=width,
            vocab_size=vocab,
            bos_token_id=0,
            eos_token_id=0,
        )
    config._attn_implementation = "sdpa"
    return config


def _model(ctx: Context, model: str, config: Any, weights: str) -> Any:
    tf = ctx.require("transformers")
    head = tf.AutoModelForSequenceClassification if model == "bert" else tf.AutoModelForCausalLM
    if not weights:
        return head.from_config(config)
    try:
        return head.from_pretrained(weights, config=config, local_files_only=True)
    except Exception as exc:
        _load_failed(ctx, weights, model, exc)


def _lengths(rng: random.Random, count: int, seq_len: int) -> list[int]:
    lo, hi = math.log(MIN_LEN), math.log(seq_len)
    return [int(math.exp(rng.uniform(lo, hi))) for _ in range(count)]


def _batches(
    ctx: Context, model: str, layout: str, seq_len: int, batch: int, vocab: int
) -> list[tuple[dict[str, Tensor], int]]:
    """Fixed batches as (inputs dict, real tokens); padding id 0 is masked out of attention and
    of the loss, so padded and packed rows train on the same kind of tokens."""
    torch = ctx.torch
    rng = random.Random(ctx.seed)
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
    out = []
    for _ in range(DISTINCT_BATCHES):
        ids = torch.randint(1, vocab, (batch, seq_len), generator=gen)
        mask = torch.ones(batch, seq_len, dtype=torch.long)
        if layout == "padded":
            for row, n in enumerate(_lengths(rng, batch, seq_len)):
                ids[row, n:] = 0
                mask[row, n:] = 0
        # packed: each row is several sequences end to end, every position a real token.
        inputs = {"input_ids": ids, "attention_mask": mask}
        if model == "bert":
            inputs["labels"] = torch.randint(0, 2, (batch,), generator=gen)
        else:
            inputs["labels"] = ids.masked_fill(mask == 0, -100)
        out.append(({k: v.to(ctx.device) for k, v in inputs.items()}, int(mask.sum())))
    return out


def run(
    ctx: Context,
    model: str,
    size: str,
    mode: str,
    layout: str,
    precision: str,
    seq_len: int,
    batch: int,
    weights: str,
) -> list[Metric]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from cudastack.environment import training
    from cudastack.environment.context import Metric
    from cudastack.environment.precision import autocast

    torch = ctx.torch
    ctx.require("transformers").logging.set_verbosity_error()
    if mode == "lora":
        peft = ctx.require("peft", " (needed for mode=lora)")
    if model == "bert" and layout == "packed":
        ctx.skip(
            "packing several sequences into one row needs per-sequence attention masks, which "
            "BERT sequence classification does not take; layout=padded measures BERT"
        )
    amp = autocast(ctx, precision)
    config = _config(ctx, model, size, weights)
    vocab = config.vocab_size
    max_pos = getattr(config, "max_position_embeddings", None) or config.n_positions
    if seq_len > max_pos:
        ctx.skip(f"seq_len={seq_len} is longer than this model's {max_pos} positions")
    batches = _batches(ctx, model, layout, seq_len, batch, vocab)
    next_batch = itertools.cycle([inputs for inputs, _ in batches]).__next__
    trainable = []

    def make_step(wrap: Callable[[Any], Any]) -> Step:
        net = _model(ctx, model, config, weights)
        if mode == "lora":
            task = "SEQ_CLS" if model == "bert" else "CAUSAL_LM"
            # GPT-2 stores its projections as Conv1D (weights transposed): LoRA must know.
            conv1d = net.config.model_type == "gpt2"
            lora = peft.LoraConfig(task_type=task, fan_in_fan_out=conv1d, **LORA)
            net = peft.get_peft_model(net, lora)
        net = net.to(ctx.device)
        params = [p for p in net.parameters() if p.requires_grad]
        trainable.append(sum(p.numel() for p in params))
        opt = torch.optim.AdamW(params, lr=LR[mode], fused=ctx.is_cuda)
        net = wrap(net)
        return training.optimizer_step(lambda inputs: net(**inputs).loss, opt, amp)

    tokens = sum(n for _, n in batches) // DISTINCT_BATCHES
    # Throughput counts real tokens (the causal LM) or samples (the classifier), never padding.
    items, unit = (batch, "samples/s") if model == "bert" else (tokens, "tokens/s")
    metrics = training.measure(
        ctx, training.Workload(make_step, next_batch, DISTINCT_BATCHES, items, unit)
    )
    return [*metrics, Metric("trainable_params", "count", "lower", [float(trainable[-1])])]
