"""In-process "single flight": concurrent calls for one key run the work once and
share its outcome, its value or its exception (as Go's singleflight does)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Flight", "SingleFlight"]

T = TypeVar("T")


class Flight(Generic[T]):
    """One run of the work. The leader may ``seal()`` it (later callers start a
    new flight) and set ``share_upto``: only the first ``share_upto`` followers
    may take its value (the others joined after what made the value valid)."""

    __slots__ = ("_key", "_owner", "done", "error", "followers", "ok", "result", "share_upto")

    def __init__(self, owner: SingleFlight, key: str) -> None:
        self._owner, self._key = owner, key
        self.done = threading.Event()
        self.ok = False
        self.result: T | None = None
        self.error: Exception | None = None
        self.followers = 0  # joined so far
        self.share_upto = sys.maxsize

    def seal(self) -> int:
        """Let no one else join; how many followers joined."""
        with self._owner._lock:
            self._owner._forget(self._key, self)
            return self.followers


class SingleFlight:
    """The first caller for a key (the leader) runs ``fn(flight)``; callers arriving
    while it runs (followers) wait at most ``wait`` seconds and share its outcome:
    its result (if ``share_upto`` allows), or the same exception raised again.
    If the leader is too slow, was interrupted (a ``BaseException`` such as
    ``KeyboardInterrupt``: its own, not theirs) or its value is not theirs to
    take, followers run ``fallback`` themselves."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._flights: dict[str, Flight[Any]] = {}
        self.shared = 0  # follower calls served by a leader's result
        self.shared_errors = 0  # follower calls that raised the leader's exception

    def _forget(self, key: str, flight: Flight[Any]) -> None:
        if self._flights.get(key) is flight:  # (lock held)
            del self._flights[key]

    def do(
        self,
        key: str,
        fn: Callable[[Flight[T]], T],
        fallback: Callable[[], T],
        wait: float,
        copy: Callable[[T], T] | None = None,
    ) -> T:
        """``copy``: what a follower gets of the leader's result, its own copy
        (if it raises, the follower runs ``fallback``)."""
        if self._pid != os.getpid():  # forked: the parent's flights are not ours
            self._lock = threading.Lock()
            self._flights = {}
            self._pid = os.getpid()
        leader = False
        flight: Flight[T] | None = None
        try:  # (from the registration on: the leader always lands its flight)
            with self._lock:
                flight = self._flights.get(key)
                if flight is None:
                    flight = Flight(self, key)
                    self._flights[key] = flight
                    leader = True  # (no call between the store and this line)
                    index = -1
                else:
                    index = flight.followers
                    flight.followers += 1
            if not leader:
                if flight.done.wait(wait):
                    if flight.ok and index < flight.share_upto:
                        result = flight.result
                        if copy is not None:
                            try:
                                result = copy(result)  # type: ignore[arg-type]
                            except Exception:
                                return fallback()
                        self.shared += 1
                        return result  # type: ignore[return-value]
                    if flight.error is not None:
                        self.shared_errors += 1
                        raise flight.error
                return fallback()
            try:
                result = fn(flight)
                flight.result, flight.ok = result, True
                return result
            except Exception as exc:
                flight.error = exc
                raise
        finally:
            if leader:
                try:
                    with self._lock:
                        self._forget(key, flight)  # type: ignore[arg-type]
                finally:
                    flight.done.set()  # type: ignore[union-attr]

    def in_flight(self) -> int:
        return len(self._flights)
