"""Small parts of ObjectPool: entries, waiters, the lease, option validation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    from .pool import ObjectPool

T = TypeVar("T")

_INF = float("inf")
_SLOT = object()  # handed to a waiter instead of an object: "a slot is yours, create"

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


class _Ticket:
    """What one borrow holds, written under the pool's lock by whoever hands it
    something: None (nothing yet), ``_SLOT`` (a reserved slot), an ``_Entry``
    (a borrowed object) or, for a waiter, an exception to raise. An interrupted
    borrow gives back what its ticket says. ``checking``: its object is being
    vetted (interrupted then, it is discarded). ``doomed``: an object counted
    in ``closing`` (for ``reason``) that is yet to be destroyed. ``lock``:
    released on hand-off to a queued ticket; ``start``: when its borrow began
    (the hand-off counts the wait)."""

    __slots__ = ("checking", "doomed", "lock", "reason", "result", "start")

    def __init__(self, result: object = None) -> None:
        self.result = result
        self.checking = False
        self.doomed: _Entry | None = None
        self.reason = ""
        self.lock: Any = None
        self.start = 0.0

    def queue(self, start: float) -> None:
        """Arm for a wait in the queue: a fresh lock, held until the hand-off."""
        self.start = start
        lock = self.lock = threading.Lock()
        lock.acquire()


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


def _acquire_anyway(lock: Any) -> BaseException | None:
    """Take ``lock`` even if an async exception (gevent.Timeout, Ctrl-C) lands
    while waiting for it; return that exception so the caller can re-raise it
    once its bookkeeping is done."""
    pending: BaseException | None = None
    while True:
        try:
            lock.acquire()
            return pending
        except BaseException as exc:
            pending = exc


class _Lease(Generic[T]):
    """The context manager ``ObjectPool.acquire()`` returns (pool defaults)."""

    __slots__ = ("_pool", "obj")
    _keep_on: KeepOn = None  # (a slot of _TunedLease)

    def __init__(self, pool: ObjectPool[T]) -> None:
        self._pool = pool

    def __enter__(self) -> T:
        self.obj = obj = self._pool.borrow()
        return obj

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self._pool
        if ev is None:
            pool.release(self.obj)
        else:
            pool.release(self.obj, discard=not pool._is_harmless(ev, self._keep_on))


class _TunedLease(_Lease[T]):
    """``acquire(timeout, keep_on=...)``: its own wait and rule of what to keep."""

    __slots__ = ("_keep_on", "_timeout")

    def __init__(self, pool: ObjectPool[T], timeout: float | None, keep_on: KeepOn) -> None:
        self._pool = pool
        self._timeout = timeout
        self._keep_on = keep_on

    def __enter__(self) -> T:
        self.obj = obj = self._pool.borrow(self._timeout)
        return obj
