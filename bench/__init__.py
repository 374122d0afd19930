"""Benchmarks: each ``bench/bench_*.py`` module measures things side by side in one run.

A module exposes ``run() -> list[Comparison]``; ``python -m bench`` (``make bench``) runs
them all, one at a time (two heavy jobs on two cores slow each other 3-5x), and prints
one table of ratios. Timed assertions never live in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """One row: a candidate against a baseline on the same work, in the same run."""

    name: str
    unit: str  # e.g. "tokens/s"
    baseline_label: str
    baseline: float
    candidate_label: str
    candidate: float
    target: str = ""  # e.g. ">= 0.8"; empty when the row only informs

    @property
    def ratio(self) -> float:
        return self.candidate / self.baseline


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls, in seconds (the least disturbed measurement)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
