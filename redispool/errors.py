"""Exceptions raised by redispool."""

from __future__ import annotations

__all__ = ["PoolClosed", "PoolError", "PoolTimeout", "TooManyWaiters"]


class PoolError(Exception):
    """Base class of every error a pool raises."""


class PoolTimeout(PoolError):
    """No object could be borrowed in time (or creating one keeps failing).

    When the pool could not create objects, the last factory error is the
    ``__cause__``.
    """


class TooManyWaiters(PoolTimeout):
    """The wait queue is full (``max_waiting``): the borrow failed at once."""


class PoolClosed(PoolError):
    """The pool is closed (or was closed while the caller waited)."""
