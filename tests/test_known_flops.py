"""Every FLOP and byte count the benches report, end to end against an independent oracle."""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any, Optional

import pytest
import torch
from conftest import per_module
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cudastack.environment.context import Context, Metric
from cudastack.environment.suite import DEFAULT_BENCH_DIR, Profile

pytestmark = pytest.mark.integration

# Three timed calls after two warm-up calls, whatever they take: the counts, not the rates, are
# under test here. Named "quick" because training looks its schedule up by the profile's name.
PROFILE = Profile("quick", 0.0, 0.0, 0.0, 3, 3, 1.0, 60.0)
EXACT = 1e-9  # a recovered count differs from the one the bench passed only by float rounding


def bench(name: str) -> ModuleType:
    """Import a shipped bench file as the worker does: by path, not as a package."""
    spec = importlib.util.spec_from_file_location(
        f"known_flops_{name}", DEFAULT_BENCH_DIR / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def context(peaks: Optional[dict[str, float]] = None) -> Context:
    return Context(torch, torch.device("cpu"), PROFILE, peaks)


def per_call(metrics: list[Metric], rate: str) -> list[float]:
    """The FLOPs (``tflops``) or bytes (``gbps``) per call the bench passed to ``measure``.

    ``measure`` derives latency and rate from the same seconds of each sample, so
    rate x latency gives back, sample by sample, exactly the count the bench passed."""
    by_name = {m.name: m.values for m in metrics}
    scale = {"tflops": 1e12, "gbps": 1e9}[rate]
    counts = [r * scale * ms * 1e-3 for r, ms in zip(by_name[rate], by_name["latency"])]
    assert len(counts) == PROFILE.min_reps
    return counts


def intensity(metrics: list[Metric]) -> float:
    """The case's one ``flop_per_byte`` value: the FLOPs over the bytes it passed."""
    (value,) = next(m.values for m in metrics if m.name == "flop_per_byte")
    return value


def every(value: float, samples: list[float], rel: float = EXACT) -> Any:
    """``value`` for each sample, to compare a list of per-sample counts with."""
    return pytest.approx([value] * len(samples), rel=rel)


def counted(fn: Any) -> int:
    """torch's own FLOP count of whatever ``fn`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# Sizes below are small, and distinct where they multiply (batch 2, heads 3, ...), so that a
# factor left out or counted twice changes the count.


# tf32 and fp8 need a GPU; fp8's path reports the same gemm.flops(n) as these.
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_gemm_reports_torch_count_of_one_mm(dtype):
    n = 48
    reported = per_call(bench("gemm").run(context(), dtype, n), "tflops")
    # The oracle on meta tensors: shapes only, no arithmetic. FlopCounterMode counts 2 FLOPs per
    # multiply-add (m * n * 2k), the convention of the bench's 2 n^3 too.
    a, b = (torch.empty(n, n, device="meta") for _ in "ab")
    oracle = counted(lambda: torch.mm(a, b))
    assert reported == every(oracle, reported)


@pytest.mark.parametrize(("dtype", "itemsize"), [("fp32", 4), ("fp16", 2), ("bf16", 2)])
def test_gemm_counts_its_operands_read_and_its_product_written_once(dtype, itemsize):
    n = 48
    metrics = bench("gemm").run(context(), dtype, n)
    # A and B read once, C written once: three n x n matrices of the dtype.
    assert per_call(metrics, "gbps") == every(3 * n * n * itemsize, per_call(metrics, "gbps"))
    # 2 n^3 FLOP over 3 n^2 elements: 2n / 3 FLOP per element, over its bytes.
    assert intensity(metrics) == pytest.approx(2 * n / (3 * itemsize), rel=EXACT)


def test_gemm_fp8_counts_one_byte_operands_and_a_bf16_product():
    # The fp8 path needs a GPU: its count is checked on its own. Two 1-byte operands read, the
    # bf16 output (2 bytes) written.
    assert bench("gemm").nbytes(64, 1, 2) == 64 * 64 * (1 + 1 + 2)


# Layers given as conv.LAYERS gives them (in channels, out channels, kernel, stride, input side)
# but thousands of times cheaper than ResNet's, so the bench's fp64 checks and timing take
# milliseconds. The count is one expression for every layer; these cover what it depends on:
# kernels 1, 3 and 7, strides 1 and 2, odd and even sides, as the shipped layers have. Not 6 -> 4
# channels at 1x1 stride 2: torch 2.14.1's channels_last weight gradient there is wrong on an
# AVX2 CPU about every other call (up to 7x off fp64), which the bench's check rightly refuses.
TINY_LAYERS = {
    "tiny_3x3": (3, 5, 3, 1, 9),
    "tiny_1x1_s2": (16, 8, 1, 2, 10),
    "tiny_7x7_s2": (3, 8, 7, 2, 11),
}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("layer", list(TINY_LAYERS))
def test_conv_reports_torch_count_of_one_call(layer, direction, layout):
    conv = bench("conv")
    conv.LAYERS.update(TINY_LAYERS)  # this module object is this test's own
    batch = 2
    reported = per_call(
        conv.run(context(), layer, direction, layout, False, "fp32", batch), "tflops"
    )
    # The layer's geometry as the bench documents it: padding kernel // 2, no bias; torch works
    # out the output side.
    c_in, c_out, k, stride, size = conv.LAYERS[layer]
    bwd = direction == "fwd_bwd"
    x = torch.empty(batch, c_in, size, size, device="meta", requires_grad=bwd)
    w = torch.empty(c_out, c_in, k, k, device="meta", requires_grad=bwd)

    def call():
        out = torch.nn.functional.conv2d(x, w, None, stride, k // 2)
        # FlopCounterMode counts convolution_backward as one convolution per gradient asked
        # for: input and weight, as the bench's step computes them (so 3x the forward).
        return torch.autograd.grad(out, (x, w), torch.ones_like(out)) if bwd else out

    assert reported == every(counted(call), reported)


@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("layer", list(TINY_LAYERS))
def test_conv_counts_each_input_read_and_each_output_written_once(layer, direction):
    conv = bench("conv")
    conv.LAYERS.update(TINY_LAYERS)
    batch, bwd = 2, direction == "fwd_bwd"
    metrics = conv.run(context(), layer, direction, "nchw", False, "fp32", batch)
    c_in, c_out, k, stride, size = conv.LAYERS[layer]
    x = torch.empty(batch, c_in, size, size, device="meta")
    w = torch.empty(c_out, c_in, k, k, device="meta")
    y = torch.nn.functional.conv2d(x, w, None, stride, k // 2)  # torch works out its shape
    tensors = (x.numel() + w.numel() + y.numel()) * 4  # fp32
    # Forward: x and w read, y written. Backward also reads dy (y's shape) and writes dx and dw
    # (x's and w's shapes): each of the three sizes twice.
    expected = 2 * tensors if bwd else tensors
    assert per_call(metrics, "gbps") == every(expected, per_call(metrics, "gbps"))
    flops = per_call(metrics, "tflops")[0]
    assert intensity(metrics) == pytest.approx(flops / expected, rel=1e-6)


def fused_attention_flops(batch: int, heads: int, seq: int, head_dim: int, bwd: bool) -> int:
    """torch's count for one call of its fused (flash) attention kernel, on meta tensors.

    Counted as a fused kernel does the work: Q K^T and P V forward (4 S^2 D per head), and five
    matmuls backward, Q K^T recomputed (2.5x forward): the flash-attention convention the bench
    uses for every backend. (The math backend's unfused backward does four, not five; the bench
    counts the operation, not one backend's way of doing it, so rates compare across backends.)
    FlopCounterMode ignores is_causal: this is the full, unmasked count."""
    q, k, v = (
        torch.empty(batch, heads, seq, head_dim, device="meta", requires_grad=bwd) for _ in "qkv"
    )

    def call():
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
        return torch.autograd.grad(out, (q, k, v), torch.ones_like(out)) if bwd else out

    return counted(call)


def unmasked_scores(seq: int) -> int:
    """How many score entries sdpa's causal mask keeps, read off a real call on this CPU.

    With V the identity, the output is the attention matrix P itself; every kept entry of P is
    positive (softmax of random scores does not underflow) and every masked one is zero."""
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, seq, seq, generator=gen) for _ in "qk")
    eye = torch.eye(seq).view(1, 1, seq, seq)
    with sdpa_kernel([SDPBackend.MATH]):
        p = torch.nn.functional.scaled_dot_product_attention(q, k, eye, is_causal=True)
    return int((p > 0).sum())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_sdpa_counts_q_k_v_and_its_output_once_and_backward_s_four_more(direction, causal):
    batch, heads, seq, head_dim = 2, 3, 40, 16
    bwd = direction == "fwd_bwd"
    metrics = bench("sdpa").run(
        context(), "math", direction, causal, "fp32", batch, heads, seq, head_dim
    )
    tensor = batch * heads * seq * head_dim * 4  # one of Q, K, V, O in fp32
    # Forward reads Q, K, V and writes O; backward reads dO and writes dQ, dK, dV. The causal
    # mask skips FLOPs, not tensors.
    expected = (8 if bwd else 4) * tensor
    assert per_call(metrics, "gbps") == every(expected, per_call(metrics, "gbps"))
    flops = per_call(metrics, "tflops")[0]
    assert intensity(metrics) == pytest.approx(flops / expected, rel=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_sdpa_reports_fused_attention_count_halved_when_causal(direction, causal):
    batch, heads, seq, head_dim = 2, 3, 40, 16
    bwd = direction == "fwd_bwd"
    reported = per_call(
        bench("sdpa").run(
            context(), "math", direction, causal, "fp32", batch, heads, seq, head_dim
        ),
        "tflops",
    )
    full = fused_attention_flops(batch, heads, seq, head_dim, bwd)
    if not causal:
        assert reported == every(full, reported)
        return
    # Causal: every matmul touches only the kept scores. The real mask keeps S(S+1)/2 of S^2
    # (the lower triangle with its diagonal), which the next line checks rather than assumes.
    kept = unmasked_scores(seq)
    assert kept == seq * (seq + 1) // 2
    # Conventions: FlopCounterMode counts the full S x S (it ignores is_causal); the exact causal
    # count is that times the kept fraction, S(S+1)/2 / S^2 = 1/2 + 1/(2S); the bench counts the
    # 1/2 and leaves out the diagonal's 1/(2S), as its comment says. So it must be the exact
    # count less 1/(2S) of the full one, which is within 1/S of the exact count.
    exact = full * kept / seq**2
    assert reported == every(exact - full / (2 * seq), reported)
    assert reported == every(exact, reported, 1 / seq)


@pytest.fixture(scope=per_module)
def gpt():
    """One train_gpt case at tiny sizes, its reported FLOPs per token, and the same model."""
    import transformers

    module = bench("train_gpt")
    seq_len, batch, peak = 32, 1, 0.5  # peak: a made-up fp32 spec, in TFLOP/s, to get an MFU
    metrics = {
        m.name: m.values
        for m in module.run(context({"fp32": peak}), "tiny", seq_len, "fp32", False, batch)
    }
    per_token = [t * 1e12 / r for t, r in zip(metrics["tflops"], metrics["items_per_s"])]
    from_mfu = [m / 100 * peak * 1e12 / r for m, r in zip(metrics["mfu"], metrics["items_per_s"])]
    assert from_mfu == pytest.approx(per_token, rel=EXACT)  # MFU rests on the same count
    layers, heads, width, vocab = module.SIZES["tiny"]
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
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    return per_token, model, seq_len, batch


def test_train_gpt_tokens_flops_match_torch_count_of_a_training_step(gpt):
    per_token, model, seq_len, batch = gpt
    ids = torch.randint(
        0, model.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0)
    )

    def step():
        model(input_ids=ids, labels=ids).loss.backward()

    # The math backend spells attention out as bmm's, which FlopCounterMode counts (the CPU's
    # fused kernel it does not): Q K^T and P V over the full T x T, causal mask or not, forward
    # and their four gradient matmuls backward, 12 T d per token and layer as the bench's
    # 12 L H Q T. Every linear (and the tied LM head) is 2 FLOPs per multiply-add forward and
    # twice that backward, the bench's 6 per weight.
    with sdpa_kernel([SDPBackend.MATH]):
        oracle = counted(step) / (batch * seq_len)
    # The expected gap: 6N counts every parameter as if it sat in a matmul, but biases and layer
    # norm gains are elementwise work FlopCounterMode does not count (nor layer norm, softmax,
    # GELU, the loss: neither side counts those). The embedding lookup is no matmul on either
    # side: its weight counts once in N, through the tied LM head's matmul.
    elementwise = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert per_token == every(oracle + 6 * elementwise, per_token)
    assert all(0 <= (f - oracle) / f < 0.01 for f in per_token)  # that gap is well under 1 %


def test_train_gpt_n_is_parameters_less_position_embeddings(gpt):
    per_token, model, seq_len, _ = gpt
    config = model.config
    # Attention's share, PaLM's 12 L H Q T with Q = width / heads (Q K^T and P V, 2 FLOPs per
    # multiply-add, x3 for forward and backward), taken off leaves 6N.
    attention = 12 * config.n_layer * config.n_embd * seq_len
    n_from_bench = [(f - attention) / 6 for f in per_token]
    # parameters() lists the tied embedding / LM head weight once.
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    assert n_from_bench == every(n, n_from_bench)


def test_infer_precision_reports_torch_count_of_one_forward():
    module = bench("infer_precision")
    layers, width, seq_len, batch = 2, 128, 16, 3
    metrics = module.run(context(), "fp32", layers, width, seq_len, batch)
    reported = per_call(metrics, "tflops")
    model = module._encoder(torch, layers, width).eval()
    x = torch.zeros(batch, seq_len, width)  # a count depends on shapes, not values
    with sdpa_kernel([SDPBackend.MATH]), torch.inference_mode():
        # Linears count 2 FLOPs per multiply-add (their bias adds are not counted, nor by the
        # bench); attention's Q K^T and P V are bmm's under the math backend.
        oracle = counted(lambda: model(x))
    assert reported == every(oracle, reported)


def test_bandwidth_device_copy_counts_bytes_read_plus_written():
    size_mib = 1
    reported = per_call(bench("bandwidth").run(context(), "d2d", size_mib), "gbps")
    # A copy of 1 MiB reads 1 MiB and writes 1 MiB.
    assert reported == every(2 * size_mib * 2**20, reported)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("op", ["softmax", "layer_norm", "gelu"])
def test_elementwise_counts_input_read_and_output_written(op, dtype):
    rows, cols = 16, 40
    reported = per_call(bench("elementwise").run(context(), op, dtype, rows, cols), "gbps")
    itemsize = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]
    tensor = rows * cols * itemsize
    # Input read once, output (same shape and dtype) written once; layer norm also reads its
    # weight and bias, one row of `cols` each.
    expected = 2 * tensor + (2 * cols * itemsize if op == "layer_norm" else 0)
    assert reported == every(expected, reported)


def decomposed_flops(fn: Any, x: torch.Tensor) -> int:
    """One FLOP per element each operation of torch's own decomposition of ``fn(x)`` reads (its
    largest tensor argument): a reduction over n elements is n operations, an elementwise op
    one per element, a transcendental (exp, erf) one."""
    from torch._decomp import get_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    aten = torch.ops.aten
    table = get_decompositions([aten._softmax, aten.gelu])
    graph = make_fx(fn, decomposition_table=table)(x).graph
    total = 0
    for node in graph.nodes:
        if node.op == "call_function":
            sizes = [a.meta["val"].numel() for a in node.args if hasattr(a, "meta")]
            total += max(sizes)
    return total


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("op", ["softmax", "gelu"])
def test_elementwise_flops_are_torch_s_decomposition_one_per_element_read(op, dtype):
    rows, cols = 16, 40
    elementwise = bench("elementwise")
    metrics = elementwise.run(context(), op, dtype, rows, cols)
    x = torch.randn(rows, cols)
    # softmax: amax, sub, exp, sum, div; gelu: x * 0.5, x / sqrt(2), erf, + 1, product.
    oracle = decomposed_flops(lambda t: elementwise._apply(torch, op, t, None, None), x)
    assert oracle == 5 * rows * cols
    reported = per_call(metrics, "tflops")
    assert reported == every(oracle, reported)


@pytest.mark.parametrize(("dtype", "itemsize"), [("fp32", 4), ("bf16", 2)])
def test_elementwise_layer_norm_counts_eight_flops_an_element(dtype, itemsize):
    rows, cols = 16, 40
    metrics = bench("elementwise").run(context(), "layer_norm", dtype, rows, cols)
    # Per element: mean (add), variance (subtract, square, add), normalise (subtract, multiply),
    # affine (multiply, add). torch's decomposition computes the mean twice (prims.var keeps its
    # own), so it is no oracle here: the formula by hand is.
    flops = 8 * rows * cols
    assert per_call(metrics, "tflops") == every(flops, per_call(metrics, "tflops"))
    nbytes = 2 * rows * cols * itemsize + 2 * cols * itemsize  # x in, y out, weight and bias
    assert intensity(metrics) == pytest.approx(flops / nbytes, rel=EXACT)
