"""Analytics against a real redis-server: exact counts, buckets, TTLs, HyperLogLog,
buffered flushing in one round trip, outages, fork and shutdown."""

from __future__ import annotations

import collections
import gc
import os
import random
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from redispool import RedisPool
from redispool.helpers import CircuitBreaker, HelperUnavailable
from redispool.helpers import analytics as analytics_mod
from redispool.helpers.analytics import Analytics
from redispool.testing import RedisServer

from .helpers import FakeClock, assert_child_ok, refuse_threads

WEEK = 7 * 86400
HOUR = timedelta(hours=1)


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    p = RedisPool(redis_url, min_size=0, max_size=20, timeout=2)
    yield p
    p.close()


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def fast_breaker() -> CircuitBreaker:
    return CircuitBreaker(threshold=2, cooldown=0.05)


def hammer(fn: Callable[[int], Any], threads: int = 16) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


# -- counters and buckets ------------------------------------------------------


def test_incr_get_key_layout_and_ttl(pool: RedisPool, admin: redis.Redis) -> None:
    a = Analytics(pool, namespace="t", clock=FakeClock(1000.0))
    assert a.incr("hits") == 1
    assert a.incr("hits", 5) == 6
    assert a.get("hits") == 6
    assert a.get("other") == 0
    assert admin.get("t:c:{hits}:960") == b"6"  # 1000 // 60 * 60
    assert WEEK * 1000 - 5000 < admin.pttl("t:c:{hits}:960") <= WEEK * 1000
    short = Analytics(pool, namespace="t2", retention=100, clock=FakeClock(1000.0))
    short.incr("hits")
    assert 95_000 < admin.pttl("t2:c:{hits}:960") <= 100_000
    assert a.stats()["increments"] == 2 and a.stats()["errors"] == 0


def test_bucket_boundaries_series_and_at(pool: RedisPool) -> None:
    clock = FakeClock(119.999)
    a = Analytics(pool, clock=clock)
    a.incr("x")
    clock.now = 120.0
    a.incr("x", 2)
    a.incr("x", 4, at=245)  # explicit time
    a.incr("x", 8, at=datetime.fromtimestamp(59, tz=timezone.utc))
    assert a.get("x") == 2 and a.get("x", at=60) == 1 and a.get("x", at=0.5) == 8
    assert a.series("x", 0, 250) == [(0, 8), (60, 1), (120, 2), (180, 0), (240, 4)]
    assert a.series("x", 130, 130) == [(120, 2)]
    assert Analytics(pool, bucket="hour").bucket_start(7199) == 3600
    day = Analytics(pool, bucket="day")
    assert day.bucket == 86400 and day.bucket_start(
        datetime(2024, 5, 1, 23, 59, tzinfo=timezone.utc)
    ) == int(datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp())


@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_counts_exact_under_16_threads(pool: RedisPool, buffered: bool) -> None:
    a = Analytics(
        pool,
        clock=FakeClock(0),
        timeout=1.0,
        buffered=buffered,
        flush_interval=0.02,
        flush_items=300,
    )
    hammer(lambda i: [a.incr("hits") for _ in range(500)])
    a.close()
    assert a.get("hits") == 16 * 500
    s = a.stats()
    assert s["increments"] == 8000 and s["errors"] == 0 and s["dropped"] == 0
    assert s["buffered"] == 0
    if buffered:
        assert 1 <= s["flushes"] < 8000


# -- unique counts -------------------------------------------------------------


def test_unique_counts_close_to_truth(pool: RedisPool, admin: redis.Redis) -> None:
    clock = FakeClock(600.0)
    a = Analytics(pool, namespace="u", clock=clock)
    for lo in range(0, 10_000, 1000):
        assert a.add_unique("visitors", *(f"user-{i}" for i in range(lo, lo + 1000))) is True
    assert a.add_unique("visitors", "user-1", b"user-2") is False  # already counted
    assert a.add_unique("visitors") is False  # no members: nothing to do
    n = a.count_unique("visitors")
    assert n is not None and abs(n - 10_000) <= 200
    clock.advance(60)  # the next bucket: half old members, half new
    a.add_unique("visitors", *(f"user-{i}" for i in range(5_000, 15_000)))
    both = a.count_unique("visitors", start=600)
    assert both is not None and abs(both - 15_000) <= 300  # merged, not 20k
    assert 0 < admin.pttl("u:u:{visitors}:600") <= WEEK * 1000
    assert a.add_unique("ids", 42) is True and a.add_unique("ids", "42") is False  # same member


def test_buffered_unique_counts(pool: RedisPool) -> None:
    a = Analytics(pool, clock=FakeClock(0), buffered=True, flush_interval=0.02)
    hammer(
        lambda t: [
            a.add_unique("v", *(f"m{t}-{i}" for i in range(j, j + 50))) for j in range(0, 500, 50)
        ],
        4,
    )
    a.close()
    n = a.count_unique("v")
    assert n is not None and abs(n - 2000) <= 40


# -- buffered mode -------------------------------------------------------------


def test_buffered_flush_is_one_round_trip(pool: RedisPool, admin: redis.Redis) -> None:
    a = Analytics(
        pool, namespace="b", buffered=True, flush_interval=60, flush_items=10**6, clock=FakeClock(0)
    )
    for name in ("a", "b", "c"):
        for _ in range(10):
            assert a.incr(name) is None
    a.add_unique("u1", "x", "y")
    a.add_unique("u2", "z")
    assert admin.get("b:c:{a}:0") is None  # nothing written yet
    assert a.stats()["buffered"] == 5 and a.stats()["buffered_entries"] == 6
    before, cmds = pool.stats().borrows, admin.info("commandstats")
    assert a.flush() == 5
    after = admin.info("commandstats")
    assert pool.stats().borrows - before == 1  # one borrow, one pipeline

    def delta(cmd: str) -> int:
        key = f"cmdstat_{cmd}"
        return int(after.get(key, {}).get("calls", 0)) - int(cmds.get(key, {}).get("calls", 0))

    assert (delta("incrby"), delta("pfadd"), delta("expire")) == (3, 2, 5)
    assert admin.mget("b:c:{a}:0", "b:c:{b}:0", "b:c:{c}:0") == [b"10"] * 3
    assert admin.pfcount("b:u:{u1}:0") == 2 and admin.pttl("b:c:{a}:0") > 0
    s = a.stats()
    assert (s["flushes"], s["flushed_keys"], s["buffered"], s["increments"]) == (1, 5, 0, 30)
    before = pool.stats().borrows
    assert a.flush() == 0 and pool.stats().borrows == before  # nothing to do: no borrow
    a.close()


def test_large_flush_is_chunked_and_a_failed_chunk_goes_back(
    pool: RedisPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analytics_mod, "FLUSH_CHUNK", 2)
    a = Analytics(pool, buffered=True, flush_interval=60, clock=FakeClock(0))
    for i in range(5):
        a.incr(f"k{i}", i + 1)
    write, calls = a._write, []

    def flaky(r: redis.Redis, chunk: Any) -> int:
        calls.append(len(chunk))
        if len(calls) == 2:
            raise redis.ConnectionError("boom")
        return write(r, chunk)

    monkeypatch.setattr(a, "_write", flaky)
    before = pool.stats().borrows
    assert a.flush() == 2 and calls == [2, 2]  # the first chunk landed, then a failure
    assert a.stats()["buffered"] == 3 and a.stats()["errors"] == 1
    assert a.flush() == 3 and calls == [2, 2, 2, 1]
    assert pool.stats().borrows - before == 4  # one borrow (one pipeline) per chunk
    assert [a.get(f"k{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    a.close()


def test_refused_commands_are_counted_not_retried(pool: RedisPool, admin: redis.Redis) -> None:
    admin.set("stats:u:{bad}:0", "not a HyperLogLog")
    a = Analytics(pool, buffered=True, flush_interval=60, clock=FakeClock(0))
    a.incr("ok")
    a.add_unique("bad", "m")
    assert a.flush() == 2 and a.get("ok") == 1
    assert a.stats()["errors"] == 1 and a.stats()["buffered"] == 0  # the rest was applied
    a.close()
    assert a.add_unique("bad", "m") is None and a.stats()["errors"] == 2  # closed: direct
    strict = Analytics(pool, on_error="raise", clock=FakeClock(0))
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        strict.add_unique("bad", "m")
    assert strict.stats()["breaker"]["state"] == "closed"  # Redis answered: not an outage


def test_background_flush_by_items_and_by_interval(pool: RedisPool) -> None:
    by_items = Analytics(pool, clock=FakeClock(0), buffered=True, flush_interval=60, flush_items=10)
    for _ in range(10):
        by_items.incr("n")
    wait_for(lambda: by_items.get("n") == 10)
    by_interval = Analytics(
        pool, clock=FakeClock(0), namespace="i", buffered=True, flush_interval=0.02
    )
    by_interval.incr("n")
    wait_for(lambda: by_interval.get("n") == 1)
    by_items.close()
    by_interval.close()


def test_close_flushes_then_writes_go_direct(pool: RedisPool, admin: redis.Redis) -> None:
    with Analytics(pool, buffered=True, flush_interval=60, clock=FakeClock(0)) as a:
        a.incr("x", 3)
        thread = a._thread
        assert thread is not None and thread.is_alive() and admin.get("stats:c:{x}:0") is None
    assert admin.get("stats:c:{x}:0") == b"3"
    assert not thread.is_alive()
    assert a.incr("x") == 4  # closed: direct
    a.close()  # idempotent


def test_atexit_closes_live_instances_and_abandoned_ones_are_collected(
    pool: RedisPool, admin: redis.Redis
) -> None:
    a = Analytics(pool, buffered=True, flush_interval=60, clock=FakeClock(0))
    a.incr("y", 2)
    assert a in analytics_mod._LIVE
    analytics_mod._close_all()
    assert admin.get("stats:c:{y}:0") == b"2" and a not in analytics_mod._LIVE
    b = Analytics(pool, buffered=True, flush_interval=0.01)
    b.incr("z")
    thread, ref = b._thread, weakref.ref(b)
    del b
    wait_for(lambda: gc.collect() >= 0 and ref() is None)  # the thread holds it weakly
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()


def test_forked_child_starts_with_an_empty_buffer(pool: RedisPool, admin: redis.Redis) -> None:
    a = Analytics(pool, buffered=True, flush_interval=60, clock=FakeClock(0))
    a.incr("parent")
    parent_thread = a._thread
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            ok = a.stats()["buffered"] == 0
            a.incr("child")
            ok = ok and a.stats()["buffered"] == 1 and a._thread is not parent_thread
            ok = ok and a._thread is not None and a._thread.is_alive() and a.flush() == 1
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert admin.get("stats:c:{child}:0") == b"1"
    assert a.stats()["buffered"] == 1  # the parent's buffer is untouched
    a.close()
    assert admin.get("stats:c:{parent}:0") == b"1"


# -- Redis down ----------------------------------------------------------------


def test_direct_writes_when_redis_is_down(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    with RedisPool(server.url, min_size=0, max_size=2, connect_timeout=0.2) as pool:
        a = Analytics(pool, clock=FakeClock(0), breaker=fast_breaker())
        strict = Analytics(pool, clock=FakeClock(0), on_error="raise", breaker=fast_breaker())
        assert a.incr("x") == 1
        server.kill()
        assert a.incr("x") is None and a.get("x") is None
        assert a.series("x", 0, 60) is None and a.count_unique("x") is None
        assert a.add_unique("x", "m") is None
        s = a.stats()
        assert s["errors"] >= 1 and s["errors"] + s["rejected"] == 5
        assert s["breaker"]["state"] in ("open", "half-open")
        with pytest.raises(HelperUnavailable):
            strict.incr("x")
        server.restart()
        wait_for(lambda: a.get("x") == 0)  # breaker cooldown, the pool's reconnect backoff
        assert a.incr("x") == 1  # a fresh server
        assert a.stats()["breaker"]["state"] == "closed"


def test_buffered_loses_nothing_across_a_redis_crash(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(args=("--appendonly", "yes", "--appendfsync", "always"))
    with RedisPool(server.url, min_size=0, max_size=8, connect_timeout=0.2) as pool:
        a = Analytics(
            pool, clock=FakeClock(0), buffered=True, flush_interval=0.02, breaker=fast_breaker()
        )
        hammer(lambda i: [a.incr(f"n{i % 4}") for _ in range(100)], 8)
        a.add_unique("u", *range(100))
        a.flush()
        assert a.stats()["buffered"] == 0 and a.get("n0") == 200
        server.kill()  # nothing pending: no write is in flight
        hammer(lambda i: [a.incr(f"n{i % 4}") for _ in range(100)], 8)
        a.add_unique("u", *range(100, 200))
        wait_for(lambda: a.stats()["errors"] + a.stats()["rejected"] >= 3)
        assert a.flush() == 0 and a.stats()["buffered"] == 5  # merged back
        assert a.stats()["dropped"] == 0
        server.restart()  # same port; the AOF brings back what was written before
        wait_for(lambda: a.stats()["buffered"] == 0, timeout=5)  # the thread catches up
        a.close()
        assert [a.get(f"n{i}") for i in range(4)] == [400] * 4
        n = a.count_unique("u")
        assert n is not None and abs(n - 200) <= 4


def test_buffer_is_bounded_while_redis_is_down(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    with RedisPool(server.url, min_size=0, max_size=2, connect_timeout=0.2) as pool:
        server.kill()
        a = Analytics(
            pool,
            clock=FakeClock(0),
            buffered=True,
            flush_interval=60,
            max_buffer=10,
            on_error="raise",
        )
        for i in range(15):
            a.incr(f"k{i}")
        a.incr("k0", 5)  # an existing key still aggregates
        a.add_unique("u", "a", "b")
        s = a.stats()
        assert (s["buffered"], s["buffered_entries"], s["dropped"]) == (10, 10, 7)
        with pytest.raises(HelperUnavailable):
            a.flush()
        assert a.stats()["buffered"] == 10  # kept for the next flush
        lenient = Analytics(
            pool, clock=FakeClock(0), buffered=True, flush_interval=60, breaker=fast_breaker()
        )
        lenient.incr("x")
        assert lenient.flush() == 0 and lenient.stats()["buffered"] == 1
        server.restart()
        wait_for(lambda: lenient.flush() == 1)
        assert lenient.get("x") == 1
        assert a.flush() == 10 and a.get("k0") == 6
        a.close()
        lenient.close()


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "field"),
    [
        (lambda a, p: Analytics("pool"), TypeError, "pool"),  # type: ignore[arg-type]
        (lambda a, p: Analytics(p, bucket="week"), ValueError, "bucket"),
        (lambda a, p: Analytics(p, bucket=0), ValueError, "bucket"),
        (lambda a, p: Analytics(p, retention=0), ValueError, "retention"),
        (lambda a, p: Analytics(p, retention=1.5), TypeError, "retention"),  # type: ignore[arg-type]
        (lambda a, p: Analytics(p, namespace="a b"), ValueError, "namespace"),
        (lambda a, p: Analytics(p, on_error="log"), ValueError, "on_error"),  # type: ignore[arg-type]
        (lambda a, p: Analytics(p, flush_interval=0), ValueError, "flush_interval"),
        (lambda a, p: Analytics(p, flush_items=0), ValueError, "flush_items"),
        (lambda a, p: Analytics(p, max_buffer=0), ValueError, "max_buffer"),
        (lambda a, p: Analytics(p, secret=1), TypeError, "secret"),  # type: ignore[arg-type]
        (lambda a, p: a.incr(""), ValueError, "name"),
        (lambda a, p: a.incr("a b"), ValueError, "name"),
        (lambda a, p: a.incr("a\n"), ValueError, "name"),
        (lambda a, p: a.incr("x" * 201), ValueError, "name"),
        (lambda a, p: a.incr(5), TypeError, "name"),
        (lambda a, p: a.incr("x", 1.5), TypeError, "amount"),
        (lambda a, p: a.incr("x", True), TypeError, "amount"),
        (lambda a, p: a.incr("x", 2**63), ValueError, "amount"),
        (lambda a, p: a.incr("x", at=float("nan")), ValueError, "at"),
        (lambda a, p: a.incr("x", at=-1), ValueError, "at"),
        (
            lambda a, p: a.incr("x", at=datetime(1969, 12, 31, 23, tzinfo=timezone.utc)),
            ValueError,
            "at",
        ),
        (lambda a, p: a.incr("x", at=datetime(1, 1, 1)), ValueError, "at"),  # naive: local time
        (  # after 9999-12-31T23:59:59Z
            lambda a, p: a.get("x", at=datetime(9999, 12, 31, 23, tzinfo=timezone(-HOUR))),
            ValueError,
            "at",
        ),
        (lambda a, p: a.get("x", at="now"), TypeError, "at"),
        (lambda a, p: a.series("x", 100, 0), ValueError, "start"),
        (lambda a, p: a.series("x", 0, 10**9), ValueError, "start..end"),
        (lambda a, p: a.series("x", None, 0), TypeError, "start"),
        (lambda a, p: a.add_unique("x", 1.5), TypeError, "members"),
        (lambda a, p: a.add_unique("x", None), TypeError, "members"),
        (lambda a, p: a.count_unique("x", end="y"), TypeError, "end"),
    ],
)
def test_bad_input_names_the_argument(
    pool: RedisPool, call: Callable[[Analytics, RedisPool], Any], exc: type[Exception], field: str
) -> None:
    a = Analytics(pool)
    with pytest.raises(exc, match=field.replace(".", r"\.")):
        call(a, pool)
    assert pool.stats().borrows == 0  # rejected before touching Redis


def test_pool_close_flushes_the_buffer_first(redis_url: str, admin: redis.Redis) -> None:
    # Regression: closing the pool before the Analytics (the user's exit hooks in
    # the "wrong" order) lost what was buffered. The pool runs its close hooks first.
    p = RedisPool(redis_url, min_size=0, max_size=2)
    a = Analytics(p, namespace="pc", buffered=True, flush_interval=60, clock=FakeClock(0))
    a.incr("x", 3)
    a.add_unique("u", "m1", "m2")
    p.close()
    assert admin.get("pc:c:{x}:0") == b"3" and admin.pfcount("pc:u:{u}:0") == 2
    a.close()  # later: nothing left to write, no error
    assert a.stats()["errors"] == 0 and a.stats()["buffered"] == 0


def test_a_write_goes_straight_to_redis_when_no_flush_thread_can_start(
    pool: RedisPool, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At interpreter shutdown Python 3.12 refuses new threads: a first buffered
    write in an atexit hook raised that RuntimeError (after buffering it, where
    nothing would flush it). It is written at once instead."""
    start = refuse_threads(monkeypatch, "redispool-analytics-flush")
    a = Analytics(pool, namespace="nt", buffered=True, flush_interval=60, clock=FakeClock(0))
    try:
        assert a.incr("x", 3) == 3  # written, not buffered
        assert a.add_unique("u", "m1") is True
        assert admin.get("nt:c:{x}:0") == b"3" and admin.pfcount("nt:u:{u}:0") == 1
        st = a.stats()
        assert st["buffered"] == 0 and (st["increments"], st["unique_adds"]) == (1, 1)
        monkeypatch.setattr(threading.Thread, "start", start)
        assert a.incr("x", 2) is None  # buffered: the thread started this time
        assert a._thread is not None and a._thread.is_alive()
        a.flush()
        assert admin.get("nt:c:{x}:0") == b"5"
    finally:
        a.close()


_EXIT_CHILD = """
import atexit, sys
from redispool import RedisPool
from redispool.helpers.analytics import Analytics

pool = RedisPool(sys.argv[1], min_size=0, max_size=2)
stats = Analytics(pool, namespace="exit", buffered=True, flush_interval=60, clock=lambda: 0.0)
atexit.register(pool.close)  # registered last, so it runs first (LIFO)
stats.incr("shutdown", 5)
late = Analytics(pool, namespace="exit", buffered=True, flush_interval=60, clock=lambda: 0.0)
# A first write in an exit hook: 3.12+ starts no flush thread there.
atexit.register(lambda: late.incr("hook", 2))
"""


def test_buffer_reaches_redis_whatever_the_exit_hook_order(
    redis_url: str, admin: redis.Redis
) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run(
        [sys.executable, "-c", _EXIT_CHILD, redis_url], env=env, capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert admin.get("exit:c:{shutdown}:0") == b"5", out.stderr[-2000:]
    assert admin.get("exit:c:{hook}:0") == b"2", out.stderr[-2000:]
    assert b"Exception ignored" not in out.stderr, out.stderr[-2000:]  # 3.12: RuntimeError


def test_close_hooks_run_once_weakly_and_a_failing_one_is_logged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = RedisPool(redis_url, min_size=0, max_size=2)
    ran: list[str] = []

    class Helper:
        def close(self) -> None:
            ran.append("collected")

    gone = Helper()
    p.on_close(gone.close)  # held weakly: does not keep the helper alive
    ref = weakref.ref(gone)
    del gone
    gc.collect()
    assert ref() is None

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    p.on_close(broken)
    p.on_close(lambda: ran.append("after"))
    with pytest.raises(TypeError, match="hook must be callable"):
        p.on_close("close")  # type: ignore[arg-type]
    with caplog.at_level("ERROR", logger="redispool"):
        p.close()
    p.close()  # hooks run once
    assert ran == ["broken", "after"]
    assert any("close hook failed" in r.getMessage() for r in caplog.records)


def test_flush_waits_for_a_flush_in_progress(redis_url: str) -> None:
    """``flush()`` while the background thread's flush is writing: it returns
    only once that write is done, so what was buffered before is in Redis
    (found racing under load: a flush found the buffer empty and returned)."""
    with RedisPool(redis_url, min_size=0, max_size=2) as pool:
        a = Analytics(pool, namespace="race", clock=FakeClock(0), buffered=True, flush_interval=60)
        real_write = a._write
        started = threading.Event()

        def slow_write(r: Any, chunk: Any) -> int:
            started.set()
            time.sleep(0.3)
            return real_write(r, chunk=chunk)

        a._write = slow_write  # type: ignore[method-assign]
        a.incr("n", 5)
        first = threading.Thread(target=a.flush)
        first.start()
        assert started.wait(5)
        a.flush()  # the buffer is empty now: the first flush holds its items
        assert a.get("n") == 5
        first.join(5)
        a.close()


def test_a_flush_refused_part_way_writes_nothing_twice(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Redis reaching ``maxmemory`` (noeviction) in the middle of a flush's
    pipeline applies the INCRBYs before that point and refuses the rest with
    OOM. Only the refused ones go back into the buffer: the whole chunk went
    back, and the next flush counted the applied part twice."""
    server = redis_server_factory()
    admin = server.client()
    names = [f"k{i:04d}-" + "x" * 100 for i in range(3000)]
    with RedisPool(server.url, min_size=0, max_size=2) as pool:
        a = Analytics(
            pool, buffered=True, flush_interval=60, flush_items=10**6, timeout=5, clock=FakeClock(0)
        )
        for name in names:
            a.incr(name, 2)
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", used + 200_000)  # room for some of the 3000 keys
        written = a.flush()
        applied = admin.dbsize()
        assert 0 < applied < len(names)  # the pipeline was refused part way
        assert written == applied and a.stats()["buffered"] == len(names) - applied
        admin.config_set("maxmemory", 0)
        a.close()
        values = admin.mget([f"stats:c:{{{name}}}:0" for name in names])
        assert [int(v or 0) for v in values] == [2] * len(names)
        assert a.stats()["buffered"] == 0 and a.stats()["flushed_keys"] == len(names)
    admin.close()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, RuntimeError])
def test_a_flush_cut_short_by_any_exception_keeps_what_it_did_not_write(
    pool: RedisPool, monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]
) -> None:
    """A flush interrupted by something other than a Redis error (Ctrl-C or
    gunicorn's SIGQUIT in an exit hook's flush, a ``gevent.Timeout``, a bug)
    puts what it did not write back into the buffer, as a Redis error does; it
    was lost with the buffer it had taken."""
    monkeypatch.setattr(analytics_mod, "FLUSH_CHUNK", 2)
    a = Analytics(pool, buffered=True, flush_interval=60, clock=FakeClock(0))
    for i in range(5):
        a.incr(f"k{i}", i + 1)
    write, calls = a._write, []

    def interrupted(r: redis.Redis, chunk: Any) -> int:
        calls.append(len(chunk))
        if len(calls) == 2:
            raise exc("interrupted")
        return write(r, chunk)

    monkeypatch.setattr(a, "_write", interrupted)
    with pytest.raises(exc):
        a.flush()
    assert a.stats()["buffered"] == 3  # the first chunk landed; the rest is kept
    assert a.flush() == 3
    assert [a.get(f"k{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    a.close()


def test_a_forked_childs_first_writes_from_several_threads_are_all_kept(
    pool: RedisPool, admin: redis.Redis
) -> None:
    """In a forked child (a gthread worker), the first writes come from several
    threads at once: the buffer is replaced once, by the first. Each thread
    that saw the parent's pid replaced it again, dropping what the others had
    buffered meanwhile (and leaving their flush thread running)."""
    a = Analytics(pool, namespace="fork8", buffered=True, flush_interval=60, clock=FakeClock(0))
    a.incr("parent")
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            resets: list[int] = []
            reset = a._reset_buffer

            def slow_reset() -> None:  # widen the window between the check and the reset
                resets.append(1)
                time.sleep(0.05)
                reset()

            a._reset_buffer = slow_reset  # type: ignore[method-assign]
            barrier = threading.Barrier(8)

            def write() -> None:
                barrier.wait()
                a.incr("child")

            threads = [threading.Thread(target=write) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            a.flush()
            code = 0 if len(resets) == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert admin.get("fork8:c:{child}:0") == b"8"
    assert os.waitstatus_to_exitcode(status) == 0
    a.close()
    assert admin.get("fork8:c:{parent}:0") == b"1"


def test_a_write_during_a_forked_childs_buffer_reset_waits_for_it(
    pool: RedisPool, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reset of a forked child's buffer set the child's pid first: a thread
    writing in the middle of it saw its pid, skipped the fork lock, and wrote
    into the parent's buffer (under the parent's lock, which a thread that did
    not fork may hold) that the reset then replaced: the write was lost."""
    a = Analytics(pool, namespace="fork9", buffered=True, flush_interval=60, clock=FakeClock(0))
    a._pid = -1  # as in a forked child: the buffer and its lock are the parent's
    in_reset, go_on = threading.Event(), threading.Event()
    resetter: list[threading.Thread] = []

    class PausingThreading:  # the module's threading: the reset pauses at its new lock
        def __getattr__(self, name: str) -> Any:
            return getattr(threading, name)

        def Lock(self) -> Any:
            if not resetter and threading.current_thread() is not threading.main_thread():
                resetter.append(threading.current_thread())
                in_reset.set()
                go_on.wait(5)
            return threading.Lock()

    monkeypatch.setattr(analytics_mod, "threading", PausingThreading())
    first = threading.Thread(target=a.incr, args=("child",))
    first.start()
    assert in_reset.wait(5)
    second = threading.Thread(target=a.incr, args=("child", 10))
    second.start()
    second.join(0.2)  # (with the fix it waits for the reset: the fork lock)
    go_on.set()
    first.join(5)
    second.join(5)
    monkeypatch.undo()
    a.close()
    assert admin.get("fork9:c:{child}:0") == b"11"


def test_close_writes_the_buffer_even_while_the_breaker_is_open(
    pool: RedisPool, admin: redis.Redis
) -> None:
    """The flush at close is the last one: nothing tries again after it. Redis
    failing a moment before (the breaker still open, 5 s by default) made it a
    rejected call, and the buffer was lost at exit with Redis up again."""
    breaker = CircuitBreaker(threshold=1, cooldown=60)
    a = Analytics(
        pool, namespace="bo", buffered=True, flush_interval=60, clock=FakeClock(0), breaker=breaker
    )
    a.incr("x", 3)
    a.add_unique("u", "m1", "m2")
    breaker.failure()  # a blip a moment ago
    assert breaker.state == "open"
    assert a.flush() == 0 and a.stats()["buffered"] == 2  # a flush now waits for the cooldown
    a.close()
    assert admin.get("bo:c:{x}:0") == b"3" and admin.pfcount("bo:u:{u}:0") == 2
    assert a.stats()["buffered"] == 0 and breaker.state == "closed"  # and Redis answered


def test_close_waits_for_the_background_flush_it_could_not_join(
    pool: RedisPool, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close(timeout)`` joins the flush thread for ``timeout`` seconds (1 s at
    exit); a flush of several chunks can take longer. close() then found the
    buffer empty (the thread held its items) and returned while they were being
    written: the process exited mid-flush, and what that flush could not
    write went back into a buffer nothing flushed again."""
    monkeypatch.setattr(analytics_mod, "FLUSH_CHUNK", 2)
    a = Analytics(
        pool, namespace="cw", buffered=True, flush_interval=60, flush_items=6, clock=FakeClock(0)
    )
    write, started = a._write, threading.Event()

    def slow_write(r: redis.Redis, chunk: Any) -> int:
        started.set()
        time.sleep(0.2)
        return write(r, chunk)

    monkeypatch.setattr(a, "_write", slow_write)
    for i in range(6):
        a.incr(f"k{i}", i + 1)  # the 6th wakes the thread: 3 chunks, 0.6 s or more
    assert started.wait(5)
    a.close(timeout=0.05)
    assert admin.mget([f"cw:c:{{k{i}}}:0" for i in range(6)]) == [
        b"1",
        b"2",
        b"3",
        b"4",
        b"5",
        b"6",
    ]
    assert a.stats()["buffered"] == 0


@pytest.mark.parametrize("seed", [6, 11])
def test_counts_exact_with_redis_refusing_writes_at_random(
    redis_server_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Oracle: after close(), Redis holds exactly the sum of every increment,
    with 4 threads writing (buffered, random buckets and amounts, their own
    flushes) while Redis reaches ``maxmemory`` and recovers at random (OOM
    for part of a pipeline, the breaker opening). Refusals are exact (no
    timeouts: those are at least once). Seed 6 found the close() flush turned
    away by the open breaker."""
    rnd = random.Random(seed)
    monkeypatch.setattr(analytics_mod, "FLUSH_CHUNK", rnd.choice([3, 7, 50]))
    server = redis_server_factory()
    admin = server.client()
    admin.config_set("maxmemory-policy", "noeviction")
    expected: collections.Counter[tuple[str, int]] = collections.Counter()
    lock, stop = threading.Lock(), threading.Event()
    with RedisPool(server.url, min_size=0, max_size=6) as pool:
        a = Analytics(
            pool,
            namespace="d",
            buffered=True,
            flush_interval=0.005,
            flush_items=rnd.choice([5, 50, 1000]),
            timeout=2,
            breaker=CircuitBreaker(threshold=3, cooldown=0.01),
        )

        def writer(i: int) -> None:
            r = random.Random(seed * 100 + i)
            for _ in range(300):
                name, amount, at = f"n{r.randrange(20)}", r.randrange(-3, 10), r.choice([0, 60, 90])
                a.incr(name, amount, at=at)
                with lock:
                    expected[(name, at // 60 * 60)] += amount
                if r.random() < 0.05:
                    a.flush()

        def refuse_at_random() -> None:
            r = random.Random(seed)
            while not stop.is_set():
                used = int(admin.info("memory")["used_memory"])
                admin.config_set("maxmemory", used + r.choice([0, 2000, 20000]))
                time.sleep(r.random() * 0.01)
                admin.config_set("maxmemory", 0)
                time.sleep(r.random() * 0.01)

        chaos = threading.Thread(target=refuse_at_random)
        chaos.start()
        try:
            hammer(writer, 4)
        finally:
            stop.set()
            chaos.join()
        admin.config_set("maxmemory", 0)
        a.close()
        keys = list(expected)
        got = admin.mget([f"d:c:{{{name}}}:{start}" for name, start in keys])
        assert {k: int(v or 0) for k, v in zip(keys, got, strict=True)} == dict(expected)
        assert a.stats()["buffered"] == 0 and a.stats()["dropped"] == 0
    admin.close()


_GEVENT_KILLED_FLUSHER = """
from gevent import monkey
monkey.patch_all()
import gc, gevent, os, sys
from redispool import RedisPool
from redispool.helpers.analytics import Analytics

pool = RedisPool(sys.argv[1], min_size=1, max_size=4)
stats = Analytics(pool, namespace=f"killed{os.getpid()}", buffered=True, flush_interval=0.05)
stats.incr("x")
thread = stats._thread
greenlets = [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet)]
flusher = next(g for g in greenlets if id(g) == thread.ident)
flusher.kill()  # (or a signal handler's exception: the flusher runs on the main thread)
assert not thread.is_alive()
stats.incr("x")
gevent.sleep(0.5)
assert stats.stats()["buffered"] == 0, stats.stats()
assert stats.get("x") == 2
stats.close()
print("ok")
"""


def test_under_gevent_a_killed_flush_thread_is_replaced(redis_url: str) -> None:
    # Regression: a flush greenlet killed (greenlet.kill, or an exception a
    # signal handler raised while it ran) stayed the flusher: buffered writes
    # were not flushed any more until close().
    pytest.importorskip("gevent")
    assert_child_ok(_GEVENT_KILLED_FLUSHER, redis_url)


_MADE_BEFORE_PATCHING = """
import faulthandler, os, sys, time
faulthandler.dump_traceback_later(10, exit=True)  # (a deadlock: the process froze)
from redispool import RedisPool
from redispool.helpers.analytics import Analytics

pool = RedisPool(sys.argv[1], min_size=0, max_size=4)
stats = Analytics(pool, namespace=f"early{os.getpid()}", buffered=True, flush_interval=0.05)

from gevent import monkey
monkey.patch_all()
import gevent


def beat(out):
    start = time.monotonic()
    for _ in range(20):
        gevent.sleep(0.01)
    out.append(time.monotonic() - start)


def work():
    for i in range(20):
        stats.incr("x")
        if i % 5 == 0:
            stats.flush()


out = []
jobs = [gevent.spawn(beat, out)] + [gevent.spawn(work) for _ in range(10)]
gevent.joinall(jobs, timeout=8)
assert all(j.successful() for j in jobs), [j.exception for j in jobs]
assert out[0] < 1.0, out  # (a native wait would hold up every greenlet)
stats.close()
assert stats.get("x") == 200
print("ok")
"""


def test_under_gevent_made_before_patching(redis_url: str) -> None:
    # Regression: made before gevent's monkey-patching (in the same process),
    # a buffered Analytics kept native locks and events: the first write took
    # its lock and started the flush greenlet, which switched away; the next
    # greenlet to write blocked the whole process on that lock for ever.
    pytest.importorskip("gevent")
    assert_child_ok(_MADE_BEFORE_PATCHING, redis_url)
