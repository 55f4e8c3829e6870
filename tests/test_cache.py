"""Cache against a real redis-server: hits, TTLs, round trips, outages, stampedes."""

from __future__ import annotations

import datetime
import functools
import gc
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from redispool import RedisPool
from redispool._quietlog import SlowLog
from redispool.helpers import CircuitBreaker, HelperUnavailable
from redispool.helpers.cache import Cache, LoaderError
from redispool.testing import RedisServer

from .helpers import assert_child_ok, refuse_threads
from .lua_keys import script_keys

SECRET = b"test-secret"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    p = RedisPool(redis_url, min_size=1, max_size=8, timeout=2)
    p.open(wait=True)
    yield p
    p.close()


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


@pytest.fixture
def make_cache(pool: RedisPool) -> Iterator[Callable[..., Cache]]:
    made: list[Cache] = []

    def make(**kw: Any) -> Cache:
        kw.setdefault("secret", SECRET)
        c = Cache(kw.pop("pool", pool), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close(2)


def data_keys(admin: redis.Redis, namespace: str = "cache") -> list[bytes]:
    """Stored entries (never lease or version keys). KEYS is fine in a test."""
    keys = cast(list[bytes], admin.keys(f"{namespace}:{{{namespace}}}:v:*"))
    return [k for k in keys if not k.endswith(b":lease")]


def calls(admin: redis.Redis) -> dict[str, int]:
    return {k: v["calls"] for k, v in admin.info("commandstats").items()}


def test_miss_set_hit_and_stats(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    assert cache.get("user:1") is None
    assert cache.get("user:1", default="d") == "d"
    assert cache.set("user:1", {"name": "ann", "tags": [1, 2]}) is True
    assert cache.get("user:1") == {"name": "ann", "tags": [1, 2]}
    assert cache.get(("user", "1")) is None  # a tuple key is another key
    s = cache.stats()
    assert (s["hits"], s["misses"], s["errors"]) == (1, 3, 0)
    assert s["hit_rate"] == 0.25
    for name in ("fallbacks", "slow_operations", "dropped_writes", "loader_calls"):
        assert name in s


def test_get_with_fallback_writes_back_and_then_hits(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    loads: list[int] = []

    def loader() -> dict[str, int]:
        loads.append(1)
        return {"n": len(loads)}

    assert cache.get_with_fallback("k", loader) == {"n": 1}
    assert cache.flush(2)
    assert cache.get_with_fallback("k", loader) == {"n": 1}
    assert len(loads) == 1
    s = cache.stats()
    assert (s["hits"], s["misses"], s["loader_calls"], s["fallbacks"]) == (1, 1, 1, 0)


def test_write_back_runs_in_the_caller_when_no_writer_thread_can_start(
    make_cache: Callable[..., Cache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At interpreter shutdown (an atexit hook) Python 3.12 refuses new threads:
    the first write-back raised that RuntimeError to ``get_with_fallback``'s
    caller, after the loader had run. It is written by the caller instead."""
    start = refuse_threads(monkeypatch, "redispool-cache")
    cache = make_cache()
    loads: list[int] = []
    assert cache.get_with_fallback("k", lambda: loads.append(1) or "v") == "v"
    assert cache.get_with_fallback("k", lambda: loads.append(1) or "w") == "v"  # written
    assert len(loads) == 1 and cache.stats()["dropped_writes"] == 0
    assert cache._writer._thread is None
    monkeypatch.setattr(threading.Thread, "start", start)
    assert cache.get_with_fallback("k2", lambda: "x") == "x"  # the thread, this time
    assert cache.flush(2) and cache.get("k2") == "x"
    assert cache._writer._thread is not None and cache._writer._thread.is_alive()


def test_the_writer_thread_of_a_cache_never_closed_ends_once_it_is_collected(
    pool: RedisPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Cache made per request (or per test) and never closed left its writer
    thread waiting for jobs for ever: one thread more each time."""
    from redispool.helpers import _writer

    monkeypatch.setattr(_writer, "OWNER_CHECK", 0.02)
    cache = Cache(pool, secret=SECRET, namespace="gone")
    assert cache.get_with_fallback("k", lambda: "v") == "v"  # a write-back: the thread runs
    assert cache.flush(2)
    thread = cache._writer._thread
    assert thread is not None and thread.is_alive()
    del cache
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_keys_are_hashed_never_raw(make_cache: Callable[..., Cache], admin: redis.Redis) -> None:
    cache = make_cache(namespace="web")
    cache.set("alice@example.com\r\nFLUSHALL", 1)
    (key,) = data_keys(admin, "web")
    assert b"alice" not in key and len(key) < 64
    assert admin.exists("web:{web}:version")  # the namespace's version (set by its first call)


def test_one_round_trip_per_read(
    make_cache: Callable[..., Cache], pool: RedisPool, admin: redis.Redis
) -> None:
    cache = make_cache()
    cache.set("k", "v")
    assert cache.get("k") == "v"  # the script is loaded now
    before, pool_before = calls(admin), pool.stats().commands
    for _ in range(10):
        assert cache.get("k") == "v"
        assert cache.get_with_fallback("k", lambda: "other") == "v"
    after = calls(admin)
    # Top-level commands: 20 EVALSHA (the GETs of the version and the value run
    # inside the script, in the same round trip), then this INFO.
    assert after["cmdstat_evalsha"] - before.get("cmdstat_evalsha", 0) == 20
    assert after.get("cmdstat_eval", 0) == before.get("cmdstat_eval", 0)
    assert pool.stats().commands - pool_before == 20


def test_ttl_and_negative_ttl_are_set(make_cache: Callable[..., Cache], admin: redis.Redis) -> None:
    cache = make_cache(default_ttl=100, negative_ttl=7)
    cache.set("default", 1)
    (key,) = data_keys(admin)
    assert 99_000 < admin.pttl(key) <= 100_000
    admin.flushdb()
    cache.set("explicit", 1, ttl=2.5)
    (key,) = data_keys(admin)
    assert 2_000 < admin.pttl(key) <= 2_500
    admin.flushdb()
    assert cache.get_with_fallback("missing", lambda: None, ttl=100) is None
    assert cache.flush(2)
    (key,) = data_keys(admin)
    assert 6_000 < admin.pttl(key) <= 7_000  # "not found" gets negative_ttl, not ttl
    assert cache.get_with_fallback("missing", lambda: 1 / 0) is None  # cached: no loader call
    assert cache.get("missing", default="d") is None  # the cached None, not the default


def test_negative_ttl_zero_does_not_cache_none(
    make_cache: Callable[..., Cache], admin: redis.Redis
) -> None:
    cache = make_cache(negative_ttl=0)
    assert cache.get_with_fallback("missing", lambda: None) is None
    assert cache.flush(2)
    assert data_keys(admin) == [] and admin.keys("*lease") == []


def test_a_none_that_is_not_cached_replaces_the_entry_it_makes_out_of_date(
    make_cache: Callable[..., Cache],
) -> None:
    # Regression: with negative_ttl=0, set(key, None) and a fill that loaded None
    # stored nothing and left the entry there: the value the app had just said
    # was gone (a deleted row) was served until its TTL.
    cache = make_cache(negative_ttl=0, early_recompute_beta=1.0, rand=lambda: 0.5)
    assert cache.set("k", "old")
    assert cache.set("k", None) is False  # not stored (negative_ttl=0) ...
    assert cache.get("k", default="d") == "d"  # ... and the old value is gone
    # An early recompute (XFetch) that loads None: the row was deleted meanwhile.
    assert cache.get_with_fallback("j", lambda: time.sleep(0.02) or "old", ttl=1) == "old"
    assert cache.flush(2)
    cache._rand = lambda: 1e-300  # recompute now
    assert cache.get_with_fallback("j", lambda: None, ttl=1) is None
    assert cache.flush(2) and cache.stats()["early_recomputes"] == 1
    assert cache.get("j", default="d") == "d"
    # A failed recompute still serves (and keeps) the cached value.
    assert cache.get_with_fallback("i", lambda: time.sleep(0.02) or "kept", ttl=1) == "kept"
    assert cache.flush(2)
    assert cache.get_with_fallback("i", lambda: 1 / 0, ttl=1) == "kept"
    assert cache.flush(2) and cache.stats()["early_recomputes"] == 2
    assert cache.get("i") == "kept"


@pytest.mark.parametrize(
    "entry",
    [b"v", b"v\x00\x00\x00\x00{not json", b'z\x00\x00\x00\x00"a later format"'],
    ids=["too-short", "bad-payload", "unknown-kind"],
)
def test_an_unreadable_entry_is_a_miss_and_is_replaced(
    make_cache: Callable[..., Cache], admin: redis.Redis, entry: bytes
) -> None:
    # Regression: an entry of a kind this version does not know (a later
    # format's, during a rolling upgrade) raised UnboundLocalError from get()
    # and get_with_fallback() instead of counting as a miss.
    cache = make_cache()
    assert cache.set("k", "x")
    (key,) = data_keys(admin)
    stored = admin.get(key)
    admin.set(key, stored[: stored.index(b"|") + 1] + entry, px=60_000)  # (current version)
    assert cache.get("k", default="d") == "d"
    assert cache.get_with_fallback("k", lambda: "loaded") == "loaded"
    assert cache.flush(2)
    assert cache.get("k") == "loaded"  # replaced (the fill took the lease)
    assert cache.stats()["errors"] > 0  # (each read of it counts)


def _outage_cache(make_cache: Callable[..., Cache], server: RedisServer) -> tuple[Cache, RedisPool]:
    # The borrow wait (get_timeout) does not bound creating a connection: against a
    # paused server the TCP connect succeeds and the handshake waits socket_timeout.
    p = RedisPool(server.url, min_size=1, max_size=4, connect_timeout=0.2, socket_timeout=0.2)
    p.open(wait=True)
    breaker = CircuitBreaker(threshold=3, cooldown=0.2)
    return make_cache(pool=p, get_timeout=0.1, set_timeout=0.1, breaker=breaker), p


def _assert_fallbacks_fast(cache: Cache, n: int = 8) -> None:
    for i in range(n):
        start = time.monotonic()
        assert cache.get_with_fallback("k", functools.partial(str, f"fresh{i}")) == f"fresh{i}"
        assert time.monotonic() - start < 0.5
    s = cache.stats()
    assert s["fallbacks"] >= n and s["errors"] >= n and s["hits"] == 1


def _assert_recovers(cache: Cache, server: RedisServer) -> None:
    deadline = time.monotonic() + 8
    while cache.get("k") != "v":
        assert time.monotonic() < deadline, cache.stats()
        cache.set("k", "v")
        time.sleep(0.05)
    assert cache.get_with_fallback("k", lambda: "loader") == "v"


def test_redis_killed_then_restarted(
    make_cache: Callable[..., Cache], redis_server_factory: Callable[..., RedisServer]
) -> None:
    server = redis_server_factory()
    cache, p = _outage_cache(make_cache, server)
    cache.set("k", "v")
    assert cache.get_with_fallback("k", lambda: "loader") == "v"
    server.kill()
    start = time.monotonic()
    _assert_fallbacks_fast(cache)
    assert time.monotonic() - start < 1.0  # all 8 together
    assert cache.get("k", default="d") == "d" and cache.set("k", 1) is False
    server.restart()
    _assert_recovers(cache, server)
    p.close()


def test_redis_paused_reads_time_out(
    make_cache: Callable[..., Cache], redis_server_factory: Callable[..., RedisServer]
) -> None:
    server = redis_server_factory()
    cache, p = _outage_cache(make_cache, server)
    cache.set("k", "v")
    assert cache.get_with_fallback("k", lambda: "loader") == "v"
    server.pause()
    try:
        _assert_fallbacks_fast(cache)
        assert cache.stats()["breaker"]["state"] != "closed"
    finally:
        server.resume()
    _assert_recovers(cache, server)
    p.close()


def test_pool_exhausted_is_a_fallback(make_cache: Callable[..., Cache], redis_url: str) -> None:
    p = RedisPool(redis_url, min_size=1, max_size=1)
    cache = make_cache(pool=p, get_timeout=0.05)
    with p.client():  # hold the only connection
        start = time.monotonic()
        assert cache.get_with_fallback("k", lambda: 1) == 1
        assert time.monotonic() - start < 0.5
    assert cache.stats()["fallbacks"] == 1
    p.close()


def test_single_flight_in_process(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    n_calls = 0
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def loader() -> str:
        nonlocal n_calls
        with lock:
            n_calls += 1
        time.sleep(0.2)
        return "value"

    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        results.append(cache.get_with_fallback("hot", loader))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == ["value"] * 20
    assert n_calls == 1
    assert cache.stats()["loader_calls"] == 1


def test_a_follower_gets_its_own_copy_of_the_leaders_value(
    make_cache: Callable[..., Cache],
) -> None:
    # Regression: a follower got the very object the leader's request got, so
    # what one request changed in its value (a per-viewer field added before
    # rendering) showed in the other's response; a hit decodes a fresh object.
    cache = make_cache()
    flight_key = cache._locate("k", ()).flight

    def loader() -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while (f := cache._flight._flights.get(flight_key)) is None or f.followers < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        return {"post": 1, "tags": ["a"]}

    got: list[Any] = []
    leader = threading.Thread(target=lambda: got.append(cache.get_with_fallback("k", loader)))
    leader.start()
    deadline = time.monotonic() + 5
    while cache.stats()["loader_calls"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    mine = cache.get_with_fallback("k", lambda: {"post": 2})  # joins the leader's flight
    leader.join(5)
    assert cache.stats()["single_flight_shared"] == 1 and cache.stats()["loader_calls"] == 1
    assert mine == got[0] == {"post": 1, "tags": ["a"]}
    mine["tags"].append("viewer's own")
    assert got[0] == {"post": 1, "tags": ["a"]}


def test_a_failing_loader_is_called_once_for_50_concurrent_misses(
    make_cache: Callable[..., Cache],
) -> None:
    # Regression: every follower of a failed leader ran the loader itself (50
    # concurrent misses, 50 loader calls). Followers share the leader's exception;
    # callers arriving after it see the failure in Redis for error_ttl.
    cache = make_cache()
    n_calls = 0
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def loader() -> str:
        nonlocal n_calls
        with lock:
            n_calls += 1
        time.sleep(0.3)
        raise KeyError("the leader's own error")

    outcomes: list[BaseException | str] = []

    def worker() -> None:
        barrier.wait()
        try:
            outcomes.append(cache.get_with_fallback("k", loader))
        except (KeyError, LoaderError) as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert n_calls == 1 and cache.stats()["loader_calls"] == 1
    assert len(outcomes) == 50 and all(isinstance(o, (KeyError, LoaderError)) for o in outcomes)
    assert sum(isinstance(o, KeyError) for o in outcomes) >= 2  # the leader's, shared
    assert cache.flush(2)
    with pytest.raises(LoaderError, match="KeyError"):  # the short negative result
        cache.get_with_fallback("k", loader)
    assert n_calls == 1
    time.sleep(1.1)  # error_ttl (1 s) later the loader is tried again
    assert cache.get_with_fallback("k", lambda: "ok") == "ok"


def test_a_failure_is_not_shared_when_error_ttl_is_0(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache(error_ttl=0)
    with pytest.raises(ZeroDivisionError):
        cache.get_with_fallback("k", lambda: 1 / 0)
    assert cache.flush(2)
    assert cache.get_with_fallback("k", lambda: "ok") == "ok"  # the lease was released


def test_an_interrupted_leader_is_not_shared(make_cache: Callable[..., Cache]) -> None:
    """A BaseException (KeyboardInterrupt, gevent.Timeout) is the leader's own:
    followers load for themselves instead of raising it."""
    cache = make_cache()
    entered = threading.Event()

    def interrupted() -> str:
        entered.set()
        time.sleep(0.2)
        raise KeyboardInterrupt

    caught: list[BaseException] = []

    def leader() -> None:
        try:
            cache.get_with_fallback("k", interrupted)
        except KeyboardInterrupt as exc:
            caught.append(exc)

    t = threading.Thread(target=leader)
    t.start()
    assert entered.wait(2)
    assert cache.get_with_fallback("k", lambda: "mine") == "mine"
    t.join(5)
    assert len(caught) == 1


_CHILD = """
import json, os, sys, time
import redis
from redispool import RedisPool
from redispool.helpers.cache import Cache

url, ctl_url, mode = sys.argv[1:4]
ctl = redis.Redis.from_url(ctl_url)
pool = RedisPool(url, min_size=1, max_size=2)
pool.open(wait=True)
cache = Cache(pool, secret=b"shared", lease_wait=5.0)

def loader():
    ctl.incr("loader_calls")
    time.sleep(0.3)
    if mode == "fail":
        raise ValueError("the database is down")
    return {"pid": os.getpid()}

ctl.incr("ready")
ctl.blpop("go", timeout=20)
try:
    value = cache.get_with_fallback("hot", loader)
except Exception as exc:
    value = type(exc).__name__
cache.close(2)
print(json.dumps([value, cache.stats()["lease_waits"]]))
"""


def _two_processes_miss_together(redis_server: RedisServer, mode: str) -> list[Any]:
    """Two processes miss one key at once; their outputs and the loader calls.
    (The caller takes ``redis_url``: every database starts empty.)"""
    ctl = redis.Redis.from_url(redis_server.url_for(1))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, redis_server.url, redis_server.url_for(1), mode],
            stdout=subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 20
        while int(ctl.get("ready") or 0) < 2:
            assert time.monotonic() < deadline
            assert all(p.poll() is None for p in procs)
            time.sleep(0.02)
        ctl.rpush("go", "1", "1")  # both miss together
        outs = [json.loads(p.communicate(timeout=20)[0]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outs.append(int(ctl.get("loader_calls") or 0))
    ctl.close()
    return outs


def test_lease_across_processes(redis_server: RedisServer, redis_url: str) -> None:
    *outs, loader_calls = _two_processes_miss_together(redis_server, "ok")
    assert loader_calls == 1
    assert outs[0][0] == outs[1][0]  # both got the leader's value
    assert sorted(o[1] for o in outs) == [0, 1]  # the other one waited for it


def test_a_loader_failure_is_shared_across_processes(
    redis_server: RedisServer, redis_url: str
) -> None:
    # Regression: the other process won the lease after the failure and ran its
    # loader too. It waits for the leader's outcome and raises LoaderError.
    *outs, loader_calls = _two_processes_miss_together(redis_server, "fail")
    assert loader_calls == 1
    assert sorted(o[0] for o in outs) == ["LoaderError", "ValueError"]


def test_lease_held_elsewhere_is_waited_for_then_bounded(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache(lease_wait=0.3)
    loc = cache._locate("k", ())
    assert cache._read(loc, "another-process").lease == 1  # it holds the lease, then stalls
    start = time.monotonic()
    assert cache.get_with_fallback("k", lambda: "mine") == "mine"
    assert 0.25 < time.monotonic() - start < 1.0
    s = cache.stats()
    assert (s["lease_waits"], s["lease_timeouts"], s["loader_calls"]) == (1, 1, 1)
    # Loaded without the lease: not written (it could predate an invalidation).
    assert cache.flush(2) and cache.get("k") is None


def test_writer_queue_full_drops_and_counts(
    make_cache: Callable[..., Cache], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make_cache(writer_queue=1)
    entered, release = threading.Event(), threading.Event()
    real = cache._write_back

    def slow_write_back(*args: Any) -> None:
        entered.set()
        release.wait(5)
        real(*args)

    monkeypatch.setattr(cache, "_write_back", slow_write_back)
    assert cache.get_with_fallback("a", lambda: 1) == 1
    assert entered.wait(2)  # the writer is busy with "a"
    start = time.monotonic()
    assert cache.get_with_fallback("b", lambda: 2) == 2  # queued
    assert cache.get_with_fallback("c", lambda: 3) == 3  # queue full: dropped
    assert time.monotonic() - start < 0.5  # never blocked on the writer
    assert cache.stats()["dropped_writes"] == 1
    release.set()
    assert cache.flush(2)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, 2, None)


def test_close_flushes_then_drops(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    cache.set("x", 1)
    assert cache._writer._thread is None  # started lazily, by the first write-back
    cache.get_with_fallback("a", lambda: 1)
    thread = cache._writer._thread
    assert thread is not None and thread.daemon
    assert cache.close(2)
    assert cache.get("a") == 1  # flushed before stopping
    cache.get_with_fallback("b", lambda: 2)
    assert cache.stats()["dropped_writes"] == 1 and cache.get("b") is None
    assert not thread.is_alive()


def test_a_write_back_queued_as_the_cache_closes_is_run_or_dropped(
    make_cache: Callable[..., Cache], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a write-back submitted just as close() ran (past the "closed?"
    # check, not yet queued) landed behind the writer's stop sentinel: never run
    # nor counted as dropped, pending for good (every later flush() waited out
    # its timeout and returned False).
    cache = make_cache()
    writer = cache._writer
    assert cache.get_with_fallback("a", lambda: 1) == 1 and cache.flush(2)  # writer started
    entered, go = threading.Event(), threading.Event()
    real = writer._ensure_started

    def paused() -> bool:  # the submitting thread loses the CPU here
        entered.set()
        go.wait(5)
        return real()

    monkeypatch.setattr(writer, "_ensure_started", paused)
    t = threading.Thread(target=cache.get_with_fallback, args=("b", lambda: 2))
    t.start()
    assert entered.wait(5)
    assert cache.close(2)
    go.set()
    t.join(5)
    s = cache.stats()
    assert (s["pending_writes"], s["dropped_writes"]) == (0, 1)
    assert cache.flush(0.05)


_GEVENT_CHILD = """
from gevent import monkey
monkey.patch_all()
import gevent, sys
from redispool import RedisPool
from redispool.helpers.cache import Cache

pool = RedisPool(sys.argv[1], min_size=1, max_size=4)
cache = Cache(pool, secret=b"g")
calls = []

def loader():
    calls.append(1)
    gevent.sleep(0.1)
    return "v"

jobs = [gevent.spawn(cache.get_with_fallback, "hot", loader) for _ in range(20)]
gevent.joinall(jobs, timeout=5)
assert [j.value for j in jobs] == ["v"] * 20 and len(calls) == 1, calls
assert cache.get("hot") == "v"  # written before the followers took it
assert cache.get_with_fallback("cold", lambda: "c") == "c"  # no followers: written later
assert cache.flush(2) and cache.get("cold") == "c"
assert type(cache._writer._thread).__module__.startswith("gevent"), cache._writer._thread
assert cache.close(2)
print("ok")
"""


def test_under_gevent_monkey_patching(redis_url: str) -> None:
    pytest.importorskip("gevent")
    assert_child_ok(_GEVENT_CHILD, redis_url)


_GEVENT_KILLED_WRITER = """
from gevent import monkey
monkey.patch_all()
import gc, gevent, sys
from redispool import RedisPool
from redispool.helpers.cache import Cache

pool = RedisPool(sys.argv[1], min_size=1, max_size=4)
cache = Cache(pool, namespace="killed-writer")
cache.invalidate_all()
cache.get_with_fallback("a", lambda: 1)
assert cache.flush(2)
thread = cache._writer._thread
greenlets = [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet)]
writer = next(g for g in greenlets if id(g) == thread.ident)
writer.kill()  # (or a signal handler's exception: the writer runs on the main thread)
assert not thread.is_alive()
cache.get_with_fallback("b", lambda: 2)
assert cache.flush(2), cache.stats()["pending_writes"]
assert cache.get("b") == 2
assert cache.close(2)
print("ok")
"""


def test_under_gevent_a_killed_writer_is_replaced(redis_url: str) -> None:
    # Regression: a writer greenlet killed (greenlet.kill, or an exception a
    # signal handler raised while it ran) stayed the writer: later write-backs
    # queued for ever, flush() never succeeded, the leases waited out their TTL.
    pytest.importorskip("gevent")
    assert_child_ok(_GEVENT_KILLED_WRITER, redis_url)


def test_namespace_and_tag_invalidation(
    make_cache: Callable[..., Cache], admin: redis.Redis
) -> None:
    cache, other = make_cache(), make_cache(namespace="other")
    cache.set("a", 1)
    cache.set("b", 2, tags=["users"])
    cache.set("c", 3, tags=["posts"])
    other.set("a", 10)
    users = int(admin.get(cache._tag_key("users", "tag")))  # (made by the first call)
    assert cache.invalidate_tag("users") == users + 1
    assert (cache.get("a"), cache.get("b", tags=["users"]), cache.get("c", tags=["posts"])) == (
        1,
        None,
        3,
    )
    assert cache.get("b") is None  # tags are part of the identity
    version = cache.invalidate_all()
    assert cache.get("a") is None and cache.get("c", tags=["posts"]) is None
    assert other.get("a") == 10
    cache.set("a", 4)
    assert cache.get("a") == 4
    assert cache.invalidate("a") is True and cache.get("a") is None
    assert cache.invalidate("a") is False
    assert int(admin.get("cache:{cache}:version")) == version
    assert cache.invalidate_all() == version + 1


@pytest.mark.parametrize("evicted", ["namespace", "tag"])
def test_an_evicted_version_key_brings_back_no_invalidated_entry(
    make_cache: Callable[..., Cache], admin: redis.Redis, evicted: str
) -> None:
    # Regression: a missing version key read as version 0. Under maxmemory with
    # an allkeys-* policy Redis evicts it like any key, and every entry made
    # before its first bump was served again; a bump after an eviction started
    # over at 1, bringing back those made under 1 before.
    cache = make_cache()
    version_key = cache._version_key if evicted == "namespace" else cache._tag_key("t", "tag")

    def invalidate() -> int:
        return cache.invalidate_all() if evicted == "namespace" else cache.invalidate_tag("t")

    assert cache.set("k", "before the first bump", tags=["t"])
    invalidate()
    assert cache.get("k", tags=["t"]) is None
    admin.delete(version_key)  # evicted
    assert cache.get("k", tags=["t"]) is None
    assert cache.set("k", "before the second bump", tags=["t"])
    admin.delete(version_key)  # evicted again
    invalidate()
    assert cache.get("k", tags=["t"]) is None
    assert cache.set("k", "before the third bump", tags=["t"])
    admin.delete(version_key)
    invalidate()  # (a bump after an eviction, again)
    assert cache.get("k", tags=["t"]) is None
    assert cache.set("k", "current", tags=["t"]) and cache.get("k", tags=["t"]) == "current"
    # Version keys may then expire (a tag used once is not kept for ever), but
    # never before an entry stored under them.
    assert cache.set("long", "v", ttl=3 * 86400, tags=["t"])
    for key in (cache._version_key, cache._tag_key("t", "tag")):
        assert 3 * 86400_000 - 60_000 < admin.pttl(key) <= 3 * 86400_000
    assert cache.get("x", tags=["once"]) is None
    assert 0 < admin.pttl(cache._tag_key("once", "tag")) <= 86400_000


@pytest.mark.parametrize("how", ["all", "tag"])
def test_a_follower_of_a_slow_leader_stores_no_value_older_than_an_invalidation(
    make_cache: Callable[..., Cache], how: str
) -> None:
    # Regression: a follower that gave up on a slow leader wrote back with an
    # empty version ("any"): a value read before invalidate_all()/invalidate_tag()
    # was stored under the new version and served until its TTL.
    cache = make_cache(lease_wait=0.05, lease_ttl=0.1)
    release = threading.Event()
    leader = threading.Thread(
        target=cache.get_with_fallback,
        args=("k", lambda: release.wait(5) and "leader", None),
        kwargs={"tags": ["t"]},
    )
    leader.start()
    deadline = time.monotonic() + 5
    while cache.stats()["loader_calls"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)

    def follower_loader() -> str:
        value = "old"  # read from the database, which then changes, and the app
        cache.invalidate_all() if how == "all" else cache.invalidate_tag("t")  # invalidates
        return value

    try:
        assert cache.get_with_fallback("k", follower_loader, tags=["t"]) == "old"
    finally:
        release.set()
        leader.join(5)
    assert cache.flush(2)
    assert cache.get("k", tags=["t"]) is None  # neither value predates nothing: both refused
    assert cache.stats()["refused_writes"] == 2


def test_invalidating_a_key_during_its_load_keeps_the_loaded_value_out(
    make_cache: Callable[..., Cache],
) -> None:
    # Regression: invalidate(key) was a plain DEL, after which the load in flight
    # wrote its pre-invalidation value. Another process's invalidation too.
    cache, elsewhere = make_cache(), make_cache()
    for invalidator in (cache, elsewhere):

        def loader(inv: Cache = invalidator) -> str:
            value = "old"
            assert inv.invalidate("k") is False  # nothing cached yet: still revokes
            return value

        assert cache.get_with_fallback("k", loader) == "old"
        assert cache.flush(2)
        assert cache.get("k") is None

    def overwritten() -> str:
        value = "old"
        elsewhere.set("k", "new")  # a newer value stored while we load
        return value

    assert cache.get_with_fallback("k", overwritten) == "old"
    assert cache.flush(2)
    assert cache.get("k") == "new"
    assert cache.stats()["refused_writes"] == 3


def _stale_oracle(
    caches: list[Cache], seconds: float, seed: int, kill: redis.Redis | None = None
) -> tuple[int, list[str]]:
    """Readers on several caches (as separate processes would be) race one
    invalidator. Each database row holds a version; the invalidator bumps a row,
    invalidates (the key, its tag, or everything), then raises the row's floor.
    A read that starts after a floor was raised must never see a lower version.
    With ``kill``, every connection is cut every few ms (CLIENT KILL)."""
    keys = [f"k{i}" for i in range(3)]
    tags = {k: [f"t{i % 2}"] for i, k in enumerate(keys)}
    db = dict.fromkeys(keys, 0)
    floor = dict.fromkeys(keys, 0)
    stop = threading.Event()
    violations: list[str] = []
    reads = [0]

    def reader(n: int) -> None:
        rnd = random.Random(seed * 100 + n)
        while not stop.is_set():
            cache, key = rnd.choice(caches), rnd.choice(keys)
            low = floor[key]

            def load(key: str = key) -> int:
                value = db[key]
                time.sleep(rnd.random() * 0.01)
                return value

            if rnd.random() < 0.8:
                got = cache.get_with_fallback(key, load, 0.3, tags=tags[key])
            else:
                got = cache.get(key, tags=tags[key])
            reads[0] += 1
            if got is not None and got < low:
                violations.append(f"{key}: served {got} after the invalidation for {low}")

    def invalidator() -> None:
        rnd = random.Random(seed)
        inv = caches[-1]
        while not stop.is_set():
            key = rnd.choice(keys)
            db[key] += 1
            how = rnd.choice(["key", "tag", "all", "set"])
            try:
                if how == "key":
                    inv.invalidate(key, tags=tags[key])
                elif how == "tag":
                    inv.invalidate_tag(tags[key][0])
                elif how == "all":
                    inv.invalidate_all()
                elif not inv.set(key, db[key], tags=tags[key]):
                    continue  # not stored (or not known to be): no promise made
                floor[key] = db[key]
            except HelperUnavailable:
                pass  # it may or may not have happened: no promise made
            time.sleep(rnd.random() * 0.01)

    def killer() -> None:
        rnd = random.Random(seed)
        while kill is not None and not stop.is_set():
            time.sleep(rnd.random() * 0.03)
            kill.client_kill_filter(_type="normal", skipme=True)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=invalidator), threading.Thread(target=killer)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(10)
    return reads[0], violations


def test_no_value_loaded_before_an_invalidation_is_ever_served(
    make_cache: Callable[..., Cache],
) -> None:
    caches = [
        make_cache(
            lease_wait=0.02,
            lease_ttl=0.03,
            set_timeout=1,
            get_timeout=1,
            early_recompute_beta=20.0 * (i % 2),  # XFetch's flights too
        )
        for i in range(3)
    ]
    reads, violations = _stale_oracle(caches, seconds=2.0, seed=1)
    assert reads > 100 and not violations, violations[:5]
    assert caches[1].stats()["early_recomputes"] > 0


def test_no_stale_value_while_connections_are_cut(
    make_cache: Callable[..., Cache], admin: redis.Redis
) -> None:
    """The same oracle while every connection is killed every few ms: reads and
    write-backs fail at every point (before, during, after the server ran them)."""
    breaker = CircuitBreaker(threshold=1000)  # keep calling Redis through the faults
    caches = [
        make_cache(lease_wait=0.02, lease_ttl=0.03, set_timeout=1, get_timeout=1, breaker=breaker)
        for _ in range(3)
    ]
    reads, violations = _stale_oracle(caches, seconds=2.0, seed=2, kill=admin)
    assert reads > 100 and not violations, violations[:5]
    assert sum(c.stats()["errors"] for c in caches) > 0  # the faults did hit


def test_value_loaded_before_an_invalidation_is_not_written(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache()

    def loader() -> str:
        cache.invalidate_all()  # someone invalidates while we load
        return "stale"

    assert cache.get_with_fallback("k", loader) == "stale"
    assert cache.flush(2)
    assert cache.get("k") is None


def test_invalidate_raises_when_redis_is_down(
    make_cache: Callable[..., Cache], redis_server_factory: Callable[..., RedisServer]
) -> None:
    server = redis_server_factory()
    p = RedisPool(server.url, min_size=1, max_size=2, connect_timeout=0.2)
    cache = make_cache(pool=p)
    server.kill()
    with pytest.raises(HelperUnavailable):
        cache.invalidate("k")
    with pytest.raises(HelperUnavailable):
        cache.invalidate_all()
    p.close()


def test_cached_decorator(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    seen: list[tuple[int, str]] = []

    @cache.cached(ttl=60)
    def profile(user_id: int, *, lang: str = "en") -> dict[str, Any]:
        seen.append((user_id, lang))
        return {"id": user_id, "lang": lang}

    @cache.cached(key=lambda user_id: ("user", str(user_id)))
    def user(user_id: int) -> str | None:
        seen.append((user_id, "user"))
        return None if user_id < 0 else f"u{user_id}"

    assert profile.__name__ == "profile"
    for _ in range(2):
        assert profile(1) == {"id": 1, "lang": "en"}
        assert profile(1, lang="fr") == {"id": 1, "lang": "fr"}
        assert user(5) == "u5"
        assert user(-1) is None  # negative-cached
        cache.flush(2)
    assert seen == [(1, "en"), (1, "fr"), (5, "user"), (-1, "user")]
    assert cache.invalidate(("user", "5"))  # key= makes entries addressable
    assert user(5) == "u5" and seen[-1] == (5, "user")
    with pytest.raises(TypeError, match="key="):
        profile(object())  # type: ignore[arg-type]


def test_cached_functions_of_one_name_do_not_share_entries(
    make_cache: Callable[..., Cache],
) -> None:
    """Two functions a factory makes have one qualified name: the default key
    (name + arguments) made the second read the first's values."""
    cache = make_cache()

    def loader_for(table: str, key: Callable[..., Any] | None = None) -> Callable[[int], str]:
        @cache.cached(ttl=60, key=key)
        def load(row: int) -> str:
            return f"{table}:{row}"

        return load

    users = loader_for("users")
    assert users(1) == "users:1"
    cache.flush(2)
    with pytest.raises(TypeError, match=r"loader_for\.<locals>\.load .*pass key="):
        loader_for("orders")  # was: orders(1) == "users:1"
    orders = loader_for("orders", key=lambda row: ("orders", str(row)))
    assert orders(1) == "orders:1" and users(1) == "users:1"
    assert make_cache(namespace="other").cached()(users.__wrapped__)(2) == "users:2"  # type: ignore[attr-defined]


def test_cached_the_same_function_again_or_a_reloaded_module_is_not_refused(
    make_cache: Callable[..., Cache], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal of a second function of one name spares what is one function:
    the same function decorated again (per call, or with another ttl), one a
    factory (a test fixture) makes again from the same values, and a
    module-level function made again by importlib.reload; each raised TypeError."""
    import importlib
    import sys
    import types

    cache = make_cache()

    def profile(user: int) -> str:
        return f"user-{user}"

    assert cache.cached(ttl=60)(profile)(1) == "user-1"
    assert cache.cached(ttl=5)(profile)(1) == "user-1"  # the same function: same entries
    holder = types.ModuleType("_rp_cached_holder")
    holder.cache = cache  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_rp_cached_holder", holder)
    (tmp_path / "_rp_cached_mod.py").write_text(
        "from _rp_cached_holder import cache\n\n\n"
        "@cache.cached(ttl=60)\n"
        "def double(n):\n"
        "    return 2 * n\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("_rp_cached_mod")
    try:
        assert mod.double(2) == 4
        assert importlib.reload(mod).double(3) == 6
    finally:
        sys.modules.pop("_rp_cached_mod", None)

    def make(table: str) -> Callable[[int], str]:  # a fixture, say, run for each test
        @cache.cached(ttl=60)
        def load(row: int, sep: str = ":") -> str:
            return f"{table}{sep}{row}"

        return load

    assert make("users")(1) == "users:1"
    assert make("users")(1) == "users:1"  # made again from the same values: one function
    with pytest.raises(TypeError, match="pass key="):
        make("orders")

    class Repo:
        def __init__(self, table: str) -> None:
            self.table = table

        def get(self, row: int) -> str:
            return f"{self.table}/{row}"

    users = Repo("users")
    assert cache.cached()(users.get)(1) == "users/1"
    assert cache.cached()(users.get)(1) == "users/1"  # the same object's method again
    with pytest.raises(TypeError, match="pass key="):  # another object's: other values
        cache.cached()(Repo("orders").get)
    second = cache.cached()(lambda n: n + 1)
    with pytest.raises(TypeError, match="pass key="):  # two lambdas of one module
        cache.cached()(lambda n: n - 1)
    assert second(1) == 2


def test_pickle_requires_opt_in(make_cache: Callable[..., Cache]) -> None:
    value = {"when": datetime.date(2024, 1, 2), "ids": {1, 2}}
    cache = make_cache()
    with pytest.raises(TypeError, match="serializer='pickle'"):
        cache.set("k", value)
    with pytest.raises(TypeError, match="cannot be serialized"):
        cache.get_with_fallback("k", lambda: value)
    pickled = make_cache(namespace="pickled", serializer="pickle")
    assert pickled.set("k", value) and pickled.get("k") == value
    with pytest.raises(ValueError, match="serializer"):
        make_cache(serializer="yaml")
    with pytest.raises(TypeError, match="serializer"):
        make_cache(serializer=object())
    custom = make_cache(namespace="custom", serializer=(str.encode, bytes.decode))
    assert custom.set("k", "text") and custom.get("k") == "text"
    # an entry the serializer cannot read is a miss, not an error for the caller
    assert make_cache(namespace="custom").get("k", default="d") == "d"


def test_xfetch_recomputes_a_hot_key_early(make_cache: Callable[..., Cache]) -> None:
    rand = [0.5]
    cache = make_cache(early_recompute_beta=1.0, rand=lambda: rand[0])
    version = 0

    def loader() -> int:
        nonlocal version
        time.sleep(0.05)  # delta: the recompute time stored with the value
        version += 1
        return version

    assert cache.get_with_fallback("k", loader, ttl=1) == 1
    assert cache.flush(2)
    # 1 s left, delta 0.05 s: -0.05 * ln(0.5) = 0.035 s < 1 s: a plain hit
    assert cache.get_with_fallback("k", loader, ttl=1) == 1
    rand[0] = 1e-12  # -0.05 * ln(1e-12) = 1.4 s >= the time left: recompute now
    assert cache.get_with_fallback("k", loader, ttl=1) == 2
    assert cache.flush(2)
    rand[0] = 0.5
    assert cache.get_with_fallback("k", loader, ttl=1) == 2  # written back
    s = cache.stats()
    assert s["early_recomputes"] == 1 and s["loader_calls"] == 2


def test_xfetch_off_by_default(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache(rand=lambda: 1e-300)

    def loader() -> int:
        time.sleep(0.02)
        return 1

    cache.get_with_fallback("k", loader, ttl=1)
    cache.flush(2)
    assert cache.get_with_fallback("k", lambda: 2, ttl=1) == 1


def test_slow_operations_logged_without_the_value(
    make_cache: Callable[..., Cache],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every=0: each slow operation logged (by default: one, then a summary per 10 s)
    fresh = SlowLog(logging.getLogger("redispool.helpers.cache"), every=0)
    monkeypatch.setattr("redispool.helpers.cache._SLOW", fresh)
    cache = make_cache(slow_threshold=0)
    with caplog.at_level(logging.WARNING, logger="redispool.helpers.cache"):
        cache.set("k", "SENSITIVE-VALUE")
        cache.get("k")
    lines = [r.getMessage() for r in caplog.records if r.name == "redispool.helpers.cache"]
    assert any("SET" in m and "ms" in m for m in lines)
    assert any("GET" in m for m in lines)
    assert not any("SENSITIVE" in m or "'k'" in m for m in lines)
    assert cache.stats()["slow_operations"] >= 2


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.get(42), TypeError, "key"),
        (lambda c: c.get(""), ValueError, "key"),
        (lambda c: c.get(()), ValueError, "key"),
        (lambda c: c.get("x" * 5000), ValueError, "key"),
        (lambda c: c.get("k", tags="users"), TypeError, "tags"),
        (lambda c: c.get("k", tags=[""]), ValueError, "tags"),
        (lambda c: c.get("k", tags=[str(i) for i in range(9)]), ValueError, "tags"),
        (lambda c: c.set("k", 1, ttl=-1), ValueError, "ttl"),
        (lambda c: c.set("k", 1, ttl=0), ValueError, "ttl"),
        (lambda c: c.set("k", 1, ttl="5"), TypeError, "ttl"),
        (lambda c: c.set("k", 1, ttl=True), TypeError, "ttl"),
        (lambda c: c.set("k", 1, ttl=float("nan")), ValueError, "ttl"),
        (lambda c: c.set("k", 1, ttl=float("inf")), ValueError, "ttl"),
        (lambda c: c.get_with_fallback("k", 5), TypeError, "loader"),
        (lambda c: c.get_with_fallback("k", lambda: 1, ttl=-2), ValueError, "ttl"),
        (lambda c: c.cached(key="k"), TypeError, "key"),
    ],
)
def test_bad_input(
    make_cache: Callable[..., Cache], call: Callable[[Cache], Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        call(make_cache())


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"namespace": "bad space"}, ValueError, "namespace"),
        ({"get_timeout": 0}, ValueError, "get_timeout"),
        ({"set_timeout": "1"}, TypeError, "set_timeout"),
        ({"default_ttl": 0}, ValueError, "default_ttl"),
        ({"negative_ttl": -1}, ValueError, "negative_ttl"),
        ({"lease_ttl": 0}, ValueError, "lease_ttl"),
        ({"error_ttl": -1}, ValueError, "error_ttl"),
        ({"error_ttl": 1e12}, ValueError, "error_ttl"),
        ({"writer_queue": 0}, ValueError, "writer_queue"),
        ({"writer_queue": 1.5}, TypeError, "writer_queue"),
        ({"early_recompute_beta": -1}, ValueError, "early_recompute_beta"),
        ({"secret": 5}, TypeError, "secret"),
        ({"rand": 0.5}, TypeError, "rand"),
    ],
)
def test_bad_options(
    make_cache: Callable[..., Cache], kw: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        make_cache(**kw)


def test_bad_pool(redis_url: str) -> None:
    with pytest.raises(TypeError, match="pool"):
        Cache(redis.Redis.from_url(redis_url))  # type: ignore[arg-type]
    p = RedisPool(redis_url, min_size=0, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        Cache(p)
    p.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_its_own_writer(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    cache.get_with_fallback("parent", lambda: 1)  # the parent's writer runs
    assert cache.flush(2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            cache.get_with_fallback("child", lambda: 2)
            if cache.flush(2) and cache.get("child") == 2:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get("child") == 2


def test_pool_close_runs_queued_write_backs_first(redis_url: str, admin: redis.Redis) -> None:
    # Write-backs still queued when the pool closes go out first (the pool runs
    # the cache's close hook), whatever order the app closes things in.
    p = RedisPool(redis_url, min_size=0, max_size=2)
    cache = Cache(p, secret=SECRET)
    gate = threading.Event()
    assert cache._writer.submit(lambda: gate.wait(5))  # the writer is busy
    assert cache.get_with_fallback("k", lambda: "v") == "v"  # queued behind it
    threading.Timer(0.2, gate.set).start()
    p.close()
    assert cache.stats()["errors"] == 0
    assert len(data_keys(admin)) == 1
    with RedisPool(redis_url, min_size=0) as p2:
        assert Cache(p2, secret=SECRET).get("k") == "v"


def failing_fill(cache: Cache) -> None:
    with pytest.raises(ZeroDivisionError):
        cache.get_with_fallback("e", lambda: 1 / 0)
    assert cache.flush(2)


def test_every_script_declares_every_key_it_touches(
    make_cache: Callable[..., Cache], redis_url: str
) -> None:
    # Regression: the scripts built the versioned data key inside Lua (a key not
    # in KEYS: wrong on any server, unroutable on Redis Cluster).
    cache = make_cache(early_recompute_beta=1.0, rand=lambda: 1e-300)
    ops: list[Callable[[], Any]] = [
        lambda: cache.set("a", 1),
        lambda: cache.set("t", 1, tags=["x", "y"]),
        lambda: cache.get("a"),
        lambda: cache.get("t", tags=["x", "y"]),
        lambda: cache.get_with_fallback("miss", lambda: 2, tags=["x"]) and cache.flush(2),
        lambda: cache.get_with_fallback("s", lambda: time.sleep(0.02) or 3, 1) and cache.flush(2),
        lambda: cache.get_with_fallback("s", lambda: 4, 1) and cache.flush(2),  # XFetch: lease
        functools.partial(failing_fill, cache),  # the failure marker
        lambda: cache.invalidate("a"),
        lambda: cache.invalidate("t", tags=["y", "x"]),
    ]
    with script_keys(redis_url) as check:
        for i, op in enumerate(ops):
            assert check(op) == [], i
    assert cache.stats()["early_recomputes"] == 1


def test_a_load_slower_than_the_lease_is_returned_not_cached(
    make_cache: Callable[..., Cache],
) -> None:
    """Once its lease expired nothing proves the key was not invalidated meanwhile
    (an invalidation deletes the lease): the value is served, not stored."""
    cache = make_cache(lease_ttl=0.05)
    assert cache.get_with_fallback("k", lambda: time.sleep(0.1) or "slow") == "slow"
    assert cache.flush(2)
    assert cache.get("k") is None and cache.stats()["refused_writes"] == 1
    assert cache.get_with_fallback("k", lambda: "fast") == "fast"
    assert cache.flush(2) and cache.get("k") == "fast"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_lock_held_by_another_thread_at_fork_does_not_hang_the_child(
    make_cache: Callable[..., Cache], redis_server_factory: Callable[..., RedisServer]
) -> None:
    # Regression: in a forked child the cache's counter lock and its breaker's
    # lock were the parent's; one held by another thread at the fork (every
    # call counts, every failure locks the breaker) stayed held in the child,
    # whose first cache call then hung for good.
    server = redis_server_factory()
    p = RedisPool(server.url, min_size=0, max_size=2, connect_timeout=0.2)
    server.kill()  # every call fails: it counts an error and a breaker failure
    cache = make_cache(pool=p, breaker=CircuitBreaker(threshold=1000))
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with cache._lock, cache.breaker._lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(20)  # a hang kills the child: the parent sees it
                if cache.get_with_fallback("k", lambda: 2) == 2:
                    code = 0 if cache.stats()["fallbacks"] == 1 else 2
            finally:
                os._exit(code)
    finally:
        done.set()
        holder.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    p.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_breaker_trial_in_flight_at_fork_does_not_shut_the_child_out(
    make_cache: Callable[..., Cache],
) -> None:
    # Regression: a half-open trial granted to another thread before the fork
    # was still "running" in the child, where no call could end it: every cache
    # call of the child was turned away (set() False, invalidate() raising) for good.
    breaker = CircuitBreaker(threshold=1, cooldown=0)
    cache = make_cache(breaker=breaker)
    breaker.failure()  # open; with no cooldown, half-open at once
    ticket = breaker.enter()  # another thread's trial call, in flight at the fork
    assert ticket
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(20)
            if cache.set("k", "child") and cache.get("k") == "child":
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    breaker.success(ticket)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get("k") == "child"
