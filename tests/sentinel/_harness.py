"""Shared parts of the Sentinel tests: a +switch-master clock and a write load
whose every acknowledged write is recorded (the oracle for lost writes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from redispool import RedisPool
from redispool.testing.sentinel import SentinelSetup


class SwitchClock:
    """When the first sentinel announced ``+switch-master`` (listening on all)."""

    def __init__(self, setup: SentinelSetup) -> None:
        self.at: float | None = None
        self.message: str | None = None
        self._event = threading.Event()
        self._stop = threading.Event()
        self._subs = []
        for i in range(len(setup.sentinels)):
            sub = setup.sentinel_client(i).pubsub()
            sub.subscribe("+switch-master")
            sub.get_message(timeout=2)  # the subscribe confirmation
            self._subs.append(sub)
        self._threads = [
            threading.Thread(target=self._listen, args=(sub,), daemon=True) for sub in self._subs
        ]
        for t in self._threads:
            t.start()

    def _listen(self, sub: Any) -> None:
        while not self._stop.is_set():
            try:
                msg = sub.get_message(timeout=0.1)
            except (redis.RedisError, OSError, ValueError):
                return
            if msg is not None and msg["type"] == "message":
                now = time.monotonic()
                if self.at is None or now < self.at:
                    self.at, self.message = now, msg["data"]
                self._event.set()
                return

    def wait(self, timeout: float = 20.0) -> float:
        assert self._event.wait(timeout), f"no +switch-master within {timeout}s"
        assert self.at is not None
        return self.at

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for sub in self._subs:
            sub.close()


class Writes:
    """Threads writing unique keys through ``pool``; every acknowledged write is
    recorded with the time of its reply. Errors are counted and retried."""

    def __init__(self, pool: RedisPool, threads: int = 3, pinned: bool = True) -> None:
        self.pool = pool
        self.acked: list[tuple[float, str]] = []
        self.errors: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n, pinned and n == 0), daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> Writes:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _record(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.acked.append((now, key))

    def _run(self, n: int, pinned: bool) -> None:
        seq = 0
        while not self._stop.is_set():
            try:
                if pinned:  # many writes on one borrowed connection
                    with self.pool.client() as r:
                        for _ in range(20):
                            seq += 1
                            key = f"w:{n}:{seq}"
                            r.set(key, 1)
                            self._record(key)
                else:
                    seq += 1
                    key = f"w:{n}:{seq}"
                    self.pool.redis.set(key, 1)
                    self._record(key)
            except redis.RedisError as exc:
                with self._lock:
                    self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                time.sleep(0.01)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        wait_until(lambda: len(self.acked) >= count, timeout, f"{count} writes")

    def missing_on(self, client: redis.Redis) -> list[tuple[float, str]]:
        """The acknowledged writes ``client``'s server does not have."""
        with self._lock:
            acked = list(self.acked)
        missing = []
        for i in range(0, len(acked), 500):
            chunk = acked[i : i + 500]
            found = client.execute_command("MGET", *[k for _, k in chunk])
            missing += [item for item, value in zip(chunk, found, strict=True) if value is None]
        return missing

    def first_ack_after(self, at: float) -> float | None:
        with self._lock:
            later = [t for t, _ in self.acked if t > at]
        return min(later) if later else None


def wait_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def ports_in_pool(pool: RedisPool) -> set[int]:
    return {int(c.port) for c in pool._pool.objects()}
