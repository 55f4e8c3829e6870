"""A model of ``with pool.acquire():`` that keeps only its essential steps, for
``bench_pool.py``: how cheap the lease could be in CPython at all.

It keeps what no pool of this design can drop: the call to ``acquire()`` and a
lease object, two round trips on a reentrant lock, two clock reads (borrow
time; return time for lifetime, idle eviction and use statistics), the
in-use map keyed by ``id()``, the idle stack, the use count, and the
fast-path tests a return needs (waiters, lifetime, epoch). It leaves out what
the real lease also does: the fork check on each side, ``reset``/``max_uses``/
``leak_timeout`` tests, the health-check schedule, ``validate``, and the
bookkeeping that makes a signal handler's exception harmless at any step. Not a
pool: one object, one thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

_INF = float("inf")
_new = object.__new__


class _Entry:
    __slots__ = ("borrowed_at", "epoch", "expires_at", "last_used", "obj", "recheck_at", "uses")

    def __init__(self, obj: object) -> None:
        self.obj = obj
        self.borrowed_at = self.last_used = 0.0
        self.recheck_at = self.expires_at = _INF
        self.uses = self.epoch = 0


class FloorPool:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._idle: deque[_Entry] = deque([_Entry(object())])
        self._in_use: dict[int, _Entry] = {}
        self._waiters: deque[Any] = deque()
        self._clock = time.monotonic
        self._borrows = self._epoch = 0
        self._use_total = 0.0

    def acquire(self, timeout: float | None = None, *, keep_on: Any = None) -> _Lease:
        if timeout is None and keep_on is None:
            lease: _Lease = _new(_Lease)
            lease._pool = self
            return lease
        raise NotImplementedError


class _Lease:
    __slots__ = ("_pool", "obj")
    _pool: FloorPool

    def __enter__(self) -> object:
        pool = self._pool
        lock = pool._lock
        lock.acquire()
        try:
            idle = pool._idle
            now = pool._clock()
            entry = idle[-1]
            key = id(entry.obj)
            entry.borrowed_at = now
            entry.uses += 1
            pool._in_use[key] = entry
            pool._borrows += 1
            idle.pop()
        finally:
            lock.release()
        if now < entry.recheck_at:
            self.obj = obj = entry.obj
            return obj
        raise NotImplementedError

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        pool = self._pool
        obj = self.obj
        lock = pool._lock
        lock.acquire()
        try:
            in_use = pool._in_use
            key = id(obj)
            entry = in_use.get(key)
            if entry is not None:
                now = pool._clock()
                if not (pool._waiters or now >= entry.expires_at or entry.epoch != pool._epoch):
                    del in_use[key]
                    pool._use_total += now - entry.borrowed_at
                    entry.last_used = now
                    pool._idle.append(entry)
        finally:
            lock.release()
