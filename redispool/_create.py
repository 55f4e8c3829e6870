"""ObjectPool's creates: the factory runs outside the lock in a slot counted in
``size`` and ``creating``, and the new object goes on the books in one group no
signal handler can come between (see ``ObjectPool.release``); failed creates are
counted and backed off, and once waiting is pointless they fail the queue.

Functions of the pool (its private state is theirs too), as in ``_upkeep``.
"""

from __future__ import annotations

import random
import time
from itertools import starmap
from typing import TYPE_CHECKING, Any, TypeVar

from . import _poolparts
from ._poolparts import _INF, _a, _acquire_anyway, _Entry, _Ticket
from .backoff import full_jitter

if TYPE_CHECKING:
    from .pool import ObjectPool

T = TypeVar("T")


def create_for(
    pool: ObjectPool[T], ticket: _Ticket, start: float, deadline: float, make_by: float | None
) -> _Entry | None:
    """Create an object for this borrower in the ticket's slot.

    Returns None when the create failed (the slot is freed) but the caller
    may keep waiting.
    """
    made = create_in_slot(pool, ticket, make_by, lend=True)
    if made is None:
        raise pool.closed_error(f"pool {pool.name!r} is closed")
    if isinstance(made, Exception):
        with pool._lock:
            fail_fast = failing_fast(pool)
            if not fail_fast and time.monotonic() < deadline:
                return None
            pool._timeouts += 1
            err = pool._timeout_exc(start, fail_fast=fail_fast)
        raise err from made
    with pool._lock:
        pool._note_wait(start)
    return made


def create_in_slot(
    pool: ObjectPool[T], ticket: _Ticket, deadline: float | None, *, lend: bool
) -> _Entry | Exception | None:
    """Run the factory in the ticket's slot (counted in ``size`` and ``creating``).

    Success: the new entry, lent to the ticket (``lend``) or else handed to
    the oldest waiter or kept idle. An ``Exception``: the slot is freed, the
    failure recorded, logged and returned. None: the pool was closed
    meanwhile and the new object destroyed. Any other ``BaseException``
    propagates with the slot still on the ticket.
    """
    t0 = time.monotonic()
    epoch = pool._epoch  # before connecting: a drain() meanwhile retires it
    gen = _poolparts._fork_gen  # (see forked_meanwhile)
    box: list[T] = []  # what _make returned: filled inside one C call, so that
    try:  # a signal handler raising as _make returns cannot lose it
        box.extend(starmap(make_one, ((pool, deadline),)))
        made = box[0]
        if _poolparts._fork_gen != gen:
            forked_meanwhile(pool, ticket, box)
            return RuntimeError(f"pool {pool.name!r}: forked while creating {_a(pool.noun)}")
        now = pool._clock()
        entry = _Entry(made, now, expiry(pool, now), epoch)
        took = time.monotonic() - t0
        pending = _acquire_anyway(pool._lock)  # from here the object is on the books
    except BaseException as exc:
        if pool._lock._is_owned():  # a handler raised as _acquire_anyway returned
            pool._lock.release()
        if box:
            pool._destroy_quietly(box[0])  # interrupted before it was on the books
            raise
        if not isinstance(exc, Exception):
            raise
        if _poolparts._fork_gen != gen:
            forked_meanwhile(pool, ticket, [])
            return exc
        with pool._lock:
            ticket.result = None
            pool._size -= 1
            pool._creating -= 1
            create_failed(pool, exc)
        pool._outage.failed(exc)  # logged as state changes (_quietlog)
        return exc
    obj = made
    closed = committed = False
    why = "closed"
    streak = 0
    try:
        # Every call before the first change (see release()); interrupted
        # before it, the new object is destroyed and the slot is the ticket's.
        # Made for nobody after a disconnect (see _lifecycle.disconnect_pool): closed.
        closed = pool._closed or (pool._dormant and not lend)
        why = "closed" if pool._closed else "drain"
        key = id(obj)
        waiters = pool._waiters
        waiter = waiters[0] if waiters and not (closed or lend) else None
        recheck = entry.recheck_at
        if pool._check is not None:
            recheck = min(now + pool._check_interval, entry.expires_at)
        streak = pool._fail_streak
        last_error = None if streak else pool._last_error
        # -- no call or branch inside each group (see release()) --
        if closed:
            committed = True
            pool._creating -= 1
            pool._created += 1
            pool._create_total += took
            pool._fail_streak = 0
            pool._last_error = last_error
            pool._closing += 1
            ticket.result = None
        elif lend:
            committed = True
            pool._creating -= 1
            pool._created += 1
            pool._create_total += took
            pool._fail_streak = 0
            pool._last_error = last_error
            pool._in_use[key] = entry
            pool._borrows += 1
            ticket.result = entry
        elif waiter is not None:  # nobody asked for it: to the oldest waiter
            committed = True
            pool._creating -= 1
            pool._created += 1
            pool._create_total += took
            pool._fail_streak = 0
            pool._last_error = last_error
            pool._in_use[key] = entry
            pool._borrows += 1
            del waiters[0]
            waiter.result = entry
            ticket.result = None
            waiter.lock.release()  # the last step
            pool._note_wait(waiter.start)
        else:  # or idle
            committed = True
            pool._creating -= 1
            pool._created += 1
            pool._create_total += took
            pool._fail_streak = 0
            pool._last_error = last_error
            entry.uses = 0
            entry.recheck_at = recheck
            ticket.result = None
            pool._idle.append(entry)  # the last step
    except BaseException:
        if not committed:
            pool._lock.release()
            pool._destroy_quietly(obj)
        raise
    finally:
        if committed:
            try:
                try:
                    if streak:  # creates work again: waiters may have slots now
                        pool._capacity_freed()
                finally:
                    pool._lock.release()
            finally:
                job = [entry] if closed else []
                while job:  # counted in closing: destroyed whatever happens
                    try:
                        pool._destroy_entries(job, why)
                    except BaseException as exc:
                        pending = pending or exc
    pool._outage.succeeded()
    if pending is not None:
        raise pending
    return None if closed else entry


def forked_meanwhile(pool: ObjectPool[T], ticket: _Ticket, made: list[T]) -> None:
    """The process forked while the factory ran, and the call goes on in the
    child (gevent copies every greenlet into it): its slot is the parent's and
    its object, made on the parent's behalf, may share a socket with the
    parent's. Neither goes on the child's books; the object joins the orphans
    (never closed, as the rest the parent had) and the caller starts afresh
    (``ObjectPool._forked``)."""
    pool._orphans.extend(made)
    pool._forked(ticket)


def make_one(pool: ObjectPool[T], deadline: float | None) -> T:
    """``_make``, for the one-call hand-over in ``create_in_slot`` (where a
    ``StopIteration`` would read as "no item")."""
    try:
        return pool._make(deadline)
    except StopIteration as exc:
        raise RuntimeError(f"the factory raised StopIteration: {exc!r}") from exc


def expiry(pool: ObjectPool[T], now: float) -> float:
    if not pool._max_lifetime:
        return _INF
    jitter: float = pool._lifetime_jitter * random.random()
    return now + float(pool._max_lifetime) * (1.0 - jitter)


def create_failed(pool: ObjectPool[T], exc: BaseException) -> None:
    """Bookkeeping of a failed create (lock held); fails the queue when
    waiting has become pointless."""
    pool._create_errors += 1
    pool._fail_streak += 1
    pool._last_error = exc
    pool._next_retry = pool._clock() + full_jitter(
        pool._fail_streak, pool._backoff_base, pool._backoff_cap
    )
    pool._wake_upkeep()
    if failing_fast(pool):
        fail_waiters(pool)


def failing_fast(pool: ObjectPool[Any]) -> bool:
    """Creates keep failing and nothing borrowed can come back (lock held):
    waiting would only sit out the timeout."""
    return pool._fail_streak >= pool._fail_fast_after > 0 and not pool._in_use and not pool._idle


def fail_waiters(pool: ObjectPool[Any]) -> None:
    """Fail the whole queue at once with the last create error (lock held)."""
    waiters = pool._waiters
    while waiters:  # (each one all or none: the error made first, the wake-up last)
        err = pool._timeout_exc(time.monotonic(), fail_fast=True)
        waiter = waiters[0]
        pool._timeouts += 1
        del waiters[0]
        waiter.result = err
        waiter.lock.release()
