"""Failover against real sentinels: no acknowledged write lost past the switch."""

from __future__ import annotations

import time

import pytest
import redis

from redispool import RedisPool

from ._harness import SwitchClock, Writes, ports_in_pool, wait_until

# A write acknowledged this long after +switch-master must be on the new primary.
GRACE = 1.0


def _pool(setup, **kw):
    opts = {"min_size": 2, "max_size": 6, "timeout": 10, **kw}
    return RedisPool.sentinel(setup.addresses, setup.service, **opts)


def _check_no_late_loss(setup, writes, switched_at, new_address):
    lost = writes.missing_on(setup.data_client(setup.server_at(new_address)))
    late = [(round(t - switched_at, 3), k) for t, k in lost if t > switched_at + GRACE]
    assert not late, f"{len(late)} writes acknowledged after the switch were lost: {late[:5]}"
    first = writes.first_ack_after(switched_at)
    assert first is not None and first - switched_at < 2.0, "writes did not resume within 2 s"


def test_sentinel_failover_under_writes_loses_nothing_after_the_switch(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    clock = SwitchClock(setup)
    pool = _pool(setup)
    old = setup.primary_address()
    try:
        with Writes(pool) as writes:
            writes.wait_for(300)
            setup.failover()
            switched_at = clock.wait()
            wait_until(lambda: time.monotonic() > switched_at + 2.5, 10, "writes after the switch")
        new = setup.primary_address()
        assert new != old
        _check_no_late_loss(setup, writes, switched_at, new)
        # the old primary is still a writable master (Sentinel demotes it ~10 s later)...
        with setup.data_client(setup.server_at(old)) as c:
            assert c.execute_command("ROLE")[0] == b"master"
        # ...and nothing of the pool's points at it any more
        assert ports_in_pool(pool) <= {new[1]}
        wait_until(lambda: pool.stats().in_use == 0, 5, "in_use back to 0")
        stats = pool.stats()
        assert stats.size <= stats.max_size
        assert pool._sentinel.switches >= 1
    finally:
        clock.close()
        pool.close()


def test_kill_9_of_the_primary_fails_over_automatically(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    clock = SwitchClock(setup)
    pool = _pool(setup)
    try:
        with Writes(pool) as writes:
            writes.wait_for(200)
            setup.primary.kill()
            switched_at = clock.wait(30)
            wait_until(lambda: time.monotonic() > switched_at + 2.5, 10, "writes after the switch")
        new = setup.primary_address()
        assert new[1] == setup.replica.port
        _check_no_late_loss(setup, writes, switched_at, new)
        assert writes.errors, "killing the primary went unnoticed?"
        wait_until(lambda: pool.stats().in_use == 0, 5, "in_use back to 0")
        assert ports_in_pool(pool) <= {new[1]}
    finally:
        clock.close()
        pool.close()


def test_old_primary_restarted_before_demotion_gets_no_writes(sentinel_setup_factory):
    """kill -9 the primary while one sentinel is down; the other two fail over;
    the old primary comes back as an (empty) master and the sentinel restarts
    still naming it. The pool must skip that stale answer (older config epoch)."""
    setup = sentinel_setup_factory()
    clock = SwitchClock(setup)
    pool = _pool(setup)
    stale = setup.sentinels[0]
    old = setup.primary_address()
    try:
        pool.redis.set("warm", 1)
        stale.kill()
        setup.primary.kill()
        switched_at = clock.wait(30)
        setup.primary.start()  # same port, no replicaof: a writable master again
        stale.start()
        # the precondition: a sentinel that still names the old, restarted primary
        assert setup.primary_address(0) == old
        with setup.data_client(setup.primary) as c:
            assert c.execute_command("ROLE")[0] == b"master"
        before = time.monotonic()
        for i in range(50):
            pool.drain()  # every write on a fresh connection: rediscovery each time
            pool.redis.set(f"after:{i}", i)
        # a new pool (a process starting now) that asks the stale sentinel first
        fresh = RedisPool.sentinel(setup.addresses, setup.service, min_size=0)
        try:
            for i in range(50, 60):
                fresh.redis.set(f"after:{i}", i)
        finally:
            fresh.close()
        new = setup.primary_address(1)
        assert new[1] == setup.replica.port
        with setup.data_client(setup.primary) as c:
            assert c.dbsize() == 0, "a write reached the restarted old primary"
        with setup.data_client(setup.replica) as c:
            assert c.exists(*[f"after:{i}" for i in range(60)]) == 60
        assert before - switched_at < 10
        wait_until(lambda: pool.stats().in_use == 0, 5, "in_use back to 0")
    finally:
        clock.close()
        pool.close()


def test_a_sentinel_naming_a_replica_is_rejected_by_the_role_check(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    with setup.sentinel_client(0) as c:  # sentinel 0 now "monitors" the replica as primary
        c.execute_command("SENTINEL", "REMOVE", setup.service)
        c.execute_command("SENTINEL", "MONITOR", setup.service, "127.0.0.1", setup.replica.port, 2)
    assert setup.primary_address(0)[1] == setup.replica.port
    pool = _pool(setup, min_size=0)
    try:
        pool.redis.set("k", 1)
        assert ports_in_pool(pool) == {setup.primary.port}
        with setup.data_client(setup.primary) as c:
            assert c.get("k") == b"1"
        # only the lying sentinel: no primary, and the error says why
        alone = RedisPool.sentinel(setup.addresses[:1], setup.service, min_size=0, timeout=1)
        try:
            with pytest.raises(redis.ConnectionError) as info:
                alone.redis.set("k", 2)
            text = str(info.value)
            assert f"127.0.0.1:{setup.replica.port}" in text
            assert "ROLE is 'slave', not 'master'" in text
        finally:
            alone.close()
    finally:
        pool.close()


def test_a_client_block_held_across_the_switch_writes_nothing_more(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    clock = SwitchClock(setup)
    pool = _pool(setup, min_size=0)
    old = setup.primary_address()
    try:
        with pool.client() as r:
            r.set("before", 1)
            setup.failover()
            clock.wait()
            wait_until(lambda: pool._sentinel.address != old, 5, "the pool to follow")
            with pytest.raises(redis.ConnectionError, match="moved away"):
                r.set("after", 1)
        with setup.data_client(setup.server_at(old)) as c:
            assert c.get("after") is None  # the old primary, still writable, got nothing
        assert pool.stats().destroyed_by_reason.get("dirty", 0) == 1
        pool.redis.set("after", 2)
        with setup.data_client(setup.server_at(setup.primary_address())) as c:
            assert c.get("after") == b"2"
    finally:
        clock.close()
        pool.close()


def test_the_switch_is_heard_from_the_one_sentinel_still_answering(sentinel_setup_factory):
    """Two sentinels frozen (SIGSTOP: connections open, nothing answered); the third
    fails over on its own. The pool hears it from that one and moves."""
    setup = sentinel_setup_factory()
    pool = _pool(setup, min_size=1)
    frozen = setup.sentinels[:2]
    old = setup.primary_address(2)
    try:
        pool.redis.set("warm", 1)
        for s in frozen:
            s.pause()
        setup.failover(2)
        wait_until(lambda: setup.primary_address(2) != old, 20, "sentinel 2 to switch")
        new = setup.primary_address(2)
        wait_until(lambda: pool._sentinel.address == new, 10, "the pool to follow")
        pool.redis.set("after", 1)
        with setup.data_client(setup.server_at(new)) as c:
            assert c.get("after") == b"1"
        with setup.data_client(setup.server_at(old)) as c:
            assert c.get("after") is None
        assert ports_in_pool(pool) <= {new[1]}
    finally:
        for s in frozen:
            s.resume()
        pool.close()
