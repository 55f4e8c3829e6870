"""ObjectPool's lifecycle and inspection: open, close, resize, drain, objects,
stats (the methods of the same names call these). Each change of state is one
group no signal handler can come between (see ``ObjectPool.release``), and the
objects it takes out are destroyed whatever happens after.

Functions of the pool (its private state is theirs too), as in ``_upkeep``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING, TypeVar

from ._poolparts import _INF, _Entry, _number
from .stats import PoolStats

if TYPE_CHECKING:
    from .pool import ObjectPool

T = TypeVar("T")
log = logging.getLogger("redispool.pool")
_obj_of = attrgetter("obj")


def open_pool(pool: ObjectPool[T], wait: bool = False, timeout: float | None = None) -> None:
    """Start upkeep; with ``wait``, block until ``min_size`` objects are ready."""
    _number("timeout", timeout, minimum=0, none_ok=True)
    pool._check_fork()
    if pool._closed:
        raise pool.closed_error(f"pool {pool.name!r} is closed")
    if pool._dormant:  # (see disconnect_pool)
        pool._dormant = False
        pool._wake_upkeep()
    pool._ensure_upkeep()
    if not wait:
        return
    start = time.monotonic()
    deadline = start + (timeout if timeout is not None else (pool._timeout or _INF))
    while True:
        if not pool._background:
            pool.run_upkeep()
        with pool._lock:
            if pool._closed:
                raise pool.closed_error(f"pool {pool.name!r} is closed")
            if len(pool._idle) + len(pool._in_use) >= pool._min_size:
                return
            if time.monotonic() >= deadline:
                raise pool._timeout_exc(start)
        time.sleep(0.005)


def close_pool(pool: ObjectPool[T], timeout: float = 5.0) -> None:
    """Close: fail the waiters, destroy idle objects now and borrowed ones as
    they come back (waiting up to ``timeout`` seconds for them)."""
    _number("timeout", timeout, minimum=0)
    pool._check_fork()
    pool._not_in_a_handler()
    victims: list[_Entry] = []
    try:
        with pool._lock:
            if pool._closed:
                return
            taken, rest = list(pool._idle), deque[_Entry]()
            n = len(taken)
            upkeep = pool._upkeep
            # -- no call from here to the end of the group (see release()) --
            pool._closed = True
            pool._epoch += 1
            pool._idle = rest
            pool._closing += n
            victims = taken
            close_waiters(pool)
            pool._wake_upkeep()
    finally:
        pending: BaseException | None = None
        while victims:  # counted in closing: destroyed whatever happens
            try:
                pool._destroy_entries(victims, "closed")
            except BaseException as exc:
                pending = pending or exc
        if pending is not None:
            raise pending
    deadline = time.monotonic() + timeout
    while pool._in_use and time.monotonic() < deadline:
        if pool._abandoned:  # (leases dropped without their __exit__)
            pool._reclaim()
            continue
        time.sleep(0.005)
    if pool._in_use:
        log.warning(
            "pool %r closed with %d %ss still borrowed; they are destroyed when returned",
            pool.name,
            len(pool._in_use),
            pool.noun,
        )
    if upkeep is not None and upkeep is not threading.current_thread() and upkeep.ident:
        upkeep.join(max(0.0, min(1.0, deadline - time.monotonic())))


def close_waiters(pool: ObjectPool[T]) -> None:
    """Fail every waiter: the pool is closed (lock held). (A loop of its own
    frame: see _upkeep's module docstring.)"""
    waiters = pool._waiters
    while waiters:  # (each hand-off all or none)
        err = pool.closed_error(f"pool {pool.name!r} was closed")
        waiter = waiters[0]
        del waiters[0]
        waiter.result = err
        waiter.lock.release()


def resize_pool(
    pool: ObjectPool[T], min_size: int | None = None, max_size: int | None = None
) -> None:
    """Change the bounds; extra idle objects go now, extra borrowed ones on release."""
    pool._check_fork()
    pool._not_in_a_handler()
    victims: list[_Entry] = []
    try:
        with pool._lock:
            new_min, new_max = pool._sizes(
                pool._min_size if min_size is None else min_size,
                pool._max_size if max_size is None else max_size,
            )
            idle = pool._idle
            n = max(0, min(len(idle), pool._size - pool._closing - new_max))
            taken, rest = list(islice(idle, n)), deque(islice(idle, n, None))
            bump = 1 if new_max < pool._max_size else 0
            # -- no call from here to the end of the group (see release()) --
            pool._epoch += bump
            pool._min_size, pool._max_size = new_min, new_max
            pool._idle = rest  # (the least recently used go)
            pool._closing += n
            victims = taken
            pool._capacity_freed()
            pool._wake_upkeep()
    finally:
        pending: BaseException | None = None
        while victims:  # counted in closing: destroyed whatever happens
            try:
                pool._destroy_entries(victims, "resize")
            except BaseException as exc:
                pending = pending or exc
        if pending is not None:
            raise pending


def drain_pool(pool: ObjectPool[T]) -> None:
    """Replace every object: idle ones are destroyed now, borrowed ones when
    returned; new ones are made on demand (e.g. after a password rotation)."""
    pool._check_fork()
    pool._not_in_a_handler()
    victims: list[_Entry] = []
    try:
        with pool._lock:
            taken, rest = list(pool._idle), deque[_Entry]()
            n = len(taken)
            # -- no call from here to the end of the group (see release()) --
            pool._epoch += 1
            pool._drain_epoch = pool._epoch
            pool._next_retry = 0.0  # e.g. new credentials: probe again at once
            pool._idle = rest
            pool._closing += n
            victims = taken
    finally:
        pending: BaseException | None = None
        while victims:  # counted in closing: destroyed whatever happens
            try:
                pool._destroy_entries(victims, "drain")
            except BaseException as exc:
                pending = pending or exc
        if pending is not None:
            raise pending
    pool._wake_upkeep()


def disconnect_pool(pool: ObjectPool[T], borrowed: bool = True) -> None:
    """Destroy the idle objects now (``borrowed``: the borrowed ones too, when
    returned) and make none until the next borrow or ``open()`` (a create under
    way then is destroyed unless a borrower takes it); with ``borrowed`` the
    upkeep thread ends meanwhile (the next borrow starts one)."""
    pool._check_fork()
    pool._not_in_a_handler()
    victims: list[_Entry] = []
    wake: threading.Event | None = None
    try:
        with pool._lock:
            taken, rest = list(pool._idle), deque[_Entry]()
            n = len(taken)
            epoch = pool._epoch + 1 if borrowed else pool._epoch
            drain_epoch = epoch if borrowed else pool._drain_epoch
            old_wake = pool._wake if borrowed else None
            upkeep = None if borrowed else pool._upkeep
            claimed = False if borrowed else pool._upkeep_claimed
            new_wake = None if borrowed else pool._wake
            # -- no call from here to the end of the group (see release()) --
            pool._epoch = epoch
            pool._drain_epoch = drain_epoch
            pool._dormant = True
            pool._idle = rest
            pool._closing += n
            victims = taken
            pool._upkeep = upkeep  # superseded: it ends (see _upkeep_loop)
            pool._wake = new_wake
            pool._upkeep_claimed = claimed
            wake = old_wake
    finally:
        pending: BaseException | None = None
        while victims:  # counted in closing: destroyed whatever happens
            try:
                pool._destroy_entries(victims, "drain")
            except BaseException as exc:
                pending = pending or exc
        if wake is not None:
            wake.set()
        if pending is not None:
            raise pending


def live_objects(pool: ObjectPool[T]) -> list[T]:
    """A snapshot of the live objects, idle and borrowed (for inspection)."""
    pool._check_fork()
    with pool._lock:
        return [*map(_obj_of, (*pool._idle, *pool._in_use.values()))]


def pool_stats(pool: ObjectPool[T]) -> PoolStats:
    """A consistent snapshot of the pool's numbers."""
    pool._check_fork()
    with pool._lock:
        # A borrow whose object then fails its check is taken back (_discard,
        # _abandon): shown meanwhile, it stays shown, as a counter never goes down.
        borrows = pool._borrows_shown = max(pool._borrows, pool._borrows_shown)
        return PoolStats(
            name=pool.name,
            size=pool._size,
            idle=len(pool._idle),
            in_use=len(pool._in_use),
            creating=pool._creating,
            closing=pool._closing,
            waiting=len(pool._waiters),
            min_size=pool._min_size,
            max_size=pool._max_size,
            borrows=borrows,
            timeouts=pool._timeouts,
            created=pool._created,
            create_errors=pool._create_errors,
            destroyed=sum(pool._destroyed.values()),
            destroyed_by_reason=dict(pool._destroyed),
            wait_time_total=pool._wait_total,
            wait_time_max=pool._wait_max,
            create_time_total=pool._create_total,
            use_time_total=pool._use_total,
            consecutive_create_errors=pool._fail_streak,
            last_create_error=None if pool._last_error is None else repr(pool._last_error),
            closed=pool._closed,
        )
