"""The record schema: one row per sample, plain strings and numbers (standard library only).

History of SCHEMA_VERSION:
  1 — first version.
  2 — lock_hash: the sha256 of the cell's hash-pinned requirements ('' when unlocked).
"""

from __future__ import annotations

SCHEMA_VERSION = 2

# Column -> type. Order is the order of the results table.
COLUMNS = {
    "schema_version": int,
    "run_id": str,
    "cell": str,
    "bench": str,
    "case": str,  # stable id, e.g. gemm[dtype=bf16,n=8192]
    "params": str,  # the case's parameters as JSON
    "metric": str,
    "unit": str,
    "better": str,  # higher | lower
    "rep": int,
    "value": float,  # NaN on a failed or skipped row
    "status": str,  # ok | skipped | failed
    "reason": str,
    "device": str,  # cpu | cuda
    "device_name": str,  # GPU name, or the CPU model on a CPU run
    "gpu_name": str,
    "driver": str,
    "torch": str,
    "cuda_runtime": str,  # torch.version.cuda: what torch loaded, not the image's label
    "cudnn": str,
    "image_digest": str,
    "lock_hash": str,
    "harness_rev": str,
    "started_at": str,  # ISO 8601 UTC, when the case started
}

STATUSES = ("ok", "skipped", "failed")

# Public metric names and their units.
UNITS = {
    "latency": "ms",
    "latency_us": "us",
    "tflops": "TFLOP/s",
    "gbps": "GB/s",
    "pct_of_peak": "%",
}
