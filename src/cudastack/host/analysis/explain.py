"""Explain a difference: what differs between two environments, and which kernels moved too."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from cudastack.contract import runfolder

# (label, path into env.json): what most often explains a speed difference.
FINGERPRINT = (
    ("torch", ("torch", "version")),
    ("CUDA runtime", ("torch", "cuda")),
    ("cuDNN", ("torch", "cudnn")),
    ("NCCL", ("torch", "nccl")),
    ("GPU", ("gpu", "name")),
    ("driver", ("gpu", "nvml", "driver")),
    ("max SM clock MHz", ("gpu", "nvml", "max_sm_clock_mhz")),
    ("power limit mW", ("gpu", "nvml", "power_limit_mw")),
    ("CPU", ("cpu", "model")),
    ("threads", ("threads",)),
    ("data-parallel processes", ("nproc",)),
    ("Python", ("python", "version")),
    ("TF32 matmul", ("flags", "matmul_allow_tf32")),
    ("cudnn.benchmark", ("flags", "cudnn_benchmark")),
    ("image", ("image_digest",)),
    ("lock", ("lock", "hash")),
)
# Differences that make two runs measure different machines, not different software.
HARDWARE = ("GPU", "driver", "max SM clock MHz", "power limit mW", "CPU", "threads")


def _get(env: dict, path: tuple) -> Any:
    for key in path:
        if not isinstance(env, dict):
            return None
        env = env.get(key)  # type: ignore[assignment]
    return env


def load_env(run_dir: Path, cell: str) -> dict:
    """The cell's env.json in a run folder, {} when it has none (a cell that never started).
    Raises RunFolderError when it is not a JSON object."""
    path = run_dir / cell / runfolder.ENV
    return runfolder.read_json(path) if path.is_file() else {}


class EnvDiff(NamedTuple):
    """A fingerprint field that differs between two env.json files."""

    label: str  # as FINGERPRINT names it, e.g. "torch"
    a: Any  # its value in the first (None where absent)
    b: Any  # ... and in the second


def env_diff(a: dict, b: dict) -> list[EnvDiff]:
    """Every fingerprint field whose value differs between env.json ``a`` and ``b``."""
    out = []
    for label, path in FINGERPRINT:
        va, vb = _get(a, path), _get(b, path)
        if va != vb and (va is not None or vb is not None):
            out.append(EnvDiff(label, va, vb))
    return out


def side_diffs(table: pd.DataFrame, envs: dict[str, dict]) -> dict[str, list[EnvDiff]]:
    """For each side of a comparison ``table`` (compare.compare's), how its env.json differs
    from the baseline's; ``envs`` maps a side to its env.json."""
    base = table["baseline"].iloc[0]
    return {s: env_diff(envs.get(base, {}), envs.get(s, {})) for s in table["side"].unique()}


def hardware_warning(diffs: list[EnvDiff]) -> str:
    hw = [f"{label} {va} vs {vb}" for label, va, vb in diffs if label in HARDWARE]
    return (
        "different hardware, so differences are not only software: " + "; ".join(hw) if hw else ""
    )


def moved_kernels(table: pd.DataFrame, side: str) -> str:
    """For one compared side: each kernel bench's median oriented ratio, e.g. 'conv -22 %'.
    Kernels (micro-benchmarks: what workloads are made of) are the benches whose ``kind``, as
    compare carries it from their declaration, is ``kernel``."""
    rows = table[(table["side"] == side) & (table["kind"] == "kernel")]
    parts = []
    for bench, group in rows.groupby("bench"):
        change = group["ratio"].median() - 1
        parts.append(f"{bench} {100 * change:+.0f} %" if abs(change) >= 0.005 else f"{bench} ±0 %")
    return ", ".join(parts)


def explain(table: pd.DataFrame, diffs: dict) -> list[str]:
    """One line per changed workload (a bench of kind ``workload``): its change, how kernels
    moved, what differs. A bench of unknown kind is neither.

    ``diffs`` maps a compared side to its env_diff against the baseline."""
    lines = []
    changed = table[table["verdict"].isin(["faster", "slower"]) & (table["kind"] == "workload")]
    for row in changed.to_dict("records"):
        stack = "; ".join(
            f"{label} {va} -> {vb}"
            for label, va, vb in diffs.get(row["side"], [])
            if label not in ("image", "lock")
        )
        kernels = moved_kernels(table, row["side"])
        lines.append(
            f"{row['case']} {100 * (row['ratio'] - 1):+.0f} % ({row['side']} vs "
            f"{row['baseline']}); kernels: {kernels or 'none measured'}"
            + (f"; {stack}" if stack else "")
        )
    return lines
