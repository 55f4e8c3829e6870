"""The pool as a drop-in for redis-py: ``redis.Redis(connection_pool=pool.as_redis_pool())``
and ``pool.redis`` run unmodified redis-py code and third-party libraries (limits,
RQ, Flask-Caching), against a real redis-server.

Every test checks that the traffic really went through the pool (commands and
borrows grew) and that no connection leaked (``in_use == 0`` afterwards).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redispool import PoolError, RedisPool

pytestmark = pytest.mark.timeout(30)


# -- fixtures and helpers ----------------------------------------------------


def _pool(url: str, **kw: Any) -> RedisPool:
    opts: dict[str, Any] = {"min_size": 1, "max_size": 4, "timeout": 2.0, "name": "dropin"}
    opts.update(kw)
    p = RedisPool(url, **opts)
    p.open(wait=True, timeout=5)
    return p


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    p = _pool(redis_url)
    yield p
    p.close()


@pytest.fixture(params=["as_redis_pool", "pool.redis"])
def client(request: pytest.FixtureRequest, pool: RedisPool) -> redis.Redis:
    """Both drop-in forms: a caller-built ``redis.Redis`` and the pool's own."""
    if request.param == "as_redis_pool":
        return redis.Redis(connection_pool=pool.as_redis_pool())  # type: ignore[arg-type]
    return pool.redis


@contextmanager
def through(pool: RedisPool, *, min_commands: int = 1) -> Iterator[None]:
    """Assert that the block's traffic went through ``pool`` and nothing leaked."""
    before = pool.stats()
    yield
    after = pool.stats()
    assert after.commands - before.commands >= min_commands, (before, after)
    assert after.borrows > before.borrows, (before, after)
    assert after.in_use == 0, after


def dirty(pool: RedisPool) -> int:
    return pool.stats().destroyed_by_reason.get("dirty", 0)


def wait_message(ps: Any, kind: str, timeout: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = ps.get_message(timeout=0.05)
        if msg is not None and msg["type"] == kind:
            return msg  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind!r} message within {timeout}s")


# -- unmodified redis-py code --------------------------------------------------


def test_plain_commands(pool: RedisPool, client: redis.Redis) -> None:
    with through(pool, min_commands=10):
        assert client.ping()
        assert client.set("k", "v", ex=60)
        assert client.get("k") == b"v"
        assert client.incr("n", 5) == 5
        assert client.mget("k", "n", "missing") == [b"v", b"5", None]
        client.hset("h", mapping={"a": 1, "b": 2})
        assert client.hgetall("h") == {b"a": b"1", b"b": b"2"}
        assert 0 < client.ttl("k") <= 60
        with pytest.raises(redis.ResponseError):
            client.incr("k")  # an error reply does not spoil the connection
        assert client.delete("k", "n", "h") == 3
    assert dirty(pool) == 0
    assert pool.stats().command_errors >= 1


def test_close_of_a_client_does_not_close_the_pool(pool: RedisPool) -> None:
    with redis.Redis(connection_pool=pool.as_redis_pool()) as r:  # type: ignore[arg-type]
        r.set("k", 1)
    r.close()
    assert not pool.closed
    with through(pool):
        assert pool.redis.get("k") == b"1"


def test_single_connection_client_of_a_drop_in(pool: RedisPool, client: redis.Redis) -> None:
    """redis-py's ``client()``: one connection held until ``close()``."""
    with through(pool, min_commands=2):
        single = client.client()
        single.set("one", 1)
        assert pool.stats().in_use == 1  # held between commands
        assert single.get("one") == b"1"
        single.close()
    assert isinstance(pool.redis, redis.Redis)  # (a subclass: see redispool/_dropin.py)


def test_the_drop_in_is_made_as_a_redis_is(pool: RedisPool, redis_url: str) -> None:
    """Libraries copy a client through its class with redis-py's arguments
    (``type(client)(connection_pool=...)``, ``from_url``; RQ's scheduler, with
    the pool's connection options): ``pool.redis``'s class refused them all."""
    cls = type(pool.redis)
    with through(pool, min_commands=2):
        copy = cls(connection_pool=pool.as_redis_pool())
        assert copy.set("made", 1) and copy.get("made") == b"1"
    with through(pool, min_commands=1):
        single = cls(connection_pool=pool.as_redis_pool(), single_connection_client=True)
        assert single.get("made") == b"1"
        assert pool.stats().in_use == 1  # held between commands
        single.close()
    own = cls.from_url(redis_url)  # redis-py's own pool: not this one
    before = pool.stats().borrows
    assert own.get("made") == b"1"
    assert pool.stats().borrows == before
    own.close()


def test_pipelines(pool: RedisPool, client: redis.Redis) -> None:
    with through(pool, min_commands=6):
        with client.pipeline() as pipe:  # MULTI/EXEC
            pipe.set("a", 1)
            pipe.incr("a")
            pipe.get("a")
            assert pipe.execute() == [True, 2, b"2"]
        with client.pipeline(transaction=False) as pipe:
            pipe.incr("a")
            pipe.lpush("l", "x", "y")
            pipe.hset("a", "f", "v")  # WRONGTYPE, returned in place
            res = pipe.execute(raise_on_error=False)
        assert res[:2] == [3, 2]
        assert isinstance(res[2], redis.ResponseError)
        pipe = client.pipeline()
        pipe.incr("a")
        pipe.hset("a", "f", "v")
        with pytest.raises(redis.ResponseError):
            pipe.execute()
    assert dirty(pool) == 0


def test_watch_retry_loop(pool: RedisPool, client: redis.Redis) -> None:
    client.set("counter", 0)
    attempts = 0
    with through(pool):
        with client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch("counter")
                    value = int(pipe.get("counter"))  # type: ignore[arg-type]
                    attempts += 1
                    if attempts == 1:  # someone else changes it: EXEC must fail
                        pool.redis.incr("counter")
                    pipe.multi()
                    pipe.set("counter", value + 10)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        assert attempts == 2
        assert client.get("counter") == b"11"

        def double(pipe: Any) -> None:
            value = int(pipe.get("counter"))
            pipe.multi()
            pipe.set("counter", value * 2)

        client.transaction(double, "counter")
        assert client.get("counter") == b"22"

        pipe = client.pipeline()
        pipe.watch("counter")
        pipe.reset()  # an abandoned WATCH is UNWATCHed before the connection goes back
    assert dirty(pool) == 0


@pytest.mark.parametrize("stall", ["exec", "unwatch"])
def test_a_watching_pipeline_cut_short_by_a_stall_gives_its_connection_back(
    redis_url: str, stall: str
) -> None:
    """redis-py's ``Pipeline.reset()`` gives the connection back only after its
    UNWATCH, and a ``TimeoutError`` there (the server stalled: EXEC timed out
    and the reconnect's handshake did too, or the UNWATCH itself) skipped that:
    on ``pool.redis`` the slot was lost for good (``__del__`` tries once more)."""
    pool = _pool(redis_url, min_size=0, max_size=2, socket_timeout=0.1)
    side = redis.Redis.from_url(redis_url)
    try:
        with pytest.raises(redis.RedisError):
            with pool.redis.pipeline() as pipe:
                pipe.watch("k")
                side.execute_command("CLIENT", "PAUSE", 1000, "ALL")
                if stall == "exec":
                    pipe.multi()
                    pipe.set("k", "1")
                    pipe.execute()
        del pipe  # (its __del__ resets again: still stalled)
        side.execute_command("CLIENT", "UNPAUSE")  # (waits for the pause to end)
        s = pool.stats()
        assert s.in_use == 0 and s.size == s.idle, s
        with pool.redis.pipeline() as pipe:
            pipe.watch("k")
            pipe.multi()
            pipe.set("k", "2")
            assert pipe.execute() == [True]
        assert pool.stats().in_use == 0
    finally:
        side.execute_command("CLIENT", "UNPAUSE")
        side.close()
        pool.close()


def test_pubsub_connection_is_not_reused(pool: RedisPool, client: redis.Redis) -> None:
    before = dirty(pool)
    with through(pool):
        ps = client.pubsub()
        ps.subscribe("news")
        wait_message(ps, "subscribe")
        assert client.publish("news", "hello") == 1
        assert wait_message(ps, "message")["data"] == b"hello"
        ps.psubscribe("n*")
        wait_message(ps, "psubscribe")
        ps.unsubscribe("news")
        ps.punsubscribe()
        wait_message(ps, "unsubscribe")
        ps.close()
    assert dirty(pool) == before + 1
    # Nobody is subscribed any more: no later borrower can get a stray message.
    assert client.publish("news", "late") == 0
    assert client.pubsub_numsub("news") == [(b"news", 0)]

    ps = client.pubsub(ignore_subscribe_messages=True)
    ps.subscribe("news")
    ps.close()  # closed while still subscribed
    assert dirty(pool) == before + 2
    assert client.publish("news", "later") == 0
    assert pool.stats().in_use == 0


def test_pubsub_run_in_thread(pool: RedisPool, client: redis.Redis) -> None:
    got: list[bytes] = []
    received = threading.Event()

    def handler(msg: dict[str, Any]) -> None:
        got.append(msg["data"])
        received.set()

    ps = client.pubsub()
    ps.subscribe(events=handler)
    thread = ps.run_in_thread(sleep_time=0.01, daemon=True)
    try:
        deadline = time.monotonic() + 2
        while client.publish("events", "e1") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received.wait(2)
    finally:
        thread.stop()
        thread.join(2)
    assert got[0] == b"e1"
    assert not thread.is_alive()
    assert pool.stats().in_use == 0
    assert client.publish("events", "e2") == 0


def test_monitor_refused_at_enter_gives_its_connection_back(redis_url: str) -> None:
    """``with pool.redis.monitor()``: redis-py's ``Monitor`` borrows when made and
    gives back in ``__exit__``, which does not run when MONITOR fails in
    ``__enter__`` (a user without the permission, a timeout): each try kept a
    connection for good. Nor does it run for a monitor never entered."""
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "nomonitor",
        enabled=True,
        passwords=["+pw"],
        keys="*",
        channels="*",
        commands=["+@all", "-monitor"],
    )
    pool = _pool(redis_url, username="nomonitor", password="pw", max_size=2)
    try:
        for _ in range(3):  # more tries than connections
            with pytest.raises(redis.exceptions.NoPermissionError):
                with pool.redis.monitor():
                    pass
        assert pool.stats().in_use == 0
        pool.redis.monitor()  # made, never entered, dropped
        assert pool.stats().in_use == 0
        assert pool.redis.ping()
    finally:
        pool.close()
        admin.acl_deluser("nomonitor")
        admin.close()


def test_lua_script_with_noscript_fallback(pool: RedisPool, client: redis.Redis) -> None:
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    errors = pool.stats().command_errors
    with through(pool):
        assert script(keys=["n"], args=[2]) == 2
        client.script_flush()
        assert script(keys=["n"], args=[3]) == 5  # NOSCRIPT, SCRIPT LOAD, EVALSHA
        client.script_flush()
        pipe = client.pipeline()
        script(keys=["n"], args=[1], client=pipe)  # the pipeline loads missing scripts
        pipe.get("n")
        assert pipe.execute() == [6, b"6"]
    # NOSCRIPT went through the pool, but is EVALSHA's normal first miss: not an error
    assert pool.stats().command_errors == errors
    assert dirty(pool) == 0


def test_decode_responses(redis_url: str) -> None:
    p = _pool(redis_url, decode_responses=True)
    try:
        for r in (redis.Redis(connection_pool=p.as_redis_pool()), p.redis):  # type: ignore[arg-type]
            with through(p):
                r.set("k", "välue")
                assert r.get("k") == "välue"
                r.hset("h", "f", "v")
                assert r.hgetall("h") == {"f": "v"}
                pipe = r.pipeline()
                pipe.get("k")
                pipe.hgetall("h")
                assert pipe.execute() == ["välue", {"f": "v"}]
                script = r.register_script("return redis.call('GET', KEYS[1])")
                assert script(keys=["k"]) == "välue"
                assert set(r.scan_iter(match="*")) == {"k", "h"}
                ps = r.pubsub()
                ps.subscribe("c")
                wait_message(ps, "subscribe")
                r.publish("c", "hi")
                assert wait_message(ps, "message")["data"] == "hi"
                ps.close()
                with r.lock("l", timeout=5):
                    assert r.get("l") is not None
    finally:
        p.close()


def test_lock(pool: RedisPool, client: redis.Redis) -> None:
    with through(pool):
        lock = client.lock("res", timeout=5, blocking_timeout=0.5)
        assert lock.acquire()
        other = client.lock("res", timeout=5, blocking_timeout=0.05, sleep=0.01)
        assert not other.acquire()
        assert lock.owned()
        assert lock.extend(5)
        lock.release()
        assert other.acquire()
        other.release()
        with client.lock("res2", timeout=5):
            assert client.exists("res2")
        assert not client.exists("res2")

    # Contended from threads: the lock serialises a read-modify-write.
    client.set("total", 0)

    def work() -> None:
        for _ in range(10):
            with client.lock("mutex", timeout=5, sleep=0.001, blocking_timeout=5):
                value = int(client.get("total"))  # type: ignore[arg-type]
                client.set("total", value + 1)

    threads = [threading.Thread(target=work) for _ in range(6)]  # more threads than connections
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.get("total") == b"60"
    assert pool.stats().in_use == 0


def test_scan_iter(pool: RedisPool, client: redis.Redis) -> None:
    client.mset({f"k:{i}": i for i in range(40)})
    client.set("other", 1)
    client.hset("h", mapping={f"f{i}": i for i in range(50)})
    client.sadd("s", *range(50))
    client.zadd("z", {f"m{i}": i for i in range(50)})
    with through(pool, min_commands=8):
        assert set(client.scan_iter(match="k:*", count=5)) == {f"k:{i}".encode() for i in range(40)}
        assert len(dict(client.hscan_iter("h", count=10))) == 50
        assert len(set(client.sscan_iter("s", count=10))) == 50
        assert len(list(client.zscan_iter("z", count=10))) == 50
        for _ in client.scan_iter(count=2):
            break  # abandoned half-way: nothing is held between SCAN calls
    assert dirty(pool) == 0


# -- with pool.client(): one pinned connection --------------------------------


def test_pinned_client(pool: RedisPool) -> None:
    before = pool.stats()
    with pool.client() as r:
        r.set("a", 1)
        with r.pipeline() as pipe:
            pipe.incr("a")
            pipe.incr("a")
            assert pipe.execute() == [2, 3]
        with r.pipeline(transaction=False) as pipe:
            pipe.incr("a")
            pipe.get("a")
            assert pipe.execute() == [4, b"4"]
        attempts = 0
        with r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch("a")
                    value = int(pipe.get("a"))  # type: ignore[arg-type]
                    attempts += 1
                    if attempts == 1:
                        pool.redis.incr("a")  # a second connection: the one borrow extra
                    pipe.multi()
                    pipe.set("a", value * 10)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        assert attempts == 2
        assert r.get("a") == b"50"

        def bump(pipe: Any) -> None:
            pipe.multi()
            pipe.incr("a")

        r.transaction(bump, "a")
        with r.lock("l", timeout=5):
            pass
        stale = r.pipeline()
        stale.set("late", 1)
        watching = r.pipeline()
        watching.watch("a")
    after = pool.stats()
    assert after.borrows - before.borrows == 2  # the block's one, and pool.redis's one
    assert after.in_use == 0

    with pytest.raises(PoolError):
        r.get("a")
    with pytest.raises(PoolError):
        stale.execute()
    with pytest.raises(PoolError):
        watching.get("a")  # still "watching": would run on a connection given back
    watching.multi()
    watching.set("a", 0)
    with pytest.raises(PoolError):
        watching.execute()
    watching.reset()  # forgets the connection without touching it
    late = r.pipeline()
    late.set("x", 1)
    with pytest.raises(PoolError):
        late.execute()
    with pytest.raises(PoolError):
        r.pubsub().subscribe("x")
    assert pool.redis.get("a") == b"51"
    assert not pool.redis.exists("late", "x")
    assert pool.stats().in_use == 0


def test_stale_pipeline_cannot_use_a_reborrowed_connection(redis_url: str) -> None:
    # WATCH then UNWATCH leaves the connection clean (so it goes back to the pool)
    # while the pipeline still holds it: it must not reach the next borrower's.
    p = _pool(redis_url, max_size=1)
    try:
        with p.client() as r:
            pipe = r.pipeline()
            pipe.watch("k")
            pipe.unwatch()
        with p.client() as r2:
            assert r2.connection is pipe.connection  # the same connection, lent again
            pipe.set("k", "stale")
            with pytest.raises(PoolError):
                pipe.execute()
            del pipe  # __del__ resets: must not send UNWATCH on r2's connection
            assert r2.set("k", "mine")
            assert r2.get("k") == b"mine"
        assert p.stats().destroyed_by_reason == {}
    finally:
        p.close()


def test_pinned_pubsub(pool: RedisPool) -> None:
    before = dirty(pool)
    with pool.client() as r:
        ps = r.pubsub()  # a connection of its own, not the block's
        ps.subscribe("c")
        wait_message(ps, "subscribe")
        assert r.publish("c", "x") == 1  # the block's connection is not subscribed
        assert wait_message(ps, "message")["data"] == b"x"
    assert pool.stats().in_use == 1  # the pubsub still holds its connection
    ps.close()
    assert dirty(pool) == before + 1  # subscribed: never reused
    assert pool.redis.publish("c", "y") == 0
    assert pool.stats().in_use == 0


# -- third-party libraries -----------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    ["FixedWindowRateLimiter", "MovingWindowRateLimiter", "SlidingWindowCounterRateLimiter"],
)
def test_limits(pool: RedisPool, strategy: str) -> None:
    limits = pytest.importorskip("limits")
    from limits import strategies
    from limits.storage import RedisStorage

    adapter: Any = pool.as_redis_pool()
    storage = RedisStorage("redis://", connection_pool=adapter)
    limiter = getattr(strategies, strategy)(storage)
    item = limits.parse("3/minute")
    with through(pool, min_commands=5):
        assert [limiter.hit(item, "user", "42") for _ in range(5)] == [True] * 3 + [False] * 2
        assert not limiter.test(item, "user", "42")
        assert limiter.test(item, "user", "43")
        assert limiter.get_window_stats(item, "user", "42").remaining == 0
        limiter.clear(item, "user", "42")
        assert limiter.hit(item, "user", "42")
        assert storage.check()
    assert pool.redis.keys("LIMITS:*")  # the state is in the real server
    assert dirty(pool) == 0


def test_limits_under_contention(redis_url: str) -> None:
    limits = pytest.importorskip("limits")
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    p = _pool(redis_url, max_size=2)  # fewer connections than threads
    try:
        limiter = MovingWindowRateLimiter(
            RedisStorage("redis://", connection_pool=p.as_redis_pool())  # type: ignore[arg-type]
        )
        item = limits.parse("25/minute")
        results: list[bool] = []
        lock = threading.Lock()

        def hit() -> None:
            for _ in range(10):
                ok = limiter.hit(item, "api")
                with lock:
                    results.append(ok)

        with through(p, min_commands=80):
            threads = [threading.Thread(target=hit) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert results.count(True) == 25
        assert len(results) == 80
        assert p.stats().size <= 2
    finally:
        p.close()


def add(a: int, b: int) -> int:
    return a + b


def whoami() -> int:
    return os.getpid()


def boom() -> None:
    raise ValueError("boom")


def test_rq(redis_url: str) -> None:
    rq = pytest.importorskip("rq")
    # The worker's own pool, with a socket timeout longer than its BLPOP: see
    # test_rq_worker_rewrites_socket_timeout for what RQ does otherwise.
    p = _pool(redis_url, socket_timeout=600, name="rq")
    try:
        r = redis.Redis(connection_pool=p.as_redis_pool())  # type: ignore[arg-type]
        with through(p, min_commands=20):
            q = rq.Queue("dropin", connection=r)
            job = q.enqueue(add, 2, 3)
            pid_job = q.enqueue(whoami)
            bad = q.enqueue(boom)
            assert q.count == 3
            worker = rq.SimpleWorker([q], connection=r)
            assert worker.work(burst=True, logging_level="WARNING")
            assert job.return_value(refresh=True) == 5
            assert pid_job.return_value(refresh=True) == os.getpid()  # ran here: no fork
            bad.refresh()
            assert bad.is_failed
            assert "ValueError: boom" in (bad.latest_result().exc_string or "")
            assert q.count == 0
        assert p.connection_kwargs["socket_timeout"] == 600  # left alone
        # CLIENT SETNAME and the worker's pub/sub connection are not reused.
        assert dirty(p) >= 1
    finally:
        p.close()


def test_rq_worker_rewrites_socket_timeout(redis_url: str) -> None:
    """Known RQ behaviour (the same with redis-py's own pool): ``Worker()`` sets
    ``connection_pool.connection_kwargs["socket_timeout"]`` to ``worker_ttl - 5``
    unless it is already at least that (``None`` included), so every connection
    the pool opens from then on gets that timeout. Give workers their own pool
    (with ``socket_timeout >= worker_ttl - 5``), not the web app's."""
    rq = pytest.importorskip("rq")
    p = _pool(redis_url, socket_timeout=2.0)
    try:
        r = redis.Redis(connection_pool=p.as_redis_pool())  # type: ignore[arg-type]
        rq.SimpleWorker([rq.Queue("q", connection=r)], connection=r, worker_ttl=60)
        assert p.connection_kwargs["socket_timeout"] == 55
        p.drain()
        with p.connection() as conn:
            assert conn.socket_timeout == 55
    finally:
        p.close()


def test_flask_caching(pool: RedisPool) -> None:
    pytest.importorskip("flask_caching")
    from flask import Flask
    from flask_caching import Cache

    app = Flask(__name__)
    client = redis.Redis(connection_pool=pool.as_redis_pool())  # type: ignore[arg-type]
    cache = Cache(
        app,
        config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_HOST": client,  # a client object is used as is
            "CACHE_KEY_PREFIX": "fc:",
        },
    )
    calls: list[int] = []
    views: list[int] = []

    @app.route("/n")
    @cache.cached(timeout=30)
    def view() -> str:
        views.append(1)
        return str(len(views))

    @cache.memoize(30)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    with through(pool, min_commands=10), app.app_context():
        assert cache.set("k", {"a": [1, 2]})
        assert cache.get("k") == {"a": [1, 2]}
        assert cache.has("k")
        assert cache.add("k", "other") is False
        cache.set_many({"x": 1, "y": 2})
        assert cache.get_many("x", "y", "z") == [1, 2, None]
        assert cache.cache.inc("ctr") == 1  # the backend: INCRBY
        assert cache.cache.inc("ctr", 5) == 6
        assert cache.delete("k")
        assert cache.get("k") is None
        assert square(4) == 16
        assert square(4) == 16
        assert calls == [4]
        with app.test_client() as http:
            assert http.get("/n").data == b"1"
            assert http.get("/n").data == b"1"  # served from the cache
        assert pool.redis.keys("fc:*")
        assert cache.clear()
        assert pool.redis.keys("fc:*") == []
    assert dirty(pool) == 0


def test_flask_caching_backend_with_connection_pool_kwarg(pool: RedisPool) -> None:
    pytest.importorskip("flask_caching")
    from flask_caching.backends.rediscache import RedisCache

    # Extra keywords go to redis.Redis(...), where connection_pool wins over host/port.
    cache = RedisCache(connection_pool=pool.as_redis_pool(), key_prefix="b:")
    with through(pool, min_commands=3):
        assert cache.set("k", [1, "two"])
        assert cache.get("k") == [1, "two"]
        assert cache.delete("k")
        assert cache.get("k") is None


# -- redis-py's pool semantics: set_retry, health_check_interval ---------------


def test_set_retry_reaches_borrowed_connections(pool: RedisPool) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    r = redis.Redis(connection_pool=pool.as_redis_pool())  # type: ignore[arg-type]
    r.ping()
    retry = Retry(NoBackoff(), 7)
    with pool.connection() as held:
        r.set_retry(retry)  # as redis-py's pool: idle and borrowed connections alike
        assert held.retry is retry
    assert all(conn.retry is retry for conn in pool._pool.objects())
    assert pool.connection_kwargs["retry"] is retry
    with pool.connection() as conn:
        assert conn.retry is retry


def _pings(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_ping", {})
    return int(stats.get("calls", 0))


def test_health_check_interval_is_honoured_on_connections(redis_url: str) -> None:
    """A connection held past the interval PINGs before its next command, as with
    redis-py's own pool (pubsub, long pipelines and locks keep their keepalive)."""
    with _pool(redis_url, health_check_interval=0.3, min_size=0) as p:
        admin = redis.Redis.from_url(redis_url)
        with p.connection() as conn:
            assert conn.health_check_interval == 0.3
            conn.send_command("GET", "x")
            conn.read_response()
            before = _pings(admin)
            time.sleep(0.5)
            conn.send_command("GET", "x")
            conn.read_response()
            assert _pings(admin) - before == 1
        # A connection idle in the pool past the interval: PINGed once on borrow,
        # and its first command sends no second PING.
        time.sleep(0.5)
        before = _pings(admin)
        assert p.redis.get("x") is None
        assert _pings(admin) - before == 1
        ps = p.redis.pubsub()
        ps.subscribe("ch")
        wait_message(ps, "subscribe")
        assert ps.connection is not None and ps.connection.health_check_interval == 0.3
        time.sleep(0.5)  # a quiet subscription past the interval: get_message PINGs
        before = _pings(admin)
        assert ps.get_message(timeout=0.05) is None  # the PONG is not a message
        assert _pings(admin) - before == 1
        p.redis.publish("ch", "hi")
        assert wait_message(ps, "message")["data"] == b"hi"
        ps.close()
        admin.close()


def test_a_command_with_no_health_check_due_does_no_health_check_work(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py asks for a health check before every command it sends; a PING is
    due only after ``health_check_interval``. The pool's bookkeeping around the
    PING (not counted, its reply settling no command's) runs only then: not on
    each command (it cost about 140 ns each, over 4 times redis-py's own test)."""
    checks: list[bool] = []
    real = redis.connection.AbstractConnection.check_health

    def check_health(self: Any) -> None:
        checks.append(True)
        real(self)

    monkeypatch.setattr(redis.connection.AbstractConnection, "check_health", check_health)
    with _pool(redis_url, health_check_interval=30, min_size=0, max_size=1) as p:
        assert p.redis.ping()  # (a new connection: redis-py's first check is due)
        checks.clear()
        for _ in range(3):
            assert p.redis.ping()
        assert checks == []  # (none due)
        with p.connection() as conn:
            conn.next_health_check = 0  # due
            conn.send_command("ECHO", "x")
            assert conn.read_response() == b"x"
        assert checks == [True]


def test_a_health_check_that_reconnects_leaves_no_reply_owed_uncounted(redis_url: str) -> None:
    """redis-py's health-check PING goes out ahead of a command already packed (and
    counted). When it failed and the retry reconnected, that command was taken for
    one sent to the old session, so its reply, read on the new one, left the count
    of replies owed at -1; a command then sent and never read made it 0, "clean",
    and the next borrower read that reply as its own (nil, for its ECHO)."""
    retry = Retry(NoBackoff(), 1)
    with _pool(redis_url, health_check_interval=0.2, min_size=0, max_size=1, retry=retry) as p:
        admin = redis.Redis.from_url(redis_url)
        with pytest.raises(KeyError), p.connection() as conn:
            conn.send_command("CLIENT", "ID")
            admin.client_kill_filter(_id=conn.read_response())
            time.sleep(0.3)
            conn.send_command("SET", "hc", "secret")  # the PING fails, reconnects, then SET
            assert conn.read_response() == b"OK"
            conn.send_command("BLPOP", "hc:list", 0.3)  # (its reply comes after the next borrow)
            raise KeyError("the caller fails before reading")
        with p.connection() as conn:
            conn.send_command("ECHO", "mine")
            assert conn.read_response() == b"mine"
        assert p.stats().destroyed_by_reason.get("dirty") == 1
        admin.close()


def test_default_health_check_is_on_borrow_only(redis_url: str) -> None:
    with _pool(redis_url, min_size=0) as p, p.connection() as conn:
        assert conn.health_check_interval == 0
        assert p._health_check_interval == 30.0
    base = redis_url.rsplit("/", 1)[0]
    with _pool(f"{base}/0?health_check_interval=7", min_size=0) as p, p.connection() as conn:
        assert conn.health_check_interval == 7 and p._health_check_interval == 7
