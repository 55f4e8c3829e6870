"""The listener in a process with many open files (descriptors >= 1024)."""

from __future__ import annotations

import logging
import os
import resource

import pytest

from redispool import RedisPool

from ._harness import wait_until


def test_listener_follows_a_switch_with_descriptors_above_1024(sentinel_setup_factory, caplog):
    # A busy server process has more than 1024 files open: the listener's
    # sentinel sockets then get descriptors select.select() refuses
    # ("filedescriptor out of range"): it failed every round (an error logged
    # five times a second), heard no +switch-master, and followed a switch only
    # seconds later, when its unanswered PINGs made it resubscribe and ask again.
    caplog.set_level(logging.INFO, logger="redispool.sentinel")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1300")
    if soft != resource.RLIM_INFINITY and soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    setup = sentinel_setup_factory()
    filler = []
    pool = None
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        filler.append(null)
        while filler[-1] < 1100:
            filler.append(os.dup(null))
        pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=0)
        service = pool._sentinel
        with pool.client() as r:
            r.set("k", "v")
        generation = service.generation
        wait_until(lambda: service._listener is not None, 2, "the listener")
        listener = service._listener
        wait_until(lambda: listener._thread.is_alive(), 2, "the listener's thread")
        old = setup.primary_address()
        setup.failover()
        new = setup.wait_for_primary(old)
        wait_until(lambda: service.generation > generation, 1.5, "the pool to follow the switch")
        assert service.address == new
        failed = [r for r in caplog.records if "failed a round" in r.getMessage()]
        assert not failed, failed[0].exc_info
    finally:
        if pool is not None:
            pool.close()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
