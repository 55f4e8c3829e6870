"""Per-GET cost on one thread, side by side (pytest-benchmark).

Run: ``pytest bench/bench_redis.py --benchmark-columns=min,median,mean,ops``
The round trip dominates; what matters is each line minus the raw floor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from redispool import RedisPool


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    p = RedisPool(redis_url, min_size=1, max_size=20)
    p.open(wait=True)
    p.redis.set("k", "v")
    yield p
    p.close()


def test_get_raw_connection_floor(benchmark: Any, redis_url: str) -> None:
    conn = redis.Connection.from_url(redis_url) if hasattr(redis.Connection, "from_url") else None
    if conn is None:
        conn = redis.ConnectionPool.from_url(redis_url).make_connection()
    conn.connect()

    def run() -> None:
        conn.send_command("GET", "k")
        conn.read_response()

    benchmark.group = "GET"
    benchmark(run)
    conn.disconnect()


def test_get_redis_py_single_connection_client(benchmark: Any, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, single_connection_client=True)
    benchmark.group = "GET"
    benchmark(r.get, "k")
    r.close()


@pytest.mark.parametrize("kind", ["ConnectionPool", "BlockingConnectionPool"])
def test_get_redis_py_pool(benchmark: Any, redis_url: str, kind: str) -> None:
    r = redis.Redis(connection_pool=getattr(redis, kind).from_url(redis_url, max_connections=20))
    benchmark.group = "GET"
    benchmark(r.get, "k")
    r.close()


def test_get_redispool_client(benchmark: Any, pool: RedisPool) -> None:
    client = pool.client

    def run() -> None:
        with client() as r:
            r.get("k")

    benchmark.group = "GET"
    benchmark(run)


def test_get_redispool_connection(benchmark: Any, pool: RedisPool) -> None:
    connection = pool.connection

    def run() -> None:
        with connection() as conn:
            conn.send_command("GET", "k")
            conn.read_response()

    benchmark.group = "GET"
    benchmark(run)


def test_get_redispool_drop_in(benchmark: Any, pool: RedisPool) -> None:
    benchmark.group = "GET"
    benchmark(pool.redis.get, "k")


def test_checkout_redispool_with_liveness_check(benchmark: Any, pool: RedisPool) -> None:
    get, put = pool._get, pool._put

    def run() -> None:
        put(get())

    benchmark.group = "checkout"
    benchmark(run)


@pytest.mark.parametrize("kind", ["ConnectionPool", "BlockingConnectionPool"])
def test_checkout_redis_py(benchmark: Any, redis_url: str, kind: str) -> None:
    cp = getattr(redis, kind).from_url(redis_url, max_connections=20)
    cp.release(cp.get_connection())

    def run() -> None:
        cp.release(cp.get_connection())

    benchmark.group = "checkout"
    benchmark(run)
    cp.disconnect()


def test_overhead_client_block_without_commands(benchmark: Any, pool: RedisPool) -> None:
    """What ``with pool.client() as r`` adds to a command: borrow with the
    liveness check, clone the template client, release with the dirty check."""
    client = pool.client

    def run() -> None:
        with client():
            pass

    benchmark.group = "overhead per block"
    benchmark(run)


def test_overhead_connection_block_without_commands(benchmark: Any, pool: RedisPool) -> None:
    connection = pool.connection

    def run() -> None:
        with connection():
            pass

    benchmark.group = "overhead per block"
    benchmark(run)


def test_overhead_command_tracking(benchmark: Any, pool: RedisPool) -> None:
    """The dirty-tracking cost per command: send+read on a pooled connection
    minus the same on a plain redis-py connection is this, no network."""
    with pool.connection() as conn:
        cmd = ("GET", "k")
        benchmark.group = "overhead per block"
        benchmark(conn._rp_note, cmd)
