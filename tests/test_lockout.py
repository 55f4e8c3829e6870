"""Lockout against a real redis-server: atomic, hashed keys, policy when down."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from redispool import RedisPool
from redispool.helpers import HelperUnavailable, lockout
from redispool.helpers.lockout import Lockout

from .helpers_redis import command_calls, delta


@pytest.fixture
def pool(redis_url: str) -> Any:
    p = RedisPool(redis_url, min_size=0, max_size=16)
    yield p
    p.close()


def test_locks_after_max_attempts_and_reports_retry_after(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=3, window=60, lockout=30)
    r1, r2, r3, r4 = (lo.record_failed_attempt("alice") for _ in range(4))
    assert (r1.locked, r1.attempts, r1.remaining_attempts) == (False, 1, 2)
    assert (r2.locked, r2.attempts, r2.remaining_attempts) == (False, 2, 1)
    assert r3.locked and r3.newly_locked and r3.retry_after == 30
    assert r4.locked and not r4.newly_locked and 29 < r4.retry_after <= 30
    check = lo.check_lockout("alice")
    assert check.locked and check.remaining_attempts == 0
    assert not lo.check_lockout("bob").locked


def test_clear_lockout_after_success(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=3)
    lo.record_failed_attempt("carol")
    lo.record_failed_attempt("carol")
    lo.clear_lockout("carol")
    assert lo.check_lockout("carol").attempts == 0
    assert not lo.record_failed_attempt("carol").locked


def test_1000_concurrent_failures_lock_exactly_once(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=5, timeout=5)
    results: list[Any] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            r = lo.record_failed_attempt("target")
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1000
    assert sum(r.newly_locked for r in results) == 1
    unlocked = sorted(r.attempts for r in results if not r.locked)
    assert unlocked == [1, 2, 3, 4]  # every failure before the lock counted, once
    assert sum(r.locked for r in results) == 996
    assert pool.stats().in_use == 0


def test_scopes_username_ip_and_pair_are_independent(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=2)
    for _ in range(2):
        lo.record_failed_attempt(("dave", "10.0.0.1"))
    assert lo.check_lockout(("dave", "10.0.0.1")).locked
    assert not lo.check_lockout("dave").locked
    assert not lo.check_lockout("10.0.0.1").locked
    assert not lo.check_lockout(("dave", "10.0.0.2")).locked
    # length-prefixed: ("da", "ve:x") is not ("dave", ":x")
    assert not lo.check_lockout(("da", "ve10.0.0.1")).locked


def test_keys_never_hold_the_identity_and_unknown_users_look_the_same(
    pool: RedisPool, redis_server: Any
) -> None:
    lo = Lockout(pool, max_attempts=3, namespace="login")
    lo.record_failed_attempt(("erin@example.com", "192.0.2.7"))
    keys = redis_server.client().keys("*")
    assert keys and all(
        b"erin" not in k and b"192.0.2.7" not in k and k.startswith(b"login:") for k in keys
    )
    known = lo.check_lockout("erin@example.com")
    unknown = lo.check_lockout("nobody-by-this-name")
    assert type(known) is type(unknown) and known == unknown


def test_progressive_lockout_grows_and_is_capped(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=1, lockout=0.2, progressive=3, max_lockout=1.0)
    durations = []
    for _ in range(3):
        r = lo.record_failed_attempt("frank")
        assert r.newly_locked
        durations.append(r.retry_after)
        time.sleep(r.retry_after + 0.05)
    assert durations == [0.2, 0.6, 1.0]  # 0.2, x3, then capped at 1.0


def test_one_round_trip_per_call(pool: RedisPool, redis_server: Any) -> None:
    lo = Lockout(pool)
    lo.check_lockout("warm")
    admin = redis_server.client()
    before, borrows = command_calls(admin), pool.stats().borrows
    lo.record_failed_attempt("g")
    lo.check_lockout("g")
    lo.clear_lockout("g")
    d = delta(before, command_calls(admin))
    assert d["evalsha"] == 3 and "eval" not in d
    assert pool.stats().borrows - borrows == 3


def test_fail_closed_by_default_open_or_raise_by_choice(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    pool = RedisPool(server.url, min_size=0, max_size=2, timeout=0.2)
    closed = Lockout(pool, timeout=0.1)
    opened = Lockout(pool, timeout=0.1, on_error="open")
    raising = Lockout(pool, timeout=0.1, on_error="raise")
    server.kill()
    t0 = time.monotonic()
    r = closed.check_lockout("h")
    assert r.locked and r.degraded and r.retry_after > 0 and "unavailable" in (r.error or "")
    assert not opened.record_failed_attempt("h").locked
    with pytest.raises(HelperUnavailable):
        raising.check_lockout("h")
    assert time.monotonic() - t0 < 2.0
    server.restart()
    pool.close()


def test_module_functions_use_the_configured_instance(pool: RedisPool) -> None:
    lockout._default = None
    with pytest.raises(RuntimeError, match="configure"):
        lockout.check_lockout("x")
    lockout.configure(pool, max_attempts=1)
    assert lockout.record_failed_attempt("ivan").locked
    assert lockout.check_lockout("ivan").locked
    lockout.clear_lockout("ivan")
    assert not lockout.check_lockout("ivan").locked
    lockout._default = None


def test_bad_input(pool: RedisPool) -> None:
    lo = Lockout(pool)
    with pytest.raises(ValueError, match="identity must not be empty"):
        lo.check_lockout("")
    with pytest.raises(ValueError, match="identity must not be empty"):
        lo.check_lockout(())
    with pytest.raises(TypeError, match="identity must be a str"):
        lo.record_failed_attempt(None)
    with pytest.raises(ValueError, match="identity is too long"):
        lo.record_failed_attempt("u" * 5000)
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        Lockout(pool, max_attempts=0)
    with pytest.raises(TypeError, match="window must be a number"):
        Lockout(pool, window="15m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error must be"):
        Lockout(pool, on_error="sometimes")
    assert pool.stats().borrows == 0
