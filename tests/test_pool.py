"""ObjectPool unit tests: deterministic, driven by a fake clock and run_upkeep()."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from redispool import ObjectPool, PoolClosed, PoolTimeout, TooManyWaiters
from redispool.backoff import backoff_ceiling, full_jitter

from .helpers import Factory, FakeClock, Resource, refuse_threads


def make_pool(factory: Factory | None = None, **kw: Any) -> ObjectPool[Resource]:
    factory = factory or Factory()
    kw.setdefault("background", False)
    kw.setdefault("timeout", 1.0)
    return ObjectPool(factory, destroy=Factory.destroy, **kw)


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_borrow_release_reuses_hot_object_first() -> None:
    pool = make_pool(max_size=3)
    a, b = pool.borrow(), pool.borrow()
    pool.release(a)
    pool.release(b)
    assert pool.borrow() is b  # LIFO: the most recently used comes back first
    st = pool.stats()
    assert (st.size, st.idle, st.in_use, st.created, st.borrows) == (2, 1, 1, 2, 3)


def test_acquire_releases_and_discards_on_error() -> None:
    factory = Factory()
    pool = make_pool(factory)
    with pool.acquire() as r:
        pass
    assert pool.stats().idle == 1
    with pytest.raises(KeyError):
        with pool.acquire() as r2:
            assert r2 is r
            raise KeyError("boom")
    assert r.destroyed
    st = pool.stats()
    assert (st.size, st.idle, st.in_use, st.destroyed_by_reason) == (0, 0, 0, {"error": 1})


def test_keep_on_keeps_object_for_harmless_errors() -> None:
    pool = make_pool(keep_on=(KeyError,))
    with pytest.raises(KeyError):
        with pool.acquire() as r:
            raise KeyError("harmless")
    assert not r.destroyed and pool.stats().idle == 1
    with pytest.raises(ValueError):
        with pool.acquire(keep_on=lambda e: isinstance(e, ValueError)) as r2:
            raise ValueError("also harmless here")
    assert r2 is r and not r.destroyed
    with pytest.raises(RuntimeError):
        with pool.acquire() as r3:
            raise RuntimeError("bad")
    assert r3.destroyed


def test_bounded_and_timeout_message() -> None:
    pool = make_pool(max_size=2, timeout=0.05)
    held = [pool.borrow(), pool.borrow()]
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"after 0\.0[5-9]\d*s \(2 of 2 in use"):
        pool.borrow()
    assert time.monotonic() - t0 >= 0.045
    with pytest.raises(PoolTimeout):
        pool.borrow(timeout=0)  # 0: do not wait at all
    st = pool.stats()
    assert st.size == 2 and st.timeouts == 2 and st.waiting == 0
    for r in held:
        pool.release(r)


def test_max_waiting_fails_at_once() -> None:
    pool = make_pool(max_size=1, max_waiting=1, timeout=5)
    held = pool.borrow()
    t = threading.Thread(target=lambda: pool.release(pool.borrow()))
    t.start()
    wait_for(lambda: pool.stats().waiting == 1)
    t0 = time.monotonic()
    with pytest.raises(TooManyWaiters, match="max_waiting=1"):
        pool.borrow()
    assert time.monotonic() - t0 < 1.0
    pool.release(held)
    t.join()
    assert pool.stats().in_use == 0


def test_waiters_served_in_arrival_order_by_hand_off() -> None:
    pool = make_pool(max_size=1, timeout=5)
    held = pool.borrow()
    order: list[int] = []
    got: dict[int, Resource] = {}
    gate = threading.Event()

    def worker(i: int) -> None:
        r = pool.borrow()
        order.append(i)
        got[i] = r
        gate.wait()
        pool.release(r)

    threads = []
    for i in range(8):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        wait_for(lambda i=i: pool.stats().waiting == i + 1)  # enqueued in this order
        threads.append(t)
    gate.set()
    pool.release(held)
    for t in threads:
        t.join()
    assert order == list(range(8))
    assert all(r is held for r in got.values())  # one object, handed along the queue


def test_no_barging_past_a_waiter() -> None:
    pool = make_pool(max_size=1, timeout=5)
    held = pool.borrow()
    result: list[Resource] = []
    t = threading.Thread(target=lambda: result.append(pool.borrow()))
    t.start()
    wait_for(lambda: pool.stats().waiting == 1)
    pool.release(held)
    # The object went straight to the waiter: it never sat idle for a newcomer.
    with pytest.raises(PoolTimeout):
        pool.borrow(timeout=0)
    t.join()
    assert result == [held]
    pool.release(held)


def test_check_runs_only_after_check_interval_and_replaces_bad_objects() -> None:
    clock = FakeClock()
    calls: list[Resource] = []

    def check(r: Resource) -> bool:
        calls.append(r)
        return r.healthy

    pool = make_pool(check=check, check_interval=5.0, clock=clock)
    r = pool.borrow()
    pool.release(r)
    clock.advance(4.9)
    assert pool.borrow() is r and calls == []  # hot: no check
    pool.release(r)
    clock.advance(5.0)
    r.healthy = False
    r2 = pool.borrow()  # idle long enough: checked, fails, replaced
    assert calls == [r] and r2 is not r and r.destroyed
    assert pool.stats().destroyed_by_reason == {"check": 1}
    pool.release(r2)


def test_check_interval_zero_checks_every_borrow_and_exception_counts_as_failure() -> None:
    def check(r: Resource) -> bool:
        if not r.healthy:
            raise OSError("dead")
        return True

    pool = make_pool(check=check, check_interval=0)
    r = pool.borrow()
    pool.release(r)
    r.healthy = False
    assert pool.borrow() is not r and r.destroyed


def test_idle_eviction_down_to_min_size() -> None:
    clock = FakeClock()
    pool = make_pool(min_size=1, max_size=5, max_idle_time=60, max_lifetime=0, clock=clock)
    held = [pool.borrow() for _ in range(4)]
    for r in held:
        pool.release(r)
        clock.advance(1)
    clock.advance(57)  # held[0] idle 61s, held[1] 60s, held[2] 59s, held[3] 58s
    pool.run_upkeep()
    assert [r.destroyed for r in held] == [True, True, False, False]
    clock.advance(100)
    pool.run_upkeep()
    st = pool.stats()
    assert st.size == st.idle == 1 and st.destroyed_by_reason == {"idle": 3}


def test_lifetime_jitter_retires_each_object_on_its_own_schedule() -> None:
    clock = FakeClock()
    pool = make_pool(max_size=50, max_lifetime=100, lifetime_jitter=0.2, clock=clock)
    objs = [pool.borrow() for _ in range(50)]
    for r in objs:
        pool.release(r)
    clock.advance(79.9)
    pool.run_upkeep()
    assert not any(r.destroyed for r in objs)
    clock.advance(10)  # now 89.9: some, not all, have expired
    pool.run_upkeep()
    n = sum(r.destroyed for r in objs)
    assert 0 < n < 50
    clock.advance(10.2)
    pool.run_upkeep()
    assert all(r.destroyed for r in objs)
    assert pool.stats().destroyed_by_reason == {"lifetime": 50}


def test_expired_object_is_not_handed_out_nor_kept_on_release() -> None:
    clock = FakeClock()
    pool = make_pool(max_lifetime=10, lifetime_jitter=0, clock=clock)
    r = pool.borrow()
    pool.release(r)
    clock.advance(10)
    r2 = pool.borrow()
    assert r.destroyed and r2 is not r
    clock.advance(10)
    pool.release(r2)  # expired while borrowed: destroyed, not pooled
    assert r2.destroyed and pool.stats().size == 0


def test_max_uses_retires_after_n_borrows() -> None:
    pool = make_pool(max_uses=3)
    r = pool.borrow()
    for _ in range(2):
        pool.release(r)
        assert pool.borrow() is r
    pool.release(r)
    assert r.destroyed


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    assert [backoff_ceiling(n, 0.1, 1.0) for n in range(0, 7)] == [
        0.0,
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]
    assert backoff_ceiling(10_000, 0.1, 5.0) == 5.0
    assert full_jitter(3, 0.1, 1.0, rand=lambda: 0.5) == pytest.approx(0.2)
    assert full_jitter(3, 0.1, 1.0, rand=lambda: 0.0) == 0.0


def test_failing_factory_probes_on_backoff_schedule_then_recovers() -> None:
    clock = FakeClock()
    factory = Factory()
    factory.fail_always = True
    pool = make_pool(factory, min_size=2, clock=clock, backoff_base=1.0, backoff_cap=8.0)
    pool.run_upkeep()  # first attempt fails
    assert factory.calls == 1
    for streak in range(1, 6):
        st = pool.stats()
        assert st.consecutive_create_errors == streak
        delay = pool._next_retry - clock.now  # drawn in [0, ceiling]
        assert 0 <= delay <= backoff_ceiling(streak, 1.0, 8.0)
        calls = factory.calls
        clock.advance(max(0.0, delay - 0.001))
        pool.run_upkeep()
        assert factory.calls == calls or delay < 0.001  # not yet due: no attempt
        clock.advance(0.002)
        pool.run_upkeep()
        assert factory.calls == calls + 1
    factory.fail_always = False
    clock.advance(10)
    pool.run_upkeep()
    st = pool.stats()
    assert st.size == st.idle == 2 and st.consecutive_create_errors == 0
    assert st.create_errors == 6 and st.last_create_error is None


def test_failing_factory_times_out_with_cause_then_fails_fast_and_recovers() -> None:
    factory = Factory()
    factory.fail_always = True
    pool = make_pool(factory, timeout=0.2, fail_fast_after=3, backoff_base=100)
    # First failure: the borrower waits out its timeout, then sees the cause.
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout, match="ConnectionRefusedError") as info:
        pool.borrow()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert time.monotonic() - t0 >= 0.19
    # Two more failed creates reach the threshold...
    with pytest.raises(PoolTimeout):
        pool._next_retry = 0.0
        pool.run_upkeep()
        pool._next_retry = 0.0
        pool.run_upkeep()
        pool.borrow(timeout=0)
    assert pool.stats().consecutive_create_errors == 3
    # ...after which a borrower fails at once with the cause.
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout, match="failed 3 times in a row") as info:
        pool.borrow(timeout=5)
    assert time.monotonic() - t0 < 0.5
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    factory.fail_always = False
    pool._next_retry = 0.0
    pool.run_upkeep()  # the probe succeeds
    r = pool.borrow(timeout=0)
    pool.release(r)
    st = pool.stats()
    assert st.size == 1 and st.in_use == 0 and st.creating == 0 and st.waiting == 0


def test_background_reconnect_serves_waiters_once_factory_recovers() -> None:
    factory = Factory()
    factory.fail_next = 2
    pool = ObjectPool(factory, max_size=4, timeout=5, backoff_base=0.01, backoff_cap=0.02)
    results: list[Resource] = []
    threads = [threading.Thread(target=lambda: results.append(pool.borrow())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len({id(r) for r in results}) == 4
    for r in results:
        pool.release(r)
    st = pool.stats()
    assert st.size == 4 and st.in_use == 0 and st.create_errors == 2 and st.timeouts == 0
    pool.close()


def test_failed_create_frees_its_slot() -> None:
    factory = Factory()
    pool = make_pool(factory, max_size=1, fail_fast_after=1, timeout=0.05)
    factory.fail_next = 1
    with pytest.raises(PoolTimeout):
        pool.borrow()
    st = pool.stats()
    assert st.size == 0 and st.creating == 0
    pool.run_upkeep()  # the probe is due (jittered within 0.1s) eventually
    pool._next_retry = 0.0
    pool.run_upkeep()
    r = pool.borrow()
    pool.release(r)


def test_min_size_refill_and_open_wait() -> None:
    factory = Factory()
    pool = ObjectPool(factory, destroy=Factory.destroy, min_size=3, max_size=5)
    pool.open(wait=True, timeout=5)
    st = pool.stats()
    assert st.size == st.idle == 3
    held = [pool.borrow() for _ in range(3)]
    pool.release(held[0], discard=True)
    wait_for(lambda: pool.stats().size == 3)  # the upkeep thread refilled
    for r in held[1:]:
        pool.release(r)
    pool.close()
    assert all(r.destroyed for r in factory.made)


def test_open_wait_times_out_with_cause() -> None:
    factory = Factory()
    factory.fail_always = True
    pool = ObjectPool(factory, min_size=1, backoff_base=0.01, backoff_cap=0.01)
    with pytest.raises(PoolTimeout) as info:
        pool.open(wait=True, timeout=0.2)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    pool.close()


def test_resize_grow_serves_waiters_and_shrink_retires_excess() -> None:
    pool = make_pool(max_size=1, timeout=5)
    held = [pool.borrow()]
    got: list[Resource] = []
    t = threading.Thread(target=lambda: got.append(pool.borrow()))
    t.start()
    wait_for(lambda: pool.stats().waiting == 1)
    pool.resize(max_size=3)
    t.join()
    held += got
    held.append(pool.borrow())
    assert pool.stats().size == 3
    pool.release(held.pop())
    pool.resize(min_size=0, max_size=1)  # one idle goes now, one borrowed on return
    st = pool.stats()
    assert st.size == 2 and st.idle == 0
    pool.release(held.pop())
    st = pool.stats()
    assert st.size == 1 and st.destroyed_by_reason == {"resize": 2}
    with pytest.raises(ValueError, match="min_size"):
        pool.resize(min_size=5)
    assert pool.stats().max_size == 1


def test_close_fails_waiters_destroys_idle_and_later_returns() -> None:
    pool = make_pool(max_size=2, timeout=10)
    a, b = pool.borrow(), pool.borrow()
    pool.release(a)
    a = pool.borrow()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.borrow()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: pool.stats().waiting == 1)
    pool.release(a)  # handed to the waiter... which we keep busy
    t.join()
    t2 = threading.Thread(target=waiter)
    t2.start()
    wait_for(lambda: pool.stats().waiting == 1)
    pool.close(timeout=0)
    t2.join()
    assert isinstance(errors[-1], PoolClosed)
    with pytest.raises(PoolClosed):
        pool.borrow()
    pool.release(b)
    assert b.destroyed
    assert pool.stats().destroyed_by_reason.get("closed") == 1


def test_close_waits_for_borrowed_objects() -> None:
    pool = ObjectPool(Factory(), destroy=Factory.destroy, max_size=2)
    r = pool.borrow()
    threading.Timer(0.1, pool.release, args=(r,)).start()
    t0 = time.monotonic()
    pool.close(timeout=5)
    assert 0.05 < time.monotonic() - t0 < 4 and r.destroyed
    st = pool.stats()
    assert st.closed and st.size == 0


def test_context_manager_closes() -> None:
    with ObjectPool(Factory(), destroy=Factory.destroy, min_size=1) as pool:
        r = pool.borrow()
        pool.release(r)
    assert pool.closed and r.destroyed


def test_release_of_foreign_or_twice_released_object_is_an_error() -> None:
    pool = make_pool()
    r = pool.borrow()
    pool.release(r)
    with pytest.raises(ValueError, match="not borrowed from pool"):
        pool.release(r)
    with pytest.raises(ValueError, match="not borrowed from pool"):
        pool.release(Resource())
    assert pool.stats().idle == 1


def test_reset_runs_on_release_and_failure_discards() -> None:
    seen: list[Resource] = []

    def reset(r: Resource) -> None:
        seen.append(r)
        if not r.healthy:
            raise OSError("cannot reset")

    pool = make_pool(reset=reset)
    r = pool.borrow()
    pool.release(r)
    assert seen == [r] and pool.stats().idle == 1
    r = pool.borrow()
    r.healthy = False
    pool.release(r)
    assert r.destroyed and pool.stats().size == 0


def test_destroy_runs_before_the_slot_is_freed() -> None:
    factory = Factory()
    sizes: list[int] = []
    pool: ObjectPool[Resource]

    def destroy(r: Resource) -> None:
        sizes.append(pool.stats().size)  # still counted while it is being destroyed

    pool = ObjectPool(factory, destroy=destroy, max_size=1, background=False)
    pool.release(pool.borrow(), discard=True)
    assert sizes == [1] and pool.stats().size == 0


def test_leak_warning_logged_once_with_borrowing_stack(caplog: Any) -> None:
    clock = FakeClock()
    pool = make_pool(leak_timeout=30, clock=clock)

    def borrow_here_in_a_named_function() -> Resource:
        return pool.borrow()

    r = borrow_here_in_a_named_function()
    clock.advance(29)
    with caplog.at_level(logging.WARNING, logger="redispool.pool"):
        pool.run_upkeep()
        assert not caplog.records
        clock.advance(2)
        pool.run_upkeep()
        pool.run_upkeep()
    assert len(caplog.records) == 1
    assert "borrow_here_in_a_named_function" in caplog.records[0].getMessage()
    pool.release(r)


def test_stats_snapshot_and_as_dict() -> None:
    pool = make_pool(min_size=0, max_size=4, name="snap")
    r = pool.borrow()
    d = pool.stats().as_dict()
    for key in (
        "size",
        "idle",
        "in_use",
        "waiting",
        "min_size",
        "max_size",
        "borrows",
        "timeouts",
        "created",
        "destroyed",
        "wait_time_total",
        "wait_time_max",
    ):
        assert key in d
    assert d["name"] == "snap" and d["in_use"] == 1 and d["max_size"] == 4
    pool.release(r)
    assert "snap" in repr(pool)


def test_borrows_never_go_down_when_a_checked_object_is_taken_back() -> None:
    """A stats() taken while an idle object's check runs counts that borrow; the
    check fails and the borrow is taken back (here the replacement's create
    fails too): the counter must not go down, or a Prometheus scrape reads a
    reset (PoolMetrics added the whole count again)."""
    factory = Factory()
    checking, go = threading.Event(), threading.Event()

    def check(r: Resource) -> bool:
        checking.set()
        go.wait(5)
        return False

    pool = make_pool(factory, check=check, min_size=0, max_size=1)
    pool.release(pool.borrow())  # one idle object (a new one is not checked)
    errors: list[BaseException] = []

    def borrow() -> None:
        try:
            pool.borrow(timeout=0)
        except PoolTimeout as exc:
            errors.append(exc)

    t = threading.Thread(target=borrow)
    t.start()
    assert checking.wait(5)
    during = pool.stats().borrows
    factory.fail_next = 1
    go.set()
    t.join(5)
    assert len(errors) == 1 and during == 2
    assert pool.stats().borrows == during  # not 1: the number shown stays


@pytest.mark.parametrize(
    ("kwargs", "exc", "needle"),
    [
        ({"max_size": 0}, ValueError, "max_size must be >= 1, got 0"),
        ({"min_size": 3, "max_size": 2}, ValueError, "min_size (3) must be <= max_size (2)"),
        ({"min_size": -1}, ValueError, "min_size must be >= 0, got -1"),
        ({"max_size": 2.5}, TypeError, "max_size must be an int, got 2.5"),
        ({"max_size": True}, TypeError, "max_size must be an int"),
        ({"timeout": -1}, ValueError, "timeout must be >= 0, got -1"),
        ({"timeout": "5"}, TypeError, "timeout must be a number, got '5'"),
        ({"max_idle_time": float("nan")}, ValueError, "max_idle_time must be >= 0"),
        ({"max_lifetime": -0.5}, ValueError, "max_lifetime must be >= 0, got -0.5"),
        ({"lifetime_jitter": 2}, ValueError, "lifetime_jitter must be <= 1"),
        ({"max_waiting": -2}, ValueError, "max_waiting must be >= 0"),
        ({"check": 42}, TypeError, "check must be callable, got 42"),
        ({"destroy": "x"}, TypeError, "destroy must be callable"),
        ({"keep_on": (int,)}, TypeError, "keep_on must be a tuple of exception types"),
        ({"name": 7}, TypeError, "name must be a str"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], exc: type, needle: str) -> None:
    with pytest.raises(exc) as info:
        ObjectPool(Factory(), **kwargs)
    assert needle in str(info.value)


def test_factory_must_be_callable() -> None:
    with pytest.raises(TypeError, match="factory must be callable, got 'redis'"):
        ObjectPool("redis")  # type: ignore[arg-type]


def test_bad_timeout_argument_is_rejected_even_on_the_fast_path() -> None:
    pool = make_pool()
    pool.release(pool.borrow())
    with pytest.raises(TypeError, match="timeout"):
        pool.borrow(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        pool.acquire(timeout=-1)
    st = pool.stats()
    assert st.idle == 1 and st.in_use == 0


def test_drain_replaces_idle_now_and_borrowed_on_return() -> None:
    pool = make_pool(max_size=3)
    a, b = pool.borrow(), pool.borrow()
    pool.release(a)
    assert set(map(id, pool.objects())) == {id(a), id(b)}
    pool.drain()
    assert a.destroyed and not b.destroyed
    pool.release(b)  # borrowed before the drain: retired on return
    assert b.destroyed
    c = pool.borrow()
    assert c is not a and c is not b
    pool.release(c)  # made after the drain: kept
    st = pool.stats()
    assert st.idle == 1 and st.destroyed_by_reason == {"drain": 2}


def test_shrink_then_grow_keeps_objects_that_fit() -> None:
    pool = make_pool(max_size=3)
    held = [pool.borrow() for _ in range(2)]
    pool.resize(max_size=2)  # nothing in excess: the epoch bump must not retire them
    for r in held:
        pool.release(r)
    assert not any(r.destroyed for r in held) and pool.stats().idle == 2


def test_no_fail_fast_while_a_borrowed_object_can_come_back() -> None:
    factory = Factory()
    pool = make_pool(factory, max_size=3, timeout=5, fail_fast_after=1, backoff_base=100)
    held = pool.borrow()
    factory.fail_always = True
    with pytest.raises(PoolTimeout):
        pool.borrow(timeout=0.05)  # its own create fails, then it waits: nothing returns
    assert pool.stats().consecutive_create_errors == 1
    got: list[Resource] = []
    t = threading.Thread(target=lambda: got.append(pool.borrow()))
    t.start()
    wait_for(lambda: pool.stats().waiting == 1)  # waits for `held`, does not fail fast
    pool.release(held)
    t.join()
    assert got == [held]
    pool.release(held, discard=True)  # the last one gone: now waiting is pointless
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout, match="failing fast"):
        pool.borrow()
    assert time.monotonic() - t0 < 1


def test_drain_probes_again_at_once() -> None:
    clock = FakeClock()
    factory = Factory()
    factory.fail_always = True
    pool = make_pool(factory, min_size=1, clock=clock, backoff_base=100, backoff_cap=100)
    pool.run_upkeep()
    pool._next_retry = clock.now + 50  # the next probe is far away...
    pool.run_upkeep()
    assert factory.calls == 1
    factory.fail_always = False  # e.g. the password was fixed
    pool.drain()
    pool.run_upkeep()
    assert pool.stats().consecutive_create_errors == 0 and pool.stats().idle == 1


def test_drain_while_creating_retires_the_object_made_with_old_settings() -> None:
    started, release_factory = threading.Event(), threading.Event()
    version = [1]

    class Made(Resource):
        pass

    def factory() -> Resource:
        r = Made()
        r.holder = version[0]  # the "credentials" it was made with
        started.set()
        release_factory.wait(5)
        return r

    pool: ObjectPool[Resource] = ObjectPool(factory, max_size=2, background=False)
    got: list[Resource] = []
    t = threading.Thread(target=lambda: got.append(pool.borrow()))
    t.start()
    assert started.wait(5)
    version[0] = 2
    pool.drain()  # while the object with version 1 is being made
    release_factory.set()
    t.join()
    pool.release(got[0])
    assert pool.stats().destroyed_by_reason == {"drain": 1}


def test_disconnect_makes_nothing_until_borrowed_again() -> None:
    """``_disconnect()`` (the drop-in's ``disconnect()``): a refill under way is
    destroyed when made, upkeep makes nothing (and is not due at once, failing
    or not) until the next borrow, which fills as usual."""
    started, release_factory = threading.Event(), threading.Event()
    factory = Factory()

    def slow() -> Resource:
        started.set()
        release_factory.wait(5)
        return factory()

    clock = FakeClock()
    pool: ObjectPool[Resource] = ObjectPool(
        slow, destroy=Factory.destroy, min_size=2, max_size=3, background=False, clock=clock
    )
    t = threading.Thread(target=pool.run_upkeep)
    t.start()
    assert started.wait(5)
    pool._disconnect()  # while the upkeep makes the first one
    release_factory.set()
    t.join()
    assert pool.stats().size == 0 and factory.made[0].destroyed
    assert pool.run_upkeep() > 0 and factory.calls == 1  # nothing made, nothing due
    pool._fail_streak = 1  # (failing: no probe either)
    assert pool.run_upkeep() > 0 and factory.calls == 1
    pool._fail_streak = 0
    pool.release(pool.borrow())
    pool.run_upkeep()
    assert pool.stats().size == 2


def test_shrink_keeps_max_size_objects_while_others_are_being_destroyed() -> None:
    slow = threading.Event()

    def destroy(r: Resource) -> None:
        slow.wait(0.2)

    pool: ObjectPool[Resource] = ObjectPool(
        Factory(), destroy=destroy, max_size=10, background=False
    )
    held = [pool.borrow() for _ in range(10)]
    pool.resize(max_size=5)
    threads = [threading.Thread(target=pool.release, args=(r,)) for r in held]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = pool.stats()
    assert s.size == s.idle == 5 and s.destroyed_by_reason == {"resize": 5}


def test_waiter_whose_handed_object_fails_its_check_keeps_its_place() -> None:
    factory = Factory()
    pool = make_pool(factory, max_size=1, timeout=5, check=Factory.check, check_interval=0)
    held = pool.borrow()
    order: list[str] = []

    def waiter(name: str) -> None:
        r = pool.borrow()
        order.append(name)
        pool.release(r)

    a = threading.Thread(target=waiter, args=("A(oldest)",))
    a.start()
    wait_for(lambda: pool.stats().waiting == 1)
    b = threading.Thread(target=waiter, args=("B",))
    b.start()
    wait_for(lambda: pool.stats().waiting == 2)
    held.healthy = False  # A is handed a bad object: it must not go to the back
    pool.release(held)
    a.join()
    b.join()
    assert order == ["A(oldest)", "B"]


def test_a_borrow_goes_on_when_the_upkeep_thread_cannot_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At interpreter shutdown (an atexit flush) Python 3.12 refuses new threads;
    the first borrow there failed with that RuntimeError. The upkeep thread is
    background work: the borrow goes on, and a later one that creates starts it."""
    start = refuse_threads(monkeypatch, "redispool-upkeep")
    factory = Factory()
    pool = ObjectPool(factory, max_size=2, background=True, name="p")
    try:
        with pool.acquire(timeout=1) as obj:  # raised RuntimeError before
            assert obj is factory.made[0]
        assert pool._upkeep is None and not pool._upkeep_claimed
        monkeypatch.setattr(threading.Thread, "start", start)
        with pool.acquire(timeout=1), pool.acquire(timeout=1):  # the second one: a create
            pass
        assert pool._upkeep is not None and pool._upkeep.is_alive()  # started this time
    finally:
        pool.close()


def test_the_upkeep_thread_of_a_pool_dropped_without_close_ends_at_once() -> None:
    """A pool collected without ``close()`` wakes its upkeep thread, which ends
    (it slept up to a minute first, holding nothing but a weak reference)."""
    import gc

    gc.disable()  # (reference counting alone: no reference cycle is involved)
    try:
        pool = ObjectPool(object, min_size=1, max_size=2, name="dropped")
        pool.release(pool.borrow())
        deadline = time.monotonic() + 5
        while pool.stats().idle < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        thread = pool._upkeep
        assert thread is not None and thread.is_alive()
        time.sleep(0.05)  # (asleep in its wait by now: nothing to do for a minute)
        del pool
        thread.join(2)
        assert not thread.is_alive()
    finally:
        gc.enable()
