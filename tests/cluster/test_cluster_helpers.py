"""Helpers on a RedisClusterPool keep their exactness guarantees (every key of
one helper call shares one hash slot)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from redispool import RedisClusterPool
from redispool.helpers import HelperUnavailable
from redispool.helpers.analytics import Analytics
from redispool.helpers.cache import Cache
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
    assert not lo.check_lockout("probe").locked
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


def test_lockout_attempts_bound_checks_on_the_cluster(cluster_pool: Make) -> None:
    pool = cluster_pool(max_size=8)
    lo = Lockout(pool, max_attempts=5, timeout=5, max_identities_per_client=3)
    checks = [0]
    lock = threading.Lock()

    def guess() -> None:
        with lo.attempt("victim") as a:
            if a.allowed:
                with lock:
                    checks[0] += 1
                a.failed()

    _run(40, guess)
    assert checks[0] == 5 and lo.check_lockout("victim").locked
    # the per-client cap: its key is in another slot (a second round trip)
    allowed = []
    for user in ("u1", "u2", "u3", "u4"):
        with lo.attempt(user, client="203.0.113.9") as a:
            allowed.append(a.allowed)
            if a.allowed:
                a.succeeded()
    assert allowed == [True, True, True, False]
    assert pool.stats().in_use == 0


def test_cache_on_the_cluster(cluster_pool: Make) -> None:
    pool = cluster_pool(max_size=4)
    calls = []
    with Cache(pool, "cl-cache", get_timeout=2, set_timeout=2) as cache:

        def load() -> str:
            calls.append(1)
            return f"v{len(calls)}"

        assert cache.get_with_fallback("k", load, tags=["t"]) == "v1"
        cache.flush(timeout=2)  # the background write-back is done
        assert cache.get_with_fallback("k", load, tags=["t"]) == "v1" and len(calls) == 1
        cache.invalidate_tag("t")
        assert cache.get_with_fallback("k", load, tags=["t"]) == "v2"
        assert cache.set("other", 3) and cache.get_with_fallback("other", load) == 3
        assert cache.invalidate("other")
        cache.invalidate_all()
        assert cache.get_with_fallback("k", load, tags=["t"]) == "v3"
        assert cache.stats()["errors"] == 0
    assert pool.stats().in_use == 0


def test_analytics_on_the_cluster(cluster_pool: Make) -> None:
    pool = cluster_pool(max_size=4)
    plain = Analytics(pool, namespace="cl-an", timeout=2, on_error="raise")
    for name in ("a", "b", "c", "d"):
        plain.incr(name, 2)
    plain.add_unique("u", "x", "y")
    assert [plain.get(n) for n in ("a", "b", "c", "d")] == [2, 2, 2, 2]
    assert plain.count_unique("u") == 2
    buffered = Analytics(pool, namespace="cl-buf", buffered=True, flush_interval=60)
    for i in range(20):  # many names: the flush spans every node
        buffered.incr(f"n{i}")
    assert buffered.flush() > 0
    assert all(plain_get(pool, f"n{i}") == 1 for i in range(20))
    buffered.close(timeout=2)
    assert pool.stats().in_use == 0


def plain_get(pool: RedisClusterPool, name: str) -> int:
    return Analytics(pool, namespace="cl-buf", timeout=2, on_error="raise").get(name)


def test_helpers_apply_their_policy_when_the_cluster_is_unreachable() -> None:
    """Nothing listens: redis-py's discovery raises RedisClusterException (not a
    RedisError). Helpers apply their policy and count it; a buffered Analytics
    keeps its buffer for a later flush."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = RedisClusterPool(f"redis://127.0.0.1:{port}", max_size=2, timeout=0.5)
    try:
        limiter = RateLimiter(pool, "5/minute", timeout=0.5)
        result = limiter.hit("k")
        assert result.allowed and result.degraded
        assert limiter.errors == 1 and limiter.breaker.failures == 1
        lockout = Lockout(pool, timeout=0.5)
        assert lockout.check_lockout("alice").degraded
        buffered = Analytics(pool, namespace="down", buffered=True, flush_interval=60)
        buffered.incr("hits", 3)
        assert buffered.flush() == 0
        assert buffered.stats()["buffered"] == 1  # kept, not dropped
        with pytest.raises(HelperUnavailable):
            Analytics(pool, on_error="raise", timeout=0.5).incr("hits")
    finally:
        pool.close(timeout=1)
