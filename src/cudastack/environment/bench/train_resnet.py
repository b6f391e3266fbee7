"""ResNet training (torchvision ResNet-50; ResNet-18 in quick) on synthetic batches, in img/s."""

# The defaults are the practices behind the public anchors (NVIDIA's DeepLearningExamples
# recipe, ~3,079 img/s on an H200): bf16 autocast, channels_last, torch.compile and
# cudnn.benchmark. fp32/tf32 and the other switches are there to show what each practice buys.
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from cudastack.environment.context import Context, Metric
    from cudastack.environment.training import Step

KIND = "workload"
HEADLINE = "items_per_s"  # img/s
DATA_PARALLEL = True
PARAMS = {
    "model": ["resnet50"],
    "precision": ["amp_bf16", "amp_fp16", "tf32", "fp32"],
    "channels_last": [True, False],
    "compile": [True, False],
    "batch": [256],
    "image": [224],
}
PROFILES = {
    "smoke": {
        "model": ["resnet18"],
        # amp_fp16 is the GradScaler path (GPU only); fp32 the CPU's (bf16 autocast is slow there)
        "precision": ["amp_fp16", "fp32"],
        "channels_last": [True],
        "compile": [False],  # train_gpt compiles in smoke
        "batch": [8],  # smaller, batch norm's statistics are too noisy for the loss to fall
        "image": [32],
    },
    "quick": {
        "model": ["resnet18"],
        "precision": ["fp32", "amp_bf16"],
        "channels_last": [True],
        "compile": [False],
        "batch": [8],
        # amp_bf16 skips on a CPU without bf16 kernels (see run); elsewhere 64 px keeps it short.
        "image": [64],
    },
    "standard": {
        "precision": ["amp_bf16", "tf32"],
        "channels_last": [True],
        "compile": [True, False],
    },
}
CLASSES = 1000
DISTINCT_BATCHES = 4  # a fixed set, cycled: the loss must fall as the model learns it


def run(
    ctx: Context,
    model: str,
    precision: str,
    channels_last: bool,
    compile: bool,
    batch: int,
    image: int,
) -> list[Metric]:
    from cudastack.environment import training
    from cudastack.environment.precision import autocast, cpu_has_bf16_kernels

    torch = ctx.torch
    if precision == "amp_bf16" and not ctx.is_cuda and not cpu_has_bf16_kernels(torch):
        # A fallback's rate says nothing about the stack, and at minutes a case it would run
        # into the case limit: quick's amp_bf16 case passed 120 s on a loaded AVX2-only CPU.
        ctx.skip(
            "amp_bf16 convolutions on this CPU are a slow fallback: torch's oneDNN has no bf16 "
            "kernels for it (x86 has them from AVX-512 or AVX2-VNNI-2 on, Arm with its bf16 "
            "extension); fp32 measures this CPU"
        )
    torchvision = ctx.require("torchvision")
    amp = autocast(ctx, precision)
    training.check_compile(ctx, compile)
    torch.backends.cudnn.benchmark = ctx.is_cuda  # autotune conv algorithms for these shapes
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = [
        ctx.randn(batch, 3, image, image).to(memory_format=fmt) for _ in range(DISTINCT_BATCHES)
    ]
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
    labels = [
        torch.randint(0, CLASSES, (batch,), generator=gen).to(ctx.device)
        for _ in range(DISTINCT_BATCHES)
    ]
    next_batch = itertools.cycle(list(zip(images, labels))).__next__

    def make_step(wrap: Callable[[Any], Any]) -> Step:
        net = getattr(torchvision.models, model)(num_classes=CLASSES)
        net = net.to(ctx.device, memory_format=fmt)
        # Plain SGD with momentum as in the reference recipe (without its schedule: a constant
        # rate small enough that a fixed set of random batches is learnt without diverging).
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        net = wrap(net)
        forward = training.compiled(ctx, net, compile)
        loss_fn = torch.nn.CrossEntropyLoss()
        return training.optimizer_step(lambda b: loss_fn(forward(b[0]), b[1]), opt, amp)

    return training.measure(
        ctx,
        training.Workload(
            make_step,
            next_batch,
            cycle=DISTINCT_BATCHES,
            items_per_step=batch,
            unit="img/s",
        ),
    )
