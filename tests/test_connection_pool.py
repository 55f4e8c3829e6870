"""``redispool.ConnectionPool``: redis-py's pool interface (constructor, ``from_url``,
lifecycle, the cluster client's hooks) served by a fair ``RedisPool``, against a
real redis-server."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.maint_notifications import MaintNotificationsConfig

import redispool
from redispool import ConnectionPool, RedisPool, RedisPoolTimeout

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pools() -> Iterator[list[ConnectionPool]]:
    """Pools a test makes; their RedisPools are closed afterwards."""
    made: list[ConnectionPool] = []
    yield made
    for p in made:
        p.redis_pool.close(timeout=1)


def _client_db(pool: ConnectionPool) -> int:
    r = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
    info = r.client_info()
    return int(info["db"])


def test_from_url_with_redis_client(redis_url: str, pools: list[ConnectionPool]) -> None:
    pool = ConnectionPool.from_url(redis_url, min_size=0)
    pools.append(pool)
    r = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
    assert r.set("k", "v") and r.get("k") == b"v"
    with r.pipeline() as pipe:
        pipe.incr("n").incr("n")
        assert pipe.execute() == [1, 2]
    stats = pool.redis_pool.stats()
    assert stats.commands >= 4 and stats.borrows >= 3 and stats.in_use == 0
    assert isinstance(pool.redis_pool, RedisPool)
    assert redis_url.split("//")[1].split("/")[0] in pool.redis_pool.name
    r.close()  # a client given a pool never closes it
    assert r.get("k") == b"v"


def test_as_redis_pool_is_a_connection_pool(redis_url: str) -> None:
    with RedisPool(redis_url, min_size=0) as rp:
        view = rp.as_redis_pool()
        assert isinstance(view, ConnectionPool)
        assert view.redis_pool is rp
        with pytest.warns(DeprecationWarning, match="use redispool.ConnectionPool"):
            assert redispool.redis_adapter.ConnectionPoolAdapter is ConnectionPool


def test_redis_py_constructor_arguments(redis_server: Any, pools: list[ConnectionPool]) -> None:
    pool = ConnectionPool(
        host=redis_server.host,
        port=redis_server.port,
        db=3,
        max_connections=2,
        timeout=0.3,
        client_name="cp-test",
    )
    pools.append(pool)
    stats = pool.redis_pool.stats()
    assert (stats.min_size, stats.max_size) == (2, 2)  # min_size follows max_size down
    assert pool.max_connections == 2
    assert pool.connection_kwargs["host"] == redis_server.host
    assert pool.connection_kwargs["port"] == redis_server.port
    assert _client_db(pool) == 3
    held = [pool.get_connection(), pool.get_connection()]
    t0 = time.monotonic()
    with pytest.raises(redis.ConnectionError) as info:  # the wait is `timeout`
        pool.get_connection()
    assert isinstance(info.value, RedisPoolTimeout)
    assert 0.2 <= time.monotonic() - t0 < 5
    for conn in held:
        pool.release(conn)
    assert pool.redis_pool.stats().in_use == 0


def test_from_url_values_win_as_in_redis_py(redis_url: str, pools: list[ConnectionPool]) -> None:
    base = redis_url.rsplit("/", 1)[0]
    pool = ConnectionPool.from_url(f"{base}/4?max_connections=3&timeout=0.5", db=7)
    pools.append(pool)
    assert _client_db(pool) == 4
    stats = pool.redis_pool.stats()
    assert stats.max_size == 3 and stats.min_size == 3
    assert pool.redis_pool._pool._timeout == 0.5
    keyword = ConnectionPool.from_url(base, db=7, max_connections=4, min_size=1)
    pools.append(keyword)
    assert _client_db(keyword) == 7
    assert keyword.redis_pool.stats().max_size == 4


def test_client_options_belong_to_the_pool(redis_url: str, pools: list[ConnectionPool]) -> None:
    pool = ConnectionPool.from_url(redis_url, decode_responses=True, min_size=0)
    pools.append(pool)
    r = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
    r.set("s", "x")
    assert r.get("s") == "x"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_connections": -1}, ['"max_connections" must be a positive integer, got -1']),
        ({"max_connections": "3"}, ['"max_connections" must be a positive integer']),
        ({"max_connections": 3, "max_size": 4}, ["max_connections", "max_size"]),
        ({"cache": object()}, ["cache"]),
        ({"cache_config": object()}, ["cache_config"]),
        (
            {"maint_notifications_config": MaintNotificationsConfig(enabled=True)},
            ["Maintenance notifications are not supported"],
        ),
        ({"min_size": 4, "max_connections": 2}, ["min_size (4)", "max_size (2)"]),
        ({"port": 70000}, ["port", "70000"]),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises((TypeError, ValueError, redis.RedisError)) as info:
        ConnectionPool(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_lifecycle_calls_keep_the_pool_usable(redis_url: str, pools: list[ConnectionPool]) -> None:
    pool = ConnectionPool.from_url(redis_url, min_size=0)
    pools.append(pool)
    r = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
    for call in (pool.disconnect, pool.reset, pool.close):
        r.ping()
        held = pool.get_connection()
        call()  # as redis-py: connections go, the pool stays
        pool.release(held)
        assert r.ping()
    with pool as same:
        assert same is pool
    assert not pool.redis_pool.closed and r.ping()
    destroyed = pool.redis_pool.stats().destroyed_by_reason
    assert destroyed.get("drain", 0) >= 3, destroyed


def _named(redis_url: str, name: str) -> int:
    """How many connections the server has with ``client_name`` ``name``."""
    r = redis.Redis.from_url(redis_url)
    try:
        return sum(1 for c in r.client_list() if c["name"] == name)
    finally:
        r.close()


def _settle(count: Any, expected: int) -> int:
    deadline = time.monotonic() + 3
    while (n := count()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(n)


def _upkeep_threads(pool: ConnectionPool) -> list[threading.Thread]:
    name = f"redispool-upkeep-{pool.redis_pool.name}"
    return [t for t in threading.enumerate() if t.name == name]


@pytest.mark.parametrize("call", ["disconnect", "reset", "close", "with", "from_pool"])
def test_lifecycle_calls_leave_no_connection_until_used_again(
    redis_url: str, pools: list[ConnectionPool], call: str
) -> None:
    """As redis-py's: after disconnect(), reset() or close() (a ``with`` block, a
    client that owns its pool closed) no connection stays open, none is made and
    no upkeep thread runs until the pool is used again; then it fills as usual.
    Was: the pool was drained and refilled to min_size at once."""
    name = f"cp-life-{call}"
    pool = ConnectionPool.from_url(redis_url, client_name=name, min_size=3)
    pools.append(pool)
    count = lambda: _named(redis_url, name)  # noqa: E731
    for _ in range(2):  # and again once used again
        r = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
        assert r.ping()
        assert _settle(count, 3) == 3  # filled to min_size
        held = pool.get_connection()
        if call == "with":
            with pool:
                pass
        elif call == "from_pool":
            redis.Redis.from_pool(pool).close()  # type: ignore[arg-type]
        else:
            getattr(pool, call)()
        assert _settle(lambda: pool.redis_pool.stats().idle, 0) == 0
        pool.release(held)  # closed when it comes back
        assert held._sock is None  # type: ignore[attr-defined]
        time.sleep(0.3)
        assert count() == 0
        stats = pool.redis_pool.stats()
        assert (stats.size, stats.in_use, stats.idle) == (0, 0, 0), stats
        deadline = time.monotonic() + 3
        while _upkeep_threads(pool) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _upkeep_threads(pool)
        assert not pool.redis_pool.closed
    assert r.ping()  # usable: fills as usual
    assert _settle(count, 3) == 3


def test_disconnect_without_inuse_connections_keeps_the_borrowed_ones(
    redis_url: str, pools: list[ConnectionPool]
) -> None:
    pool = ConnectionPool.from_url(redis_url, client_name="cp-inuse", min_size=2)
    pools.append(pool)
    held = pool.get_connection()
    assert _settle(lambda: _named(redis_url, "cp-inuse"), 2) == 2
    pool.disconnect(inuse_connections=False)
    pool.release(held)  # kept: idle, still connected
    assert held._sock is not None  # type: ignore[attr-defined]
    time.sleep(0.3)
    assert _named(redis_url, "cp-inuse") == 1  # nothing made meanwhile
    assert pool.get_connection() is held


# -- what redis-py's cluster client needs of a node pool ---------------------


def test_cluster_node_pool_hooks(redis_url: str, pools: list[ConnectionPool]) -> None:
    pool = ConnectionPool.from_url(
        redis_url,
        maint_notifications_config=MaintNotificationsConfig(enabled="auto"),
        oss_cluster_maint_notifications_handler=object(),  # dropped: notifications stay off
        min_size=0,
    )
    pools.append(pool)
    rp = pool.redis_pool
    idle = pool.get_connection()
    held = pool.get_connection()
    pool.release(idle)
    with pool._lock:  # the cluster client's sequence after a connection error
        pool.update_active_connections_for_reconnect()
        pool.disconnect_free_connections()
    assert idle._sock is None  # type: ignore[attr-defined]  # closed at once
    assert held._sock is not None  # type: ignore[attr-defined]  # in-flight use finishes
    held.send_command("PING")
    assert held.read_response() == b"PONG"
    pool.release(held)
    assert held._sock is None  # type: ignore[attr-defined]  # replaced on return
    assert rp.stats().in_use == 0 and rp.stats().idle == 0

    pool.update_maint_notifications_config(MaintNotificationsConfig(enabled="auto"))
    assert not pool.maint_notifications_enabled()
    with pytest.raises(redis.RedisError, match="Maintenance notifications"):
        pool.update_maint_notifications_config(MaintNotificationsConfig(enabled=True))


def test_himport_registry_is_shared_and_settable(
    redis_url: str, pools: list[ConnectionPool]
) -> None:
    pytest.importorskip("redis.himport")
    from redis.himport import HImportRegistry

    pool = ConnectionPool.from_url(redis_url, min_size=0)
    pools.append(pool)
    r = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
    assert r.himport_registry is pool.himport_registry
    conn = pool.get_connection()
    assert conn.himport_registry is pool.himport_registry  # type: ignore[attr-defined]
    pool.release(conn)
    shared = HImportRegistry()
    pool.himport_registry = shared  # as the cluster client does
    assert pool.himport_registry is shared
    assert pool.connection_kwargs["himport_registry"] is shared
    pool.disconnect()
    conn = pool.get_connection()
    assert conn.himport_registry is shared  # type: ignore[attr-defined]
    pool.release(conn)


def test_cluster_can_build_node_pools_from_url(redis_url: str) -> None:
    """redis-py's ``NodesManager`` calls ``connection_pool_class(**kwargs)`` with
    ``host``, ``port``, ``cache=None`` and a no-retry ``Retry``."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs = redis.connection.parse_url(redis_url)
    kwargs.update(cache=None, retry=Retry(NoBackoff(), 0), min_size=0)
    pool = ConnectionPool(**kwargs)
    try:
        node = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
        assert node.ping()
        assert pool.get_connection_count()[0][0] >= 1
    finally:
        pool.redis_pool.close(timeout=1)


def test_pool_is_shared_fairly_by_threads(redis_url: str, pools: list[ConnectionPool]) -> None:
    pool = ConnectionPool.from_url(redis_url, max_connections=2, timeout=10)
    pools.append(pool)
    r = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                r.incr("shared")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert r.get("shared") == b"160"
    stats = pool.redis_pool.stats()
    assert stats.size <= 2 and stats.in_use == 0


def test_looks_like_redis_pys_pool(redis_url: str, pools: list[ConnectionPool]) -> None:
    from redis.observability.attributes import DB_CLIENT_CONNECTION_STATE

    pool = ConnectionPool.from_url(redis_url, password="s3cret-pw", client_name="cp", min_size=0)
    pools.append(pool)
    text = repr(pool)
    assert "s3cret" not in text and "password=<REDACTED>" in text
    assert "client_name=cp" in text and "in_use=0" in text
    assert pool.connection_class is redis.Connection  # as configured; tracked underneath
    pools.append(ConnectionPool(max_connections=0))
    assert pools[-1].max_connections == 20  # as redis-py: 0 is the default
    nopw = ConnectionPool.from_url(redis_url, min_size=0)
    pools.append(nopw)
    held = nopw.get_connection()
    counts = nopw.get_connection_count()
    assert counts[0][1]["db.client.connection.pool.name"].startswith("127.0.0.1:")
    assert [(n, attrs[DB_CLIENT_CONNECTION_STATE]) for n, attrs in counts] == [
        (0, "idle"),
        (1, "used"),
    ]
    nopw.release(held)
    assert [n for n, _ in nopw.get_connection_count()] == [1, 0]


def test_health_check_interval_zero_means_redis_pys_default(
    redis_url: str, pools: list[ConnectionPool]
) -> None:
    """redis-py's 0 is "no checks": not a PING on every borrow."""
    pool = ConnectionPool.from_url(redis_url, health_check_interval=0, min_size=0)
    pools.append(pool)
    assert pool.redis_pool._health_check_interval == 30.0
    conn = pool.get_connection()
    assert conn.health_check_interval == 0
    pool.release(conn)
    given = ConnectionPool.from_url(redis_url, health_check_interval=5, min_size=0)
    pools.append(given)
    assert given.redis_pool._health_check_interval == 5
    conn = given.get_connection()
    assert conn.health_check_interval == 5
    given.release(conn)


def test_a_release_from_a_finalizer_inside_the_pools_bookkeeping_waits_for_it(
    redis_url: str, pools: list[ConnectionPool]
) -> None:
    """A redis-py object collected while this thread is inside the pool's own
    code (a PubSub in a reference cycle, its ``__del__`` giving its connection
    back): the release must not change the books halfway through a change of
    the pool's. It is queued, and the connection destroyed once out of it."""
    pool = ConnectionPool.from_url(redis_url, min_size=0, max_size=2)
    pools.append(pool)
    r = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
    p = r.pubsub()
    p.subscribe("chan")
    assert p.get_message(timeout=1)["type"] == "subscribe"
    p.cycle = p  # type: ignore[attr-defined]  # (collected by the collector only)
    del p
    objects = pool.redis_pool._pool
    assert len(objects._in_use) == 1
    gc.disable()  # (no collection before the one below)
    try:
        with objects._lock:  # as if inside the pool's bookkeeping
            gc.collect()  # the PubSub's __del__ gives its connection back
            assert len(objects._in_use) == 1 and not objects._idle  # books untouched
    finally:
        gc.enable()
    assert len(objects._abandoned) == 1
    objects._reclaim()  # (as the next slow borrow, upkeep or close does)
    s = pool.redis_pool.stats()
    assert s.in_use == 0 and s.destroyed_by_reason == {"dirty": 1}, s
    assert r.ping() and r.publish("chan", "x") == 0  # nobody subscribed any more
