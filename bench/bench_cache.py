"""``Cache.get_with_fallback`` on a hit vs. the naive way (pytest-benchmark).

Run: ``pytest bench/bench_cache.py --benchmark-columns=min,median,mean,ops``

The naive way opens a new ``redis.Redis`` connection per call, GETs, and on a
miss SETs: each call pays a TCP connect (and the handshake). The cache borrows a
warm pooled connection and does one EVALSHA (versions + value in one round trip).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from redispool import RedisPool
from redispool.helpers.cache import Cache

VALUE = {"id": 42, "name": "ann", "roles": ["admin", "dev"]}


def loader() -> dict[str, Any]:
    return VALUE


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    p = RedisPool(redis_url, min_size=1, max_size=20)
    p.open(wait=True)
    yield p
    p.close()


@pytest.fixture
def cache(pool: RedisPool) -> Iterator[Cache]:
    c = Cache(pool, secret=b"bench", slow_threshold=1.0)
    c.set("user:42", VALUE)
    yield c
    c.close()


def test_hit_cache_get_with_fallback(benchmark: Any, cache: Cache) -> None:
    benchmark.group = "cache hit"
    assert benchmark(cache.get_with_fallback, "user:42", loader) == VALUE
    assert cache.stats()["loader_calls"] == 0


def test_hit_cache_get(benchmark: Any, cache: Cache) -> None:
    benchmark.group = "cache hit"
    assert benchmark(cache.get, "user:42") == VALUE


def test_hit_pooled_plain_get_floor(benchmark: Any, pool: RedisPool) -> None:
    """A pooled GET + json.loads with no versioning, hashing or stats: the floor."""
    pool.redis.set("plain", json.dumps(VALUE))
    client = pool.client

    def run() -> Any:
        with client() as r:
            return json.loads(cast(bytes, r.get("plain")))

    benchmark.group = "cache hit"
    assert benchmark(run) == VALUE


def test_hit_naive_new_connection_per_call(benchmark: Any, redis_url: str) -> None:
    def run() -> Any:
        r = redis.Redis.from_url(redis_url)
        try:
            raw = r.get("naive")
            if raw is None:
                value = loader()
                r.set("naive", json.dumps(value), ex=300)
                return value
            return json.loads(raw)
        finally:
            r.close()

    run()  # now it is a hit
    benchmark.group = "cache hit"
    assert benchmark(run) == VALUE
