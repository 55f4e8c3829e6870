"""Shared pieces of the fault suite: a CLIENT LIST sampler, a tagged background
load, recovery probes and the end-state checks.

Every recovery time measured here is appended to ``RESULTS``; the suite's
conftest prints them as a table at the end of the run.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redispool import PoolError, RedisPool
from redispool.testing import RedisServer


@dataclass
class Result:
    fault: str
    caller_sees: str
    recovery: float | None  # seconds; None: not applicable
    bound: float | None
    test: str


RESULTS: list[Result] = []


FAST = {"connect_timeout": 0.3, "socket_timeout": 0.3, "timeout": 1.0}


def fault_pool(url: str, name: str, **kwargs: Any) -> RedisPool:
    """A small pool with short timeouts, named so ``CLIENT LIST`` can find it."""
    opts: dict[str, Any] = {"min_size": 2, "max_size": 4, "client_name": name, "name": name}
    opts.update(FAST)
    opts.update(kwargs)
    return RedisPool(url, **opts)


def record(fault: str, caller_sees: str, recovery: float | None, bound: float | None) -> None:
    test = _current_test()
    RESULTS.append(Result(fault, caller_sees, recovery, bound, test))
    shown = "n/a" if recovery is None else f"{recovery:.3f}s (bound {bound}s)"
    print(f"[fault] {fault}: caller sees {caller_sees}; recovery {shown} [{test}]")


def _current_test() -> str:
    import os

    return os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]


def side_client(server: RedisServer, **kwargs: Any) -> redis.Redis:
    """A client outside the pool that fails fast (no retries)."""
    opts: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": 1,
        "socket_timeout": 5,
    }
    opts.update(kwargs)
    return redis.Redis.from_url(server.url, **opts)


def kind(exc: BaseException) -> str:
    """``TimeoutError``, or ``RedisPoolTimeout(AuthenticationError)`` for a pool
    error with a cause."""
    name = type(exc).__name__
    cause = exc.__cause__
    if isinstance(exc, PoolError) and cause is not None:
        return f"{name}({type(cause).__name__})"
    return name


def chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until true; return how long it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - t0


# -- the server's view of the pool ------------------------------------------------


def _established_ports(server_port: int) -> set[int] | None:
    """Local ports of ESTABLISHED loopback TCP sockets connected to ``server_port``
    (any process: clients, proxies); None where /proc/net/tcp is unavailable."""
    want = f":{server_port:04X} 01 "
    ports: set[int] = set()
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                if want in line:
                    parts = line.split()
                    if parts[2].endswith(f":{server_port:04X}") and parts[3] == "01":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    except OSError:
        return None
    return ports


class ServerView:
    """Samples ``CLIENT LIST`` in a background thread: how many connections named
    ``name`` the server has.

    A connection the client already closed may linger in the list until the
    server's event loop reads the EOF (e.g. right after a ``DEBUG SLEEP``, the
    server runs the queued ``CLIENT SETNAME`` of a connection whose client gave
    up long ago). So when a sample exceeds ``limit``, it is re-taken counting
    only connections whose client-side socket was ESTABLISHED (``/proc/net/tcp``,
    read before the second ``CLIENT LIST``): everything counted then was open at
    the same instant.
    """

    def __init__(self, server: RedisServer, name: str, limit: int, interval: float = 0.005):
        self.server = server
        self.name = name
        self.limit = limit
        self.interval = interval
        self.samples = 0
        self.max_seen = 0
        self.raw_over = 0  # samples over the limit before the re-check
        self.seen: Counter[int] = Counter()
        self.errors = 0
        self.lock = threading.Lock()  # guards the side connection
        self._side: redis.Redis | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"view-{name}", daemon=True)

    def __enter__(self) -> ServerView:
        self._thread.start()
        wait_for(lambda: self.samples > 0, 5, "the first CLIENT LIST sample")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the CLIENT LIST sampler is stuck"
        with self.lock:
            if self._side is not None:
                self._side.close()
                self._side = None

    def side(self) -> redis.Redis:
        """The sampler's connection (hold ``lock``); made anew after an error."""
        if self._side is None:
            self._side = side_client(self.server, socket_connect_timeout=0.5, socket_timeout=2)
            self._side.ping()
        return self._side

    def _named(self, side: redis.Redis) -> list[dict[str, Any]]:
        return [
            c
            for c in side.client_list()
            if c.get("name") == self.name and "A" not in c.get("flags", "")
        ]

    def count(self) -> int:
        """One sample (see the class docstring)."""
        with self.lock:
            try:
                side = self.side()
                n = len(self._named(side))
                if n > self.limit:
                    self.raw_over += 1
                    live = _established_ports(self.server.port)
                    if live is not None:
                        clients = self._named(side)
                        n = sum(1 for c in clients if int(c["addr"].rsplit(":", 1)[1]) in live)
                return n
            except (redis.RedisError, OSError):
                if self._side is not None:
                    self._side.close()
                    self._side = None
                raise

    def command(self, *args: Any) -> Any:
        """Run a command on the sampler's connection (e.g. when ``maxclients``
        leaves no room for another client)."""
        with self.lock:
            return self.side().execute_command(*args)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.count()
            except (redis.RedisError, OSError):
                self.errors += 1
                self._stop.wait(0.05)
                continue
            self.samples += 1
            self.seen[n] += 1
            if n > self.max_seen:
                self.max_seen = n
            self._stop.wait(self.interval)

    def now(self) -> int:
        return self.count()


# -- a tagged background load ------------------------------------------------------


@dataclass
class Tally:
    ok: int = 0
    checked: int = 0  # replies compared with their own request
    errors: Counter[str] = field(default_factory=Counter)
    misdelivered: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    command_failures: list[tuple[str, float]] = field(default_factory=list)
    ok_times: list[float] = field(default_factory=list)

    def check(self, got: Any, want: Any, what: str) -> None:
        if got == want:
            self.checked += 1
        else:
            self.misdelivered.append(f"{what}: expected {want!r}, got {got!r}")


class Load:
    """``threads`` workers doing tagged SET/GET/ECHO through ``pool.client()``,
    ``pool.redis`` and pipelines; every reply is checked against its own request.
    ``command_failures`` holds (kind, seconds) of failed commands (for
    ``pool.redis``, the borrow included; a borrow that fails is a
    ``RedisPoolTimeout``, another kind)."""

    def __init__(self, pool: RedisPool, threads: int = 4, pause: float = 0.002) -> None:
        self.pool = pool
        self.pause = pause
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> Tally:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert stuck == [], f"load threads stuck: {stuck}"
        return self.tally

    def summary(self) -> str:
        errors = dict(self.tally.errors)
        return f"{self.tally.ok} ok, errors {errors}" if errors else f"{self.tally.ok} ok, none"

    def _work(self, tid: int) -> None:
        seq = 0
        local = Tally()
        while not self._stop.is_set():
            seq += 1
            tag = f"{tid}:{seq}"
            key, val = f"load:{tag}", f"v:{tag}".encode()
            t_cmd = None
            try:
                if seq % 3 == 0:
                    r = self.pool.redis
                    t_cmd = time.monotonic()  # the borrow is inside: an idle one, at once
                    local.check(r.echo(val), val, "pool.redis ECHO")
                    t_cmd = None
                elif seq % 3 == 1:
                    with self.pool.client() as c:
                        t_cmd = time.monotonic()
                        local.check(c.set(key, val), True, "SET")
                        local.check(c.get(key), val, "GET")
                        t_cmd = None
                else:
                    with self.pool.client() as c:
                        t_cmd = time.monotonic()
                        p = c.pipeline(transaction=False)
                        p.set(key, val).get(key).echo(tag)
                        local.check(p.execute(), [True, val, tag.encode()], "pipeline")
                        t_cmd = None
                local.ok += 1
                local.ok_times.append(time.monotonic())
            except (redis.RedisError, PoolError) as exc:
                local.errors[kind(exc)] += 1
                if t_cmd is not None:
                    local.command_failures.append((kind(exc), time.monotonic() - t_cmd))
                self._stop.wait(0.01)
            except Exception as exc:
                local.unexpected.append(repr(exc))
            if self.pause:
                self._stop.wait(self.pause)
        with self._lock:
            t = self.tally
            t.ok += local.ok
            t.checked += local.checked
            t.errors.update(local.errors)
            t.misdelivered += local.misdelivered
            t.unexpected += local.unexpected
            t.command_failures += local.command_failures
            t.ok_times += local.ok_times


# -- recovery and end state ---------------------------------------------------------


def probe(pool: RedisPool, tag: str, wait: float = 0.5) -> bool:
    """One tagged borrow + SET/GET; True if it worked and read its own reply."""
    try:
        with pool.client(wait=wait) as r:
            key, val = f"probe:{tag}", f"p:{tag}".encode()
            if r.set(key, val) is not True or r.get(key) != val:
                raise AssertionError(f"probe {tag} read someone else's reply")
            return True
    except (redis.RedisError, PoolError):
        return False


def recovery(pool: RedisPool, since: float, bound: float, what: str) -> float:
    """Seconds from ``since`` (the end of the fault) until a borrow + command
    succeeds; fails the test past ``bound``."""
    i = 0
    while True:
        i += 1
        if probe(pool, f"{what}:{i}", wait=min(0.5, bound)):
            took = time.monotonic() - since
            assert took <= bound, f"{what}: recovered after {took:.3f}s > {bound}s"
            return took
        if time.monotonic() - since > bound:
            pytest.fail(f"{what}: no successful borrow within {bound}s of the fault ending")
        time.sleep(0.01)


def check_end_state(pool: RedisPool, view: ServerView | None, max_size: int) -> None:
    """No connection borrowed, none waiting, within bounds; the server never saw
    more than ``max_size`` of the pool's connections."""
    s = pool.stats()
    assert s.in_use == 0, s
    assert s.waiting == 0, s
    assert s.size <= s.max_size <= max_size, s
    if view is not None:
        if view.running:  # the end state too
            seen = view.samples
            wait_for(lambda: view.samples >= seen + 2, 5, "two more CLIENT LIST samples")
        assert view.samples >= 3, f"only {view.samples} CLIENT LIST samples"
        print(
            f"[view] {view.samples} samples, max {view.max_seen} of {max_size}, "
            f"{view.raw_over} over the limit before the ESTABLISHED re-check"
        )
        assert view.max_seen <= max_size, (
            f"server saw {view.max_seen} > {max_size} pool connections: {dict(view.seen)}"
        )


def check_load(tally: Tally) -> None:
    assert tally.misdelivered == [], tally.misdelivered[:5]
    assert tally.unexpected == [], tally.unexpected[:5]


def describe(errors: Counter[str] | dict[str, int]) -> str:
    if not errors:
        return "nothing (no error)"
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1]))
