"""``with ObjectPool.acquire()``: its ``__enter__``/``__exit__`` inline the fast paths
of ``borrow``/``release``, so they get the same oracles: random operations under
hypothesis (never lent twice, counts balanced) and an exception injected at every
step of a lease (nothing lost)."""

from __future__ import annotations

import copy
import gc
import os
import random
import sys
import threading
import time
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from redispool import ObjectPool, PoolTimeout
from redispool._poolparts import _Lease
from redispool.redis_pool import _ClientLease, _ConnectionLease

from .helpers import Factory, FakeClock, Resource
from .test_slots import Injected, _Injector  # raises at the n-th step of the pool's code


class Boom(Exception):
    """Raised inside a ``with`` block."""


class _CountsCalls(ObjectPool[Resource]):
    """Overrides ``borrow`` and ``release``, as a user might."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, Any]] = []

    def borrow(self, timeout: float | None = None) -> Resource:
        obj = super().borrow(timeout)
        self.calls.append(("borrow", timeout))  # (a failed borrow is not counted)
        return obj

    def release(self, obj: Resource, discard: bool = False, *, reason: str = "error") -> None:
        self.calls.append(("release", discard))
        super().release(obj, discard, reason=reason)


class LeaseMachine(RuleBasedStateMachine):
    """Leases and plain borrows mixed, with every rule that sends a lease off its
    fast path: a check due, expiry, max_uses, a resize, a reset, a fork generation."""

    pool_class: type[ObjectPool[Resource]] = ObjectPool

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.factory = Factory()
        self.resets = 0
        self.pool: ObjectPool[Resource] = self.pool_class(
            self.factory,
            destroy=Factory.destroy,
            check=Factory.check,
            reset=None,
            max_size=3,
            min_size=0,
            timeout=0,
            max_idle_time=30,
            max_lifetime=100,
            check_interval=5,
            max_uses=0,
            clock=self.clock,
            background=False,
        )
        self.leases: list[tuple[Any, Resource]] = []
        self.held: list[Resource] = []

    def _lent(self, r: Resource) -> None:
        assert r.holder is None, f"{r} lent twice"
        assert not r.destroyed
        r.holder = self

    @rule()
    def enter(self) -> None:
        lease = self.pool.acquire()
        try:
            r = lease.__enter__()
        except PoolTimeout:
            assert self.pool.stats().in_use >= self.pool.stats().max_size
            return
        self._lent(r)
        self.leases.append((lease, r))

    @rule()
    def borrow(self) -> None:
        try:
            r = self.pool.borrow()
        except PoolTimeout:
            return
        self._lent(r)
        self.held.append(r)

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 10), how=st.sampled_from(["ok", "error", "keep"]))
    def exit(self, i: int, how: str) -> None:
        lease, r = self.leases.pop(i % len(self.leases))
        r.holder = None
        entry = self.pool._in_use[id(r)]
        spent = bool(self.pool._max_uses) and entry.uses >= self.pool._max_uses
        expired = self.clock.now >= entry.expires_at
        if how == "ok":
            lease.__exit__(None, None, None)
        else:
            exc = Boom() if how == "error" else PoolTimeout("harmless")
            lease.__exit__(type(exc), exc, None)
        if spent or expired or how == "error":  # retired, never lent again
            assert r.destroyed and all(e.obj is not r for e in self.pool._idle)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 10))
    def release(self, i: int) -> None:
        r = self.held.pop(i % len(self.held))
        r.holder = None
        self.pool.release(r)

    @precondition(lambda self: self.leases or self.held)
    @rule(i=st.integers(0, 10))
    def break_one(self, i: int) -> None:
        out = [r for _, r in self.leases] + self.held
        out[i % len(out)].healthy = False

    @rule(seconds=st.sampled_from([0.5, 4, 6, 31, 120]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(n=st.integers(0, 3))
    def max_uses(self, n: int) -> None:
        self.pool._max_uses = n

    @rule(on=st.booleans())
    def reset(self, on: bool) -> None:
        def reset(r: Resource) -> None:
            self.resets += 1
            if not r.healthy:
                raise ValueError("cannot reset")

        self.pool._reset = reset if on else None

    @rule(lo=st.integers(0, 2), hi=st.integers(1, 4))
    def resize(self, lo: int, hi: int) -> None:
        if lo <= hi:
            self.pool.resize(lo, hi)

    @rule()
    def upkeep(self) -> None:
        self.pool.run_upkeep()

    @invariant()
    def consistent(self) -> None:
        s = self.pool.stats()
        assert s.size == s.idle + s.in_use + s.creating + s.closing
        assert s.in_use == len(self.leases) + len(self.held)
        idle = list(self.pool._idle)
        assert not any(e.obj.destroyed or e.obj.holder is not None for e in idle)
        assert len([r for r in self.factory.made if not r.destroyed]) == s.size

    def teardown(self) -> None:
        for lease, _ in self.leases:
            lease.__exit__(None, None, None)
        for r in self.held:
            self.pool.release(r)
        s = self.pool.stats()
        assert s.in_use == 0 and s.size == s.idle
        self.pool.close(timeout=0)
        assert all(r.destroyed for r in self.factory.made)


TestLeaseMachine = LeaseMachine.TestCase
TestLeaseMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


class MethodLeaseMachine(LeaseMachine):
    """The same rules on a subclass that overrides ``borrow``/``release`` (its
    ``acquire`` calls them): the same oracles, and each lease calls its pool's
    ``borrow`` once on enter and ``release`` once on exit."""

    pool_class = _CountsCalls  # type: ignore[assignment]

    @invariant()
    def calls_balance(self) -> None:
        calls = self.pool.calls  # type: ignore[attr-defined]
        borrows = sum(1 for name, _ in calls if name == "borrow")
        releases = len(calls) - borrows
        assert borrows - releases == len(self.leases) + len(self.held)


TestMethodLeaseMachine = MethodLeaseMachine.TestCase
TestMethodLeaseMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


SITUATIONS = ("fresh", "idle", "idle_check_due", "handed", "handed_broken", "waiters_at_exit")


def _trial(
    situation: str, n: int, cls: type[ObjectPool[Resource]] = ObjectPool, tuned: bool = False
) -> tuple[int, bool, dict[str, int]]:
    """One lease in ``situation``, interrupted at its ``n``-th step (enter, block or
    exit); returns its step count, whether it fired, and the settled stats."""
    factory = Factory()
    pool: ObjectPool[Resource] = cls(
        factory,
        destroy=Factory.destroy,
        check=Factory.check,
        check_interval=0 if situation == "idle_check_due" else 60,
        max_size=1,
        timeout=5,
        background=False,
    )
    try:
        held = []
        if situation != "fresh":
            held.append(pool.borrow())
        if situation in ("idle", "idle_check_due"):
            pool.release(held.pop())
        if situation == "handed_broken":
            held[0].healthy = False

        def give_back() -> None:
            time.sleep(0.005)
            for r in held:
                pool.release(r)

        if situation == "waiters_at_exit":  # a waiter queues while the lease is held
            pool.release(held.pop())
        helper = threading.Thread(target=give_back)
        helper.start()
        waiter_got: list[Resource] = []
        waiter = None
        injector = _Injector(pool._lock, n)
        # Traced: the enter and the block. (The first lines of __exit__, before it
        # takes the pool's lock, are a window no Python code can close.)
        sys.settrace(injector)
        try:
            with pool.acquire(timeout=5) if tuned else pool.acquire() as r:
                assert r.holder is None
                r.holder = "lease"
                r.holder = None
                sys.settrace(None)
                if situation == "waiters_at_exit":  # the exit hands it to a waiter
                    waiter = threading.Thread(target=lambda: waiter_got.append(pool.borrow(5)))
                    waiter.start()
                    while not pool.stats().waiting:
                        time.sleep(0.001)
        except Injected:
            pass
        finally:
            sys.settrace(None)
        helper.join()
        if waiter is not None:
            waiter.join(5)
            assert not waiter.is_alive()
            for w in waiter_got:
                pool.release(w)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            s = pool.stats()
            if not (s.in_use or s.creating or s.closing or s.waiting):
                break
            time.sleep(0.002)
        with pool.acquire(timeout=1) as r:  # and the pool still lends
            assert not r.destroyed
        s = pool.stats()
        stats = {k: getattr(s, k) for k in ("size", "idle", "in_use", "creating", "closing")}
        stats["alive"] = len([r for r in factory.made if not r.destroyed])
        return injector.count, injector.fired, stats
    finally:
        pool.close(timeout=0)


@pytest.mark.parametrize(
    ("cls", "tuned"), [(ObjectPool, False), (ObjectPool, True), (_CountsCalls, False)]
)
def test_an_exception_at_any_step_of_a_lease_loses_nothing(
    cls: type[ObjectPool[Resource]], tuned: bool
) -> None:
    """Also for ``acquire(timeout)`` and for a subclass's lease, which call
    ``borrow``/``release`` as methods."""
    rnd = random.Random(3)
    steps = {}
    for situation in SITUATIONS:
        steps[situation], _, stats = _trial(situation, 0, cls, tuned)
        assert stats["in_use"] == 0 and stats["size"] == stats["idle"] == stats["alive"], stats
    failures, fired = [], 0
    for situation in SITUATIONS:
        for n in range(1, steps[situation] + 3):
            if n > 40 and rnd.random() < 0.5:  # long slow paths: a sample
                continue
            _, hit, stats = _trial(situation, n, cls, tuned)
            fired += hit
            settled = stats["in_use"] == stats["creating"] == stats["closing"] == 0
            if not settled or not stats["size"] == stats["idle"] == stats["alive"]:
                failures.append((situation, n, stats))
    assert fired >= 60
    assert failures == [], f"{len(failures)} trials lost something: {failures[:5]}"


class Interrupt(BaseException):
    """As KeyboardInterrupt, raised by a trace hook."""


@pytest.mark.parametrize(
    ("cls", "tuned"), [(ObjectPool, False), (ObjectPool, True), (_CountsCalls, False)]
)
def test_a_lease_cut_short_at_its_exits_first_instruction_is_reclaimed(
    cls: type[ObjectPool[Resource]], tuned: bool
) -> None:
    """An exception at ``__exit__``'s first instruction (a signal handler raising
    there) leaves no code of the pool's to catch it: the slot stayed lent for
    good. Once the lease is gone, the pool destroys its object (its block may
    have left it in any state) before the next borrow queues or creates."""
    factory = Factory()
    pool = cls(factory, destroy=Factory.destroy, max_size=1, timeout=0.5, background=False)
    lease = pool.acquire(1.0) if tuned else pool.acquire()
    code = type(lease).__exit__.__code__

    def hook(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is code and event == "call":
            sys.settrace(None)
            raise Interrupt
        return None

    try:
        with pytest.raises(Interrupt):
            with lease as first:
                sys.settrace(hook)
    finally:
        sys.settrace(None)
    assert pool.stats().in_use == 1  # (nothing has run yet)
    del lease
    with pool.acquire() as second:  # the one slot: a PoolTimeout before
        assert second is not first and first.destroyed
    s = pool.stats()
    assert s.in_use == 0 and s.size == 1 and s.destroyed_by_reason == {"dirty": 1}, s
    pool.close()


class _ReleasesWithoutReason(ObjectPool[Resource]):
    """Overrides ``release`` without the keyword-only ``reason``, as a user might."""

    def release(self, obj: Resource, discard: bool = False) -> None:  # type: ignore[override]
        super().release(obj, discard)


def test_a_subclass_whose_release_takes_no_reason_reclaims_too() -> None:
    """The reclaim of an abandoned lease passed ``reason=`` to the subclass's
    own ``release``: a TypeError from then on at every borrow that would wait
    or create, and at ``close()`` (where the slot was only lost before)."""
    pool = _ReleasesWithoutReason(
        Factory(), destroy=Factory.destroy, max_size=1, timeout=0.5, background=False
    )
    lease = pool.acquire()
    code = type(lease).__exit__.__code__

    def hook(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is code and event == "call":
            sys.settrace(None)
            raise Interrupt
        return None

    try:
        with pytest.raises(Interrupt):
            with lease as first:
                sys.settrace(hook)
    finally:
        sys.settrace(None)
    del lease
    with pool.acquire() as second:
        assert second is not first and first.destroyed
    s = pool.stats()
    assert s.in_use == 0 and s.size == 1 and s.destroyed == 1, s
    pool.close()


def test_a_lease_that_exited_or_never_entered_is_not_reclaimed() -> None:
    """Only a lease entered and not exited is: one exited, one whose enter
    failed, one never entered leave the pool's objects alone when collected."""
    pool = ObjectPool(Factory(), destroy=Factory.destroy, max_size=2, background=False)
    with pool.acquire() as a:
        pass
    pool.acquire()  # never entered
    failing = Factory()
    failing.fail_always = True
    bad = ObjectPool(failing, max_size=1, timeout=0.1, background=False)
    with pytest.raises(PoolTimeout):
        with bad.acquire(0.1):
            pass
    gc.collect()
    assert not pool._abandoned and not bad._abandoned
    with pool.acquire() as b:
        assert b is a and not a.destroyed
    assert pool.stats().destroyed_by_reason == {}
    pool.close()
    bad.close()


class _ExitsOnDel:
    """Enters ``lease`` and exits it from its ``__del__``, in a cycle with itself."""

    def __init__(self, lease: Any) -> None:
        self.lease = lease
        self.obj = lease.__enter__()
        self.me = self

    def __del__(self) -> None:
        self.lease.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("cls", "tuned"), [(ObjectPool, False), (ObjectPool, True), (_CountsCalls, False)]
)
def test_a_lease_exited_after_its_finalizer_ran_is_not_reclaimed_under_another_borrower(
    cls: type[ObjectPool[Resource]], tuned: bool
) -> None:
    """The collector runs every finalizer of a cycle, in the order its objects
    were made: a lease made before what exits it (here an object whose
    ``__del__`` does; a generator the lease was passed to is another) ran its
    finalizer first, which queued its object as abandoned, and then its
    ``__exit__`` gave that object back. Lent again, the pool then destroyed it
    under its new borrower (whose release then raised ValueError)."""
    factory = Factory()
    pool = cls(factory, destroy=Factory.destroy, max_size=2, background=False)
    _ExitsOnDel(pool.acquire(1.0) if tuned else pool.acquire())  # the lease is made first
    gc.collect()
    second = pool.borrow()  # (from the idle stack, had the late __exit__ given it back)
    third = pool.borrow()  # the slow path: abandoned objects are reclaimed first
    assert not second.destroyed and not third.destroyed
    pool.release(second)
    pool.release(third)
    s = pool.stats()
    assert s.in_use == 0 and s.size == 2 and s.destroyed_by_reason == {"dirty": 1}, s
    pool.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_lease_in_a_forked_child_never_gets_the_parents_object() -> None:
    pool: ObjectPool[Resource] = ObjectPool(Resource, max_size=2, background=False)
    with pool.acquire() as parents:
        pass
    pid = os.fork()
    if pid == 0:  # the child: a fresh object, the parent's never touched
        try:
            with pool.acquire() as r:
                ok = r is not parents and pool.stats().size == 1
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pool.acquire() as r:
        assert r is parents
    pool.close()


class _Grandchild(_CountsCalls):
    pass


class _WrapsAcquire(ObjectPool[Resource]):
    """Overrides ``acquire`` only, and calls the base class's."""

    def acquire(self, timeout: float | None = None, *, keep_on: Any = None) -> Any:
        return super().acquire(timeout, keep_on=keep_on)


class _OnlyRelease(ObjectPool[Resource]):
    def release(self, obj: Resource, discard: bool = False, *, reason: str = "error") -> None:
        self.released = getattr(self, "released", 0) + 1
        super().release(obj, discard, reason=reason)


@pytest.mark.parametrize("cls", [_CountsCalls, _Grandchild])
def test_a_subclass_own_borrow_and_release_run_inside_acquire(cls: type[_CountsCalls]) -> None:
    """The lease inlines the base class's fast paths; a subclass that overrides
    ``borrow`` or ``release`` gets them called, every way ``acquire`` is used."""
    pool = cls(Factory(), max_size=2, background=False)
    try:
        with pool.acquire() as obj:
            assert pool.stats().in_use == 1
        assert pool.calls == [("borrow", None), ("release", False)]
        pool.calls.clear()
        with pytest.raises(Boom), pool.acquire(timeout=1.0):
            raise Boom
        assert pool.calls == [("borrow", 1.0), ("release", True)]  # discarded on error
        pool.calls.clear()
        with pool.acquire(keep_on=(Boom,)) as again:
            assert again is not obj  # the first was discarded
        assert pool.calls == [("borrow", None), ("release", False)]
        with pytest.raises(ValueError, match="timeout"):
            pool.acquire(timeout=-1)
        assert pool.stats().in_use == 0 and pool.stats().idle == 1
    finally:
        pool.close()
    only = _OnlyRelease(Factory(), max_size=1, background=False)
    with only.acquire():
        pass
    assert only.released == 1
    only.close()
    for plain in (ObjectPool, _WrapsAcquire):  # keep the fast lease
        base: ObjectPool[Resource] = plain(Factory(), background=False)
        assert type(base.acquire()) is _Lease
        base.close()


def test_a_borrower_already_waiting_gets_the_slot_of_a_lease_dropped_without_exit() -> None:
    """A lease cut short at ``__exit__``'s first instruction queues its object
    for the reclaim, which ran only when a borrow was about to queue or create,
    at upkeep (up to a minute away) and at close: a borrower queued before it
    waited on past that, until its timeout (``None``: until upkeep, or for good
    without it). Queued borrowers now reclaim too."""
    pool = ObjectPool(Factory(), destroy=Factory.destroy, max_size=1, background=False)
    lease = pool.acquire()
    code = type(lease).__exit__.__code__
    got: list[Any] = []

    def waiter() -> None:
        t0 = time.monotonic()
        try:
            with pool.acquire(5.0) as obj:
                got.append((obj, time.monotonic() - t0))
        except PoolTimeout as exc:
            got.append((exc, time.monotonic() - t0))

    def hook(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is code and event == "call":
            sys.settrace(None)
            raise Interrupt
        return None

    thread = threading.Thread(target=waiter)
    try:
        with pytest.raises(Interrupt):
            with lease as first:
                thread.start()
                while not pool.stats().waiting:
                    time.sleep(0.005)
                sys.settrace(hook)
    finally:
        sys.settrace(None)
    del lease  # (its object is queued for the reclaim; nobody borrows after it)
    thread.join(10)
    [(second, waited)] = got
    assert not isinstance(second, PoolTimeout), f"still waiting after {waited:.1f} s"
    assert second is not first and first.destroyed and waited < 2.0
    s = pool.stats()
    assert s.in_use == 0 and s.size == 1 and s.destroyed_by_reason == {"dirty": 1}, s
    pool.close()


@pytest.mark.parametrize("how", ["acquire", "tuned", "methods"])
def test_a_copy_of_an_entered_lease_does_not_give_its_object_back(how: str) -> None:
    """An entered lease has a finalizer that hands its object back (see
    ``_poolparts._Out``); ``copy.copy`` made a second entered lease, and once
    that copy was dropped the pool destroyed the object under its borrower,
    whose exit then raised ValueError. An entered lease refuses to be copied."""
    cls = _CountsCalls if how == "methods" else ObjectPool
    pool = cls(Factory(), destroy=Factory.destroy, max_size=2, background=False)
    lease = pool.acquire(1.0) if how == "tuned" else pool.acquire()
    with lease as obj:
        for copier in (copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match="lease"):
                copier(lease)
        gc.collect()
        pool.release(pool.borrow())  # (a borrow that would reclaim)
        pool.release(pool.borrow())
        pool._reclaim()
        assert not obj.destroyed and pool.stats().in_use == 1
    s = pool.stats()
    assert s.in_use == 0 and s.destroyed == 0, s
    copy.copy(pool.acquire())  # (one not entered holds nothing: it may be)
    pool.close()
    for redis_lease in (_ConnectionLease, _ClientLease):  # (theirs too)
        with pytest.raises(TypeError, match="lease"):
            copy.copy(object.__new__(redis_lease._out))
