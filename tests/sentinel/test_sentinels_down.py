"""Every sentinel down: open connections keep working, new ones fail clearly."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from redispool import RedisPool

from ._harness import SwitchClock, Writes, ports_in_pool, wait_until


def write(pool: RedisPool) -> bool:
    try:
        pool.redis.set("after", 1)
    except redis.ConnectionError:
        return False
    return True


def test_all_sentinels_down_open_connections_work_new_ones_fail_clearly(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=2, max_size=4, timeout=1)
    try:
        pool.open(wait=True)
        for s in setup.sentinels:
            s.kill()
        for i in range(20):  # the idle connections serve on
            pool.redis.set(f"k{i}", i)
        with pool.client() as a, pool.client() as b:
            a.set("a", 1)
            b.set("b", 1)
            # a third connection needs Sentinel: a clear error naming each one tried
            with pytest.raises(redis.ConnectionError) as info:
                with pool.client(wait=0.5):
                    pass
        cause = info.value.__cause__ or info.value
        text = f"{info.value} {cause}"
        for host, port in setup.addresses:
            assert f"sentinel {host}:{port}" in text
        assert "no primary for Sentinel service 'mymaster'" in text
        assert pool.stats().in_use == 0
        pool.redis.set("still", 1)
    finally:
        pool.close()


@pytest.mark.timeout(120)
def test_sentinels_killed_and_restarted_five_times_no_slot_leak(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(
        setup.addresses, setup.service, min_size=2, max_size=4, timeout=2, max_lifetime=0.5
    )
    sizes: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            s = pool.stats()
            sizes.append(s.size)
            assert s.size <= s.max_size, s
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        with Writes(pool, threads=4) as writes:
            sampler.start()
            writes.wait_for(100)
            for _ in range(5):
                for s in setup.sentinels:
                    s.kill()
                # connections retire (max_lifetime) and cannot be replaced
                time.sleep(0.8)
                for s in setup.sentinels:
                    s.start()
                count = len(writes.acked)
                writes.wait_for(count + 50)
        stop.set()
        sampler.join(5)
        assert max(sizes) <= 4
        wait_until(lambda: pool.stats().in_use == 0, 5, "in_use back to 0")
        stats = pool.stats()
        assert stats.size <= stats.max_size and stats.creating == 0
        assert stats.create_errors > 0  # the outages were felt
        # the listener is back on the restarted sentinels: it follows a failover
        clock = SwitchClock(setup)
        try:
            old = setup.primary_address()
            setup.failover()
            clock.wait()
            wait_until(lambda: pool._sentinel.address != old, 5, "the pool to follow")
            wait_until(lambda: write(pool), 5, "a write")
            assert ports_in_pool(pool) <= {setup.replica.port}
        finally:
            clock.close()
    finally:
        stop.set()
        pool.close()


def test_a_short_deadline_bounds_asking_frozen_sentinels(sentinel_setup_factory):
    """A helper's 0.25 s deadline travels into Sentinel discovery: with every
    sentinel frozen (SIGSTOP: no answer, sockets open) a new connection gives up
    after about one sentinel query, not after asking all three (1 s each) and
    waiting for a switch to settle."""
    from redispool.helpers import RateLimiter

    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=0, max_size=2)
    try:
        pool.redis.set("warm", 1)  # the service knows the epoch and the primary
        pool.drain()  # the next borrow must connect, so ask Sentinel
        for s in setup.sentinels:
            s.pause()
        try:
            limiter = RateLimiter(pool, "5/minute", timeout=0.25)
            t0 = time.monotonic()
            result = limiter.hit("k")
            took = time.monotonic() - t0
        finally:
            for s in setup.sentinels:
                s.resume()
        assert result.degraded and result.allowed
        assert took < 2.0, took  # 3 sentinels x 1 s + the settle wait without it
        assert pool.stats().in_use == 0
    finally:
        pool.close()


def test_close_releases_the_sentinel_connections_without_a_listener(sentinel_setup_factory):
    setup = sentinel_setup_factory()
    pool = RedisPool.sentinel(setup.addresses, setup.service, background=False, max_size=2)
    pool.redis.set("k", 1)
    with redis.Redis(host=setup.addresses[0][0], port=setup.addresses[0][1]) as s:
        before = s.client_list()
        pool.close()
        wait_until(
            lambda: len(s.client_list()) < len(before), 5, "the pool's sentinel client to go"
        )
