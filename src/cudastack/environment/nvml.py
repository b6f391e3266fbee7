"""NVML opened in one place, for both sides: nvidia-ml-py's module, initialised, or why not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional


def init() -> tuple[Optional[Any], str]:
    """(the initialised ``pynvml`` module, "") or (None, why NVML cannot be had here).

    NVML stays initialised for the process (telemetry reads it for a whole run); ``session``
    shuts it down after a block."""
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return None, "nvidia-ml-py is not installed in this environment"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver, no device: all mean "no NVIDIA GPU here"
        return None, f"NVML unavailable ({type(exc).__name__}: {exc})"
    return pynvml, ""


@contextmanager
def session() -> Iterator[Optional[Any]]:
    """``pynvml`` initialised for the block (shut down after it), or None where NVML cannot be
    had."""
    nv, _ = init()
    try:
        yield nv
    finally:
        if nv is not None:
            nv.nvmlShutdown()


def text(value: Any) -> str:
    """An NVML string: bytes in older bindings, str in newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)
