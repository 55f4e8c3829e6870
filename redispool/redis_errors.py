"""Pool errors that are also redis-py errors, so ``except ConnectionError`` works."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from .errors import PoolClosed, PoolTimeout, TooManyWaiters

__all__ = ["RedisPoolClosed", "RedisPoolTimeout", "RedisTooManyWaiters"]


class RedisPoolTimeout(PoolTimeout, RedisConnectionError):
    """No connection could be borrowed in time (also a ``redis.ConnectionError``)."""


class RedisTooManyWaiters(TooManyWaiters, RedisPoolTimeout):
    """The wait queue is full (also a ``redis.ConnectionError``)."""


class RedisPoolClosed(PoolClosed, RedisConnectionError):
    """The pool is closed (also a ``redis.ConnectionError``)."""
