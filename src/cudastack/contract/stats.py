"""Summary statistics of raw timing samples (standard library only: used on both sides)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# torch.utils.benchmark warns at a relative IQR of 10 % and strongly at 25 %; we flag at 10 %.
NOISY_REL_IQR = 0.10


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values (numpy's and pandas' default)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    """Median, spread and count of one metric's samples."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        return self.iqr / abs(self.median) if self.median else math.inf

    @property
    def noisy(self) -> bool:
        return self.rel_iqr > NOISY_REL_IQR


def summarize(values: Sequence[float]) -> Summary:
    """Summarise raw samples; the median is the headline because noise only ever adds time."""
    ordered = sorted(values)
    return Summary(
        median=quantile(ordered, 0.5),
        q1=quantile(ordered, 0.25),
        q3=quantile(ordered, 0.75),
        n=len(ordered),
    )
