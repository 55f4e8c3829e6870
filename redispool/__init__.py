"""redispool: a small, fast, fair connection pool for redis-py."""

from __future__ import annotations

from .cluster import (
    ClusterPoolTimeout,
    ClusterTooManyWaiters,
    RedisClusterPool,
    RedisClusterPoolStats,
)
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyWaiters
from .pool import ObjectPool
from .redis_adapter import ConnectionPool
from .redis_errors import RedisPoolClosed, RedisPoolTimeout, RedisTooManyWaiters
from .redis_pool import RedisPool, RedisPoolStats
from .sizing import budget
from .stats import PoolStats

__all__ = [
    "ClusterPoolTimeout",
    "ClusterTooManyWaiters",
    "ConnectionPool",
    "ObjectPool",
    "PoolClosed",
    "PoolError",
    "PoolStats",
    "PoolTimeout",
    "RedisClusterPool",
    "RedisClusterPoolStats",
    "RedisPool",
    "RedisPoolClosed",
    "RedisPoolStats",
    "RedisPoolTimeout",
    "RedisTooManyWaiters",
    "TooManyWaiters",
    "budget",
]

__version__ = "0.1.0.dev0"
