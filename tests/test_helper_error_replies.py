"""Error replies that mean "Redis cannot serve now" (OOM, READONLY, MISCONF) get
each helper's failure policy and count toward its breaker; a wrong call
(WRONGTYPE) still raises. Real servers: maxmemory with noeviction, a replica,
and a primary whose RDB save failed with stop-writes-on-bgsave-error."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from redispool import RedisPool
from redispool.helpers import Analytics, Cache, HelperUnavailable, Lockout, RateLimiter
from redispool.helpers.base import key_digest, server_cannot_serve, slot_key
from redispool.testing import RedisServer

Factory = Callable[..., RedisServer]


def _oom(factory: Factory, tmp_path: Path) -> RedisServer:
    server = factory()
    server.config_set("maxmemory-policy", "noeviction")
    server.config_set("maxmemory", 1)
    return server


def _readonly(factory: Factory, tmp_path: Path) -> RedisServer:
    primary, replica = factory(), factory()
    with replica.client() as r:
        r.replicaof(primary.host, primary.port)
    return replica


def _misconf(factory: Factory, tmp_path: Path) -> RedisServer:
    rdb_dir = tmp_path / "rdb"
    rdb_dir.mkdir()
    server = factory(args=("--save", "3600 1", "--dir", str(rdb_dir)))
    shutil.rmtree(rdb_dir)  # the save cannot write its temp file
    with server.client() as r:
        r.bgsave()
        deadline = time.monotonic() + 10
        while r.info("persistence")["rdb_last_bgsave_status"] != "err":
            assert time.monotonic() < deadline, "BGSAVE did not fail"
            time.sleep(0.02)
    return server


@pytest.fixture(params=[_oom, _readonly, _misconf], ids=["OOM", "READONLY", "MISCONF"])
def refusing(
    request: pytest.FixtureRequest, redis_server_factory: Factory, tmp_path: Path
) -> Iterator[RedisPool]:
    """A pool on a server that refuses writes with the error reply named by the id."""
    server = request.param(redis_server_factory, tmp_path)
    with server.client() as r, pytest.raises(redis.ResponseError) as refused:
        r.execute_command("SET", "probe", "x")
    assert server_cannot_serve(refused.value), refused.value  # the condition is real
    with RedisPool(server.url, min_size=0, max_size=4) as pool:
        yield pool
    with server.client() as r:
        r.config_set("save", "")  # so that it can shut down


def test_error_replies_get_the_policy_and_count(refusing: RedisPool) -> None:
    pool = refusing
    lockout = Lockout(pool)
    a = lockout.attempt("alice")
    assert not a.allowed and a.result.degraded and a.result.reason == "unavailable"
    assert lockout.record_failed_attempt("alice").degraded
    assert not Lockout(pool, on_error="open").attempt("alice").result.locked
    with pytest.raises(HelperUnavailable):
        Lockout(pool, on_error="raise").record_failed_attempt("alice")

    limiter = RateLimiter(pool, "5/minute")
    r = limiter.hit("client")
    assert r.allowed and r.degraded and limiter.stats()["failed_open"] == 1
    assert not RateLimiter(pool, "5/minute", on_error="deny").hit("client").allowed

    with Cache(pool, "c") as cache:
        assert cache.set("k", "v") is False
        assert cache.get_with_fallback("k", lambda: "db") == "db"

    analytics = Analytics(pool)
    assert analytics.incr("hits") is None
    with pytest.raises(HelperUnavailable):
        Analytics(pool, on_error="raise").incr("hits")
    buffered = Analytics(pool, buffered=True, flush_interval=60)
    buffered.incr("hits")
    assert buffered.flush() == 0 and buffered.stats()["buffered"] == 1  # kept for a later flush

    for helper in (lockout, limiter, cache, analytics, buffered):
        assert helper.errors >= 1 and helper.breaker.failures >= 1, helper
    assert limiter.breaker.failures == 1  # one failed call, one count
    for _ in range(4):
        limiter.hit("client")
    assert limiter.breaker.state == "open"  # 5 in a row: it stops asking
    buffered.close(timeout=1)


def test_wrong_calls_still_raise(redis_url: str) -> None:
    """WRONGTYPE and a script error are bugs, not outages: raised, and the
    breaker stays closed (the server answered)."""
    with RedisPool(redis_url, min_size=0, max_size=2) as pool:
        lockout = Lockout(pool, namespace="wrongtype")
        digest = key_digest("wrongtype", "mallory", None, "identity")
        with redis.Redis.from_url(redis_url) as admin:
            admin.hset(slot_key("wrongtype", digest, "a"), "x", "1")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE") as info:
            lockout.record_failed_attempt("mallory")
        assert not isinstance(info.value, HelperUnavailable)
        assert lockout.breaker.state == "closed" and lockout.errors == 0
        with pytest.raises(redis.ResponseError, match="Unknown Redis command"):
            lockout._call(lambda r: r.eval("return redis.call('NOSUCHCMD')", 0))
        assert lockout.breaker.failures == 0


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (redis.exceptions.OutOfMemoryError("command not allowed"), True),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), True),
        (redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"), True),
        (redis.ResponseError("BUSY Redis is busy running a script."), True),
        (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), True),
        (redis.ResponseError("Command # 1 (INCRBY k 1) of pipeline caused error: MISCONF x"), True),
        (redis.ResponseError("Command # 2 (SET k v) of pipeline caused error: WRONGTYPE x"), False),
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), False),
        (redis.ResponseError("ERR Error running script"), False),
        (redis.ResponseError("MISCONFIGURED? no"), False),
        (redis.ResponseError(), False),
        (ValueError("OOM"), False),
    ],
)
def test_server_cannot_serve(exc: BaseException, unavailable: bool) -> None:
    assert server_cannot_serve(exc) is unavailable


def test_tryagain_is_retried_within_the_calls_timeout(redis_url: str) -> None:
    """A retry after TRYAGAIN (a cluster slot migrating) gets what is left of the
    call's timeout, not the whole of it again."""
    from redispool.helpers.base import HelperBase

    pool = RedisPool(redis_url, max_size=2)
    helper = HelperBase(pool, namespace="t", timeout=0.3)
    tries: list[float] = []

    def fn(r: redis.Redis) -> object:
        tries.append(time.monotonic())
        if len(tries) == 1:
            time.sleep(0.2)  # (a slow first try)
            raise redis.exceptions.TryAgainError("Multiple keys request during rehashing")
        return r.blpop(["{t}empty"], timeout=2)  # answers after the deadline

    start = time.monotonic()
    with pytest.raises(HelperUnavailable):
        helper._call(fn)
    assert len(tries) == 2 and time.monotonic() - start < 0.4
    assert helper.breaker.failures == 1  # (the timeout: that one is an outage)
    pool.close()
