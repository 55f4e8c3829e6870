"""A bounded, fair, thread-safe (and gevent-friendly) generic object pool.

How it works, in short:

* One lock guards the bookkeeping; the factory, ``check``, ``reset`` and
  ``destroy`` always run outside it.
* Waiters queue FIFO, each on a lock of its own. A released object goes straight
  to the oldest waiter (direct hand-off: nobody can barge past a waiter); a freed
  slot is handed over the same way, and the waiter creates the object itself.
  A waiter whose object fails its check keeps the slot and creates in it.
* What a borrow holds (a slot, an object) is written on its ticket under the
  lock, so an exception landing anywhere (gevent.Timeout, a kill, Ctrl-C) gives
  it back: no slot is ever lost.
* One background thread per pool refills to ``min_size``, evicts idle objects,
  retires old ones and, while the factory fails, probes with capped exponential
  backoff and full jitter.
* After ``os.fork()`` the child forgets (but never closes) what the parent had.

This module has borrowing, waiting and returning; creates are in ``_create``,
open/close/resize/drain/stats in ``_lifecycle``, upkeep in ``_upkeep`` and the
leases and small parts in ``_poolparts``.

Built on :mod:`threading` primitives looked up at call time, so gevent's
monkey-patching makes it cooperative, even when the patch comes after the fork;
under gevent a queued waiter sleeps on a lighter signal (``_greenwait``).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Generic, TypeVar, cast

from . import _create, _lifecycle, _poolparts, _upkeep
from ._poolparts import (
    _GONE,
    _INF,
    _SLOT,
    KeepOn,
    _a,
    _Abandoned,
    _acquire_anyway,
    _check_keep_on,
    _Entry,
    _Lease,
    _MethodLease,
    _new_lock,
    _number,
    _Ticket,
    _TunedLease,
)
from ._quietlog import OutageLog
from .errors import PoolClosed, PoolTimeout, TooManyWaiters
from .stats import PoolStats

__all__ = ["ObjectPool"]

T = TypeVar("T")
log = logging.getLogger("redispool.pool")
_NO_TICKET = _Ticket()  # written to instead of a missing ticket (a store, not a branch)
_RECLAIM_EVERY = 0.5  # how often a queued borrower looks for abandoned leases (see _wait)
_obj_of = attrgetter("obj")

_new = object.__new__  # (a lease without a call to __init__)
# Bumped in every child process: pools compare it on each call (a global load,
# much cheaper than os.getpid()) and start afresh when it changed.
_fork_gen = 0
_fork_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _fork_gen, _fork_lock
    _fork_gen += 1
    _poolparts._fork_gen = _fork_gen
    _fork_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _takes_reason(release: Callable[..., Any]) -> bool:
    """Whether a ``release`` method takes the keyword ``reason``."""
    try:
        params = inspect.signature(release).parameters
    except (TypeError, ValueError):  # pragma: no cover - not introspectable
        return False
    return "reason" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class ObjectPool(Generic[T]):
    """A bounded pool of objects made by ``factory``.

    ``timeout``: how long ``borrow()`` waits by default (``None``: forever, ``0``:
    not at all). For ``max_waiting``, ``max_idle_time``, ``max_lifetime``,
    ``max_uses`` and ``leak_timeout``, 0 means no limit. ``check(obj)`` runs on
    borrow when the object was idle for ``check_interval`` seconds or more (0:
    every borrow); a falsy result or an exception discards the object.
    ``reset(obj)`` runs on release; an exception discards the object.
    ``keep_on``: exception types (or a predicate) that do *not* discard the
    object when raised inside ``with pool.acquire()``. ``background=False``
    runs no upkeep thread: call ``run_upkeep()`` yourself.
    """

    timeout_error: type[PoolTimeout] = PoolTimeout
    _release_reason = True  # does ``release`` take ``reason``? (a subclass's may not)
    too_many_waiters_error: type[TooManyWaiters] = TooManyWaiters
    closed_error: type[PoolClosed] = PoolClosed
    noun = "object"

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        destroy: Callable[[T], object] | None = None,
        check: Callable[[T], object] | None = None,
        reset: Callable[[T], object] | None = None,
        min_size: int = 0,
        max_size: int = 10,
        timeout: float | None = 30.0,
        max_waiting: int = 0,
        max_idle_time: float = 600.0,
        max_lifetime: float = 3600.0,
        lifetime_jitter: float = 0.1,
        check_interval: float = 0.0,
        max_uses: int = 0,
        leak_timeout: float = 0.0,
        keep_on: KeepOn = None,
        fail_fast_after: int = 3,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        name: str | None = None,
        clock: Callable[[], float] | None = None,
        background: bool = True,
    ) -> None:
        for label, fn in (("factory", factory), ("destroy", destroy), ("check", check)):
            if (fn is not None or label == "factory") and not callable(fn):
                raise TypeError(f"{label} must be callable, got {fn!r}")
        if reset is not None and not callable(reset):
            raise TypeError(f"reset must be callable, got {reset!r}")
        _check_keep_on(keep_on)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self._factory = factory
        self._destroy = destroy
        self._check = check
        self._reset = reset
        # A subclass's cheap test run on every borrow (RedisPool: the socket is
        # quiet); falsy discards the object, counted as "dead".
        self._validate: Callable[[T], object] | None = None
        self._min_size, self._max_size = self._sizes(min_size, max_size)
        self._timeout = _number("timeout", timeout, minimum=0, none_ok=True)
        self._max_waiting = _number("max_waiting", max_waiting, minimum=0, integer=True)
        self._max_idle_time = _number("max_idle_time", max_idle_time, minimum=0)
        self._max_lifetime = _number("max_lifetime", max_lifetime, minimum=0)
        self._lifetime_jitter = _number("lifetime_jitter", lifetime_jitter, minimum=0)
        if self._lifetime_jitter > 1:
            raise ValueError(f"lifetime_jitter must be <= 1, got {lifetime_jitter!r}")
        self._check_interval = _number("check_interval", check_interval, minimum=0)
        self._max_uses = _number("max_uses", max_uses, minimum=0, integer=True)
        self._leak_timeout = _number("leak_timeout", leak_timeout, minimum=0)
        self._keep_on = keep_on
        self._fail_fast_after = _number("fail_fast_after", fail_fast_after, minimum=0, integer=True)
        self._backoff_base = _number("backoff_base", backoff_base, minimum=0)
        self._backoff_cap = _number("backoff_cap", backoff_cap, minimum=0)
        self.name = name or f"pool-{id(self):x}"
        self._clock: Callable[[], float] = clock or time.monotonic
        self._background = bool(background)
        self._closed = False
        self._orphans: list[Any] = []  # objects inherited across a fork: kept, never closed
        self._orphan_ids: set[int] = set()
        self._init_state()

    # -- state -------------------------------------------------------------

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._lock = _new_lock()
        self._idle: deque[_Entry] = deque()  # LIFO at the right; the left is least recent
        self._in_use: dict[int, _Entry] = {}
        self._waiters: deque[_Ticket] = deque()
        self._abandoned: deque[_Abandoned] = deque()  # see _reclaim
        self._size = 0  # idle + in use + creating + closing
        self._epoch = 0  # bumped by close, shrink and drain: returns take the slow path
        self._drain_epoch = 0  # objects from before this epoch retire on return
        self._creating = 0
        self._closing = 0
        self._upkeep: threading.Thread | None = None
        self._upkeep_claimed = False
        self._wake: threading.Event | None = None
        self._dormant = False  # see _disconnect: make nothing until borrowed from
        self._fail_streak = 0
        self._last_error: BaseException | None = None
        self._next_retry = 0.0
        self._outage = OutageLog(log, f"pool {self.name!r}: creating {_a(self.noun)}")
        self._borrows = self._timeouts = self._created = self._create_errors = 0
        self._borrows_shown = 0  # the most stats() showed (see _lifecycle.pool_stats)
        self._destroyed: dict[str, int] = {}
        self._wait_total = self._wait_max = self._create_total = self._use_total = 0.0
        self._gen = _fork_gen  # last: the fast paths trust the state once it matches

    @staticmethod
    def _sizes(min_size: Any, max_size: Any) -> tuple[int, int]:
        min_size = _number("min_size", min_size, minimum=0, integer=True)
        max_size = _number("max_size", max_size, minimum=1, integer=True)
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) must be <= max_size ({max_size})")
        return min_size, max_size

    def _after_fork(self) -> None:
        """In a child process: keep the parent's objects untouched, start afresh."""
        with _fork_lock:
            if self._gen == _fork_gen and self._pid == os.getpid():
                return
            objs = [*map(_obj_of, (*self._idle, *self._in_use.values()))]
            self._orphans.extend(objs)
            self._orphan_ids.update(map(id, objs))
            self._init_state()

    def _not_in_a_handler(self) -> None:
        """Raise if this thread holds the pool's lock: a signal handler (or a
        finalizer) calling the pool while the code it interrupted is halfway
        through the pool's bookkeeping."""
        if self._lock._is_owned():
            raise RuntimeError(
                f"pool {self.name!r} used from a signal handler or finalizer that "
                "interrupted the pool itself; defer the call (set a flag, and act on it)"
            )

    def _check_fork(self) -> None:
        if self._gen != _fork_gen or self._pid != os.getpid():
            self._after_fork()

    # -- borrowing ---------------------------------------------------------

    def acquire(self, timeout: float | None = None, *, keep_on: KeepOn = None) -> _Lease[T]:
        """``with pool.acquire() as obj:`` borrow, then release (discard on error).

        ``keep_on`` (exception types or a predicate) overrides the pool's rule
        of which exceptions leave the object fit for reuse.
        """
        if timeout is None and keep_on is None:  # the common case: a lighter lease
            lease: _Lease[T] = _new(_Lease)
            lease._pool = self
            return lease
        return _TunedLease(self, timeout, keep_on)

    def _acquire_by_methods(
        self, timeout: float | None = None, *, keep_on: KeepOn = None
    ) -> _Lease[T]:
        """``with pool.acquire() as obj:`` borrow, then release (discard on error),
        through this class's own ``borrow`` and ``release``."""
        return _MethodLease(self, timeout, keep_on)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``borrow`` or ``release`` must run in ``acquire()``
        too, whose lease inlines the base class's fast paths: such a class gets an
        ``acquire`` that calls them. Not covered (a check on the hot path would
        cost more than the rest of it): methods patched onto the class later, and
        an ``acquire`` of the subclass's own that calls ``ObjectPool.acquire``
        (call ``self.borrow``/``self.release`` there instead)."""
        super().__init_subclass__(**kwargs)
        cls._release_reason = _takes_reason(cls.release)
        overrides = cls.borrow is not ObjectPool.borrow or cls.release is not ObjectPool.release
        if overrides and cls.acquire is ObjectPool.acquire:
            cls.acquire = ObjectPool._acquire_by_methods  # type: ignore[method-assign]

    def borrow(self, timeout: float | None = None) -> T:
        """Borrow an object; wait at most ``timeout`` seconds (pool default if None)."""
        if timeout is not None:
            _number("timeout", timeout, minimum=0)
        if self._gen != _fork_gen:
            self._after_fork()
        # What this call holds is always in ``entry`` or on ``ticket``, so that
        # an exception landing anywhere (gevent.Timeout or a kill at a yield,
        # Ctrl-C) gives it back: see _abandon.
        entry = ticket = None
        lock = self._lock
        try:
            lock.acquire()  # (not ``with``: this is the hot path, and twice as fast)
            try:
                idle = self._idle
                if idle:  # idle objects exist only while nobody waits: no barging
                    now = self._clock()
                    taken = idle[-1]
                    key = id(taken.obj)
                    # No call from here to the pop, the last step: a signal handler
                    # raises only at a call or a loop, so these happen all or none.
                    taken.borrowed_at = now
                    taken.uses += 1
                    self._in_use[key] = taken
                    self._borrows += 1
                    entry = taken
                    idle.pop()
            finally:
                lock.release()
            if entry is not None and now < entry.recheck_at:
                validate = self._validate
                if validate is None or validate(entry.obj):
                    return entry.obj  # type: ignore[no-any-return]
            ticket = _Ticket(entry)
            return self._borrow_slow(ticket, timeout).obj  # type: ignore[no-any-return]
        except BaseException:
            if lock._is_owned():  # a handler raised as the acquire returned
                lock.release()
            self._give_back(ticket, entry)
            raise

    def _give_back(self, ticket: _Ticket | None, entry: _Entry | None) -> None:
        """A borrow was interrupted: give back what it holds."""
        if ticket is None:  # interrupted on the fast path (mid-check, maybe)
            ticket = _Ticket(entry)
            ticket.checking = True
        # Nobody else writes on a ticket out of the queue: if it holds
        # nothing (a PoolTimeout, say), there is nothing to give back.
        if ticket.result is not None or ticket.lock is not None or ticket.doomed:
            self._abandon(ticket)

    def _borrow_slow(self, ticket: _Ticket, timeout: float | None) -> _Entry:
        """Vet the idle object on the ticket, or obtain one: idle, new, or by queueing.

        Whatever the pool gives this call (a slot, an object) is written on its
        ticket under the lock; the caller's handler gives it back if interrupted.
        """
        if ticket.result is None:
            self._check_fork()
        if self._abandoned:
            self._reclaim()
        # Only a caller's own timeout bounds the factory (see _make); 0 means "do
        # not queue", not "connect in no time": the factory's own timeouts apply.
        make_by = None
        if timeout is None:
            timeout = self._timeout
            start = time.monotonic()
        else:
            start = time.monotonic()
            if timeout > 0:
                make_by = start + timeout
        deadline = _INF if timeout is None else start + timeout
        if self._dormant:  # used again after _disconnect(): fill as usual
            self._dormant = False
            self._wake_upkeep()
        if not self._upkeep_claimed and self._background:
            self._ensure_upkeep()
        handed = False
        while True:
            if ticket.result is None:
                try:
                    handed = self._obtain(ticket, start, deadline)
                except PoolTimeout:
                    # Often at once (failing fast, too many waiters): yield first,
                    # or under gevent a caller retrying straight away never lets
                    # the upkeep's reconnect run, and spins for ever.
                    time.sleep(0)
                    raise
                if ticket.gen != _fork_gen:
                    self._forked(ticket)
                    continue
            held = ticket.result
            if held is _SLOT:
                made = _create.create_for(self, ticket, start, deadline, make_by)
                if made is not None:
                    if self._leak_timeout:
                        made.stack = traceback.format_stack()[:-3]
                    return made
            # A waiter whose handed-over object fails its check keeps its place:
            # it turns the slot into a new object instead of queueing again.
            elif self._vet(ticket, cast(_Entry, held), keep_slot=handed):
                return cast(_Entry, held)

    def _forked(self, ticket: _Ticket) -> None:
        """The process forked since ``ticket`` was made (``ticket.gen`` differs), and
        this borrow goes on in the child (gevent copies every greenlet into it, one
        that yielded in a wait, a check or a create included). What it holds is the
        parent's: it is forgotten, and the borrow starts afresh on the child's pool."""
        ticket.result = ticket.lock = ticket.doomed = None
        ticket.checking = False
        ticket.gen = _fork_gen
        self._check_fork()

    def _reclaim(self) -> None:
        """Destroy the objects of leases dropped without their ``__exit__`` (see
        ``_poolparts._Out``): their blocks may have left them in any state. Run
        before a borrow queues or creates, by queued borrowers (see ``_wait``),
        by upkeep, and by ``close()``."""
        abandoned = self._abandoned
        while abandoned:
            try:
                item = abandoned[0]
            except IndexError:  # (another thread took the last one)
                return
            # Released, then taken off the queue: cut short in between, the next
            # call releases it again, a no-op (it is not lent any more, and the
            # queue keeps its id from being reused).
            try:
                if self._release_reason:
                    self.release(item.obj, discard=True, reason="dirty")
                else:  # a subclass's own release, without it (see __init_subclass__)
                    self.release(item.obj, discard=True)
            except ValueError:  # not lent: given back by hand (see _poolparts._Out)
                log.debug("pool %r: abandoned %r was not lent", self.name, item.obj)
            try:
                abandoned.remove(item)
            except ValueError:
                pass

    def _obtain(self, ticket: _Ticket, start: float, deadline: float) -> bool:
        """Put an idle object or a new slot on the ticket, or queue for one.

        True: it was handed over by another caller after a wait.
        """
        with self._lock:
            if self._closed:
                raise self.closed_error(f"pool {self.name!r} is closed")
            if self._idle and not self._waiters:
                self._take_idle(ticket)
                self._note_wait(start)
                return False
            if self._size < self._max_size and not self._waiters and not self._fail_streak:
                self._size += 1
                self._creating += 1
                ticket.result = _SLOT
                return False
            if self._size < self._max_size and _create.failing_fast(self):
                self._timeouts += 1
                raise self._timeout_exc(start, fail_fast=True)
            if self._max_waiting and len(self._waiters) >= self._max_waiting:
                self._timeouts += 1
                raise self.too_many_waiters_error(
                    f"pool {self.name!r}: {len(self._waiters)} callers already waiting "
                    f"(max_waiting={self._max_waiting}); {len(self._in_use)} of "
                    f"{self._max_size} {self.noun}s in use"
                )
            if time.monotonic() >= deadline:
                self._timeouts += 1
                raise self._timeout_exc(start)
            ticket.queue(start)
            self._waiters.append(ticket)
        self._wait(ticket, start, deadline)
        return True

    def _take_idle(self, ticket: _Ticket) -> None:
        """Lend the most recent idle object to ``ticket`` (lock held; see release()
        for why every call comes first and the last step is one)."""
        now = self._clock()
        idle = self._idle
        entry = idle[-1]
        key = id(entry.obj)
        entry.borrowed_at = now
        entry.uses += 1
        self._in_use[key] = entry
        self._borrows += 1
        ticket.result = entry
        idle.pop()

    def _note_wait(self, start: float) -> None:
        waited = time.monotonic() - start
        self._wait_total += waited
        if waited > self._wait_max:
            self._wait_max = waited

    def _wait(self, ticket: _Ticket, start: float, deadline: float) -> None:
        """Block until the ticket is handed an object or a slot (lock not held).

        An interruption is the caller's to handle: its ticket says what it holds.
        """
        lock = ticket.lock
        while True:
            left = deadline - time.monotonic()
            if left > _RECLAIM_EVERY:
                # In slices: a lease dropped without its __exit__ while this waits
                # frees a slot only once reclaimed (see _reclaim), and no return
                # or borrow may come to do it.
                handed = lock.acquire(True, _RECLAIM_EVERY)
                if not handed:
                    if ticket.gen != _fork_gen:  # in a forked child (see _forked)
                        return
                    if self._abandoned:
                        self._reclaim()
                    continue
            else:
                handed = lock.acquire(True, max(0.0, left))
            break
        if ticket.gen != _fork_gen:  # handed over, or not, in the parent (see _forked)
            return
        if handed:  # out of the queue: whoever released the lock wrote the result
            ticket.lock = None  # (under the pool's lock, before the release) and
            result = ticket.result  # counted the wait; no need to take that lock again
        else:
            with self._lock:
                result = ticket.result
                if result is None:  # timed out and nothing was handed over
                    self._waiters.remove(ticket)  # (first: see _abandon)
                    ticket.lock = None
                    self._timeouts += 1
                    raise self._timeout_exc(start)
                ticket.lock = None  # out of the queue from here on
        if isinstance(result, BaseException):  # closed, or failing fast
            ticket.result = None
            raise result

    def _abandon(self, ticket: _Ticket) -> None:
        """An interrupted borrow: give back what its ticket holds (a slot; an
        object, discarded if interrupted mid-check), or leave the queue."""
        if ticket.gen != _fork_gen:  # what it holds is the parent's (see _forked)
            return
        pending = _acquire_anyway(self._lock)
        dubious = False
        try:
            held, ticket.result = ticket.result, None
            if held is _SLOT:
                self._size -= 1
                self._creating -= 1
                self._capacity_freed()
            elif isinstance(held, _Entry):
                dubious = ticket.checking
                if dubious:
                    self._in_use.pop(id(held.obj), None)
                    self._borrows -= 1
                    self._closing += 1
            elif ticket.lock is not None and ticket in self._waiters:
                self._waiters.remove(ticket)
            ticket.lock = None
        finally:
            self._lock.release()
        doomed = ticket.doomed
        if doomed is not None:  # counted in closing, not yet destroyed
            self._destroy_entries([doomed], ticket.reason, ticket)
        if isinstance(held, _Entry):
            if dubious:
                self._destroy_entries([held], "check")
            else:
                self.release(held.obj)
        if pending is not None:
            raise pending from None

    # -- creating (see _create.py) -----------------------------------------

    def _make(self, deadline: float | None) -> T:
        """Call the factory. ``deadline`` (``time.monotonic()``): the borrower's own
        timeout, if it gave one; a subclass may bound the create by it.

        (A signal handler that raises just as the factory returns drops the new
        object unreferenced, for the garbage collector: no Python code can
        catch it there. The slot is freed all the same.)"""
        return self._factory()

    def _timeout_exc(self, start: float, *, fail_fast: bool = False) -> PoolTimeout:
        waited = max(0.0, time.monotonic() - start)
        busy = len(self._in_use)
        if fail_fast:
            msg = (
                f"pool {self.name!r}: creating {_a(self.noun)} failed "
                f"{self._fail_streak} times in a row, failing fast"
            )
        else:
            msg = f"pool {self.name!r}: no {self.noun} available after {waited:.3f}s"
        msg += f" ({busy} of {self._max_size} in use, {len(self._waiters)} waiting)"
        if self._last_error is not None:
            msg += f"; last create error: {self._last_error!r}"
        err = self.timeout_error(msg)
        err.__cause__ = self._last_error
        return err

    def _vet(self, ticket: _Ticket, entry: _Entry, keep_slot: bool) -> bool:
        """Vet a borrowed object: lifetime, ``_validate``, then ``check`` when due.

        False: it was discarded (with ``keep_slot``, its slot is now the ticket's).
        """
        now = self._clock()
        if now >= entry.expires_at:
            self._discard(ticket, entry, "lifetime", keep_slot)
            return False
        ticket.checking = True  # interrupted from here on: discarded
        reason = self._failed_check(entry.obj, now - entry.last_used)
        if ticket.gen != _fork_gen:  # (a check may yield: a PING under gevent)
            self._forked(ticket)
            return False
        if reason is not None:
            self._discard(ticket, entry, reason, keep_slot)
            return False
        ticket.checking = False
        if self._leak_timeout:
            entry.stack = traceback.format_stack()[:-3]
            entry.leak_logged = False
        return True

    def _failed_check(self, obj: T, idle_for: float) -> str | None:
        """Why ``obj`` is unfit to lend ("dead", "check"), or None."""
        try:
            if self._validate is not None and not self._validate(obj):
                return "dead"
            if (
                self._check is not None
                and idle_for >= self._check_interval
                and not self._check(obj)
            ):
                return "check"
        except Exception as exc:
            log.debug("pool %r: check failed: %r", self.name, exc)
            return "check"
        return None

    # -- returning ---------------------------------------------------------

    def release(self, obj: T, discard: bool = False, *, reason: str = "error") -> None:
        """Give back a borrowed object (``discard=True``: destroy it instead,
        counted under ``reason`` in ``stats().destroyed_by_reason``)."""
        if discard and type(reason) is not str:
            raise TypeError(f"reason must be a str, got {reason!r}")
        if self._gen != _fork_gen:
            self._after_fork()
        pending: BaseException | None = None
        if self._reset is not None and not discard:
            try:
                self._reset(obj)
            except Exception as exc:
                log.debug("pool %r: reset failed, discarding: %r", self.name, exc)
                discard = True
            except BaseException as exc:  # finish the release, re-raise below
                discard, pending = True, exc
        lock = self._lock
        entry = why = None
        done = False
        while not done:  # until it is back: idle, handed on, or counted to go
            try:
                lock.acquire()
                try:
                    # Every call comes before the first change, and the last step
                    # is a call (or none): a signal handler raises only at a call
                    # or a loop, so ``done`` says whether it all happened.
                    key = id(obj)
                    found = self._in_use.get(key)
                    if found is None:
                        done = True
                    else:
                        now = self._clock()
                        retire = None
                        # close(), a shrinking resize() and drain() bump the epoch,
                        # so one compare covers them all on the fast path.
                        if (
                            discard
                            or now >= found.expires_at
                            or found.epoch != self._epoch
                            or (self._max_uses and found.uses >= self._max_uses)
                        ):
                            retire = self._retire_reason(found, discard, reason, now)
                        waiters = self._waiters
                        waiter = waiters[0] if waiters and retire is None else None
                        used = self._use_total + (now - found.borrowed_at)
                        recheck = found.recheck_at
                        if self._leak_timeout:
                            recheck = -_INF
                        elif self._check is not None:
                            recheck = now + self._check_interval
                            if found.expires_at < recheck:
                                recheck = found.expires_at
                        # -- no call or branch inside each group: all or none --
                        if retire is not None:
                            self._use_total = used
                            del self._in_use[key]
                            self._closing += 1
                            entry, why, done = found, retire, True
                        elif waiter is None:
                            self._use_total = used
                            found.last_used = now
                            found.recheck_at = recheck
                            del self._in_use[key]
                            entry, done = found, True
                            self._idle.append(found)  # the last step
                        else:  # direct hand-off to the oldest waiter
                            self._use_total = used
                            found.last_used = now
                            found.recheck_at = recheck
                            found.borrowed_at = now  # (still in _in_use: theirs now)
                            found.uses += 1
                            self._borrows += 1
                            del waiters[0]
                            waiter.result = found
                            entry, done = found, True
                            waiter.lock.release()  # the last step: it runs once woken
                            self._note_wait(waiter.start)  # (a statistic)
                finally:
                    lock.release()
            except BaseException as exc:  # finish the release first, re-raise below
                if lock._is_owned():  # a handler raised as the acquire returned
                    lock.release()
                pending = pending or exc
        if why is not None:  # counted in closing: destroyed whatever happens
            job: list[_Entry] = [entry]  # type: ignore[list-item]
            while job:  # (emptied once done; see _destroy_entries)
                try:
                    self._destroy_entries(job, why)
                except BaseException as exc:
                    pending = pending or exc
        elif entry is None:
            self._release_unknown(obj)
        if pending is not None:
            raise pending

    def _lent_still(self, obj: T, lent: _Entry | None, uses: int) -> bool:
        """After an interrupted return: is ``obj`` still lent to the caller, who
        read ``lent`` (None: not read) and its ``uses`` before the return began?
        (A hand-off keeps the entry in ``_in_use``, with one use more.)"""
        entry = self._in_use.get(id(obj))
        return entry is not None and (lent is None or (entry is lent and entry.uses == uses))

    def _retire_reason(self, entry: _Entry, discard: bool, reason: str, now: float) -> str | None:
        """Why a returned object goes (lock held), or None: it stays after all."""
        if discard:
            return reason
        if now >= entry.expires_at or (self._max_uses and entry.uses >= self._max_uses):
            return "lifetime"
        if self._closed:
            return "closed"
        if self._size - self._closing > self._max_size:
            return "resize"
        if entry.epoch < self._drain_epoch:
            return "drain"
        entry.epoch = self._epoch  # an epoch bump that does not concern it
        return None

    def _release_unknown(self, obj: Any) -> None:
        if id(obj) in self._orphan_ids:
            return  # borrowed in the parent before a fork: leave it alone
        raise ValueError(
            f"{obj!r} is not borrowed from pool {self.name!r} (released twice, "
            "or it belongs to another pool)"
        )

    def _discard(self, ticket: _Ticket, entry: _Entry, reason: str, keep_slot: bool) -> None:
        """Destroy a borrowed object that failed its vetting. With ``keep_slot``,
        or if callers queued meanwhile (behind this one), the slot passes to
        the ticket, to create a replacement in."""
        with self._lock:
            key = id(entry.obj)
            queued = bool(self._waiters) and not self._fail_streak
            keep = (keep_slot or queued) and not self._closed
            destroyed = self._destroyed.get(reason, 0) + 1
            # -- no call or branch inside each group until its last step --
            if keep:  # counted as creating while its predecessor goes
                self._borrows -= 1  # that borrow did not happen after all
                self._creating += 1
                self._destroyed[reason] = destroyed
                ticket.result = _SLOT
                ticket.checking = False
                self._in_use.pop(key, None)  # the last step
            else:
                self._borrows -= 1
                self._closing += 1
                ticket.result = None
                ticket.doomed, ticket.reason = entry, reason
                ticket.checking = False
                self._in_use.pop(key, None)
        if not keep:  # (interrupted, the ticket's handler destroys its doomed entry)
            self._destroy_entries([entry], reason, ticket)
        else:  # interrupted here, the ticket's handler frees the slot
            self._destroy_quietly(entry.obj)

    def _destroy_quietly(self, obj: T) -> None:
        """Destroy an object that is on no books; an ``Exception`` is logged."""
        if self._destroy is not None:
            try:
                self._destroy(obj)
            except Exception as exc:
                log.debug("pool %r: destroy failed: %r", self.name, exc)

    def _destroy_entries(
        self, entries: list[_Entry], reason: str, ticket: _Ticket | None = None
    ) -> None:
        """Destroy entries already counted in ``closing``, then free their slots
        (and clear ``ticket.doomed``, which named them).

        The slot is freed only after ``destroy`` returns, so the resource (a
        server connection) is gone before a replacement can be made.

        Empties ``entries`` once they are off the books: a caller interrupted by
        a signal handler (at any call, this one's first line too) calls again
        with what is left, and no object is destroyed twice.
        """
        pending: BaseException | None = None
        destroy = self._destroy
        while True:
            try:
                for entry in entries:
                    obj = entry.obj
                    if obj is not _GONE:
                        entry.obj = _GONE  # (before the destroy: never twice)
                        if destroy is not None:
                            try:
                                destroy(obj)
                            except Exception as exc:
                                log.debug("pool %r: destroy failed: %r", self.name, exc)
                break
            except BaseException as exc:  # the rest all the same, then re-raise
                pending = exc
        lock = self._lock
        done = False
        while True:
            try:
                lock.acquire()
                try:
                    if not done:
                        n = len(entries)
                        destroyed = self._destroyed.get(reason, 0) + n
                        named = _NO_TICKET if ticket is None else ticket
                        # -- no call or branch from here to the end of the group --
                        self._closing -= n
                        self._destroyed[reason] = destroyed
                        self._size -= n
                        named.doomed = None
                        done = True
                        del entries[:]
                    self._capacity_freed()
                finally:
                    lock.release()
                break
            except BaseException as exc:
                if lock._is_owned():  # a handler raised as the acquire returned
                    lock.release()
                pending = exc
        if pending is not None:
            raise pending

    def _capacity_freed(self) -> None:
        """Hand free slots to the oldest waiters (lock held)."""
        if self._closed:  # (any a close() cut short left queued fail now)
            _lifecycle.close_waiters(self)
            return
        waiters = self._waiters
        while waiters and self._size < self._max_size and not self._fail_streak:
            waiter = waiters[0]
            self._size += 1  # (no call from here to the release: all or none)
            self._creating += 1
            del waiters[0]
            waiter.result = _SLOT
            waiter.lock.release()
            self._note_wait(waiter.start)
        if self._size < self._min_size or (waiters and self._fail_streak):
            self._wake_upkeep()
        if waiters and _create.failing_fast(self):  # the last borrowed one just went
            _create.fail_waiters(self)

    def _is_harmless(self, exc: BaseException, keep_on: KeepOn) -> bool:
        rule = keep_on if keep_on is not None else self._keep_on
        if rule is None:
            return False
        if isinstance(rule, tuple):
            return isinstance(exc, rule)
        try:
            return bool(rule(exc))
        except Exception:
            return False

    # -- upkeep (see _upkeep.py) -------------------------------------------

    def _ensure_upkeep(self) -> None:
        """Start the upkeep thread unless one runs (or is starting)."""
        with self._lock:
            if self._upkeep_claimed or not self._background or self._closed:
                return
            self._upkeep_claimed = True
        try:
            _upkeep.start_upkeep(self)  # yields under gevent: a kill may land here
        except BaseException as exc:
            # Let the next borrow try again; should the thread run after all, it
            # sees it was superseded (the pool's wake event is not its own) and ends.
            pending = _acquire_anyway(self._lock)
            self._upkeep = self._wake = None
            self._upkeep_claimed = False
            self._lock.release()
            if pending is not None:
                raise pending from None
            if not isinstance(exc, RuntimeError):
                raise
            # No thread to be had (at interpreter shutdown, where 3.12 refuses new
            # ones, as in an atexit flush; or at the OS's limit): the borrow goes on.
            log.debug("pool %r: upkeep thread not started: %r", self.name, exc)

    def _wake_upkeep(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def run_upkeep(self) -> float:
        """Do one round of upkeep now; return the seconds until the next is due.

        The background thread calls this; with ``background=False`` you do.
        """
        return _upkeep.run_upkeep(self)

    # -- lifecycle (see _lifecycle.py) -------------------------------------

    def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Start upkeep; with ``wait``, block until ``min_size`` objects are ready."""
        _lifecycle.open_pool(self, wait, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Close: fail the waiters, destroy idle objects now and borrowed ones as
        they come back (waiting up to ``timeout`` seconds for them)."""
        _lifecycle.close_pool(self, timeout)

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change the bounds; extra idle objects go now, extra borrowed ones on release."""
        _lifecycle.resize_pool(self, min_size, max_size)

    def drain(self) -> None:
        """Replace every object: idle ones are destroyed now, borrowed ones when
        returned; new ones are made on demand (e.g. after a password rotation)."""
        _lifecycle.drain_pool(self)

    def _disconnect(self, borrowed: bool = True) -> None:
        """Destroy the idle objects now (``borrowed``: the borrowed ones too, when
        returned) and make none until the next borrow or ``open()``; with
        ``borrowed`` the upkeep thread ends meanwhile (the drop-in's ``disconnect()``)."""
        _lifecycle.disconnect_pool(self, borrowed)

    def objects(self) -> list[T]:
        """A snapshot of the live objects, idle and borrowed (for inspection)."""
        return _lifecycle.live_objects(self)

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's numbers."""
        return _lifecycle.pool_stats(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ObjectPool[T]:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} size={self._size} idle={len(self._idle)} "
            f"in_use={len(self._in_use)} max_size={self._max_size}"
            f"{' closed' if self._closed else ''}>"
        )
