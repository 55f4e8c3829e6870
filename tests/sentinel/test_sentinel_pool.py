"""RedisPool.sentinel as a normal pool: reader(), credentials, bad input, from_env."""

from __future__ import annotations

import pytest
import redis

from redispool import RedisPool
from redispool.config import parse_sentinels, sentinel_env
from redispool.web.health import pool_health

from ._harness import ports_in_pool, wait_until

SENTINEL_PW = "s3ntinel-secret"
USER_PW = "acl-user-secret"
DATA_PW = "data-node-secret"


def test_reader_uses_replicas_and_writer_the_primary(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(
        setup.addresses, setup.service, read_from_replicas=True, min_size=0, max_size=3
    )
    try:
        with pool.writer() as w:
            w.set("k", "v")
            assert w.execute_command("ROLE")[0] == b"master"
        with pool.reader() as r:
            assert r.execute_command("ROLE")[0] == b"slave"
        assert ports_in_pool(pool) == {setup.primary.port}
        assert pool.read_pool is not None
        assert ports_in_pool(pool.read_pool) == {setup.replica.port}
        assert pool.stats().read is not None
    finally:
        pool.close()
    assert pool.read_pool.closed


def test_replica_pool_falls_back_to_the_primary_without_replicas(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(setup.addresses, setup.service, role="replica", min_size=0)
    try:
        with pool.client() as r:
            assert r.execute_command("ROLE")[0] == b"slave"
        setup.replica.kill()
        pool.drain()
        with pool.client(wait=5) as r:  # Sentinel still lists it until s_down: tried, skipped
            assert r.execute_command("ROLE")[0] == b"master"
    finally:
        pool.close()


def test_replica_pool_leaves_the_primary_when_a_replica_is_back(sentinel_setup_factory):
    # Fallen back to the primary, a replica pool kept its connections there
    # until each reached max_lifetime (30 minutes by default), the replica back
    # long since: reads stayed on the primary.
    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(setup.addresses, setup.service, role="replica", min_size=0)
    try:
        setup.replica.kill()
        with pool.client(wait=5) as r:
            assert r.execute_command("ROLE")[0] == b"master"
        setup.replica.restart()
        setup.wait_ready(20)

        def role() -> bytes:
            with pool.client(wait=5) as r:
                return r.execute_command("ROLE")[0]

        wait_until(lambda: role() == b"slave", 5, "reads on the replica again")
        assert ports_in_pool(pool) <= {setup.replica.port}
    finally:
        pool.close()


def test_sentinel_password_and_acl_user_separate_and_never_shown(sentinel_setup_factory):
    setup = sentinel_setup_factory(
        password=DATA_PW, sentinel_password=SENTINEL_PW, sentinel_user=("app", USER_PW)
    )
    pool = RedisPool.sentinel(
        setup.addresses,
        setup.service,
        sentinel_kwargs={"username": "app", "password": USER_PW},
        password=DATA_PW,
        min_size=0,
    )
    try:
        pool.redis.set("k", 1)
        assert pool.redis.get("k") == b"1"
        status, body = pool_health(pool)
        assert status == 200
        shown = f"{pool!r} {pool.url} {pool.name} {pool._sentinel!r} {body} {pool.stats()}"
        for secret in (DATA_PW, SENTINEL_PW, USER_PW):
            assert secret not in shown
    finally:
        pool.close()
    # a wrong sentinel password: a clear error, no password in it
    bad = RedisPool.sentinel(
        setup.addresses,
        setup.service,
        sentinel_kwargs={"username": "app", "password": "wrong-" + USER_PW},
        password=DATA_PW,
        min_size=0,
        timeout=1,
    )
    try:
        with pytest.raises(redis.ConnectionError) as info:
            bad.redis.set("k", 2)
        text = f"{info.value} {info.value.__cause__} {info.value.__cause__!r}"
        assert (
            "AuthenticationError" in text
            and f"sentinel 127.0.0.1:{setup.sentinels[0].port}" in text
        )
        for secret in (DATA_PW, SENTINEL_PW, USER_PW):
            assert secret not in text
    finally:
        bad.close()
    # the sentinels' password is not the data nodes' one
    wrong = RedisPool.sentinel(
        setup.addresses,
        setup.service,
        sentinel_kwargs={"password": SENTINEL_PW},
        password=SENTINEL_PW,
        min_size=0,
        timeout=1,
    )
    try:
        with pytest.raises(redis.ConnectionError) as info:
            wrong.redis.set("k", 2)
        text = f"{info.value} {info.value.__cause__!r}"
        assert f"127.0.0.1:{setup.primary.port}" in text and SENTINEL_PW not in text
    finally:
        wrong.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ([], {}, ValueError, "sentinels must name at least one sentinel"),
        (["localhost"], {}, ValueError, "'localhost' is not host:port"),
        ([("h", 0)], {}, ValueError, "port of .* must be between 1 and 65535"),
        ([42], {}, TypeError, "42 is not"),
        (["h:1"], {"role": "leader"}, ValueError, "role must be one of"),
        (["h:1"], {"service_name": ""}, ValueError, "service_name must be a non-empty str"),
        (["h:1"], {"read_url": "redis://x"}, TypeError, "read_url"),
        (["h:1"], {"host": "x"}, TypeError, "'host'"),
        (["h:1"], {"sentinel_kwargs": {"bogus": 1}}, TypeError, "sentinel_kwargs: .*bogus"),
        (["h:1"], {"sentinel_kwargs": "pw"}, TypeError, "sentinel_kwargs must be a dict"),
        (["h:1"], {"max_size": 0}, ValueError, "max_size"),
    ],
)
def test_bad_input_names_the_field(args, kwargs, error, match):
    kwargs.setdefault("service_name", "svc")
    with pytest.raises(error, match=match):
        RedisPool.sentinel(args, background=False, **kwargs)


def test_parse_sentinels_forms():
    assert parse_sentinels("a:1, b:2,[::1]:3") == [("a", 1), ("b", 2), ("::1", 3)]
    assert parse_sentinels([("a", "1"), "b:2"]) == [("a", 1), ("b", 2)]


def test_sentinel_env():
    assert sentinel_env(environ={}) is None
    env = {
        "REDIS_SENTINELS": "127.0.0.1:1,127.0.0.1:2",
        "REDIS_SENTINEL_SERVICE": "svc",
        "REDIS_SENTINEL_PASSWORD": "pw",
    }
    assert sentinel_env(environ=env) == {
        "sentinels": [("127.0.0.1", 1), ("127.0.0.1", 2)],
        "service_name": "svc",
        "sentinel_kwargs": {"password": "pw"},
    }
    with pytest.raises(ValueError, match="REDIS_SENTINEL_SERVICE"):
        sentinel_env(environ={"REDIS_SENTINELS": "h:1"})
    with pytest.raises(ValueError, match="REDIS_SENTINELS: 'h' is not host:port"):
        sentinel_env(environ={"REDIS_SENTINELS": "h", "REDIS_SENTINEL_SERVICE": "s"})


def test_from_env_builds_a_sentinel_pool(sentinel_setup_factory):
    setup = sentinel_setup_factory(password=DATA_PW)
    env = {
        "REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in setup.addresses),
        "REDIS_SENTINEL_SERVICE": setup.service,
        "REDIS_URL": f"redis://:{DATA_PW}@ignored/0",
        "REDIS_POOL_MAX_SIZE": "3",
    }
    pool = RedisPool.from_env(environ=env, min_size=0)
    try:
        assert pool.stats().max_size == 3
        pool.redis.set("env", 1)
        assert ports_in_pool(pool) == {setup.primary.port}
        assert DATA_PW not in repr(pool) + pool.url
    finally:
        pool.close()


def test_close_stops_the_listener_and_its_sentinel_connections(sentinel_setup):
    setup = sentinel_setup
    pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=0)
    pool.redis.set("k", 1)
    listener = pool._sentinel._listener
    assert listener is not None and listener.alive()

    def ours() -> int:  # the listener's subscriptions and discovery connections
        with setup.sentinel_client(0) as c:
            return sum(
                1 for x in c.client_list() if x.get("cmd") in ("subscribe", "sentinel|master")
            )

    assert ours() >= 1
    pool.close()
    wait_until(lambda: not listener._thread.is_alive(), 5, "the listener to stop")
    wait_until(lambda: ours() == 0, 5, "the sentinel connections to close")
