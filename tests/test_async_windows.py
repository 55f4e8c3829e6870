"""What an exception landing between two steps (a signal handler raising at a
call, Ctrl-C) leaves behind in the helpers and the Redis leases: each test puts
one exactly in such a window (a trace hook raising at a line, or a part made to
raise) and checks nothing stays taken: a half-open trial, a single-flight
leader, a counted job, a thread that never started, a borrowed connection."""

from __future__ import annotations

import gc
import inspect
import linecache
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import Any

import pytest
import redis

from redispool import PoolError, RedisPool
from redispool import redis_pool as redis_pool_mod
from redispool.helpers import CircuitBreaker
from redispool.helpers._singleflight import SingleFlight
from redispool.helpers._writer import BackgroundWriter
from redispool.helpers.analytics import Analytics
from redispool.redis_adapter import ConnectionPool

from ._signal_storm import execute_command_window
from .helpers import FakeClock


class Interrupt(BaseException):
    """What the trace hook raises (as KeyboardInterrupt would)."""


@contextmanager
def at_event(
    code: CodeType, when: Callable[[FrameType, str], bool], act: Callable[[FrameType], object]
) -> Iterator[list[int]]:
    """Run ``act(frame)`` once, at the first trace event in ``code`` ("call":
    before its first line; "line"; "return") for which ``when(frame, event)``
    holds (``act`` is not traced; what it raises lands in ``code`` there);
    yields a list that gets the line number."""
    fired: list[int] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if not fired and when(frame, event):
            fired.append(frame.f_lineno)
            act(frame)
        return local

    def hook(frame: FrameType, event: str, arg: Any) -> Any:
        return local(frame, event, arg) if frame.f_code is code else None

    sys.settrace(hook)
    try:
        yield fired
    finally:
        sys.settrace(None)


def interrupt(frame: FrameType) -> None:
    raise Interrupt(frame.f_lineno)


def raise_at_line(code: CodeType, when: Callable[[FrameType], bool]) -> Any:
    """Raise ``Interrupt`` once, at the first line event in ``code`` for which
    ``when(frame)`` holds; yields a list that gets the line number."""
    return at_event(code, lambda frame, event: event == "line" and when(frame), interrupt)


def line_of(func: Callable[..., Any], text: str) -> int:
    """The number of the (first) line of ``func`` containing ``text``."""
    lines, first = inspect.getsourcelines(func)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_a_half_open_trial_interrupted_as_it_is_granted_is_given_back() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, clock=clock)
    breaker.failure()
    clock.advance(2)  # half-open: the next enter() is the trial
    after = line_of(CircuitBreaker.enter, "return granted")  # the lock let go, trial granted
    with raise_at_line(CircuitBreaker.enter.__code__, lambda f: f.f_lineno == after) as fired:
        with pytest.raises(Interrupt):
            breaker.enter()
    assert fired, "the window was not reached"
    assert breaker.enter() not in (None, 0)  # the next call may try (it was stuck at None)


def test_a_single_flight_leader_interrupted_after_registering_lands_its_flight() -> None:
    flights = SingleFlight()

    after = line_of(SingleFlight.do, "if not leader:")  # registered, the lock let go

    with raise_at_line(SingleFlight.do.__code__, lambda f: f.f_lineno == after) as fired:
        with pytest.raises(Interrupt):
            flights.do("k", lambda flight: 1, lambda: 2, wait=5.0)
    assert fired
    assert flights.in_flight() == 0
    t0 = time.monotonic()
    assert flights.do("k", lambda flight: 3, lambda: 4, wait=5.0) == 3  # a new leader
    assert time.monotonic() - t0 < 1.0  # not a follower waiting out the dead one


def test_a_writer_submit_interrupted_after_its_put_does_not_stall_flush() -> None:
    writer = BackgroundWriter(10)
    writer.submit(lambda: None)  # started
    assert writer.flush(2.0)
    ran = threading.Event()

    after = line_of(BackgroundWriter.submit, "self._pending += 1")  # put, not counted

    with raise_at_line(BackgroundWriter.submit.__code__, lambda f: f.f_lineno == after) as fired:
        with pytest.raises(Interrupt):
            writer.submit(ran.set)
    assert fired
    assert ran.wait(2.0)
    t0 = time.monotonic()
    assert writer.flush(1.0)  # nothing pending: at once, not after the timeout
    assert time.monotonic() - t0 < 0.5
    assert writer.close(1.0)


def test_a_writer_start_cut_short_after_the_thread_started_leaves_one_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handler raising in ``start()``'s wait, once the thread is running: a
    job another thread queued meanwhile still runs (the started thread takes
    over), and only one writer ever runs jobs (two would run them out of order)."""
    writer = BackgroundWriter(1000, name="cut-short-writer")
    real_start = threading.Thread.start
    cut = []
    order: list[int] = []

    def start_then_raise(self: threading.Thread) -> None:
        real_start(self)
        if not cut:
            cut.append(self)
            other = threading.Thread(target=lambda: writer.submit(lambda: order.append(-1)))
            real_start(other)  # queued behind the thread being started
            other.join(2)
            raise Interrupt("in start()")

    monkeypatch.setattr(threading.Thread, "start", start_then_raise)
    with pytest.raises(Interrupt):
        writer.submit(lambda: order.append(-2))  # (never queued)
    monkeypatch.undo()
    assert writer.flush(2.0) and order == [-1]  # no later submit needed
    for i in range(200):
        assert writer.submit(lambda i=i: order.append(i))
    assert writer.flush(5.0)
    assert order == [-1, *range(200)]
    writers = [t for t in threading.enumerate() if t.name == "cut-short-writer"]
    assert writers == [writer._thread] == cut  # the started one took over
    assert writer.close(2.0)


def test_an_analytics_flush_thread_that_failed_to_start_is_started_next_time(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    pool = RedisPool(redis_url, max_size=2)
    stats = Analytics(pool, buffered=True)
    real_start = threading.Thread.start
    calls = []

    def failing_start(self: threading.Thread) -> None:
        if not self.name.startswith("redispool-analytics"):
            return real_start(self)  # (the pool's upkeep, on the direct write)
        calls.append(self.name)
        if len(calls) == 1:
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    assert stats.incr("hits") == 1  # no thread to flush it: written at once
    assert stats.incr("hits") is None  # buffered: the thread started
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert len(calls) == 2 and stats._thread is not None and stats._thread.is_alive()
    stats.flush()
    assert stats.get("hits") == 2
    stats.close()  # joins a thread that runs
    pool.close()


@pytest.mark.parametrize("how", ["connection", "client"])
def test_a_lease_interrupted_while_restoring_its_timeout_gives_the_connection_back(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, how: str
) -> None:
    pool = RedisPool(redis_url, max_size=1, timeout=1)
    real = redis_pool_mod.set_io_timeout

    def restore(conn: Any, timeout: Any, temporary: bool = False) -> None:
        if not temporary:  # the restore on the way back
            raise Interrupt("restoring the timeout")
        real(conn, timeout, temporary=temporary)

    monkeypatch.setattr(redis_pool_mod, "set_io_timeout", restore)
    with pytest.raises(Interrupt):
        with getattr(pool, how)(timeout=0.5):
            pass
    monkeypatch.setattr(redis_pool_mod, "set_io_timeout", real)
    s = pool.stats()
    assert s.in_use == 0 and s.size == 0  # discarded: its timeout is unknown
    with pool.client(wait=1) as r:  # and the one slot lends again
        assert r.ping()
    pool.close()


@pytest.mark.parametrize(
    "where, client", [("release", "own"), ("_put", "own"), ("_put", "pool.redis")]
)
def test_a_drop_in_release_cut_short_gives_the_connection_back(
    redis_url: str, where: str, client: str
) -> None:
    """A ``redis.Redis(connection_pool=pool.as_redis_pool())`` returns its
    connection through the adapter's ``release``, ``pool.redis`` through its
    own inline return: an exception landing there or at ``_put``'s first line,
    before the connection is back, gives it back."""
    pool = RedisPool(redis_url, min_size=0, max_size=1, timeout=1.0)
    r = pool.redis if client == "pool.redis" else redis.Redis(connection_pool=pool.as_redis_pool())
    r.set("window:k", "v")
    if where == "release":
        code = ConnectionPool.release.__code__
        at = line_of(ConnectionPool.release, "self.redis_pool._put(connection)")
    else:
        code = RedisPool._put.__code__
        at = code.co_firstlineno + 2  # (its first line of code, after the docstring)
    with raise_at_line(code, lambda f: f.f_lineno == at) as fired:
        with pytest.raises(Interrupt):
            r.get("window:k")
    assert fired == [at]
    s = pool.stats()
    assert s.in_use == 0 and s.size == s.idle, s  # discarded or back, not kept
    assert r.get("window:k") == b"v"  # (max_size=1: a kept one would time this out)
    pool.close()


def test_a_drop_in_command_interrupted_in_redis_pys_borrow_window_gives_it_back(
    redis_url: str,
) -> None:
    """redis-py's ``_execute_command`` borrows before the ``try`` that gives the
    connection back: an exception landing in between (at its next line) kept it
    for good, and with ``max_size=1`` every later command timed out.
    ``pool.redis`` borrows around that path."""
    pool = RedisPool(redis_url, min_size=0, max_size=1, timeout=0.5)
    ((code, (lines, _)),) = execute_command_window().items()
    source = linecache.getlines(code.co_filename)
    at = min(n for n in lines if source[n - 1].strip()[:1] not in ("", "#"))  # after the borrow
    with raise_at_line(code, lambda f: f.f_lineno == at) as fired:
        with pytest.raises(Interrupt):
            pool.redis.set("window:b", "v")
    assert fired == [at]
    s = pool.stats()
    assert s.in_use == 0 and s.size == s.idle, s
    assert pool.redis.set("window:b", "w") and pool.redis.get("window:b") == b"w"
    pool.close()


@pytest.mark.parametrize("how", ["connection", "client"])
def test_a_redis_lease_cut_short_at_its_exits_first_instruction_is_reclaimed(
    redis_url: str, how: str
) -> None:
    """``with pool.client()`` whose ``__exit__`` is interrupted at its first
    instruction (no code of ours runs to catch it): the connection was kept for
    good. Once the lease is gone, the pool discards it before the next borrow
    waits, and a client kept past the block refuses."""
    pool = RedisPool(redis_url, min_size=0, max_size=1, timeout=0.5)
    lease = getattr(pool, how)()
    with at_event(type(lease).__exit__.__code__, lambda f, e: e == "call", interrupt) as fired:
        with pytest.raises(Interrupt):
            with lease as kept:
                pass
    assert fired
    del lease
    if how == "client":
        with pytest.raises(PoolError, match="block has ended"):
            kept.ping()
    with pool.client(wait=0.5) as r:  # the one slot: a RedisPoolTimeout before
        assert r.ping()
    s = pool.stats()
    assert s.in_use == 0 and s.destroyed_by_reason == {"dirty": 1}, s
    pool.close()


@pytest.mark.parametrize("how", ["connection", "client"])
def test_a_redis_lease_exited_after_its_finalizer_ran_is_not_reclaimed_under_another_borrower(
    redis_url: str, how: str
) -> None:
    """A lease passed to a generator (made before it) that a reference cycle
    holds: the collector runs the lease's finalizer first (its object queued as
    abandoned), then the generator's, whose ``with`` gives the connection back
    (clean: to the idle stack). The next borrower got it, and the pool's
    reclaim then disconnected it under that borrower, whose return raised."""
    pool = RedisPool(redis_url, min_size=0, max_size=2, timeout=1)

    def block(lease: Any) -> Iterator[None]:
        with lease:
            yield

    class Holder:
        pass

    holder = Holder()
    holder.it = block(getattr(pool, how)())  # type: ignore[attr-defined]
    holder.me = holder  # type: ignore[attr-defined]
    next(holder.it)  # type: ignore[attr-defined]
    del holder
    gc.collect()
    with pool.connection() as mine:  # the idle one, had the generator's exit given it back
        with pool.client() as other:  # a borrow on the slow path: reclaims first
            assert other.ping()
        assert mine._sock is not None  # not disconnected under this block
        mine.send_command("PING")
        assert mine.read_response() == b"PONG"
    s = pool.stats()
    assert s.in_use == 0 and s.destroyed_by_reason == {"dirty": 1}, s
    pool.close()
