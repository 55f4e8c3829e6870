"""Lockout against a real redis-server: atomic, hashed keys, policy when down."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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
    with pytest.raises(ValueError, match="max_identities_per_client must be >= 1"):
        Lockout(pool, max_identities_per_client=0)
    with pytest.raises(TypeError, match="client_window must be a number"):
        Lockout(pool, client_window="1h")  # type: ignore[arg-type]
    capped = Lockout(pool, max_identities_per_client=3)
    with pytest.raises(TypeError, match="identity must be a str"):
        capped.attempt(None)
    with pytest.raises(ValueError, match="client must not be empty"):
        capped.attempt("u", client="")
    with pytest.raises(ValueError, match="client is too long"):
        capped.attempt("u", client="c" * 5000)
    assert pool.stats().borrows == 0  # refused before anything was counted


# -- attempt(): the check is reserved before it happens ---------------------------------


def _burst(lo: Lockout, who: Any, guesses: list[str], right: str, **kwargs: Any) -> dict[str, Any]:
    """Every guess at once (a barrier), each in its own thread, through
    ``attempt()``; a password check takes 20 ms. Counts the checks made."""
    out: dict[str, Any] = {"checks": 0, "logged_in": [], "refused": 0, "newly_locked": 0}
    out["ranks"] = []  # each allowed check's place among the window's attempts
    lock = threading.Lock()
    barrier = threading.Barrier(len(guesses))

    def guess(i: int, password: str) -> None:
        barrier.wait()
        with lo.attempt(who, **kwargs) as a:
            if not a.allowed:
                with lock:
                    out["refused"] += 1
                return
            with lock:
                out["checks"] += 1
                out["ranks"].append(a.result.attempts)
            time.sleep(0.02)  # the password hash
            if password == right:
                a.succeeded()
                with lock:
                    out["logged_in"].append(i)
            elif a.failed().newly_locked:
                with lock:
                    out["newly_locked"] += 1

    threads = [threading.Thread(target=guess, args=(i, p)) for i, p in enumerate(guesses)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return out


def test_parallel_wrong_guesses_check_at_most_max_attempts(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=5, window=60, lockout=60, timeout=5)
    for round_ in range(3):  # the limit holds whatever the interleaving
        out = _burst(lo, f"victim-{round_}", ["wrong"] * 60, right="right")
        assert out["checks"] == 5 and out["refused"] == 55 and out["newly_locked"] == 1
        assert lo.check_lockout(f"victim-{round_}").locked
    assert pool.stats().in_use == 0


def test_right_password_in_a_burst_never_logs_in_after_the_lock(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=5, window=60, lockout=60, timeout=5)
    for round_ in range(3):
        who = f"carol-{round_}"
        guesses = ["wrong"] * 50
        guesses.insert(39, "right")  # sent 40th
        out = _burst(lo, who, guesses, right="right")
        assert all(1 <= rank <= 5 for rank in out["ranks"])  # never a 6th check in a window
        if out["logged_in"]:  # it was one of the first 5 checks; its success cleared the
            assert out["logged_in"] == [39]  # count, so at most 5 more checks followed
            assert out["checks"] <= 10 and out["newly_locked"] <= 2
        else:
            assert out["checks"] == 5 and out["newly_locked"] == 1
            assert lo.check_lockout(who).locked
            # Locked: a burst with the right password checks nothing and logs nobody in.
            again = _burst(lo, who, ["wrong"] * 20 + ["right"] * 20, right="right")
            assert again["checks"] == 0 and again["logged_in"] == [] and again["refused"] == 40


def test_attempt_verdicts(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=2, window=60, lockout=60)
    with lo.attempt("dan") as a:
        assert a.allowed and a.result.attempts == 1 and a.result.remaining_attempts == 1
        r = a.release()  # the password was not checked: given back
        assert r.attempts == 0 and not r.locked
        with pytest.raises(RuntimeError, match="already ended"):
            a.failed()
    with pytest.raises(ValueError, match="boom"), lo.attempt("dan") as a:
        raise ValueError("boom")  # no verdict: counted as a failure
    assert lo.check_lockout("dan").attempts == 1
    with lo.attempt("dan") as a:
        assert a.allowed and a.result.remaining_attempts == 0
    assert lo.check_lockout("dan").locked  # leaving without a verdict: failed()
    refused = lo.attempt("dan")
    assert not refused.allowed and refused.result.reason == "identity"
    assert 59 < refused.result.retry_after <= 60
    with pytest.raises(RuntimeError, match="refused"):
        refused.failed()
    lo.clear_lockout("dan")
    a = lo.attempt("dan")  # also without `with`
    assert a.allowed and a.failed().attempts == 1
    b = lo.attempt("dan")
    assert b.succeeded().attempts == 0  # a success clears
    assert lo.check_lockout("dan") == lo.check_lockout("nobody")


def test_a_success_clears_a_lock_set_by_a_concurrent_failure(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=2, window=60, lockout=60)
    right, wrong = lo.attempt("erin"), lo.attempt("erin")
    assert right.allowed and wrong.allowed and not lo.attempt("erin").allowed  # both taken
    assert wrong.failed().newly_locked
    right.succeeded()  # reserved before the lock: its success stands
    assert not lo.check_lockout("erin").locked


def test_attempt_when_redis_is_down(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    pool = RedisPool(server.url, min_size=0, max_size=2, timeout=0.2)
    server.kill()
    closed = Lockout(pool, timeout=0.1).attempt("h")
    assert not closed.allowed and closed.result.degraded and closed.result.reason == "unavailable"
    with Lockout(pool, timeout=0.1, on_error="open").attempt("h") as a:
        assert a.allowed and a.result.degraded
        assert a.failed().degraded  # no exception into the request
    with pytest.raises(HelperUnavailable):
        Lockout(pool, timeout=0.1, on_error="raise").attempt("h")
    pool.close()


def test_module_attempt(pool: RedisPool) -> None:
    lockout.configure(pool, max_attempts=1)
    with lockout.attempt("ivy") as a:
        assert a.allowed
        a.failed()
    assert not lockout.attempt("ivy").allowed
    lockout._default = None


# -- "anyone can lock anyone out": what OWASP suggests ----------------------------------


def test_lockout_keyed_by_username_and_client(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=3, window=60, lockout=60)
    out = _burst(lo, ("victim", "203.0.113.66"), ["wrong"] * 20, right="right")
    assert out["checks"] == 3 and out["newly_locked"] == 1
    with lo.attempt(("victim", "198.51.100.7")) as a:  # the victim, elsewhere: not locked
        assert a.allowed
        a.succeeded()
    assert lo.check_lockout(("victim", "203.0.113.66")).locked  # the attacker still is


def test_a_client_may_try_only_so_many_distinct_usernames(pool: RedisPool) -> None:
    lo = Lockout(pool, max_attempts=5, max_identities_per_client=5, client_window=60)
    allowed: list[str] = []
    refused: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def spray(i: int) -> None:
        barrier.wait()
        with lo.attempt(f"user{i}", client="203.0.113.9") as a:
            with lock:
                (allowed.append(f"user{i}") if a.allowed else refused.append(a.result))
            if a.allowed:
                a.failed()

    threads = [threading.Thread(target=spray, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(allowed) == 5 and len(refused) == 45  # exact under concurrency
    assert all(r.reason == "client" and 0 < r.retry_after <= 60 for r in refused)
    # The usernames it already tried stay open to it; a new one does not.
    with lo.attempt(allowed[0], client="203.0.113.9") as a:
        assert a.allowed
        a.succeeded()
    assert not lo.attempt("someone-else", client="203.0.113.9").allowed
    # Other clients are not affected; and the refused usernames were not counted.
    with lo.attempt("someone-else", client="198.51.100.1") as a:
        assert a.allowed and a.result.attempts == 1
        a.succeeded()
    # Without a client, or without a cap, nothing is capped.
    assert lo.attempt("another", client=None).allowed
    assert Lockout(pool, namespace="nocap").attempt("x", client="203.0.113.9").allowed


def test_progressive_delays_keep_a_victims_lock_short(pool: RedisPool) -> None:
    """A short first lock that doubles: one burst costs the victim 0.2 s, an
    attacker who keeps going waits ever longer."""
    lo = Lockout(pool, max_attempts=2, lockout=0.2, progressive=2, max_lockout=0.8)
    locks = []
    for _ in range(4):
        out = _burst(lo, "grace", ["wrong"] * 10, right="right")
        assert out["checks"] == 2 and out["newly_locked"] == 1
        r = lo.check_lockout("grace")
        locks.append(r.retry_after)
        time.sleep(r.retry_after + 0.05)
    assert locks[0] <= 0.2 and 0.2 < locks[1] <= 0.4 and 0.4 < locks[2] <= 0.8
    assert 0.4 < locks[3] <= 0.8  # capped


def test_demo_login_checks_at_most_5_passwords_in_a_burst(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 parallel wrong guesses (and the right password 40th) at the demo's
    login: its password comparison runs at most 5 times."""
    import hmac

    from redispool.demo import app as demo

    for name in ("DEMO_LOGIN_LIMIT", "DEMO_PER_REQUEST", "REDISPOOL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    checks = []

    def slow_compare(a: Any, b: Any) -> bool:
        checks.append(1)
        time.sleep(0.02)
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(demo, "hmac", type("H", (), {"compare_digest": staticmethod(slow_compare)}))
    app = demo.create_app(redis_url)
    user = f"alice-{time.monotonic_ns()}"
    monkeypatch.setitem(demo.USERS, user, demo.USERS["alice"])
    passwords = ["guess"] * 60
    passwords.insert(39, "wonderland")
    statuses: list[int] = []
    barrier = threading.Barrier(len(passwords))

    def post(password: str) -> None:
        client = app.test_client()
        barrier.wait()
        resp = client.post("/api/auth/login", json={"username": user, "password": password})
        statuses.append(resp.status_code)

    threads = [threading.Thread(target=post, args=(p,)) for p in passwords]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert set(statuses) <= {200, 401, 423} and statuses.count(200) <= 1
        # 5 checks; after a success (the right password was one of them) 5 more at most
        assert len(checks) <= 5 * (1 + statuses.count(200))
        if 200 not in statuses:  # then it is locked, the right password included
            resp = app.test_client().post(
                "/api/auth/login", json={"username": user, "password": "wonderland"}
            )
            assert resp.status_code == 423 and len(checks) <= 5
    finally:
        app.extensions["redispool"].pool.close(timeout=1.0)


# -- a model of attempt(), driven by random interleavings --------------------------------

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["attempt", "failed", "succeeded", "release", "drop"]), st.integers(0, 9)
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(max_attempts=st.integers(1, 4), ops=_OPS)
@example(  # a release of an attempt reserved before a success: nothing to give back
    max_attempts=2,
    ops=[("attempt", 0), ("attempt", 0), ("succeeded", 1), ("attempt", 0), ("release", 0)],
)
def test_attempts_follow_the_model_in_any_interleaving(
    pool: RedisPool, max_attempts: int, ops: list[tuple[str, int]]
) -> None:
    """Attempts opened and ended in any order (a verdict, a release, or dropped
    without one): every answer is the model's. The model: at most
    ``max_attempts`` open-or-failed attempts; the failure that fills the count
    locks; a success clears; a release gives one back, if its count still
    stands (not after a success or a lock restarted it)."""
    lo = Lockout(pool, max_attempts=max_attempts, window=60, lockout=60)
    who = f"model-{time.monotonic_ns()}"
    count, locked, generation = 0, False, 0  # a new count starts a new generation
    open_: list[tuple[Any, int]] = []
    for op, n in ops:
        if op == "attempt":
            a = lo.attempt(who)
            assert a.allowed == (not locked and count < max_attempts), (count, locked)
            if a.allowed:
                generation += count == 0
                count += 1
                assert a.result.attempts == count
                open_.append((a, generation))
            continue
        if not open_:
            continue
        a, reserved_in = open_.pop(n % len(open_))
        if op == "succeeded":
            a.succeeded()
            count, locked = 0, False
        elif op == "release":
            r = a.release()
            if not locked and reserved_in == generation:
                count = max(0, count - 1)
            assert r.locked == locked and (locked or r.attempts == count)
        else:  # failed, or dropped: leaving the block without a verdict
            if op == "failed":
                r = a.failed()
            else:
                a.__exit__(None, None, None)
                r = lo.check_lockout(who)
            if not locked:
                generation += count == 0
                count = max(count, 1)
                if count >= max_attempts:
                    count, locked = 0, True
                    assert op == "drop" or r.newly_locked
            assert r.locked == locked
    assert lo.check_lockout(who).locked == locked


def test_a_release_after_the_count_restarted_gives_back_nothing(pool: RedisPool) -> None:
    """``release()`` of an attempt reserved before a success, a lock or the end
    of the window gives nothing back: that count is gone, and the new one holds
    none of its reservations. It decremented the new count, which then let one
    more check through than ``max_attempts`` (here 3 checks with max 2)."""
    lo = Lockout(pool, max_attempts=2, window=60, lockout=0.05)
    quick = Lockout(pool, max_attempts=2, window=0.05, lockout=60, namespace="quick")
    for restart in ("success", "lock", "window"):
        who = f"release-{restart}"
        lock_out = quick if restart == "window" else lo
        stale = lock_out.attempt(who)
        assert stale.allowed
        if restart == "success":
            lock_out.attempt(who).succeeded()
        elif restart == "lock":
            assert lock_out.attempt(who).failed().newly_locked
            time.sleep(0.1)  # the lock (50 ms) has ended
        else:
            time.sleep(0.1)  # the window (50 ms) has ended
        first, second = lock_out.attempt(who), lock_out.attempt(who)
        assert first.allowed and second.allowed and not lock_out.attempt(who).allowed
        assert stale.release().attempts == 2, restart  # nothing given back
        assert not lock_out.attempt(who).allowed, restart  # still only 2 checks
        assert first.release().attempts == 1  # a reservation of this count: given back
        assert lock_out.attempt(who).allowed


def test_a_lockout_longer_than_a_day_needs_no_max_lockout(pool: RedisPool) -> None:
    """``Lockout(pool, lockout=2 * 86400)`` (progressive off) raised "max_lockout
    must be >= 172800, got 86400", naming an argument the caller never gave
    (its default, a day, was below the lockout). The default cap is now a day,
    or the lockout if longer; an explicit cap below the lockout still raises."""
    lo = Lockout(pool, max_attempts=1, lockout=2 * 86400, namespace="long")
    assert lo.max_lockout == 2 * 86400
    r = lo.record_failed_attempt("gina")
    assert r.newly_locked and r.retry_after == 2 * 86400
    assert Lockout(pool, lockout=60).max_lockout == 86400
    with pytest.raises(ValueError, match="max_lockout must be >= 172800"):
        Lockout(pool, lockout=2 * 86400, max_lockout=86400)
