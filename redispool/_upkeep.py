"""ObjectPool upkeep: refill, eviction, retirement, reconnect probes, leak reports.

Functions of the pool (its private state is theirs too); ``ObjectPool`` calls
them, and one daemon thread per pool runs ``upkeep_loop``.

A loop that runs with the pool's lock held has a function of its own (here and
in ObjectPool): CPython looks up the handler of an exception a signal handler
raises at a loop's back edge from the instruction before it, which some
layouts leave outside every ``try`` and ``with`` of that frame (python/cpython
#108214: seen on 3.13), so the lock would stay held. Raised in a frame of its
own, the exception leaves by the caller's call, which its ``with`` covers.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from ._create import create_in_slot
from ._poolparts import _INF, _SLOT, _Entry, _Ticket

if TYPE_CHECKING:
    from .pool import ObjectPool

log = logging.getLogger("redispool.pool")


def start_upkeep(pool: ObjectPool[Any]) -> None:
    wake = threading.Event()
    box: list[threading.Thread] = []
    thread = threading.Thread(
        target=_upkeep_loop,
        args=(weakref.ref(pool, _waker(wake, box)), wake, pool._gen),
        name=f"redispool-upkeep-{pool.name}",
        daemon=True,
    )
    box.append(thread)
    with pool._lock:
        pool._wake = wake
        pool._upkeep = thread
    thread.start()


def run_upkeep(pool: ObjectPool[Any]) -> float:
    """Do one round of upkeep now; return the seconds until the next is due.

    The background thread calls this; with ``background=False`` you do.
    """
    pool._check_fork()
    pool._not_in_a_handler()
    if pool._abandoned:
        pool._reclaim()
    now = pool._clock()
    report_leaks(pool, now)
    by_reason: dict[str, list[_Entry]] = {}
    try:
        with pool._lock:
            if pool._closed:
                return _INF
            rest, groups, n = _pick_victims(pool, now)
            # -- no call or branch from here to the end of the group
            # (see ObjectPool.release) --
            pool._idle = rest
            pool._closing += n
            by_reason = groups
    finally:
        pending: BaseException | None = None
        for reason, entries in by_reason.items():
            while entries:  # counted in closing: destroyed whatever happens
                try:
                    pool._destroy_entries(entries, reason)
                except BaseException as exc:
                    pending = pending or exc
        if pending is not None:
            raise pending
    while refill_one(pool):
        pass
    return next_upkeep_delay(pool)


def _pick_victims(
    pool: ObjectPool[Any], now: float
) -> tuple[deque[_Entry], dict[str, list[_Entry]], int]:
    """Idle objects past their lifetime or idle time (lock held), changing
    nothing: the idle objects that stay, those that go by reason, how many go."""
    keep = pool._size - pool._min_size
    groups: dict[str, list[_Entry]] = {}
    going: set[int] = set()
    for entry in list(pool._idle):  # least recently used first
        if now >= entry.expires_at:
            groups.setdefault("lifetime", []).append(entry)
            going.add(id(entry))
        elif (
            pool._max_idle_time
            and now - entry.last_used >= pool._max_idle_time
            and keep - len(going) > 0
        ):
            groups.setdefault("idle", []).append(entry)
            going.add(id(entry))
    rest = deque(e for e in pool._idle if id(e) not in going)
    return rest, groups, len(going)


def refill_one(pool: ObjectPool[Any]) -> bool:
    """Create one object if below ``min_size``, or probe while failing."""
    ticket = _Ticket()
    try:
        with pool._lock:
            if pool._closed or pool._dormant or pool._size >= pool._max_size:
                return False
            if pool._fail_streak:
                if pool._clock() < pool._next_retry:
                    return False
            elif pool._size >= pool._min_size:
                return False
            pool._size += 1
            pool._creating += 1
            ticket.result = _SLOT
        made = create_in_slot(pool, ticket, None, lend=False)
    except BaseException:
        pool._abandon(ticket)
        raise
    return isinstance(made, _Entry)


def next_upkeep_delay(pool: ObjectPool[Any]) -> float:
    now = pool._clock()
    due = now + 60.0
    with pool._lock:
        if pool._dormant:  # nothing to make (see _lifecycle.disconnect_pool)
            pass
        elif pool._fail_streak:
            due = min(due, pool._next_retry)
        elif pool._size < pool._min_size:
            return 0.0
        due = _next_due(pool, now, due)
    return max(0.0, due - now)


def _next_due(pool: ObjectPool[Any], now: float, due: float) -> float:
    spare = pool._size > pool._min_size
    for entry in pool._idle:
        due = min(due, entry.expires_at)
        if spare and pool._max_idle_time:
            due = min(due, entry.last_used + pool._max_idle_time)
    if pool._leak_timeout and pool._in_use:
        due = min(due, now + pool._leak_timeout / 2)
    return due


def report_leaks(pool: ObjectPool[Any], now: float) -> None:
    if not pool._leak_timeout:
        return
    with pool._lock:
        leaked = _mark_leaked(pool, now)
    for obj, borrowed_at, stack in leaked:
        log.warning(
            "pool %r: %s %r borrowed %.1fs ago and not returned; borrowed at:\n%s",
            pool.name,
            pool.noun,
            obj,
            now - borrowed_at,
            "".join(stack or ["  (stack not recorded)\n"]),
        )


def _mark_leaked(pool: ObjectPool[Any], now: float) -> list[tuple[Any, float, list[str] | None]]:
    """Borrowed too long and not yet reported (lock held): what to report, read
    now (once returned and retired, an entry no longer holds its object)."""
    leaked = [
        e
        for e in pool._in_use.values()
        if not e.leak_logged and now - e.borrowed_at >= pool._leak_timeout
    ]
    for entry in leaked:
        entry.leak_logged = True
    return [(e.obj, e.borrowed_at, e.stack) for e in leaked]


def _waker(wake: threading.Event, box: list[threading.Thread]) -> Any:
    """The callback of the thread's weak reference: a pool collected (dropped
    without close()) wakes its thread, which ends. Not from the thread itself
    (it may be inside the event's wait, holding its lock: it checks the pool
    right after dropping it)."""

    def collected(_: object) -> None:
        try:
            if box and threading.current_thread() is not box[0]:
                wake.set()
        except Exception:  # pragma: no cover - at interpreter shutdown
            pass

    return collected


def _upkeep_loop(ref: weakref.ref[ObjectPool[Any]], wake: threading.Event, gen: int) -> None:
    """The body of a pool's upkeep thread; holds the pool only weakly."""
    from . import pool as pool_module

    while True:
        pool = ref()
        if (
            pool is None
            or pool._closed
            or pool._wake is not wake  # superseded: its start was interrupted
            or pool._gen != gen
            or pool_module._fork_gen != gen
        ):
            return
        try:
            delay = pool.run_upkeep()
        except Exception:
            log.exception("pool %r: upkeep failed", pool.name)
            delay = 1.0
        except BaseException:
            _let_go(pool)
            raise
        del pool
        if ref() is None:  # that was the last reference: the pool is gone
            return
        try:
            wake.wait(min(delay, 60.0))
        except BaseException:  # (where a kill finds it: it waits most of the time)
            pool = ref()
            if pool is not None:
                _let_go(pool)
            raise
        wake.clear()


def _let_go(pool: ObjectPool[Any]) -> None:
    """The upkeep thread is going away (interpreter exit, a gevent kill, under
    gevent a signal handler's exception): let the next borrow start a new one."""
    with pool._lock:
        if pool._upkeep is threading.current_thread():
            pool._upkeep_claimed = False
            pool._upkeep = None
