"""Helpers on a RedisClusterPool keep their exactness guarantees.

Until the ``lockout`` branch (every key of one helper call under one hash tag)
is merged, ``Lockout``'s three keys hash to different slots: that test then
reports XFAIL, naming CROSSSLOT, instead of failing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from redis.exceptions import RedisClusterException, ResponseError

from redispool import RedisClusterPool
from redispool.helpers.lockout import Lockout
from redispool.helpers.ratelimit import RateLimiter

Make = Callable[..., RedisClusterPool]


def _run(threads: int, work: Callable[[], None]) -> None:
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)


def test_lockout_n_concurrent_failures_lock_exactly_once(cluster_pool: Make) -> None:
    pool = cluster_pool(max_size=8)
    lo = Lockout(pool, max_attempts=5, timeout=5, on_error="raise")
    try:
        lo.check_lockout("probe")
    except (RedisClusterException, ResponseError) as exc:
        if "slot" not in str(exc).lower():
            raise
        pytest.xfail(f"CROSSSLOT until the lockout branch's hash-tag keys are merged: {exc}")
    results = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            r = lo.record_failed_attempt("target")
            with lock:
                results.append(r)

    _run(12, worker)
    assert len(results) == 300
    assert sum(r.newly_locked for r in results) == 1
    assert sorted(r.attempts for r in results if not r.locked) == [1, 2, 3, 4]
    assert not any(r.degraded for r in results)
    assert pool.stats().in_use == 0


@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "gcra"])
def test_ratelimiter_allows_exactly_n(cluster_pool: Make, algorithm: str) -> None:
    pool = cluster_pool(max_size=8)
    rl = RateLimiter(pool, "100/minute", algorithm=algorithm, timeout=5)
    allowed = [0]
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            result = rl.hit("shared")
            assert not result.degraded, result
            if result.allowed:
                with lock:
                    allowed[0] += 1

    _run(12, worker)
    assert allowed[0] == 100
    assert rl.stats()["denied"] == 200 and pool.stats().in_use == 0
