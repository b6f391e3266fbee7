"""Transformer encoder inference: fp32, bf16, fp16 and int8 dynamic, with error vs fp32."""

# A BERT-base-shaped encoder (pre-norm, GELU MLP, SDPA attention) with random weights: speed
# depends on shapes, not on what the weights learnt. Each precision's output is compared with
# the fp32 model's on the same input and the relative error recorded next to the speed, so a
# faster precision is never shown without what it costs in accuracy.
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module

    from cudastack.environment.context import Context, Metric

KIND = "workload"
HEADLINE = "items_per_s"  # seq/s
PARAMS = {
    "precision": ["fp32", "bf16", "fp16", "int8_dynamic"],
    "layers": [12],
    "width": [768],
    "seq_len": [128],
    "batch": [32],
}
PROFILES = {
    "smoke": {"layers": [1], "width": [128], "seq_len": [16], "batch": [2]},
    "quick": {"layers": [2], "width": [256], "seq_len": [64], "batch": [8]},
}
HEAD_DIM = 64


def _encoder(torch: ModuleType, layers: int, width: int) -> Module:
    nn = torch.nn
    F = nn.functional
    # torch arrives as an argument (benches import it lazily), so its Module class is known only
    # when this runs: a base class of type Any to the type checker.
    module: Any = nn.Module

    class Block(module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x: Tensor) -> Tensor:
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, d // HEAD_DIM, HEAD_DIM).unbind(2)
            a = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            )
            x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    return nn.Sequential(*[Block() for _ in range(layers)], nn.LayerNorm(width))


def flops(layers: int, width: int, seq_len: int, batch: int) -> int:
    # 2 FLOPs per multiply-add. Per token and layer the linears do (3 + 1 + 4 + 4) d^2
    # multiply-adds (QKV, output, MLP up and down) = 24 d^2 FLOPs; attention's two matmuls
    # (Q K^T and A V) add 2 T d multiply-adds = 4 T d FLOPs.
    return batch * seq_len * layers * (24 * width * width + 4 * seq_len * width)


def run(
    ctx: Context, precision: str, layers: int, width: int, seq_len: int, batch: int
) -> list[Metric]:
    import warnings

    from cudastack.environment.context import CheckFailed, Metric

    torch = ctx.torch
    if precision == "fp16" and not ctx.is_cuda:
        ctx.skip("fp16 inference needs a GPU: the CPU runs fp16 matmuls as a slow fallback")
    if precision == "int8_dynamic" and ctx.is_cuda:
        ctx.skip("dynamic int8 quantisation runs on the CPU backends (fbgemm, qnnpack) only")
    torch.manual_seed(0)
    ref_model = _encoder(torch, layers, width).eval().to(ctx.device)
    x = ctx.randn(batch, seq_len, width)
    with torch.inference_mode():
        expected = ref_model(x)
    if precision == "int8_dynamic":
        try:
            from torch.ao.quantization import quantize_dynamic
        except ImportError:
            ctx.skip("this torch has no torch.ao.quantization.quantize_dynamic")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice, once per case
            model = quantize_dynamic(ref_model, {torch.nn.Linear}, dtype=torch.qint8)
        inp = x
    elif precision == "fp32":
        model, inp = ref_model, x
    else:
        dt = ctx.dtype(precision)
        model, inp = ref_model.to(dt), x.to(dt)

    def forward() -> Tensor:
        with torch.inference_mode():
            return model(inp)

    out = forward().float()
    err = float((out - expected).norm() / expected.norm())
    if not err < 0.1:  # a precision that changes the answer this much is broken, not fast
        raise CheckFailed(f"{precision} output differs from fp32 by {err:.2%}")
    metrics = ctx.measure(forward, flops=flops(layers, width, seq_len, batch), peak=precision)
    latency = next(m for m in metrics if m.name == "latency")
    rate = Metric("items_per_s", "seq/s", "higher", [1e3 * batch / ms for ms in latency.values])
    return [rate, *metrics, Metric("output_err", "rel", "lower", [err])]
