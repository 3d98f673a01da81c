"""Timing and precision helpers shared by every benchmark."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Run ``fn`` ``repeats`` times and return the median wall time in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def precision_bits(got: np.ndarray, want: np.ndarray) -> float:
    """Precision in bits: ``-log2(max |got - want|)`` (inf for an exact result)."""
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
    return math.inf if err == 0.0 else -math.log2(err)
