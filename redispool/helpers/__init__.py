"""Helpers a public API needs on top of Redis, each borrowing from a RedisPool.

Every call does its work in one round trip, under its own deadline, behind a
circuit breaker, and applies an explicit policy when Redis is unreachable.
"""

from __future__ import annotations

from .analytics import Analytics
from .base import CircuitBreaker, HelperUnavailable, RedisScript, hashed_key
from .cache import Cache, LoaderError
from .lockout import Lockout, LockoutAttempt, LockoutResult
from .ratelimit import RateLimiter, RateLimitResult, parse_limit

__all__ = [
    "Analytics",
    "Cache",
    "CircuitBreaker",
    "HelperUnavailable",
    "LoaderError",
    "Lockout",
    "LockoutAttempt",
    "LockoutResult",
    "RateLimitResult",
    "RateLimiter",
    "RedisScript",
    "hashed_key",
    "parse_limit",
]
