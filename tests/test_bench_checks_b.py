"""sdpa, bandwidth and train_gpt: their checks refuse wrong work, their counts fit the work."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from conftest import per_module
from test_bench_checks import context, nudged, off_by, pct_of_peak, rate
from test_known_flops import PROFILE, bench

from cudastack.environment.context import CheckFailed, Context, Skip
from cudastack.environment.suite import PROFILES

pytestmark = pytest.mark.integration

F = torch.nn.functional

# --- sdpa: fp32 tolerance 1e-3 relative, plus 1e-3 x the reference's RMS absolute; gradients 2x.

SDPA_TOL = 1e-3
SDPA_CASE = dict(dtype="fp32", batch=2, heads=3, seq=16, head_dim=8)


def run_sdpa(direction: str = "fwd", causal: bool = False, **kw: Any) -> Any:
    case = {**SDPA_CASE, **kw}
    return bench("sdpa").run(context(), "math", direction, causal, **case)


def test_sdpa_accepts_error_within_its_tolerance(monkeypatch):
    # Half the relative tolerance on every element: inside rtol alone, whatever atol is.
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", nudged(sdpa, off_by(0.5, SDPA_TOL, 0)))
    assert rate(run_sdpa(), "tflops")


def test_sdpa_refuses_output_error_beyond_its_tolerance_naming_the_output(monkeypatch):
    # An error of 1.5x (rtol |x| + atol) with atol = tol x RMS: the RMS is computed by hand from
    # the same seeded inputs' reference, so a wrong absolute term (tol / RMS) would let it pass.
    ref_rms: list[float] = []
    sdpa = F.scaled_dot_product_attention

    def faulty(q: Any, k: Any, v: Any, **kwargs: Any) -> Any:
        out = sdpa(q, k, v, **kwargs)
        rms = float(out.detach()[:1, :2].double().pow(2).mean().sqrt())
        ref_rms.append(rms)
        return out + 1.5 * (SDPA_TOL * rms + SDPA_TOL * out.detach().abs())

    monkeypatch.setattr(F, "scaled_dot_product_attention", faulty)
    with pytest.raises(CheckFailed, match=r"^output differs from reference"):
        run_sdpa()
    # Random attention averages the values: its RMS is well below 1, so tol / RMS > tol x RMS.
    assert ref_rms[0] < 0.9


def test_sdpa_checks_the_first_heads_of_the_first_batch_entry_only(monkeypatch):
    sdpa = F.scaled_dot_product_attention

    def outside(value: Any) -> Any:
        # Wrong everywhere but in batch entry 0, heads 0..1 (the checked slab): not refused.
        err = torch.ones_like(value)
        err[0, :2] = 0
        return err

    monkeypatch.setattr(F, "scaled_dot_product_attention", nudged(sdpa, outside))
    assert rate(run_sdpa(), "tflops")


def test_sdpa_checks_head_zero_of_batch_entry_zero(monkeypatch):
    sdpa = F.scaled_dot_product_attention

    def inside(value: Any) -> Any:
        err = torch.zeros_like(value)
        err[0, 0] = 1
        return err

    monkeypatch.setattr(F, "scaled_dot_product_attention", nudged(sdpa, inside))
    with pytest.raises(CheckFailed, match="output differs"):
        run_sdpa()


@pytest.mark.parametrize("index, name", [(0, "dq"), (1, "dk"), (2, "dv")])
def test_sdpa_refuses_gradient_error_beyond_twice_the_tolerance_naming_it(monkeypatch, index, name):
    # 2.5x (tol |g| + tol RMS) on one gradient: beyond the documented 2x tol, inside 3x.
    grad = torch.autograd.grad

    def faulty(outputs: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        grads = list(grad(outputs, inputs, *args, **kwargs))
        g = grads[index]
        if g.dtype != torch.float64:
            rms = float(g.detach()[:1, :2].pow(2).mean().sqrt())
            grads[index] = g + 2.5 * SDPA_TOL * (g.detach().abs() + rms)
        return tuple(grads)

    monkeypatch.setattr(torch.autograd, "grad", faulty)
    with pytest.raises(CheckFailed, match=f"^gradient {name} differs from reference"):
        run_sdpa("fwd_bwd")


def test_sdpa_accepts_gradient_error_within_twice_the_tolerance(monkeypatch):
    grad = torch.autograd.grad

    def faulty(outputs: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        grads = grad(outputs, inputs, *args, **kwargs)
        if grads[0].dtype == torch.float64:
            return grads
        return tuple(g + 1.5 * SDPA_TOL * g.abs() for g in grads)

    monkeypatch.setattr(torch.autograd, "grad", faulty)
    assert rate(run_sdpa("fwd_bwd"), "tflops")


def test_sdpa_times_the_backward_in_every_fwd_bwd_call(monkeypatch):
    # Each call the bench makes runs sdpa once and, for fwd_bwd, one backward of it: as many
    # low-precision gradient computations as sdpa calls (fp64 ones are the reference's).
    sdpa, grad = F.scaled_dot_product_attention, torch.autograd.grad
    calls = {"sdpa": 0, "grad": 0}

    def counting_sdpa(*args: Any, **kwargs: Any) -> Any:
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    def counting_grad(outputs: Any, *args: Any, **kwargs: Any) -> Any:
        calls["grad"] += outputs.dtype != torch.float64
        return grad(outputs, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    run_sdpa("fwd_bwd")
    assert calls["sdpa"] >= 1 + PROFILE.min_reps
    assert calls["grad"] == calls["sdpa"]


@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_sdpa_runs_on_tensors_of_its_dtype(monkeypatch, direction):
    sdpa = F.scaled_dot_product_attention
    seen: list[Any] = []

    def recording(q: Any, k: Any, v: Any, **kwargs: Any) -> Any:
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    run_sdpa(direction, dtype="bf16")
    assert seen and set(seen) == {(torch.bfloat16,) * 3}


def test_sdpa_rates_against_the_peak_of_its_dtype():
    peaks = {"fp32": 1.0, "bf16": 1000.0}
    metrics = bench("sdpa").run(context(peaks), "math", "fwd", False, **SDPA_CASE)
    assert pct_of_peak(metrics) == pytest.approx([100 * v for v in rate(metrics, "tflops")])


def test_sdpa_no_available_kernel_error_of_cuda_builds_is_a_skip(monkeypatch):
    def refusing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setattr(F, "scaled_dot_product_attention", refusing)
    with pytest.raises(Skip, match=r"no math SDPA kernel .* on cpu: No available kernel$"):
        run_sdpa()


def test_sdpa_other_runtime_errors_propagate(monkeypatch):
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(F, "scaled_dot_product_attention", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_sdpa()


# --- bandwidth: a copy is exact; the check samples every step-th element.


def faulty_copy(monkeypatch: pytest.MonkeyPatch, n: int, wrong: Any) -> None:
    """``Tensor.copy_`` that, into a buffer of ``n`` elements, then spoils it with ``wrong``."""
    copy_ = torch.Tensor.copy_

    def copy(self: Any, src: Any, *args: Any, **kwargs: Any) -> Any:
        out = copy_(self, src, *args, **kwargs)
        if self.numel() == n:
            with torch.no_grad():
                wrong(self)
        return out

    monkeypatch.setattr(torch.Tensor, "copy_", copy)


def test_bandwidth_refuses_a_copy_with_one_element_slightly_off(monkeypatch):
    # 1 MiB = 2^18 floats, under the 2^20 samples: every element is checked, odd ones too.
    n = 2**18

    def off(dst: Any) -> None:
        dst[12345] += 1e-3 * dst[12345].abs() + 1e-6

    faulty_copy(monkeypatch, n, off)
    with pytest.raises(CheckFailed, match=r"^copy differs from reference: 1 of"):
        bench("bandwidth").run(context(), "d2d", 1)


def test_bandwidth_large_copy_samples_every_step_th_element(monkeypatch):
    # 8 MiB = 2^21 floats: a step of 2. A run of 2 wrong elements cannot slip between samples.
    n = 2**21

    def off(dst: Any) -> None:
        dst[1001:1003] = 0.0

    faulty_copy(monkeypatch, n, off)
    with pytest.raises(CheckFailed, match="copy differs"):
        bench("bandwidth").run(context(), "d2d", 8)


def test_bandwidth_rates_the_device_copy_against_the_memory_peak():
    metrics = bench("bandwidth").run(context({"mem": 1.0, "h2d": 1000.0}), "d2d", 1)
    assert pct_of_peak(metrics) == pytest.approx([100 * v for v in rate(metrics, "gbps")])


@pytest.mark.parametrize("copy", ["h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"])
def test_bandwidth_host_copies_on_cpu_are_a_skip_naming_the_copy(copy):
    direction, memory = copy.split("_")
    want = f"^{direction} copy from {memory} host memory needs an NVIDIA GPU"
    with pytest.raises(Skip, match=want):
        bench("bandwidth").run(context(), copy, 1)


# --- train_gpt: the model it trains is the one its FLOP count describes.


@pytest.fixture(scope=per_module)
def gpt_run():
    """One tiny train_gpt case with HF_HUB_OFFLINE unset; its metrics and the models it built."""
    import transformers

    built: list[Any] = []
    init = transformers.GPT2LMHeadModel.__init__
    saved = os.environ.pop("HF_HUB_OFFLINE", None)
    mp = pytest.MonkeyPatch()

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        built.append(self)

    mp.setattr(transformers.GPT2LMHeadModel, "__init__", recording)
    try:
        seq_len, batch = 24, 3
        metrics = bench("train_gpt").run(context(), "tiny", seq_len, "fp32", False, batch)
        offline = os.environ.get("HF_HUB_OFFLINE")
    finally:
        mp.undo()
        os.environ.pop("HF_HUB_OFFLINE", None)
        if saved is not None:
            os.environ["HF_HUB_OFFLINE"] = saved
    return {m.name: m for m in metrics}, built, seq_len, batch, offline


def test_train_gpt_trains_the_configured_model(gpt_run):
    _, built, seq_len, _, _ = gpt_run
    layers, heads, width, vocab = bench("train_gpt").SIZES["tiny"]
    assert built
    for model in built:
        # The sizes the FLOP count is computed from are those of the model that runs.
        assert len(model.transformer.h) == layers
        assert model.config.n_head == heads
        assert model.transformer.wte.weight.shape == (vocab, width)
        assert model.transformer.wpe.weight.shape == (seq_len, width)
        assert model.lm_head.weight is model.transformer.wte.weight


def test_train_gpt_counts_flops_from_the_trained_models_parameters(gpt_run):
    metrics, built, seq_len, _, _ = gpt_run
    model = built[0]
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    attention = 12 * model.config.n_layer * model.config.n_embd * seq_len
    per_token = [
        t * 1e12 / r for t, r in zip(metrics["tflops"].values, metrics["items_per_s"].values)
    ]
    assert per_token == pytest.approx([6 * n + attention] * len(per_token), rel=1e-9)


def test_train_gpt_reports_tokens_per_second_of_batch_times_sequence(gpt_run):
    metrics, _, seq_len, batch, _ = gpt_run
    rates = metrics["items_per_s"]
    assert rates.unit == "tokens/s"
    # A training step is batch x seq_len tokens: the rate times the step's latency gives it back.
    tokens = [r * ms * 1e-3 for r, ms in zip(rates.values, metrics["latency"].values)]
    assert tokens == pytest.approx([batch * seq_len] * len(tokens), rel=1e-9)


def test_train_gpt_never_lets_the_hub_be_reached(gpt_run):
    assert gpt_run[4] == "1"


def test_train_gpt_trains_the_same_recipe_on_seeded_tokens_under_autocast(monkeypatch):
    """What makes two cells' train_gpt cases the same work: the tokens drawn from the case's
    seed, the optimizer's settings, and the forward pass in the precision asked for."""
    import transformers

    seen: list[tuple[Any, Any]] = []  # (input ids, logits dtype) of each forward pass
    optimizers: list[Any] = []
    init = transformers.GPT2LMHeadModel.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.register_forward_hook(
            lambda m, a, kw, out: seen.append((kw["input_ids"], out.logits.dtype)),
            with_kwargs=True,
        )

    class AdamW(torch.optim.AdamW):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "__init__", recording)
    monkeypatch.setattr(torch.optim, "AdamW", AdamW)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module = bench("train_gpt")
    ctx = context()
    ctx.seed = 7
    torch.manual_seed(12345)  # the global generator's state must not matter
    seq_len, batch = 16, 2
    module.run(ctx, "tiny", seq_len, "amp_bf16", False, batch)

    vocab = module.SIZES["tiny"][3]
    gen = torch.Generator().manual_seed(7)
    want = [torch.randint(0, vocab, (batch, seq_len), generator=gen) for _ in range(4)]
    assert len(seen) > len(want)
    for (ids, _), expected in zip(seen, want * (len(seen) // len(want))):
        assert torch.equal(ids, expected)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    assert optimizers
    for opt in optimizers:
        (group,) = opt.param_groups
        assert (group["lr"], group["weight_decay"]) == (1e-3, 0.0)


def test_train_gpt_with_compile_skips_on_a_cpu_before_building_a_model():
    with pytest.raises(Skip, match=r"torch\.compile of a training step takes minutes on a CPU"):
        bench("train_gpt").run(context(), "tiny", 16, "fp32", True, 1)


def test_train_gpt_in_the_smoke_profile_trains_through_the_compiled_model(monkeypatch):
    # The smoke profile compiles on a CPU: it is how a cell shows it can compile. A real compile
    # runs in tests/test_smoke.py, in a worker process; here torch.compile is a recorder, so the
    # wiring is checked in this process and fast: the model built is what is compiled, and every
    # forward pass of the timed steps goes through what torch.compile returned.
    compiled: list[Any] = []
    forwards = 0

    def recording_compile(model: Any, *args: Any, **kwargs: Any) -> Any:
        compiled.append(model)

        def forward(*f_args: Any, **f_kwargs: Any) -> Any:
            nonlocal forwards
            forwards += 1
            return model(*f_args, **f_kwargs)

        return forward

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    smoke = Context(torch, torch.device("cpu"), PROFILES["smoke"], None)
    result = bench("train_gpt").run(smoke, "tiny", 16, "fp32", True, 1)
    assert [type(model).__name__ for model in compiled] == ["GPT2LMHeadModel"]
    assert forwards > 0 and min(rate(result, "items_per_s")) > 0
