"""RateLimiter against a real redis-server: exact, one round trip, fail-open."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redispool import RedisPool
from redispool.helpers import CircuitBreaker
from redispool.helpers.ratelimit import RateLimiter, parse_limit

from .helpers_redis import command_calls, delta
from .lua_keys import script_keys

ALGORITHMS = ["fixed", "sliding", "gcra"]


@pytest.fixture
def pool(redis_url: str) -> Any:
    p = RedisPool(redis_url, min_size=0, max_size=8)
    yield p
    p.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/minute", (100, 60.0)),
        ("10 per second", (10, 1.0)),
        ("1000/5 minutes", (1000, 300.0)),
        ("3/hour", (3, 3600.0)),
        ("1/d", (1, 86400.0)),
        ("  7 / SECONDS ", (7, 1.0)),
    ],
)
def test_parse_limit(text: str, expected: tuple[int, float]) -> None:
    assert parse_limit(text) == expected


@pytest.mark.parametrize("bad", ["", "100", "100/fortnight", "abc/minute", "-1/minute", "0/s"])
def test_malformed_limit_strings_name_the_field(bad: str) -> None:
    with pytest.raises(ValueError, match="limit must"):
        parse_limit(bad)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_allows_exactly_the_limit_then_denies_with_headers(pool: RedisPool, algorithm: str) -> None:
    rl = RateLimiter(pool, "5/minute", algorithm=algorithm)
    results = [rl.hit("client-1") for _ in range(7)]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 2
    assert [r.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    denied = results[-1]
    # sliding: the previous window's weight must decay too, so up to 2 periods
    assert 0 < denied.retry_after <= 120 and 0 < denied.reset_after <= 60
    h = denied.headers()
    assert h["RateLimit-Limit"] == "5" and h["RateLimit-Remaining"] == "0"
    assert h["RateLimit-Policy"] == "5;w=60" and int(h["Retry-After"]) >= 1
    assert h["X-RateLimit-Limit"] == "5"
    assert rl.hit("client-2").allowed  # other keys are independent
    assert not rl.peek("client-1").allowed and rl.peek("client-2").remaining == 4


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exact_under_thread_concurrency(pool: RedisPool, algorithm: str) -> None:
    rl = RateLimiter(pool, "100/minute", algorithm=algorithm, timeout=2)
    allowed = [0]
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            if rl.hit("shared").allowed:
                with lock:
                    allowed[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed[0] == 100
    assert rl.stats()["denied"] == 900 and pool.stats().in_use == 0


CHILD = textwrap.dedent(
    """
    import sys
    from redispool import RedisPool
    from redispool.helpers.ratelimit import RateLimiter
    pool = RedisPool(sys.argv[1], min_size=0, max_size=4)
    rl = RateLimiter(pool, "150/minute", algorithm=sys.argv[2], secret=b"shared", timeout=2)
    print(sum(rl.hit("everyone").allowed for _ in range(200)))
    """
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exact_across_processes(redis_url: str, algorithm: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_url, algorithm], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o.strip()) for o in outs) == 150


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_round_trip_per_check(pool: RedisPool, redis_server: Any, algorithm: str) -> None:
    rl = RateLimiter(pool, "1000/minute", algorithm=algorithm)
    rl.hit("warm")  # loads the script (NOSCRIPT -> EVAL) once
    admin = redis_server.client()
    before, borrows = command_calls(admin), pool.stats().borrows
    for _ in range(20):
        rl.hit("k")
    rl.peek("k")
    d = delta(before, command_calls(admin))
    # One EVALSHA per call (what runs inside the script is counted too, but
    # travels no network); one borrow per call: one round trip each.
    assert d["evalsha"] == 21 and "eval" not in d and "script|load" not in d
    assert pool.stats().borrows - borrows == 21
    admin.close()


def test_gcra_refills_smoothly(pool: RedisPool) -> None:
    rl = RateLimiter(pool, "10/second", algorithm="gcra")
    assert all(rl.hit("k").allowed for _ in range(10))
    denied = rl.hit("k")
    assert not denied.allowed and 0 < denied.retry_after <= 0.15
    time.sleep(denied.retry_after + 0.02)
    assert rl.hit("k").allowed  # one token back after 1/10 s


def test_fixed_window_resets(pool: RedisPool) -> None:
    rl = RateLimiter(pool, 2, period=0.3, algorithm="fixed")
    assert [rl.hit("k").allowed for _ in range(3)] == [True, True, False]
    time.sleep(0.35)
    assert rl.hit("k").allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cost_larger_than_the_limit_can_never_pass(pool: RedisPool, algorithm: str) -> None:
    rl = RateLimiter(pool, "5/minute", algorithm=algorithm)
    for r in (rl.hit("k", cost=6), rl.peek("k", cost=6)):
        assert not r.allowed and r.retry_after == -1 and r.remaining == 5
        assert "Retry-After" not in r.headers()  # retrying can never help
    assert rl.hit("k", cost=5).allowed  # nothing was counted


def burst(rl: RateLimiter, redis_url: str, n: int, key: str = "k") -> list[list[int]]:
    """``n`` hits executed back to back by the server (one pipeline): usually all
    inside one server millisecond, and never more than a few apart."""
    r = redis.Redis.from_url(redis_url)
    pipe = r.pipeline(transaction=False)
    for _ in range(n):
        pipe.eval(rl._script.source, 1, rl.key_for(key), *rl._argv(1, False))
    out = [[int(x) for x in row] for row in pipe.execute()]
    r.close()
    return out


GCRA_LIMITS = ["7/13 seconds", "6/7 seconds", "3/second", "100/7 seconds", "13/minute"]
GCRA_LIMITS += ["1000/hour", "97/3 seconds", "5/day", "999/999 seconds", "11/6 seconds"]


@pytest.mark.parametrize("limit", GCRA_LIMITS)
def test_gcra_burst_is_exactly_n_with_exact_remaining(
    pool: RedisPool, redis_url: str, limit: str
) -> None:
    # Regression: the arrival time was stored rounded to 3 decimals of a ms, so
    # for 7/13 s or 6/7 s the N-th hit of a burst was denied, and Remaining was
    # under-reported ([4, 3, 2, 2, 1, 0] for 6/7 s).
    for i in range(3):
        rl = RateLimiter(pool, limit, algorithm="gcra", namespace=f"b{i}")
        rows = burst(rl, redis_url, rl.limit + 2)
        assert [row[0] for row in rows] == [1] * rl.limit + [0, 0], (limit, rows)
        assert [row[1] for row in rows[: rl.limit]] == list(range(rl.limit - 1, -1, -1))
        assert rows[-1][1] == 0 and rows[-1][3] > 0


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(1, 60), period=st.integers(1, 100_000), cost=st.integers(1, 5))
def test_gcra_exact_for_any_n_per_period(
    pool: RedisPool, redis_url: str, n: int, period: int, cost: int
) -> None:
    """A burst of hits of ``cost`` gets exactly floor(N / cost) through, whatever
    N/period (period in ms here, down to one hit per millisecond of tolerance)."""
    rl = RateLimiter(
        pool, n, period=max(period / 1000, n / 1000), algorithm="gcra", namespace="prop"
    )
    rl.reset("k")
    r = redis.Redis.from_url(redis_url)
    pipe = r.pipeline(transaction=False)
    for _ in range(n // cost + 1):
        pipe.eval(rl._script.source, 1, rl.key_for("k"), *rl._argv(cost, False))
    rows = pipe.execute()
    r.close()
    allowed = [int(row[0]) for row in rows]
    # Time passing between hits can only add tokens; a burst of n // cost + 1
    # spans microseconds, far below one interval (>= 1 ms) in all but a loaded run.
    assert allowed[: n // cost] == [1] * (n // cost), rows
    if period >= 1000 * n:  # interval >= 1 s: the extra hit cannot have been refilled
        assert allowed[-1] == 0, rows


def test_keys_hold_a_hash_never_the_input(pool: RedisPool, redis_server: Any) -> None:
    rl = RateLimiter(pool, "5/minute")
    rl.hit("alice@example.com")
    rl.hit("x" * 4000)  # huge input: still a bounded key
    keys = redis_server.client().keys("*")
    assert len(keys) == 2 and all(b"alice" not in k and len(k) < 64 for k in keys)


def test_fail_open_by_default_and_breaker_short_circuits(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    pool = RedisPool(server.url, min_size=0, max_size=2, timeout=0.2)
    breaker = CircuitBreaker(threshold=3, cooldown=0.5)
    rl = RateLimiter(pool, "1/minute", timeout=0.1, breaker=breaker)
    deny = RateLimiter(pool, "1/minute", timeout=0.1, on_error="deny", namespace="rl2")
    assert rl.hit("k").allowed
    server.kill()
    t0 = time.monotonic()
    results = [rl.hit("k") for _ in range(10)]
    assert time.monotonic() - t0 < 2.0
    assert all(r.allowed and r.degraded for r in results)
    s = rl.stats()
    assert s["failed_open"] == 10 and s["breaker"]["state"] == "open"
    assert s["rejected_by_breaker"] >= 5  # after 3 failures it stopped trying
    assert not deny.hit("k").allowed and deny.stats()["failed_closed"] == 1
    server.restart()
    time.sleep(0.8)  # past the (jittered) cooldown: a trial call goes through
    assert not rl.hit("k").degraded
    assert rl.stats()["breaker"]["state"] == "closed"
    pool.close()


def test_bad_arguments(pool: RedisPool) -> None:
    with pytest.raises(TypeError, match="limit must be"):
        RateLimiter(pool, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="period"):
        RateLimiter(pool, 10)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        RateLimiter(pool, "1/s", algorithm="leaky")
    with pytest.raises(ValueError, match="on_error must be"):
        RateLimiter(pool, "1/s", on_error="maybe")
    with pytest.raises(ValueError, match="namespace must be"):
        RateLimiter(pool, "1/s", namespace="has space")
    with pytest.raises(TypeError, match=r"pool must be a redispool\.RedisPool"):
        RateLimiter("redis://", "1/s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too fine for algorithm='gcra'"):
        RateLimiter(pool, 10**15, period=365 * 86400.5)
    assert RateLimiter(pool, "1000000/day")._unit == 1000  # exact in milliseconds
    rl = RateLimiter(pool, "1/s")
    with pytest.raises(ValueError, match="cost must be"):
        rl.hit("k", cost=0)
    with pytest.raises(ValueError, match="key must not be empty"):
        rl.hit("")
    with pytest.raises(TypeError, match="key must be a str"):
        rl.hit(42)
    with pytest.raises(ValueError, match="key is too long"):
        rl.hit("x" * 10_000)
    assert pool.stats().borrows == 0  # bad input never reached Redis


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_script_declares_every_key_it_touches(
    pool: RedisPool, redis_url: str, algorithm: str
) -> None:
    rl = RateLimiter(pool, "2/minute", algorithm=algorithm)
    with script_keys(redis_url) as check:
        for op in (lambda: rl.hit("k"), lambda: rl.peek("k"), lambda: rl.hit("k", cost=5)):
            assert check(op) == []
        assert check(lambda: [rl.hit("k") for _ in range(3)]) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_limiters_with_other_limits_keep_their_own_state(pool: Any, algorithm: str) -> None:
    """A login limit and an API limit keyed by the same client IP, both in the
    default namespace: an API request in between must not reset (fixed,
    sliding: the other period's window) or use up (GCRA) the login limit."""
    api = RateLimiter(pool, "1000/day", algorithm=algorithm)
    login = RateLimiter(pool, "5/hour", algorithm=algorithm)
    who = f"203.0.113.50-{algorithm}"
    allowed = []
    for _ in range(8):
        assert api.hit(who).allowed
        allowed.append(login.hit(who).allowed)
    assert allowed == [True] * 5 + [False] * 3
    assert api.peek(who).remaining == 992
    assert api.key_for(who) != login.key_for(who)


@pytest.mark.parametrize("algorithm", ["fixed", "sliding"])
def test_the_window_is_the_period_to_the_millisecond(pool: RedisPool, algorithm: str) -> None:
    """1.005 * 1000 is 1004.999...: truncated, a 1.005 s window was 1004 ms."""
    for period in (1.005, 0.001, 2.5, 60.0, 4.35):
        rl = RateLimiter(pool, 3, period=period, algorithm=algorithm)
        assert rl._argv(1, False)[1] == round(period * 1000), period
        assert rl.hit("k").reset_after <= period


# The scripts with a clock the test sets (TIME answers the last two ARGV) and
# no expiry (a key's TTL only drops state the script would ignore anyway).
_CLOCK_SHIM = """
local rcall = redis.call
local redis = {call = function(c, ...)
  if c == 'TIME' then return {ARGV[#ARGV - 1], ARGV[#ARGV]} end
  if c == 'PEXPIRE' then return 1 end
  if c == 'SET' then local a = {...}; return rcall('SET', a[1], a[2]) end
  return rcall(c, ...)
end}
"""


def _fixed_model(st: dict[str, Any], t_ms: int, n: int, p: int, cost: int) -> list[int]:
    idx = t_ms // p
    reset = (idx + 1) * p - t_ms
    count = st.get("c", 0) if st.get("w") == idx else 0
    if cost > n or count + cost > n:
        return [0, n - count, reset, -1 if cost > n else reset]
    st.update(w=idx, c=count + cost)
    return [1, n - count - cost, reset, 0]


def _sliding_used(st: dict[str, Any], t_ms: int, p: int) -> tuple[int, int, int, Fraction]:
    idx = t_ms // p
    w, cur, prev = st.get("w"), st.get("c", 0), st.get("p", 0)
    if w != idx:
        prev, cur = (cur if w == idx - 1 else 0), 0
    return idx, cur, prev, Fraction(prev * (p - t_ms % p), p) + cur


def _sliding_model(st: dict[str, Any], t_ms: int, n: int, p: int, cost: int) -> list[int]:
    idx, cur, prev, used = _sliding_used(st, t_ms, p)
    if used + cost > n:
        retry = -1
        if cost <= n:  # the first ms it would pass (used never grows while waiting)
            lo, hi = 1, 2 * p + 1
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (
                    (lo, mid) if _sliding_used(st, t_ms + mid, p)[3] + cost <= n else (mid + 1, hi)
                )
            retry = lo
        return [0, max(0, math.floor(n - used)), p - t_ms % p, retry]
    st.update(w=idx, c=cur + cost, p=prev)
    return [1, max(0, math.floor(n - used - cost)), p - t_ms % p, 0]


def _gcra_model(st: dict[str, Any], t_us: int, n: int, p_us: int, cost: int) -> list[int]:
    interval, tolerance = Fraction(p_us, n), Fraction(p_us)
    ahead = max(st.get("tat", Fraction(0)), Fraction(t_us)) - t_us

    def left(x: Fraction) -> int:
        return math.floor((tolerance - x) / interval)

    def ms(x: Fraction) -> int:
        return math.ceil(x / 1000)

    new = ahead + cost * interval
    if cost > n or new > tolerance:
        return [0, left(ahead), ms(ahead), -1 if cost > n else ms(new - tolerance)]
    st["tat"] = t_us + new
    return [1, left(new), ms(new), 0]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_answer_is_the_models_at_the_scripts_clock(
    pool: RedisPool, redis_url: str, algorithm: str
) -> None:
    """Seeded runs of hits (costs 1, a few, the limit, over it) at clock jumps
    of 0 to 3 periods, each answer (allowed, remaining, reset, retry) against an
    exact model of the algorithm. Sliding's retry was a ms late when its float
    arithmetic rounded up (1 - 0.99 is 0.010000000000000009)."""
    r = redis.Redis.from_url(redis_url)
    for seed in range(12):
        rnd = random.Random(seed)
        n = rnd.choice([1, 2, 3, 5, 7, 10, 100])
        p = rnd.choice([1, 2, 3, 7, 10, 100, 1000, 1500, 60000])  # ms
        rl = RateLimiter(pool, n, period=p / 1000, algorithm=algorithm, namespace=f"m{seed}")
        key = rl.key_for("k")
        r.delete(key)
        t_us = (1_700_000_000_000 + rnd.randrange(10**6)) * 1000 + rnd.randrange(1000)
        st: dict[str, Any] = {}
        for i in range(150):
            t_us += rnd.choice([0, 0, 1, 7000, 999_000, rnd.randrange(3 * p * 1000 + 1)])
            cost = rnd.choice([1, 1, 2, 3, n, n + 1, 10**12])
            args = rl._argv(cost, False)
            clock = (t_us // 10**6, t_us % 10**6)
            got = [int(x) for x in r.eval(_CLOCK_SHIM + rl._script.source, 1, key, *args, *clock)]
            if algorithm == "fixed":
                want = _fixed_model(st, t_us // 1000, n, p, cost)
            elif algorithm == "sliding":
                want = _sliding_model(st, t_us // 1000, n, p, cost)
            else:
                assert args[-1] == 1  # microseconds: the model's clock
                want = _gcra_model(st, t_us, n, p * 1000, cost)
            assert got == want, (seed, i, n, p, cost, st)
    r.close()
