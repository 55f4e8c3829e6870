"""A primary turned replica behind Sentinel's back: READONLY, discard, rediscovery."""

from __future__ import annotations

import pytest
import redis

from redispool import RedisPool

from ._harness import ports_in_pool, wait_until


def test_manual_replicaof_on_the_primary_readonly_then_rediscovery(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(
        setup.addresses, setup.service, min_size=3, max_size=6, timeout=2, background=True
    )
    primary, replica = setup.primary, setup.replica
    try:
        pool.open(wait=True)
        with pool.client() as r:
            r.set("before", 1)
        assert pool.stats().idle == 3
        with setup.data_client(primary) as c:
            c.execute_command("REPLICAOF", replica.host, replica.port)
        # the next write gets READONLY: a ConnectionError, never a bare ResponseError
        with pytest.raises(redis.ConnectionError, match="READONLY"):
            pool.redis.set("during", 1)
        stats = pool.stats()
        assert stats.destroyed_by_reason.get("dirty", 0) >= 1  # the READONLY connection
        assert stats.destroyed_by_reason.get("drain", 0) >= 2  # and its idle siblings
        assert pool._sentinel.switches == 1
        # Sentinel still names the old primary: the ROLE check refuses it, clearly
        with pytest.raises(redis.ConnectionError) as info:
            with pool.client(wait=1) as r:
                r.set("during", 2)
        assert f"127.0.0.1:{primary.port}" in str(info.value)
        assert "ROLE is 'slave', not 'master'" in str(info.value)
        # Sentinel fails over to the other node: the pool follows
        setup.failover()
        setup.wait_for_primary(("127.0.0.1", primary.port))

        def write() -> bool:
            try:
                pool.redis.set("after", 1)
            except redis.ConnectionError:
                return False
            return True

        wait_until(write, 15, "a write on the new primary")
        with setup.data_client(replica) as c:
            assert c.get("after") == b"1"
        assert ports_in_pool(pool) <= {replica.port}
        wait_until(lambda: pool.stats().in_use == 0, 5, "in_use back to 0")
    finally:
        pool.close()


def test_readonly_on_a_replica_pool_is_an_ordinary_error(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(setup.addresses, setup.service, role="replica", min_size=0)
    try:
        with pool.client() as r:
            assert r.execute_command("ROLE")[0] == b"slave"
            with pytest.raises(redis.ReadOnlyError):
                r.set("k", 1)
        assert pool._sentinel.switches == 0
    finally:
        pool.close()
