"""Quiet logging for things that repeat: an outage is logged as its state
changes (down, still down every ``every`` seconds, up again), slow
operations as a summary per interval (count and worst)."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OutageLog", "SlowLog", "describe_error"]

_LOGS: weakref.WeakSet[OutageLog | SlowLog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for each in list(_LOGS):  # a lock held by a thread that did not fork stays held
        each._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def describe_error(exc: BaseException) -> str:
    """``ConnectionError: Connection refused``: the class of ``exc`` and the OS
    error under it (redis-py's own ``repr`` says only ``network:ConnectionError``)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return f"{type(exc).__name__}: {cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OutageLog:
    """Failures to open a connection, logged as state changes only.

    The first failure logs "down" (a WARNING naming the error), a failure
    with another reason logs at once, others only as "still down" every
    ``every`` seconds; the first success after an outage logs "up again"
    (also a WARNING, so that whoever saw it go down sees it come back).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the outage began
        self._next = 0.0  # when "still down" is due
        self._failures = 0
        self._reason = ""
        _LOGS.add(self)

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        reason = describe_error(exc)
        with self._lock:
            now = self._clock()
            self._failures += 1
            args: tuple[object, ...]
            if self._since is None:
                self._since, self._next, self._reason = now, now + self.every, reason
                msg, args = "%s failed: %s; retrying in the background", (reason,)
            elif reason != self._reason or now >= self._next:
                self._next, self._reason = now + self.every, reason
                msg = "%s still failing after %.0f s (%d attempts): %s"
                args = (now - self._since, self._failures, reason)
            else:
                return
        self.logger.warning(msg, self.what, *args)

    def succeeded(self) -> None:
        if self._since is None:  # the common case: no lock
            return
        with self._lock:
            if self._since is None:
                return
            took, failures = self._clock() - self._since, self._failures
            self._since, self._failures, self._reason = None, 0, ""
        self.logger.warning(
            "%s works again after %.1f s (%d failed attempts)", self.what, took, failures
        )


@dataclass
class _Interval:
    ends: float
    held_back: int = 0
    worst: float = 0.0
    worst_op: str = ""


class SlowLog:
    """Slow operations: the first in each interval is logged as it happens, the
    rest are counted and summarised (count and worst) with the first one of
    the next interval."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._intervals: dict[str, _Interval] = {}
        _LOGS.add(self)

    def slow(self, what: str, op: str, seconds: float) -> None:
        """``what`` (e.g. ``cache 'posts'``) spent ``seconds`` on ``op``."""
        with self._lock:
            now = self._clock()
            last = self._intervals.get(what)
            if last is not None and now < last.ends:
                last.held_back += 1
                if seconds > last.worst:
                    last.worst, last.worst_op = seconds, op
                return
            self._intervals[what] = _Interval(now + self.every)
        if last is not None and last.held_back:
            self.logger.warning(
                "%s: %d more slow operations in the last %.0f s, the slowest %s took %.1f ms",
                what,
                last.held_back,
                self.every,
                last.worst_op,
                last.worst * 1000,
            )
        self.logger.warning("%s: %s took %.1f ms", what, op, seconds * 1000)
