"""Data-sheet peaks found by the exact device name torch reports, never by a part of it."""

import pytest

from cudastack.environment import peaks
from cudastack.environment.peaks import lookup, peaks_for

# Names as torch.cuda.get_device_name() returns them (the driver's own spelling), with the SM
# count and memory (GiB, after the driver's reservations) such a device reports, and the
# board's data-sheet figures: memory bandwidth in GB/s and dense fp16 tensor TFLOP/s (fp32
# accumulation). The figures are written out here from the data sheets, not read from the
# table, so a wrong row fails. The SM counts are the boards' own (e.g. 7424 CUDA cores / 128
# per SM = 58 for the L4).
DEVICES = [
    ("NVIDIA H100 80GB HBM3", 132, 79.19, "H100 SXM", 3350, 989.4),
    ("NVIDIA H100 PCIe", 114, 79.19, "H100 PCIe", 2000, 756),
    ("NVIDIA H100 NVL", 132, 92.63, "H100 NVL", 3900, 835.5),
    ("NVIDIA H200", 132, 139.81, "H200", 4800, 989.4),
    ("NVIDIA H200 NVL", 132, 139.81, "H200 NVL", 4800, 835.5),
    ("NVIDIA GH200 144G HBM3e", 132, 142.5, "GH200 144GB", 4900, 989.4),
    ("NVIDIA A100-SXM4-40GB", 108, 39.39, "A100 SXM 40GB", 1555, 312),
    ("NVIDIA A100-SXM4-80GB", 108, 79.15, "A100 SXM 80GB", 2039, 312),
    ("NVIDIA A100-PCIE-40GB", 108, 39.39, "A100 PCIe 40GB", 1555, 312),
    ("NVIDIA A100 80GB PCIe", 108, 79.15, "A100 PCIe 80GB", 1935, 312),
    ("NVIDIA L4", 58, 22.05, "L4", 300, 121),
    ("NVIDIA L40", 142, 44.39, "L40", 864, 181),
    ("NVIDIA L40S", 142, 44.39, "L40S", 864, 362),
    ("NVIDIA A10", 72, 22.06, "A10", 600, 125),
    ("NVIDIA GeForce RTX 4090", 128, 23.99, "RTX 4090", 1008, 165.2),
    ("NVIDIA GeForce RTX 5090", 170, 31.36, "RTX 5090", 1792, 209.5),
    ("Tesla V100-SXM2-16GB", 80, 15.77, "V100 SXM2", 900, 125),
    ("Tesla V100-SXM2-32GB", 80, 31.74, "V100 SXM2", 900, 125),
    ("Tesla V100-PCIE-16GB", 80, 15.77, "V100 PCIe", 900, 112),
    ("Tesla V100-PCIE-32GB", 80, 31.74, "V100 PCIe", 900, 112),
    ("Tesla T4", 40, 14.75, "T4", 320, 65),
]


@pytest.mark.parametrize(("name", "sms", "gib", "board", "mem", "fp16"), DEVICES)
def test_each_device_name_finds_its_own_board(name, sms, gib, board, mem, fp16):
    for found in (lookup(name), lookup(name, sms, gib)):  # by name alone, and checked
        assert found.board is not None, found.reason
        assert found.board.board == board
        assert found.peaks["mem"] == mem
        assert found.peaks["fp16"] == fp16


@pytest.mark.parametrize(
    ("name", "not_this"),
    [
        # Each of these is a prefix or a part of another board's name.
        ("NVIDIA L40", "L4"),
        ("NVIDIA L40S", "L40"),
        ("NVIDIA H200 NVL", "H200"),
        ("NVIDIA H100 NVL", "H100 SXM"),
        ("NVIDIA A100-PCIE-40GB", "A100 SXM 80GB"),
        ("NVIDIA A10", "A100 SXM 40GB"),
    ],
)
def test_a_name_containing_another_does_not_take_its_figures(name, not_this):
    other = next(b for b in peaks.BOARDS if b.board == not_this)
    assert lookup(name).board is not other
    assert peaks_for(name) != dict(other.peaks)  # and the figures really differ


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
        "NVIDIA H100 80GB HBM3 MIG 7g.80gb",
        "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
        "NVIDIA A100-SXM4-80GB MIG 1g.10gb",
        "NVIDIA H200 MIG 2g.35gb",
    ],
)
def test_a_mig_slice_gets_no_peaks_and_says_why(name):
    found = lookup(name)
    assert found.peaks is None
    assert "MIG slice" in found.reason
    assert found.record() == {"board": None, "reason": found.reason}


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H100",  # a real driver name for a board not in the table: not the SXM's figures
        "NVIDIA A10G",
        "NVIDIA H800",
        "NVIDIA H20",
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA RTX 6000 Ada Generation",
        "Tesla V100S-PCIE-32GB",
        "Intel(R) Xeon(R) Platinum 8480+",
        "",
    ],
)
def test_an_unknown_name_gets_no_peaks_never_a_guess(name):
    found = lookup(name)
    assert found.peaks is None
    assert "not in the table" in found.reason


@pytest.mark.parametrize("name", ["nvidia l40s", "  NVIDIA   L40S ", "L40S", "NVIDIA\tL40S"])
def test_case_spacing_and_the_nvidia_prefix_do_not_matter(name):
    assert lookup(name).board.board == "L40S"


def test_memory_size_tells_apart_boards_that_share_a_name():
    # "GH200 480GB" names the Grace side's LPDDR5X; the Hopper side has 96 GB HBM3 (4.0 TB/s)
    # or 144 GB HBM3e (4.9 TB/s). 97871 MiB and 145920 MiB are what such devices report.
    assert lookup("NVIDIA GH200 480GB", 132, 97871 / 1024).peaks["mem"] == 4000
    assert lookup("NVIDIA GH200 480GB", 132, 145920 / 1024).peaks["mem"] == 4900
    unsure = lookup("NVIDIA GH200 480GB")
    assert unsure.peaks is None
    assert "GH200 96GB" in unsure.reason and "GH200 144GB" in unsure.reason


@pytest.mark.parametrize(
    ("sms", "gib"),
    [
        (14, 4.75),  # a slice whose name does not say MIG (SMs and memory both a fraction)
        (108, 19.5),  # the right SM count, half the memory
        (98, None),  # a cut-down board sold under the same name; memory not given
    ],
)
def test_a_device_that_does_not_fit_its_named_board_gets_no_peaks(sms, gib):
    found = lookup("NVIDIA A100-SXM4-40GB", sms, gib)
    assert found.peaks is None
    assert "does not fit A100 SXM 40GB (108 SMs, 40 GB)" in found.reason


def test_the_fingerprint_records_the_board_and_source_or_the_reason():
    # The fingerprint's gpu entry (envinfo) as a worker on an H200 writes it.
    gpu = {"name": "NVIDIA H200", "memory_gib": 139.81, "sm_count": 132}
    record = peaks.for_gpu(gpu).record()
    assert record["board"] == "H200"
    assert record["values"]["bf16"] == 989.4
    assert "H200" in record["source"] and "nvidia.com" in record["source"]
    mig = {"name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "memory_gib": 9.75, "sm_count": 16}
    assert "MIG slice" in peaks.for_gpu(mig).record()["reason"]
    assert peaks.for_gpu(None) is None  # a CPU run: nothing to find


def test_the_peaks_handed_out_are_a_copy():
    first = peaks_for("NVIDIA H200")
    first["mem"] = 1
    assert peaks_for("NVIDIA H200")["mem"] == 4800


def test_every_row_uses_only_keys_the_benches_ask_for_and_names_its_source():
    # bench/*.py pass peak="mem" | "h2d" | a dtype (fp32, tf32, fp16, bf16, fp8); training's
    # precisions map onto the same dtypes.
    for board in peaks.BOARDS:
        assert set(board.peaks) <= {"fp32", "tf32", "fp16", "bf16", "fp8", "mem", "h2d"}
        assert {"fp32", "fp16", "mem", "h2d"} <= set(board.peaks), board.board
        assert board.source.startswith("NVIDIA ") and "https://" in board.source, board.board
