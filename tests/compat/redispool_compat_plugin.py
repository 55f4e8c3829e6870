"""pytest plugin for redis-py's own test suite: the pools its fixtures build with
``redis.ConnectionPool(**kwargs)`` become ``redispool.ConnectionPool``s (what
``RedisPool.as_redis_pool()`` returns), so every fixture client runs through a
fair ``RedisPool``. Loaded with ``-p redispool_compat_plugin`` by
``test_redis_py_suite.py``; each test's pools are closed after it.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

import redispool

_made: list[redispool.ConnectionPool] = []


class CompatPool(redispool.ConnectionPool):
    """``redispool.ConnectionPool`` that opens nothing ahead (``min_size=0``, as
    redis-py's pool) and is closed when its test ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_size", 0)
        super().__init__(*args, **kwargs)
        _made.append(self)


def pytest_configure(config: pytest.Config) -> None:
    redis.ConnectionPool = CompatPool  # type: ignore[misc]


def pytest_report_header(config: pytest.Config) -> str:
    return f"redispool {redispool.__version__}: redis.ConnectionPool is redispool.ConnectionPool"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    yield
    while _made:
        _made.pop().redis_pool.close(timeout=0.5)
