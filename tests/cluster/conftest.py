"""Cluster tests: the shared 3+3 cluster (``redis_cluster``) and pools on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from redispool import RedisClusterPool


@pytest.fixture
def cluster_pool(redis_cluster_url: str) -> Iterator[Callable[..., RedisClusterPool]]:
    """Make pools on the shared cluster (small, short timeouts); all closed after."""
    pools: list[RedisClusterPool] = []

    def make(**kwargs: Any) -> RedisClusterPool:
        opts: dict[str, Any] = {"max_size": 4, "timeout": 2.0, "socket_timeout": 2.0}
        opts.update(kwargs)
        pool = RedisClusterPool(redis_cluster_url, **opts)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(timeout=1.0)
