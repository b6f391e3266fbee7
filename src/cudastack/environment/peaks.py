"""Data-sheet peaks per GPU board, found by the exact device name, for stating % of peak."""

# Figures are dense (no sparsity): NVIDIA's data sheets print tensor-core TFLOP/s with 2:4
# sparsity ("*"), so those are halved here. fp16/bf16/fp8 are tensor-core rates with fp32
# accumulation (what torch's matmul uses); fp32 is the non-tensor rate; mem is memory bandwidth
# in GB/s; h2d is the host link in GB/s per direction (a PCIe x16 link's "bidirectional" figure
# halved). A dtype the board has no tensor-core path for has no key: no percentage is stated.
#
# Boards are found by the device name exactly as torch.cuda.get_device_name() reports it (case,
# spacing and a leading "NVIDIA " aside), never by a part of it: "L4" is a prefix of "L40",
# "H200" of "H200 NVL" and "GH200". The SM count and memory size, where the caller has them,
# must fit the board; they also decide where one name covers two boards. A MIG slice has a
# fraction of the board's SMs and bandwidth, so no board's peaks apply to it.

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Board:
    """One board as its data sheet describes it."""

    board: str  # short label, as the README lists it
    names: tuple[str, ...]  # device names torch reports for it, without the "NVIDIA " prefix
    sms: int
    memory_gb: tuple[float, ...]  # nominal memory sizes it is sold with
    peaks: Mapping[str, float]
    source: str  # the NVIDIA document the figures are from


# Data sheets (NVIDIA product pages carry the same tables).
_H100 = "NVIDIA H100 Tensor Core GPU data sheet, https://www.nvidia.com/en-us/data-center/h100/"
_H200 = "NVIDIA H200 Tensor Core GPU data sheet, https://www.nvidia.com/en-us/data-center/h200/"
_GH200 = (
    "NVIDIA GH200 Grace Hopper Superchip data sheet, "
    "https://www.nvidia.com/en-us/data-center/grace-hopper-superchip/"
)
_A100 = "NVIDIA A100 Tensor Core GPU data sheet, https://www.nvidia.com/en-us/data-center/a100/"
_L4 = "NVIDIA L4 Tensor Core GPU data sheet, https://www.nvidia.com/en-us/data-center/l4/"
_L40 = "NVIDIA L40 GPU data sheet, https://www.nvidia.com/en-us/data-center/l40/"
_L40S = "NVIDIA L40S GPU data sheet, https://www.nvidia.com/en-us/data-center/l40s/"
_A10 = (
    "NVIDIA A10 Tensor Core GPU data sheet, "
    "https://www.nvidia.com/en-us/data-center/products/a10-gpu/"
)
_ADA = (
    "NVIDIA Ada GPU Architecture whitepaper, appendix A (GeForce RTX 4090), "
    "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"
)
_RTX_BLACKWELL = (
    "NVIDIA RTX Blackwell GPU Architecture whitepaper, appendix A (GeForce RTX 5090), "
    "https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/"
    "nvidia-rtx-blackwell-gpu-architecture.pdf"
)
_V100 = "NVIDIA V100 Tensor Core GPU data sheet, https://www.nvidia.com/en-us/data-center/v100/"
_T4 = "NVIDIA T4 Tensor Core GPU data sheet, https://www.nvidia.com/en-us/data-center/tesla-t4/"

# Compute figures that several boards share (same chip and clocks).
_HOPPER_SXM = {"fp32": 67, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "fp8": 1978.9}
_HOPPER_NVL = {"fp32": 60, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5, "fp8": 1670.5}
_AMPERE_A100 = {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312}

BOARDS: tuple[Board, ...] = (
    Board(
        "H100 SXM", ("H100 80GB HBM3",), 132, (80,), {**_HOPPER_SXM, "mem": 3350, "h2d": 64}, _H100
    ),
    Board(
        "H100 PCIe",
        ("H100 PCIe",),
        114,
        (80,),
        {"fp32": 51, "tf32": 378, "fp16": 756, "bf16": 756, "fp8": 1513, "mem": 2000, "h2d": 64},
        _H100,
    ),
    Board("H100 NVL", ("H100 NVL",), 132, (94,), {**_HOPPER_NVL, "mem": 3900, "h2d": 64}, _H100),
    Board("H200", ("H200",), 132, (141,), {**_HOPPER_SXM, "mem": 4800, "h2d": 64}, _H200),
    Board("H200 NVL", ("H200 NVL",), 132, (141,), {**_HOPPER_NVL, "mem": 4800, "h2d": 64}, _H200),
    # "GH200 480GB" / "120GB" name the Grace side's LPDDR5X; the data sheet sells the Hopper side
    # with 96 GB HBM3 or 144 GB HBM3e, so memory size decides between the two. The host link is
    # NVLink-C2C (900 GB/s both ways).
    Board(
        "GH200 96GB",
        ("GH200 480GB", "GH200 120GB"),
        132,
        (96,),
        {**_HOPPER_SXM, "mem": 4000, "h2d": 450},
        _GH200,
    ),
    Board(
        "GH200 144GB",
        ("GH200 144G HBM3e", "GH200 480GB", "GH200 120GB"),
        132,
        (144,),
        {**_HOPPER_SXM, "mem": 4900, "h2d": 450},
        _GH200,
    ),
    Board(
        "A100 SXM 40GB",
        ("A100-SXM4-40GB",),
        108,
        (40,),
        {**_AMPERE_A100, "mem": 1555, "h2d": 32},
        _A100,
    ),
    Board(
        "A100 SXM 80GB",
        ("A100-SXM4-80GB",),
        108,
        (80,),
        {**_AMPERE_A100, "mem": 2039, "h2d": 32},
        _A100,
    ),
    Board(
        "A100 PCIe 40GB",
        ("A100-PCIE-40GB",),
        108,
        (40,),
        {**_AMPERE_A100, "mem": 1555, "h2d": 32},
        _A100,
    ),
    Board(
        "A100 PCIe 80GB",
        ("A100 80GB PCIe",),
        108,
        (80,),
        {**_AMPERE_A100, "mem": 1935, "h2d": 32},
        _A100,
    ),
    Board(
        "L4",
        ("L4",),
        58,
        (24,),
        {"fp32": 30.3, "tf32": 60, "fp16": 121, "bf16": 121, "fp8": 242.5, "mem": 300, "h2d": 32},
        _L4,
    ),
    Board(
        "L40",
        ("L40",),
        142,
        (48,),
        {"fp32": 90.5, "tf32": 90.5, "fp16": 181, "bf16": 181, "fp8": 362, "mem": 864, "h2d": 32},
        _L40,
    ),
    Board(
        "L40S",
        ("L40S",),
        142,
        (48,),
        {"fp32": 91.6, "tf32": 183, "fp16": 362, "bf16": 362, "fp8": 733, "mem": 864, "h2d": 32},
        _L40S,
    ),
    Board(
        "A10",
        ("A10",),
        72,
        (24,),
        {"fp32": 31.2, "tf32": 62.5, "fp16": 125, "bf16": 125, "mem": 600, "h2d": 32},
        _A10,
    ),
    # GeForce: fp16/bf16/fp8 with fp32 accumulation run at half the fp16-accumulate rate.
    Board(
        "RTX 4090",
        ("GeForce RTX 4090",),
        128,
        (24,),
        {
            "fp32": 82.6,
            "tf32": 82.6,
            "fp16": 165.2,
            "bf16": 165.2,
            "fp8": 330.3,
            "mem": 1008,
            "h2d": 32,
        },
        _ADA,
    ),
    Board(
        "RTX 5090",
        ("GeForce RTX 5090",),
        170,
        (32,),
        {
            "fp32": 104.8,
            "tf32": 104.8,
            "fp16": 209.5,
            "bf16": 209.5,
            "fp8": 419,
            "mem": 1792,
            "h2d": 64,
        },
        _RTX_BLACKWELL,
    ),
    Board(
        "V100 SXM2",
        ("Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB"),
        80,
        (16, 32),
        {"fp32": 15.7, "fp16": 125, "mem": 900, "h2d": 16},
        _V100,
    ),
    Board(
        "V100 PCIe",
        ("Tesla V100-PCIE-16GB", "Tesla V100-PCIE-32GB"),
        80,
        (16, 32),
        {"fp32": 14, "fp16": 112, "mem": 900, "h2d": 16},
        _V100,
    ),
    Board("T4", ("Tesla T4",), 40, (16,), {"fp32": 8.1, "fp16": 65, "mem": 320, "h2d": 16}, _T4),
)

# Reported memory (GiB, after the driver's reservations) over the nominal size: observed from
# about 0.92 (T4, A10 with ECC on GDDR) to 1.0.
_MEMORY_FIT = (0.85, 1.01)
_MIG = re.compile(r"(?:^| )mig(?: |$)")


def normalise(name: str) -> str:
    """A device name as the table keys it: lower case, single spaces, no "nvidia " prefix."""
    key = " ".join(name.split()).lower()
    return key[len("nvidia ") :] if key.startswith("nvidia ") else key


def _index() -> dict[str, tuple[Board, ...]]:
    index: dict[str, tuple[Board, ...]] = {}
    for board in BOARDS:
        for name in board.names:
            index[normalise(name)] = (*index.get(normalise(name), ()), board)
    return index


_BY_NAME = _index()


@dataclass(frozen=True)
class Lookup:
    """The board a device was found to be, or why it has no peaks."""

    board: Optional[Board]
    reason: str = ""  # why there are no peaks; empty when there are

    @property
    def peaks(self) -> Optional[dict[str, float]]:
        return dict(self.board.peaks) if self.board else None

    def record(self) -> dict[str, Any]:
        """What env.json keeps: the figures % of peak is against and their source, or why none."""
        if self.board is None:
            return {"board": None, "reason": self.reason}
        return {"board": self.board.board, "values": self.peaks, "source": self.board.source}


def _fits(board: Board, sm_count: Optional[int], memory_gib: Optional[float]) -> bool:
    low, high = _MEMORY_FIT
    return (sm_count is None or sm_count == board.sms) and (
        memory_gib is None or any(low * gb <= memory_gib <= high * gb for gb in board.memory_gb)
    )


def _describe(board: Board) -> str:
    sizes = "/".join(f"{gb:g}" for gb in board.memory_gb)
    return f"{board.board} ({board.sms} SMs, {sizes} GB)"


def lookup(
    device_name: str, sm_count: Optional[int] = None, memory_gib: Optional[float] = None
) -> Lookup:
    """The board for a device name as torch reports it (e.g. 'NVIDIA H200'), checked against its
    SM count and memory size (GiB) where given; no board, with the reason, where none fits."""
    key = normalise(device_name)
    if _MIG.search(key):
        return Lookup(
            None,
            f"{device_name!r} is a MIG slice: it has a fraction of the board's SMs and memory "
            "bandwidth, so the whole board's data-sheet peaks do not apply",
        )
    candidates = _BY_NAME.get(key, ())
    if not candidates:
        return Lookup(
            None,
            f"no data-sheet peaks for {device_name!r}: GPUs are found by their exact name, "
            "and this one is not in the table",
        )
    fitting = [b for b in candidates if _fits(b, sm_count, memory_gib)]
    if len(fitting) == 1:
        return Lookup(fitting[0])
    boards = " or ".join(_describe(b) for b in candidates)
    if fitting:  # several boards share the name and nothing given tells them apart
        return Lookup(
            None,
            f"{device_name!r} may be {boards}: its SM count and memory size decide, "
            "and what was given does not tell them apart",
        )
    given = [f"{sm_count} SMs"] if sm_count is not None else []
    given += [f"{memory_gib:g} GiB"] if memory_gib is not None else []
    return Lookup(
        None,
        f"{device_name!r} reports {' and '.join(given)}, which does not fit {boards}: "
        "a partition or another board, so the data sheet does not apply",
    )


def peaks_for(
    device_name: str, sm_count: Optional[int] = None, memory_gib: Optional[float] = None
) -> Optional[dict[str, float]]:
    """The peaks for a device name as torch reports it, or None (see ``lookup`` for why)."""
    return lookup(device_name, sm_count, memory_gib).peaks


def for_gpu(gpu: Optional[Mapping[str, Any]]) -> Optional[Lookup]:
    """The lookup for the fingerprint's ``gpu`` entry (name, sm_count, memory_gib); None on CPU."""
    if not gpu:
        return None
    return lookup(gpu["name"], gpu.get("sm_count"), gpu.get("memory_gib"))
