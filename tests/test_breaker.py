"""The helpers' circuit breaker: whatever ends the half-open trial ends the trial."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redispool import RedisPool
from redispool.helpers import CircuitBreaker, Lockout, RateLimiter
from redispool.testing import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def half_open(**kwargs: Any) -> CircuitBreaker:
    """A breaker whose cooldown is over: the next call is the trial."""
    breaker = CircuitBreaker(threshold=1, cooldown=0, **kwargs)
    breaker.failure()
    assert breaker.state == "half-open"
    return breaker


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    with RedisPool(redis_url, min_size=0, max_size=1, timeout=0.2) as p:
        yield p


def test_trial_that_finds_no_free_connection_ends(pool: RedisPool) -> None:
    """The trial times out waiting for a busy pool (no Redis error): the next
    call, once a connection is free, goes to Redis."""
    lo = Lockout(pool, timeout=0.05, breaker=half_open())
    with pool.client() as held:  # the only connection
        held.ping()
        r = lo.check_lockout("busy")
        assert r.degraded and "no connection" in (r.error or "")
    r = lo.check_lockout("busy")
    assert not r.degraded and not r.locked  # before: "circuit breaker open", for ever
    assert lo.breaker.state == "closed"


class Interrupted(BaseException):
    pass


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, gevent.Timeout, Interrupted])
def test_trial_that_is_interrupted_ends(
    redis_server_factory: Any, interrupt: type[BaseException]
) -> None:
    """An interruption (KeyboardInterrupt, gevent.Timeout) during the trial: the
    next call goes to Redis. The interruption is raised by a signal while the
    trial waits for a stopped server's reply."""
    server: RedisServer = redis_server_factory()
    pool = RedisPool(server.url, min_size=1, max_size=1)
    pool.open(wait=True, timeout=5)
    limiter = RateLimiter(pool, "3/minute", timeout=5, on_error="deny", breaker=half_open())

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise interrupt()

    previous = signal.signal(signal.SIGALRM, raise_interrupt)
    server.pause()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(interrupt):
            limiter.hit("k")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        server.resume()
    r = limiter.hit("k")
    assert r.allowed and not r.degraded  # before: denied by the breaker, for ever
    assert limiter.breaker.state == "closed"
    pool.close()


# -- the breaker alone, driven by random outcomes --------------------------------------

OUTCOMES = st.sampled_from(["success", "failure", "leave", "leave-twice"])
STEPS = st.lists(
    st.tuples(st.sampled_from(["enter", "end", "tick"]), OUTCOMES, st.integers(0, 5)),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(threshold=st.integers(1, 3), steps=STEPS)
def test_random_outcomes_never_leave_the_breaker_stuck(threshold: int, steps: list[Any]) -> None:
    """Calls enter, end in any way (a verdict, none, or ``leave`` twice), in any
    order, while time passes. Invariants: at most one trial at a time; once no
    call is running and the longest cooldown has passed, a call is let through."""
    clock = Clock()
    breaker = CircuitBreaker(threshold=threshold, cooldown=1.0, clock=clock)
    running: list[int] = []  # tickets of calls in flight
    for action, outcome, n in steps:
        if action == "tick":
            clock.now += n * 0.4
        elif action == "enter":
            ticket = breaker.enter()
            if ticket is not None:
                assert ticket == 0 or not any(running), "two trials at once"
                running.append(ticket)
        elif running:
            ticket = running.pop(n % len(running))
            if outcome == "success":
                breaker.success(ticket)
            elif outcome == "failure":
                breaker.failure(ticket)
            breaker.leave(ticket)  # what HelperBase._call always does last
            if outcome == "leave-twice":
                breaker.leave(ticket)
    for ticket in running:  # every call ends, somehow
        breaker.leave(ticket)
    clock.now += 1.6  # past the longest jittered cooldown (1.5x)
    assert breaker.enter() is not None


def test_a_failed_trial_counts_as_the_breaker_opening_again() -> None:
    """``opened`` (in stats and health) counts each time it opens: a failed
    half-open trial reopens it, and was not counted."""
    breaker = half_open()
    assert breaker.opened == 1
    ticket = breaker.enter()
    assert ticket  # the trial
    breaker.failure(ticket)
    assert breaker.opened == 2 and breaker.state != "closed"
    breaker.failure()  # a late failure while open: not another opening
    assert breaker.opened == 2


def test_a_late_verdict_of_an_earlier_call_does_not_end_the_trial() -> None:
    """Found by the random test: a call let through while closed (ticket 0) fails
    after the breaker went half-open and its trial began; that failure counts,
    but the trial is still running, so no second trial may start."""
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, clock=clock)
    early, late = breaker.enter(), breaker.enter()  # both while closed
    assert early == 0 and late == 0
    breaker.failure(early)  # opens
    breaker.leave(early)
    clock.now += 1.6
    trial = breaker.enter()
    assert trial  # the half-open trial
    breaker.failure(late)  # the other early call fails late
    breaker.leave(late)
    clock.now += 1.6
    assert breaker.enter() is None  # the trial is still running: not a second one
    breaker.success(trial)
    breaker.leave(trial)
    assert breaker.state == "closed" and breaker.enter() == 0
