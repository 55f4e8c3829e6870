"""Cost of one counter increment (pytest-benchmark).

Run: ``pytest bench/bench_analytics.py --benchmark-columns=min,median,mean,ops``

* naive: a new connection per call, INCRBY then EXPIRE as two round trips;
* pooled: ``Analytics.incr`` (a pooled connection, one pipeline, one round trip);
* buffered: ``Analytics(buffered=True).incr`` (memory only; flushed in the background).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from redispool import RedisPool
from redispool.helpers.analytics import Analytics

RETENTION = 7 * 86400


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    p = RedisPool(redis_url, min_size=1, max_size=4)
    p.open(wait=True)
    yield p
    p.close()


def test_incr_naive_new_connection(benchmark: Any, redis_url: str) -> None:
    def run() -> None:
        r = redis.Redis.from_url(redis_url, single_connection_client=True)
        key = f"naive:c:hits:{int(time.time() // 60 * 60)}"
        r.incrby(key, 1)
        r.expire(key, RETENTION)
        r.close()

    benchmark.group = "incr"
    benchmark.pedantic(run, rounds=2000, warmup_rounds=20)  # bounded: each round leaves a TIME_WAIT


def test_incr_naive_shared_client_two_round_trips(benchmark: Any, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)

    def run() -> None:
        key = f"naive2:c:hits:{int(time.time() // 60 * 60)}"
        r.incrby(key, 1)
        r.expire(key, RETENTION)

    benchmark.group = "incr"
    benchmark(run)
    r.close()


def test_incr_pooled_one_pipeline(benchmark: Any, pool: RedisPool) -> None:
    a = Analytics(pool, namespace="pooled")
    benchmark.group = "incr"
    benchmark(a.incr, "hits")
    assert a.stats()["errors"] == 0


def test_incr_buffered(benchmark: Any, pool: RedisPool) -> None:
    a = Analytics(pool, namespace="buffered", buffered=True)
    benchmark.group = "incr"
    benchmark(a.incr, "hits")
    a.close()
    s = a.stats()
    assert s["buffered"] == 0 and s["dropped"] == 0 and s["errors"] == 0
    assert a.get("hits") == s["increments"]
