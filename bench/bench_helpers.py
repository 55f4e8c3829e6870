"""Lockout and rate-limit checks: pooled, one round trip, vs the naive way
(a new connection per call and INCR + EXPIRE + GET as separate commands).

Run: ``pytest bench/bench_helpers.py --benchmark-columns=min,median,mean,ops``
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from redispool import RedisPool
from redispool.helpers.lockout import Lockout
from redispool.helpers.ratelimit import RateLimiter


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    p = RedisPool(redis_url, min_size=1, max_size=4)
    p.open(wait=True)
    yield p
    p.close()


@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "gcra"])
def test_ratelimit_pooled(benchmark: Any, pool: RedisPool, algorithm: str) -> None:
    rl = RateLimiter(pool, "1000000/minute", algorithm=algorithm)
    benchmark.group = "rate limit check"
    benchmark(rl.hit, "client")


def test_ratelimit_naive_new_connection_per_call(benchmark: Any, redis_url: str) -> None:
    def naive() -> bool:
        r = redis.Redis.from_url(redis_url)
        try:
            n = r.incr("naive:rl")
            r.expire("naive:rl", 60)
            r.get("naive:rl")
            return int(n) <= 1_000_000
        finally:
            r.close()

    benchmark.group = "rate limit check"
    benchmark(naive)


def test_ratelimit_naive_pooled_three_commands(benchmark: Any, pool: RedisPool) -> None:
    r = pool.redis

    def naive() -> bool:
        n = r.incr("naive:rl2")
        r.expire("naive:rl2", 60)
        r.get("naive:rl2")
        return int(n) <= 1_000_000

    benchmark.group = "rate limit check"
    benchmark(naive)


def test_lockout_record_failure_pooled(benchmark: Any, pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=1_000_000_000)
    names = itertools.cycle([f"user{i}" for i in range(100)])
    benchmark.group = "lockout"
    benchmark(lambda: lo.record_failed_attempt(next(names)))


def test_lockout_check_pooled(benchmark: Any, pool: RedisPool) -> None:
    lo = Lockout(pool)
    benchmark.group = "lockout"
    benchmark(lo.check_lockout, "someone")
