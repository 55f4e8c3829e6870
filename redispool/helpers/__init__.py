"""Helpers a public API needs on top of Redis, each borrowing from a RedisPool.

Every call does its work in one round trip, under its own deadline, behind a
circuit breaker, and applies an explicit policy when Redis is unreachable.
"""

from __future__ import annotations

from .base import CircuitBreaker, HelperUnavailable, RedisScript, hashed_key

__all__ = ["CircuitBreaker", "HelperUnavailable", "RedisScript", "hashed_key"]
