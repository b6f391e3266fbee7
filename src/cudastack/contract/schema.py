"""The record schema: one table row per sample, plain strings and numbers (standard library only).

History of SCHEMA_VERSION:
  1 — first version.
  2 — lock_hash: the sha256 of the cell's hash-pinned requirements ('' when unlocked).
  3 — process: which of a cell's repeated worker processes (--repeat N) wrote the row.
  4 — kind and headline: what the row's bench file declares (KIND, HEADLINE). Rows recorded
      before have neither; the host reads their kind from its table of the benches shipped then.
  5 — records.jsonl holds one line per (case, metric): its samples as a list, SAMPLES, in place
      of one line per sample with rep and value. A case's fields are written once a metric, not
      once a sample: 200,000 samples of 250 a metric take 3 MB, not 140, and read 40x faster.
      The table is unchanged (one row per sample); lines of schema 4 and older read as before.
"""

from __future__ import annotations

import re
from typing import Any

SCHEMA_VERSION = 5

# Column -> type. Order is the order of the results table.
COLUMNS = {
    "schema_version": int,
    "run_id": str,
    "cell": str,
    "bench": str,
    "kind": str,  # kernel | workload, as the bench declares (KIND); '' on a harness row
    "headline": str,  # the metric its bench states its result by (HEADLINE), e.g. tflops
    "case": str,  # stable id, e.g. gemm[dtype=bf16,n=8192]
    "params": str,  # the case's parameters as JSON
    "metric": str,
    "unit": str,
    "better": str,  # higher | lower
    "rep": int,  # the sample's number within its metric, from 0
    "process": int,  # which worker process of the cell (--repeat N) measured it, from 0
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

# A records.jsonl line's samples: a list of a metric's values in the order measured, null where
# one was not finite; each is a row of the table, its position the row's rep. A case without
# samples (failed or skipped, a harness row) is one line whose list is [null]: one row, no value.
SAMPLES = "values"

STATUSES = ("ok", "skipped", "failed")

# The bench whose rows are the device's measured ceilings (what % of achievable is against, the
# roofline's roofs), not cases of the suite: the worker writes them, the host reads them.
CEILING_BENCH = "ceiling"


def rows_of(line: dict[str, Any]) -> list[dict[str, Any]]:
    """A records.jsonl line as rows of the table: one per element of its SAMPLES list (with
    ``rep`` its position and ``value`` the element, the list itself dropped), or the line itself
    where it holds no list (a line of schema 4 and older: one sample, as rep and value)."""
    samples = line.get(SAMPLES)
    if not isinstance(samples, list):
        return [line]
    common = {key: value for key, value in line.items() if key != SAMPLES}
    return [{**common, "rep": rep, "value": value} for rep, value in enumerate(samples)]


# Public metric names and their units. ``items_per_s`` states its items in the unit: img/s,
# samples/s, tokens/s or seq/s.
UNITS = {
    "latency": "ms",
    "latency_us": "us",
    "tflops": "TFLOP/s",
    "gbps": "GB/s",
    "pct_of_peak": "%",  # of the device's data-sheet peak for the case's dtype, mem or h2d
    "pct_of_achievable": "%",  # of the run's measured ceiling for the same peak (bench ceiling)
    "flop_per_byte": "FLOP/B",  # arithmetic intensity: FLOPs over the least bytes moved
    # training, fine-tuning, data loading
    "data_wait_pct": "%",  # host time blocked on the input pipeline, share of the window
    "data_wait_ms": "ms",  # ... per step
    "compute_ms": "ms",  # the rest of a step: latency = data_wait_ms + compute_ms
    "loss_start": "loss",  # mean loss over the first measured pass over the fixed batches
    "loss_end": "loss",  # ... and over the last: it must be lower
    "peak_mem": "GiB",  # torch.cuda.max_memory_allocated over the window (GPU only)
    "mfu": "%",  # model FLOPs utilisation (train_gpt)
    "trainable_params": "count",
    "output_err": "rel",  # relative L2 error against the fp32 output (infer_precision)
    "algbw_gbps": "GB/s",
    # data parallel (--nproc N)
    "baseline_items_per_s": "",  # one process's rate, in the case's items_per_s unit
    "scaling_efficiency": "%",  # N processes' rate over N x one process's rate
    # NVML telemetry over the measured window (NVIDIA GPUs only)
    "power_w": "W",
    "energy_per_item": "J/item",
    "sm_clock_mhz": "MHz",
    "mem_clock_mhz": "MHz",
    "temp_c": "°C",
    "gpu_util_pct": "%",
    "throttled": "flag",  # 1 when any sample had a power, thermal or slowdown clock reason
    "throttled_pct": "%",
}

# Comma-separated names of the variables the host passed in (--env and the NCCL_* / TORCH_*
# passthrough): env.json records them under "env_passed" with the values the worker sees,
# except values whose names say they are secrets (see SECRET_NAME).
PASSED_ENV = "CUDASTACK_ENV_PASSED"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|AUTH|CREDENTIAL", re.IGNORECASE)
