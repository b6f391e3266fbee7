"""NVML opened in one place, for both sides: nvidia-ml-py's module, initialised, or why not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Optional


class Opened(NamedTuple):
    module: Optional[Any]  # ``pynvml``, initialised; None where NVML cannot be had
    why_not: str  # why it cannot ('' when it can)


def init() -> Opened:
    """The ``pynvml`` module initialised, or why NVML cannot be had here.

    NVML stays initialised for the process (telemetry reads it for a whole run); ``session``
    shuts it down after a block."""
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return Opened(None, "nvidia-ml-py is not installed in this environment")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver, no device: all mean "no NVIDIA GPU here"
        return Opened(None, f"NVML unavailable ({type(exc).__name__}: {exc})")
    return Opened(pynvml, "")


@contextmanager
def session() -> Iterator[Optional[Any]]:
    """``pynvml`` initialised for the block (shut down after it), or None where NVML cannot be
    had."""
    nv = init().module
    try:
        yield nv
    finally:
        if nv is not None:
            nv.nvmlShutdown()


def text(value: Any) -> str:
    """An NVML string: bytes in older bindings, str in newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)
