"""Borrow+release of a warm object, side by side (pytest-benchmark).

Run: ``pytest bench/bench_pool.py --benchmark-columns=median,mean,ops``
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from _lease_floor import FloorPool  # (bench/ is on the path under pytest)

from redispool import ObjectPool


@pytest.fixture
def warm_pool() -> Iterator[ObjectPool[object]]:
    pool: ObjectPool[object] = ObjectPool(object, max_size=20)
    pool.release(pool.borrow())
    yield pool
    pool.close()


def test_objectpool_borrow_release(benchmark: Any, warm_pool: ObjectPool[object]) -> None:
    borrow, release = warm_pool.borrow, warm_pool.release

    def run() -> None:
        release(borrow())

    benchmark.group = "borrow+release"
    benchmark(run)


def test_objectpool_acquire_with(benchmark: Any, warm_pool: ObjectPool[object]) -> None:
    acquire = warm_pool.acquire

    def run() -> None:
        with acquire():
            pass

    benchmark.group = "borrow+release"
    benchmark(run)


def test_lease_essential_steps_floor(benchmark: Any) -> None:
    """``with acquire():`` with only its essential steps (``_lease_floor.py``)."""
    acquire = FloorPool().acquire

    def run() -> None:
        with acquire():
            pass

    benchmark.group = "borrow+release"
    benchmark(run)


def test_lock_deque_floor(benchmark: Any) -> None:
    """The floor: two lock round trips around a deque pop/append."""
    lock = threading.Lock()
    dq: deque[object] = deque([object()])

    def run() -> None:
        with lock:
            obj = dq.pop()
        with lock:
            dq.append(obj)

    benchmark.group = "borrow+release"
    benchmark(run)


def test_queue_get_put(benchmark: Any) -> None:
    q: queue.Queue[object] = queue.Queue()
    q.put(object())

    def run() -> None:
        q.put(q.get())

    benchmark.group = "borrow+release"
    benchmark(run)


@pytest.mark.parametrize("kind", ["ConnectionPool", "BlockingConnectionPool"])
def test_redis_py_pool_get_release(benchmark: Any, redis_url: str, kind: str) -> None:
    cls = getattr(redis, kind)
    pool = cls.from_url(redis_url, max_connections=20)
    pool.release(pool.get_connection())  # warm: connected

    def run() -> None:
        pool.release(pool.get_connection())

    benchmark.group = "borrow+release"
    benchmark(run)
    pool.disconnect()
