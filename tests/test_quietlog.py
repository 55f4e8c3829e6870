"""Quiet logs: an outage as state changes, slow operations as a summary."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest

from redispool import RedisPool
from redispool._quietlog import OutageLog, SlowLog, describe_error
from redispool.testing import RedisServer

POOL_LOG = "redispool.pool"


def _messages(caplog: pytest.LogCaptureFixture, name: str = POOL_LOG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def _hammer(pool: RedisPool, seconds: float) -> int:
    """Borrow over and over while Redis is down; the number of failed borrows."""
    failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pool.redis.ping()
        except Exception:
            failed += 1
        time.sleep(0.01)
    return failed


def _refused(port: int, timeout: float = 5.0) -> None:
    """Wait until connecting to ``port`` on loopback is refused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except ConnectionRefusedError:
            return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"port {port} still accepts"
        time.sleep(0.01)


def test_redis_down_is_logged_once_naming_the_os_error_then_up_again(
    redis_server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=POOL_LOG)
    server: RedisServer = redis_server_factory()
    pool = RedisPool(server.url, min_size=1, max_size=3, timeout=0.2, connect_timeout=0.5)
    pool.redis.ping()
    caplog.clear()  # (before the kill: the upkeep thread's refill may fail first)
    server.kill()
    _refused(server.port)  # (a connect the kernel accepted just before the kill fails
    pool.drain()  # otherwise, "closed by server": logged too, as another reason)
    assert _hammer(pool, 1.5) >= 10
    logged = _messages(caplog)
    assert len(logged) == 1, logged  # was three a second, each "network:ConnectionError"
    assert "creating a connection failed: ConnectionError: Connection refused" in logged[0]
    assert "retrying in the background" in logged[0]
    server.start()
    deadline = time.monotonic() + 20
    while not any("works again" in m for m in _messages(caplog)):
        assert time.monotonic() < deadline, _messages(caplog)
        _hammer(pool, 0.1)
    again = _messages(caplog)[1]
    assert again.startswith(f"pool {pool.name!r}: creating a connection works again after")
    assert len(_messages(caplog)) == 2
    pool.close()


def test_unknown_host_is_named(caplog: pytest.LogCaptureFixture) -> None:
    host = "no-such-host.invalid"
    try:
        socket.getaddrinfo(host, 6379)
    except socket.gaierror as exc:
        reason = exc.strerror
    else:  # pragma: no cover - a resolver that answers for .invalid
        pytest.skip("this resolver answers for .invalid")
    caplog.set_level(logging.INFO, logger=POOL_LOG)
    pool = RedisPool(f"redis://{host}:6379/0", min_size=0, max_size=2, timeout=0.2)
    _hammer(pool, 0.5)
    logged = _messages(caplog)
    assert len(logged) == 1 and f"ConnectionError: {reason}" in logged[0], logged
    pool.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_outage_log_states(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="t")
    clock = FakeClock()
    outage = OutageLog(logging.getLogger("t"), "pool 'p': creating a connection", 30, clock)
    refused = ConnectionRefusedError(111, "Connection refused")
    outage.succeeded()  # not down: nothing
    for _ in range(100):  # 10 s of failures, ten a second
        outage.failed(refused)
        clock.now += 0.1
    assert _messages(caplog, "t") == [
        "pool 'p': creating a connection failed: ConnectionRefusedError: Connection refused;"
        " retrying in the background"
    ]
    clock.now += 25
    outage.failed(refused)
    assert _messages(caplog, "t")[-1] == (
        "pool 'p': creating a connection still failing after 35 s (101 attempts):"
        " ConnectionRefusedError: Connection refused"
    )
    outage.failed(TimeoutError("timed out"))  # another reason: at once
    assert _messages(caplog, "t")[-1].endswith("(102 attempts): TimeoutError: timed out")
    clock.now += 5
    outage.succeeded()
    outage.succeeded()
    assert _messages(caplog, "t")[-1] == (
        "pool 'p': creating a connection works again after 40.0 s (102 failed attempts)"
    )
    assert len(_messages(caplog, "t")) == 4 and not outage.down


def test_describe_error_finds_the_os_error_under_redis_errors() -> None:
    import redis

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1.") from exc
    except redis.ConnectionError as exc:
        assert repr(exc) == "network:ConnectionError"  # what the log said before
        assert describe_error(exc) == "ConnectionError: Connection refused"
    assert describe_error(ValueError("bad")) == "ValueError: bad"
    assert describe_error(KeyError()) == "KeyError"


def test_slow_log_summarises_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="t")
    clock = FakeClock()
    slow = SlowLog(logging.getLogger("t"), 10, clock)
    for i in range(1000):  # 1000 slow operations in 5 s
        slow.slow("cache 'posts'", "GET", 0.012 + (0.030 if i == 500 else 0))
        clock.now += 0.005
    slow.slow("cache 'other'", "SET", 0.020)  # its own interval
    assert _messages(caplog, "t") == [
        "cache 'posts': GET took 12.0 ms",
        "cache 'other': SET took 20.0 ms",
    ]
    clock.now += 10
    slow.slow("cache 'posts'", "SET", 0.015)
    assert _messages(caplog, "t")[2:] == [
        "cache 'posts': 999 more slow operations in the last 10 s, the slowest GET took 42.0 ms",
        "cache 'posts': SET took 15.0 ms",
    ]


def test_cache_slow_operations_are_summarised(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from redispool.helpers.cache import Cache

    caplog.set_level(logging.INFO, logger="redispool.helpers.cache")
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    namespace = f"slow-{time.monotonic_ns()}"
    cache = Cache(pool, namespace=namespace, slow_threshold=0)  # every operation is "slow"
    for i in range(50):
        assert cache.get_with_fallback(f"k{i % 5}", lambda: {"v": 1}) == {"v": 1}
    assert cache.stats()["slow_operations"] >= 50
    logged = [m for m in _messages(caplog, "redispool.helpers.cache") if "took" in m]
    assert len(logged) == 1 and logged[0].startswith(f"cache {namespace!r}: GET"), logged
    cache.close()
    pool.close()
