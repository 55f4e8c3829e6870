"""Small parts of ObjectPool: entries, waiters, the lease, option validation."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._greenwait import new_signal

if TYPE_CHECKING:
    from .pool import ObjectPool

T = TypeVar("T")

_INF = float("inf")
# The fork generation, as ``pool._fork_gen`` (which sets it in a child): the
# leases' fast paths compare it, a global load.
_fork_gen = 0
_SLOT = object()  # handed to a waiter instead of an object: "a slot is yours, create"
_GONE = object()  # an entry's object once destroyed (see ObjectPool._destroy_entries)

KeepOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool] | None


class _Entry:
    __slots__ = (
        "borrowed_at",
        "created_at",
        "epoch",
        "expires_at",
        "last_used",
        "leak_logged",
        "obj",
        "recheck_at",
        "stack",
        "uses",
    )

    def __init__(self, obj: Any, now: float, expires_at: float, epoch: int = 0) -> None:
        self.obj = obj
        self.epoch = epoch
        self.created_at = now
        self.expires_at = expires_at
        self.last_used = now
        self.recheck_at = expires_at
        self.borrowed_at = now
        self.uses = 1
        self.stack: list[str] | None = None
        self.leak_logged = False


class _Abandoned:
    """An object whose lease was dropped without its ``__exit__`` (see
    ``_Out``), queued for ``ObjectPool._reclaim``; compared by identity. Made
    with ``object.__new__`` and a store: no Python code runs to make one."""

    __slots__ = ("obj",)
    obj: Any


def abandon(pool: Any, obj: Any) -> None:
    """Queue ``obj``, lent through a lease never exited, on ``pool``
    (an ``ObjectPool``) for ``_reclaim``."""
    item = _new(_Abandoned)
    item.obj = obj
    pool._abandoned.append(item)


_new = object.__new__


class _Out:
    """Mixed into the class a lease takes while entered (``__enter__`` sets it
    as the last step, ``__exit__`` puts the plain class back as its first):
    collected in that state, the lease was never exited. That happens when an
    exception lands at ``__exit__``'s first instruction (a signal handler
    raising: Ctrl-C, a soft time limit), where no code of the pool's can catch
    it; the object goes back to the pool, which destroys it (its block may have
    left it in any state) before the next borrow would wait, at upkeep and at
    ``close()``: not here, as a finalizer may run inside any code, the pool's
    included. An exited lease has no finalizer to run (none of it can be cut
    short and swallow a Ctrl-C)."""

    __slots__ = ()

    def __del__(self) -> None:
        try:
            # Gone first: the collector runs every finalizer of a cycle, so another
            # one (a generator's close, an object's __del__) may still exit this
            # lease once its object is queued; had that exit given the object back,
            # it could be lent again before the pool destroyed it, under its new
            # borrower. A gone lease's __exit__ gives back nothing.
            self.__class__ = self._gone  # type: ignore[attr-defined]
            self._abandon()  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A copy (copy.copy, deepcopy, pickle) would be entered too, with this
        # finalizer: dropped, it would hand back the object this lease still lends.
        raise TypeError(f"an entered lease ({type(self).__name__}) cannot be copied")


_L = TypeVar("_L")


def with_out(cls: _L) -> _L:
    """Give lease class ``cls`` its entered twin (see ``_Out``): ``cls._out``,
    ``_plain`` (``cls``) to go back to, and ``_gone``, the class its finalizer
    gives it (its ``__exit__`` then returns at once: check it before the switch
    to ``_plain``, where an exception leaves the lease entered). ``cls`` defines
    ``_abandon()``."""
    klass: Any = cls
    klass._out = type(f"{klass.__name__}Out", (_Out, klass), {"__slots__": ()})
    klass._gone = type(f"{klass.__name__}Gone", (klass,), {"__slots__": ()})
    klass._plain = klass
    return cls


class _Ticket:
    """What one borrow holds, written under the pool's lock by whoever hands it
    something: None (nothing yet), ``_SLOT`` (a reserved slot), an ``_Entry``
    (a borrowed object) or, for a waiter, an exception to raise. An interrupted
    borrow gives back what its ticket says. ``checking``: its object is being
    vetted (interrupted then, it is discarded). ``doomed``: an object counted
    in ``closing`` (for ``reason``) that is yet to be destroyed. ``lock``:
    released on hand-off to a queued ticket; ``start``: when its borrow began
    (the hand-off counts the wait); ``gen``: the fork generation it was made in
    (see ``ObjectPool._forked``)."""

    __slots__ = ("checking", "doomed", "gen", "lock", "reason", "result", "start")

    def __init__(self, result: object = None) -> None:
        self.gen = _fork_gen
        self.result = result
        self.checking = False
        self.doomed: _Entry | None = None
        self.reason = ""
        self.lock: Any = None
        self.start = 0.0

    def queue(self, start: float) -> None:
        """Arm for a wait in the queue: a fresh lock, held until the hand-off
        (under gevent, a cheaper signal with the same two calls: ``_greenwait``)."""
        self.start = start
        self.lock = new_signal()


def _a(noun: str) -> str:
    """``noun`` with its indefinite article ("an object", "a connection")."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _number(
    name: str, value: Any, *, minimum: float, integer: bool = False, none_ok: bool = False
) -> Any:
    """Validate a numeric option; the error names the option and the value."""
    if value is None and none_ok:
        return None
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if not cast(float, value) >= minimum:  # also rejects NaN
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if value == _INF and integer:
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_keep_on(keep_on: Any) -> KeepOn:
    """Validate a ``keep_on`` rule: None, a tuple of exception types or a predicate."""
    if (
        keep_on is not None
        and not callable(keep_on)
        and (
            not isinstance(keep_on, tuple)
            or not all(isinstance(t, type) and issubclass(t, BaseException) for t in keep_on)
        )
    ):
        raise TypeError(
            f"keep_on must be a tuple of exception types or a callable, got {keep_on!r}"
        )
    return cast(KeepOn, keep_on)


def _new_lock() -> Any:
    """The pool's lock. Its holder can be told (``_is_owned``): a signal handler
    (Ctrl-C, SIGQUIT, a soft time limit) may raise just after ``acquire()``
    returned, before any ``try``, and the handler then sees that it holds it.
    The pool never takes it twice (nor may a signal handler use the pool: its
    admin calls raise ``RuntimeError`` there)."""
    thread_mod = sys.modules.get("gevent.thread")
    if thread_mod is not None and threading.Lock is thread_mod.LockType:
        return _GreenLock()
    return threading.RLock()


class _GreenLock:
    """The pool's lock under gevent. Other greenlets wait for it cooperatively:
    the pool's own code never yields while holding it, but a finalizer the
    garbage collector runs there may (a close that yields), and a native lock,
    owned by the thread, would let another greenlet of it in. gevent's RLock
    is Python, with windows between taking the lock and recording its holder;
    here the holder is known without one (see ``_is_owned``)."""

    __slots__ = ("_owner", "_sem")

    def __init__(self) -> None:
        global _getcurrent
        from gevent import getcurrent
        from gevent.lock import Semaphore  # (compiled: one C call to take it)

        _getcurrent = getcurrent
        self._sem = Semaphore(1)
        self._owner: Any = None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        got: bool = self._sem.acquire(blocking, timeout)
        if got:
            self._owner = _getcurrent()
        return got

    def release(self) -> None:
        self._owner = None
        self._sem.release()

    def _is_owned(self) -> bool:
        owner = self._owner
        if owner is not None:
            return owner is _getcurrent()
        # Taken with no holder recorded: only the greenlet running this can be
        # between acquire()'s two steps (nothing yields there), interrupted.
        return bool(self._sem.locked())

    def locked(self) -> bool:
        return bool(self._sem.locked())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_getcurrent: Any = None  # greenlet.getcurrent, once a _GreenLock is made


def _acquire_anyway(lock: Any) -> BaseException | None:
    """Take ``lock`` even if an async exception (gevent.Timeout, Ctrl-C) lands
    while waiting for it, or just after it was taken; return that exception so
    the caller can re-raise it once its bookkeeping is done."""
    pending: BaseException | None = None
    while True:
        try:
            lock.acquire()
            return pending
        except BaseException as exc:
            pending = exc
            if lock._is_owned():  # it landed after the acquire: taken
                return pending


@with_out
class _Lease(Generic[T]):
    """The context manager ``ObjectPool.acquire()`` returns (pool defaults).

    ``__enter__`` and ``__exit__`` are ``ObjectPool.borrow`` and ``release`` with
    their fast paths inlined (a call fewer each way on the hot path: 1.14 us was
    the ``with`` against 0.77 us for the two calls); keep them in step.
    """

    __slots__ = ("_pool", "obj")
    _keep_on: KeepOn = None  # (a slot of _TunedLease)
    _out: type[_Lease[Any]]  # the class while entered, and back (see with_out)
    _plain: type[_Lease[Any]]
    _gone: type[_Lease[Any]]

    def __init__(self, pool: ObjectPool[T]) -> None:
        self._pool = pool

    def __enter__(self) -> T:
        pool = self._pool
        if pool._gen != _fork_gen:
            pool._after_fork()
        entry = ticket = None
        lock = pool._lock
        try:
            lock.acquire()
            try:
                idle = pool._idle
                if idle:  # idle objects exist only while nobody waits: no barging
                    now = pool._clock()
                    taken = idle[-1]
                    key = id(taken.obj)
                    # No call (or branch) from here to the pop, the last step: a
                    # signal handler raises only at a call or a jump (3.10: any
                    # jump taken; 3.11+: a loop's), so these happen all or none.
                    taken.borrowed_at = now
                    taken.uses += 1
                    pool._in_use[key] = taken
                    pool._borrows += 1
                    entry = taken
                    idle.pop()
            finally:
                lock.release()
            if entry is not None and now < entry.recheck_at:
                validate = pool._validate
                if validate is None or validate(entry.obj):
                    self.obj = obj = entry.obj
                    self.__class__ = self._out  # entered (see _Out)
                    return obj  # type: ignore[no-any-return]
            ticket = _Ticket(entry)
            self.obj = obj = pool._borrow_slow(ticket, None).obj
            self.__class__ = self._out
            return obj  # type: ignore[no-any-return]
        except BaseException:
            self.__class__ = self._plain  # not entered after all (see _Out)
            if lock._is_owned():  # a handler raised as the acquire returned
                lock.release()
            pool._give_back(ticket, entry)
            raise

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.__class__ is self._gone:  # its finalizer queued the object (see _Out)
            return
        self.__class__ = self._plain  # exited (before any call: see _Out)
        pool = self._pool
        obj = self.obj
        lock = pool._lock
        lent: Any = None  # its entry, once read (a hand-off keeps it in _in_use)
        uses = 0
        back = False
        try:
            if ev is None and pool._reset is None and pool._gen == _fork_gen:
                # ``ObjectPool.release``'s fast path, inlined: back to the idle stack
                # when nobody waits and nothing retires it; else the long way.
                lock.acquire()
                try:
                    in_use = pool._in_use
                    key = id(obj)
                    entry = in_use.get(key)
                    if entry is not None:
                        now = pool._clock()
                        if not (
                            pool._waiters
                            or now >= entry.expires_at
                            or entry.epoch != pool._epoch
                            or pool._max_uses
                            or pool._leak_timeout
                        ):
                            recheck = entry.recheck_at
                            if pool._check is not None:
                                recheck = now + pool._check_interval
                                expires = entry.expires_at
                                if expires < recheck:
                                    recheck = expires
                            # No call or branch from here to the append, the last
                            # step (see __enter__; 3.10 also checks at a branch).
                            del in_use[key]
                            pool._use_total += now - entry.borrowed_at
                            entry.last_used = now
                            entry.recheck_at = recheck
                            back = True
                            pool._idle.append(entry)
                            return
                        lent, uses = entry, entry.uses  # (see the handler below)
                finally:
                    lock.release()
                pool.release(obj)
            else:
                discard = ev is not None and not pool._is_harmless(ev, self._keep_on)
                lent = pool._in_use.get(id(obj))
                if lent is not None:
                    uses = lent.uses
                pool.release(obj, discard=discard)
            back = True
        except BaseException:
            # Interrupted (a signal handler raises at any call, a function's first
            # line too): return it all the same, unless release() got that far.
            if lock._is_owned():
                lock.release()
            if not back and pool._lent_still(obj, lent, uses):
                pool.release(obj, discard=ev is not None)
            raise

    def _abandon(self) -> None:
        abandon(self._pool, self.obj)


_NOTHING: Any = object()


@with_out
class _TunedLease(_Lease[T]):
    """``acquire(timeout, keep_on=...)``: its own wait and rule of what to keep."""

    __slots__ = ("_keep_on", "_timeout")

    def __init__(self, pool: ObjectPool[T], timeout: float | None, keep_on: KeepOn) -> None:
        if timeout is not None:
            _number("timeout", timeout, minimum=0)
        if keep_on is not None:
            _check_keep_on(keep_on)
        self._pool = pool
        self._timeout = timeout
        self._keep_on = keep_on

    def __enter__(self) -> T:
        obj: Any = _NOTHING
        try:
            self.obj = obj = self._pool.borrow(self._timeout)
            self.__class__ = self._out  # type: ignore[assignment]  # entered (see _Out)
            return obj  # type: ignore[no-any-return]
        except BaseException:  # after the borrow, before the block: give it back
            self.__class__ = self._plain  # type: ignore[assignment]  # (see _Out)
            if obj is not _NOTHING:
                self._pool.release(obj)
            raise


@with_out
class _MethodLease(_TunedLease[T]):
    """The lease of a pool subclass that overrides ``borrow`` or ``release``:
    both run as written (no inlined fast paths)."""

    __slots__ = ()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.__class__ is self._gone:  # its finalizer queued the object (see _Out)
            return
        self.__class__ = self._plain  # type: ignore[assignment]  # exited (see _Out)
        pool = self._pool
        obj = self.obj
        if ev is None:
            pool.release(obj)
        else:
            pool.release(obj, discard=not pool._is_harmless(ev, self._keep_on))
