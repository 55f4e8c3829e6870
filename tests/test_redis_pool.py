"""RedisPool against a real redis-server: borrowing, dirty detection, config, stats."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import redis
from redis.connection import SSLConnection

from redispool import PoolError, RedisPool
from redispool.config import env_options, parse_redis_url, redact_url
from redispool.connection import io_timeout, is_alive
from redispool.dns import DNSCache

from .helpers import assert_child_ok


@pytest.fixture
def pool(redis_url: str) -> Any:
    p = RedisPool(redis_url, min_size=0, max_size=4, timeout=2)
    yield p
    p.close()


def test_client_connection_and_drop_in_share_one_pool(pool: RedisPool) -> None:
    with pool.client() as r:
        r.set("k", "v")
        with r.pipeline() as pipe:
            pipe.incr("n").incr("n")
            assert pipe.execute() == [1, 2]
    with pool.connection() as conn:
        conn.send_command("GET", "k")
        assert conn.read_response() == b"v"
    assert pool.redis.get("k") == b"v"
    assert redis.Redis(connection_pool=pool.as_redis_pool()).get("n") == b"2"
    s = pool.stats()
    assert s.in_use == 0 and s.size == s.idle == 1  # one connection served everything
    assert s.commands >= 6 and s.borrows == 4


def test_connection_is_reused_while_clean(pool: RedisPool) -> None:
    with pool.connection() as c1:
        pass
    with pool.connection() as c2:
        assert c2 is c1


@pytest.mark.parametrize(
    "make_dirty",
    [
        pytest.param(lambda r, c: c.send_command("GET", "k"), id="unread-reply"),
        pytest.param(lambda r, c: r.execute_command("MULTI"), id="open-multi"),
        pytest.param(lambda r, c: r.execute_command("WATCH", "k"), id="watch"),
        pytest.param(lambda r, c: r.execute_command("SELECT", "1"), id="select"),
        pytest.param(lambda r, c: r.execute_command("client", "setname", "x"), id="setname"),
        pytest.param(
            lambda r, c: (c.send_command("SUBSCRIBE", "chan"), c.read_response(push_request=True)),
            id="subscribed",
        ),
        pytest.param(lambda r, c: c.disconnect(), id="disconnected"),
    ],
)
def test_dirty_connection_is_never_handed_out_again(pool: RedisPool, make_dirty: Any) -> None:
    with pool.client() as r:
        conn = r.connection
        make_dirty(r, conn)
    assert pool.stats().destroyed_by_reason.get("dirty") == 1
    with pool.client() as r:
        assert r.connection is not conn
        assert r.set("k", "fresh") and r.get("k") == b"fresh"
    assert pool.stats().size == 1


def test_transaction_and_watch_that_complete_leave_it_clean(pool: RedisPool) -> None:
    with pool.client() as r:
        conn = r.connection
        r.execute_command("MULTI")
        r.execute_command("SET", "k", "1")
        r.execute_command("EXEC")
        with r.pipeline() as pipe:
            pipe.watch("k")
            pipe.multi()
            pipe.set("k", "2")
            pipe.execute()
        r.execute_command("WATCH", "k")
        r.execute_command("UNWATCH")
    with pool.client() as r:
        assert r.connection is conn and r.get("k") == b"2"
    assert pool.stats().destroyed == 0


def test_error_reply_and_user_exception_keep_a_clean_connection(pool: RedisPool) -> None:
    with pool.client() as r:
        conn = r.connection
        r.set("s", "x")
        with pytest.raises(redis.ResponseError):
            r.hset("s", "f", "v")  # WRONGTYPE
    with pytest.raises(KeyError):
        with pool.client() as r:
            r.get("s")
            raise KeyError("app bug")
    with pool.client() as r:
        assert r.connection is conn
    s = pool.stats()
    assert s.destroyed == 0 and s.command_errors == 1


def test_client_used_after_its_block_raises(pool: RedisPool) -> None:
    with pool.client() as r:
        pipe = r.pipeline()
    with pytest.raises(PoolError, match="block has ended"):
        r.get("k")
    pipe.get("k")
    with pytest.raises(PoolError):
        pipe.execute()
    assert pool.stats().in_use == 0


def test_killed_connection_is_detected_without_a_round_trip(
    pool: RedisPool, redis_server: Any
) -> None:
    with pool.connection() as conn:
        conn.send_command("CLIENT", "ID")
        victim = conn.read_response()
    admin = redis_server.client()
    assert admin.client_kill_filter(_id=victim) == 1
    deadline = time.monotonic() + 2
    while is_alive(conn) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not is_alive(conn)  # EOF seen by poll(): no PING needed
    with pool.client() as r:
        assert r.connection is not conn and r.ping()
    assert pool.stats().destroyed_by_reason == {"dead": 1}
    admin.close()


def test_read_write_split(redis_server_factory: Any) -> None:
    primary = redis_server_factory()
    replica = redis_server_factory()
    pool = RedisPool(primary.url, read_url=replica.url, min_size=0, max_size=2)
    try:
        with pool.writer() as w:
            w.set("where", "primary")
        with pool.reader() as r:
            assert r.get("where") is None  # not replicated: it really is another server
            r.set("where", "replica")
        with pool.client() as c:
            assert c.get("where") == b"primary"
        s = pool.stats()
        assert s.read is not None and s.read.borrows == 1 and s.borrows == 2
        assert s.read.commands == 2
    finally:
        pool.close()
    assert pool.read_pool is not None and pool.read_pool.closed


def test_reader_without_read_url_uses_the_primary(pool: RedisPool) -> None:
    with pool.reader() as r:
        r.set("a", "1")
    assert pool.stats().read is None and pool.stats().borrows == 1


def test_from_env(redis_url: str) -> None:
    env = {
        "REDIS_URL": redis_url,
        "REDIS_POOL_MIN_SIZE": "0",
        "REDIS_POOL_MAX_SIZE": "3",
        "REDIS_POOL_TIMEOUT": "1.5",
        "REDIS_SOCKET_TIMEOUT": "0.5",
    }
    pool = RedisPool.from_env(environ=env)
    try:
        s = pool.stats()
        assert (s.min_size, s.max_size) == (0, 3)
        assert pool.connection_kwargs["socket_timeout"] == 0.5
        assert pool.redis.ping()
    finally:
        pool.close()


def test_env_options_tls_mode_and_bad_values() -> None:
    env = {"WRITE_REDIS_URL": "redis://w:6379", "READ_REDIS_URL": "redis://r:6379"}
    env["ENABLE_REDIS_TLS_MODE"] = "true"
    assert env_options(environ=env) == {"url": "rediss://w:6379", "read_url": "rediss://r:6379"}
    with pytest.raises(ValueError, match="REDIS_POOL_MAX_SIZE must be an integer, got 'lots'"):
        env_options(environ={"REDIS_POOL_MAX_SIZE": "lots"})
    with pytest.raises(ValueError, match="ENABLE_REDIS_TLS_MODE must be true or false"):
        env_options(environ={"ENABLE_REDIS_TLS_MODE": "maybe"})
    assert env_options(prefix="CACHE_", environ={"CACHE_URL": "redis://c"}) == {"url": "redis://c"}


def test_env_tls_mode_is_never_dropped_silently() -> None:
    """ENABLE_REDIS_TLS_MODE=1 without REDIS_URL gave the plaintext default URL
    (with REDIS_SENTINELS: plaintext data nodes), and with a unix:// URL no TLS."""
    tls = {"ENABLE_REDIS_TLS_MODE": "1"}
    assert env_options(environ=tls) == {"url": "rediss://localhost:6379/0"}
    pool = RedisPool.from_env(environ=tls, min_size=0)
    assert pool.url.startswith("rediss://") and issubclass(pool._conn_class, SSLConnection)
    pool.close()
    with_sentinels = {**tls, "REDIS_SENTINELS": "127.0.0.1:1", "REDIS_SENTINEL_SERVICE": "m"}
    pool = RedisPool.from_env(environ=with_sentinels, min_size=0, background=False)
    assert issubclass(pool._conn_class, SSLConnection)
    pool.close()
    with pytest.raises(ValueError, match="ENABLE_REDIS_TLS_MODE is set but REDIS_URL is a unix"):
        env_options(environ={**tls, "REDIS_URL": "unix:///tmp/redis.sock"})


@pytest.mark.parametrize(
    ("url", "exc", "needle"),
    [
        ("http://h:6379", ValueError, "url must start with redis://"),
        ("", ValueError, "url must not be empty"),
        ("redis://:hunter2@h:notaport", ValueError, "is invalid"),
        # with a password in the URL, the bad option is still named
        ("redis://:hunter2@h?db=abc", ValueError, "Invalid value for 'db'"),
        ("redis://u:hunter2@h/0?socket_timeout=x", ValueError, "value for 'socket_timeout'"),
        (6379, TypeError, "url must be a str"),
    ],
)
def test_bad_urls_are_rejected_without_leaking_the_password(
    url: Any, exc: type, needle: str
) -> None:
    with pytest.raises(exc) as info:
        RedisPool(url)
    assert needle in str(info.value)
    assert "hunter2" not in str(info.value)


def test_bad_options_name_themselves() -> None:
    with pytest.raises(TypeError, match=r"bad connection option.*sockt_timeout"):
        RedisPool("redis://localhost", sockt_timeout=1)
    with pytest.raises(TypeError, match="'max_connections': use max_size"):
        RedisPool("redis://localhost", max_connections=5)
    with pytest.raises(ValueError, match="max_size must be >= 1"):
        RedisPool("redis://localhost", max_size=0)
    with pytest.raises(ValueError, match="socket_timeout must be >= 0"):
        RedisPool("redis://localhost", socket_timeout=-1)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        RedisPool("redis://localhost").client(timeout=-0.1)


def test_the_urls_timeouts_apply_unless_given(redis_url: str) -> None:
    """?socket_timeout= / ?socket_connect_timeout= in the URL (REDIS_URL) were
    accepted and silently replaced by the 2 s defaults."""
    url = redis_url + "?socket_timeout=7&socket_connect_timeout=3"
    pool = RedisPool(url, min_size=0)
    try:
        kw = pool.connection_kwargs
        assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (7.0, 3.0)
        with pool.connection() as conn:
            assert conn.socket_timeout == 7.0
    finally:
        pool.close()
    pool = RedisPool(url, min_size=0, socket_timeout=1, connect_timeout=None)  # given: win
    assert (pool.connection_kwargs["socket_timeout"], pool._ping_timeout) == (1, 1)
    assert pool.connection_kwargs["socket_connect_timeout"] is None
    pool.close()
    pool = RedisPool(redis_url, min_size=0)  # nothing in the URL: the defaults
    assert pool.connection_kwargs["socket_timeout"] == 2.0
    pool.close()
    with pytest.raises(ValueError, match="url's socket_timeout must be > 0"):
        RedisPool(redis_url + "?socket_timeout=0", min_size=0)


def test_the_urls_decode_responses_false_is_false(redis_url: str) -> None:
    """redis-py's parser passes ?decode_responses= on as text: "false" decoded."""
    for value, expected in (("false", b"x"), ("0", b"x"), ("true", "x"), ("1", "x")):
        pool = RedisPool(f"{redis_url}?decode_responses={value}", min_size=0)
        try:
            assert pool.redis.echo("x") == expected, value
            with pool.client() as r:
                assert r.echo("x") == expected, value
        finally:
            pool.close()


def test_parse_and_redact_urls() -> None:
    kw = parse_redis_url("rediss://alice:s3cret@cache.example:6380/2")
    assert kw["host"] == "cache.example" and kw["port"] == 6380 and kw["db"] == 2
    assert kw["username"] == "alice" and kw["password"] == "s3cret"
    assert redact_url("redis://alice:s3cret@h:1/0") == "redis://alice:***@h:1/0"
    assert redact_url("redis://h/0?password=s3cret") == "redis://h/0?password=***"
    pool = RedisPool("redis://alice:s3cret@localhost:1/0", min_size=0)
    assert "s3cret" not in repr(pool) and "s3cret" not in str(pool.stats().as_dict())
    assert "s3cret" not in repr(pool.as_redis_pool())


def test_dns_cache_resolves_once_per_ttl_and_serves_stale_on_failure() -> None:
    now = [0.0]
    answers = {"db.internal": ["10.0.0.1"]}
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in answers:
            raise OSError("NXDOMAIN")
        return answers[host]

    cache = DNSCache(ttl=30, stale_ttl=60, resolver=resolver, clock=lambda: now[0])
    assert cache.resolve("db.internal", 6379) == ["10.0.0.1"]
    now[0] = 29
    assert cache.resolve("db.internal", 6379) == ["10.0.0.1"]
    assert calls == ["db.internal"]
    answers["db.internal"] = ["10.0.0.2"]
    now[0] = 31  # expired: the changed address is honoured
    assert cache.resolve("db.internal", 6379) == ["10.0.0.2"]
    del answers["db.internal"]
    now[0] = 70  # expired and failing: the last answer, within stale_ttl
    assert cache.resolve("db.internal", 6379) == ["10.0.0.2"]
    now[0] = 200  # too old to serve
    with pytest.raises(OSError, match="NXDOMAIN"):
        cache.resolve("db.internal", 6379)
    assert cache.resolve("127.0.0.1", 1) == ["127.0.0.1"]  # literals skip the resolver


def test_new_connections_use_the_dns_cache(redis_server: Any) -> None:
    pool = RedisPool(f"redis://localhost:{redis_server.port}/0", min_size=0, max_size=3)
    try:
        held = [pool._get() for _ in range(3)]
        for c in held:
            assert c.host == "localhost"  # the real name stays (TLS needs it)
            pool._put(c)
        assert pool._dns is not None and pool._dns.lookups == 1
    finally:
        pool.close()


def test_new_connections_do_not_read_redis_pys_package_metadata_again(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py >= 7.1 reads its version from its package metadata for every new
    connection (about 0.3 ms) unless it is given; the pool reads it once."""
    driver_info = pytest.importorskip("redis.driver_info")
    import importlib.metadata

    import redispool.redis_pool

    reads: list[str] = []
    real = importlib.metadata.version

    def counted(name: str) -> str:
        reads.append(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", counted)
    redispool.redis_pool._lib_version.cache_clear()
    pool = RedisPool(redis_server.url, min_size=0, max_size=4, background=False)
    try:
        held = [pool._get() for _ in range(4)]  # four new connections
        try:
            ids = set()
            for c in held:
                c.send_command("CLIENT", "ID")
                ids.add(c.read_response())
            assert len(ids) == 4
            plain = redis.Connection()  # what redis-py sends in CLIENT SETINFO, unchanged
            for c in held:
                assert c.driver_info.formatted_name == plain.driver_info.formatted_name
                assert c.driver_info.lib_version == plain.driver_info.lib_version
        finally:
            for c in held:
                pool._put(c)
        assert reads.count("redis") == 2  # the pool's one, and the plain connection's
        assert "driver_info" not in repr(pool.as_redis_pool())  # (not the user's)
    finally:
        pool.close()
    no_timeout = RedisPool(
        redis_server.url, min_size=0, socket_timeout=None, driver_info=driver_info.DriverInfo()
    )
    shown = repr(no_timeout.as_redis_pool())
    assert "socket_timeout=None" in shown and "driver_info=" in shown  # the user's, shown
    no_timeout.close()
    # given by the user: theirs, on every connection
    given = driver_info.DriverInfo().add_upstream_driver("myapp", "1.2")
    pool = RedisPool(redis_server.url, min_size=0, max_size=2, driver_info=given)
    try:
        with pool.connection() as c:
            assert c.driver_info is given
            assert c.driver_info.formatted_name == "redis-py(myapp_v1.2)"
    finally:
        pool.close()


def test_wait_timeout_is_a_redis_connection_error(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=1)
    try:
        with pool.client():
            with pytest.raises(redis.exceptions.ConnectionError, match=r"1 of 1 in use"):
                with pool.client(wait=0.05):
                    pass
        assert pool.stats().timeouts == 1
    finally:
        pool.close()


def test_pubsub_from_a_pinned_client_gets_its_own_connection(pool: RedisPool) -> None:
    with pool.client() as r:
        ps = r.pubsub()
        ps.subscribe("news")
        assert r.publish("news", "hello") == 1  # the block's connection still works
        first = ps.get_message(timeout=1)
        second = ps.get_message(timeout=1)
        assert first is not None and first["type"] == "subscribe"
        assert second is not None and second["data"] == b"hello"
        assert r.set("k", "v") and r.get("k") == b"v"
        ps.close()
    s = pool.stats()
    assert s.in_use == 0 and s.destroyed_by_reason.get("dirty", 0) <= 1


def test_short_wait_does_not_shorten_the_connection_timeouts(pool: RedisPool) -> None:
    with pool.client(wait=0.05) as r:  # made under a 50 ms borrow deadline
        conn = r.connection
    with pool.connection() as c:
        assert c is conn
        assert io_timeout(c) == 2.0
        c.can_read(timeout=0)  # a parser short read: restores the parser's value
        assert io_timeout(c) == 2.0


def test_commands_never_go_down_while_a_connection_is_retired(redis_url: str) -> None:
    """A counter: a connection off the pool's books but not yet retired (its
    destroy running) was in neither sum, and ``commands`` fell back meanwhile."""
    import threading

    pool = RedisPool(redis_url, min_size=0, max_size=2, timeout=2)
    for _ in range(3):
        pool.redis.ping()
    before = pool.stats()
    in_destroy, go_on = threading.Event(), threading.Event()
    destroy = pool._pool._destroy
    assert destroy is not None

    def slow_destroy(conn: Any) -> None:
        in_destroy.set()
        go_on.wait(10)
        destroy(conn)

    pool._pool._destroy = slow_destroy
    drainer = threading.Thread(target=pool.drain)
    drainer.start()
    try:
        assert in_destroy.wait(10)
        during = pool.stats()
    finally:
        go_on.set()
        drainer.join(10)
    assert (during.commands, during.command_errors) == (before.commands, before.command_errors)
    assert pool.stats().commands == before.commands == 3
    pool.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_command_counts_start_from_zero_in_a_forked_child(redis_url: str) -> None:
    """As the pool's other counters: a worker forked from a parent that had
    used the pool (gunicorn --preload) published the parent's commands again."""
    pool = RedisPool(redis_url, min_size=0, max_size=2, timeout=2)
    for _ in range(5):
        pool.redis.ping()
    pool.drain()  # the parent's connection retired: its commands in the pool's sum
    assert pool.stats().commands == 5
    pid = os.fork()
    if pid == 0:
        try:
            s = pool.stats()
            pool.redis.ping()
            ok = (s.commands, s.borrows, pool.stats().commands) == (0, 0, 1)
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pool.stats().commands == 5
    pool.close()


@pytest.mark.timeout(20)
def test_stats_from_a_signal_handler_amid_the_command_bookkeeping(redis_url: str) -> None:
    """stats() takes the lock a connection's create and destroy take for its
    counts: a handler interrupting them in the same thread must not hang."""
    import signal

    pool = RedisPool(redis_url, min_size=0, max_size=2, timeout=2)
    pool.redis.ping()
    seen: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda *_: seen.append(pool.stats().commands))
    try:
        with pool._stats_lock:
            signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert seen == [1]
    pool.close()


def test_command_counts_never_go_down_across_a_reconnect_in_a_block(
    redis_url: str, redis_server: Any
) -> None:
    """A connection killed in a block reconnects at its next command; its
    handshake (CLIENT SETINFO, ...) counted in ``commands`` while it ran and was
    taken out after: a stats() in between saw a number that then went down, and
    PoolMetrics read that as a new pool (the whole count added again)."""
    pool_box: list[RedisPool] = []
    during: list[int] = []

    def on_connect(conn: Any) -> None:  # (a stats() from another thread, in effect)
        conn.on_connect()
        if pool_box:
            during.append(pool_box[0].stats().commands)

    pool = RedisPool(
        redis_url, min_size=0, max_size=1, client_name="counts", redis_connect_func=on_connect
    )
    pool.redis.ping()
    pool_box.append(pool)
    admin = redis_server.client()
    with pool.client() as r:
        assert admin.client_kill_filter(_id=r.client_id()) == 1
        with pytest.raises(redis.ConnectionError):
            r.ping()
        r.ping()  # reconnects
    assert len(during) == 1
    assert pool.stats().commands >= during[0]
    admin.close()
    pool.close()


_GEVENT_KILLED_UPKEEP = """
from gevent import monkey
monkey.patch_all()
import gc, gevent, sys, time
from redispool import RedisPool

pool = RedisPool(sys.argv[1], min_size=2, max_size=4)


def wait_for(cond):
    end = time.monotonic() + 5
    while not cond() and time.monotonic() < end:
        gevent.sleep(0.01)
    return cond()


pool.redis.ping()  # (starts the upkeep, which fills up to min_size)
assert wait_for(lambda: pool.stats().idle == 2), pool.stats()
thread = pool._pool._upkeep
greenlets = [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet)]
next(g for g in greenlets if id(g) == thread.ident).kill()  # as it waits for its next round
assert not thread.is_alive()
pool.drain()
pool.redis.ping()  # a borrow starts a new upkeep, which fills up to min_size again
assert wait_for(lambda: pool.stats().idle == 2), pool.stats()
pool.close()
print("ok")
"""


def test_under_gevent_a_killed_upkeep_is_replaced(redis_url: str) -> None:
    # Regression: an upkeep greenlet killed as it waited for its next round (where
    # it spends its time; or a signal handler's exception landing there) stayed
    # the pool's upkeep: no refill to min_size, no idle or lifetime retirement.
    pytest.importorskip("gevent")
    assert_child_ok(_GEVENT_KILLED_UPKEEP, redis_url)
