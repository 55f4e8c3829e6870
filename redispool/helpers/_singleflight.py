"""In-process "single flight": concurrent calls for one key run the work once."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("done", "followers", "ok", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.result: T | None = None
        self.followers = 0


class SingleFlight:
    """The first caller for a key (the leader) runs ``fn``; callers arriving while it
    runs (followers) wait at most ``wait`` seconds for its result and, if the
    leader failed or is too slow, run ``fallback`` themselves."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[Any]] = {}
        self.shared = 0  # follower calls served by a leader's result

    def do(self, key: str, fn: Callable[[], T], fallback: Callable[[], T], wait: float) -> T:
        if self._pid != os.getpid():  # forked: the parent's flights are not ours
            self._lock = threading.Lock()
            self._flights = {}
            self._pid = os.getpid()
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                flight.followers += 1
        if not leader:
            if flight.done.wait(wait) and flight.ok:
                self.shared += 1
                return flight.result  # type: ignore[return-value]
            return fallback()
        try:
            result = fn()
            flight.result, flight.ok = result, True
            return result
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def in_flight(self) -> int:
        return len(self._flights)
