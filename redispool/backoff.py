"""Capped exponential backoff with full jitter (AWS Architecture Blog, 2015)."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["backoff_ceiling", "full_jitter"]


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The upper bound of the delay before retry number ``attempt`` (1-based)."""
    if attempt < 1:
        return 0.0
    # 2**60 is already far past any cap; clamp to avoid float overflow.
    return min(cap, base * (2.0 ** min(attempt - 1, 60)))


def full_jitter(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """A delay drawn uniformly from ``[0, backoff_ceiling(attempt, base, cap)]``."""
    return rand() * backoff_ceiling(attempt, base, cap)
