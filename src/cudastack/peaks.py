"""Spec-sheet peaks per GPU, so a measured rate can be stated as a percentage of what is possible.

Dense (no sparsity) tensor-core TFLOP/s with fp32 accumulation, memory bandwidth in GB/s, and the
host link in GB/s per direction, from NVIDIA's data sheets for the SXM/PCIe variant named.
"""

from __future__ import annotations

from typing import Optional

# (name fragment, peaks). Checked in order, so more specific fragments come first.
_TABLE: tuple[tuple[str, dict[str, float]], ...] = (
    (
        "H200",
        {
            "fp32": 67,
            "tf32": 494.7,
            "fp16": 989.4,
            "bf16": 989.4,
            "fp8": 1978.9,
            "mem": 4800,
            "h2d": 64,
        },
    ),
    (
        "H100 PCIe",
        {"fp32": 51, "tf32": 378, "fp16": 756, "bf16": 756, "fp8": 1513, "mem": 2000, "h2d": 64},
    ),
    (
        "H100",
        {
            "fp32": 67,
            "tf32": 494.7,
            "fp16": 989.4,
            "bf16": 989.4,
            "fp8": 1978.9,
            "mem": 3350,
            "h2d": 64,
        },
    ),
    (
        "A100-SXM4-40GB",
        {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312, "mem": 1555, "h2d": 32},
    ),
    ("A100", {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312, "mem": 2039, "h2d": 32}),
    (
        "L40S",
        {"fp32": 91.6, "tf32": 183, "fp16": 362, "bf16": 362, "fp8": 733, "mem": 864, "h2d": 32},
    ),
    (
        "L4",
        {"fp32": 30.3, "tf32": 60, "fp16": 121, "bf16": 121, "fp8": 242.5, "mem": 300, "h2d": 32},
    ),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "fp16": 125, "bf16": 125, "mem": 600, "h2d": 32}),
    (
        "RTX 4090",
        {
            "fp32": 82.6,
            "tf32": 82.6,
            "fp16": 165.2,
            "bf16": 165.2,
            "fp8": 330.3,
            "mem": 1008,
            "h2d": 32,
        },
    ),
    ("V100", {"fp32": 15.7, "fp16": 125, "mem": 900, "h2d": 16}),
    ("T4", {"fp32": 8.1, "fp16": 65, "mem": 320, "h2d": 16}),
)


def peaks_for(device_name: str) -> Optional[dict[str, float]]:
    """The peaks for a GPU name as torch reports it (e.g. 'NVIDIA H200'), or None if unknown."""
    for fragment, peaks in _TABLE:
        if fragment in device_name:
            return dict(peaks)
    return None
