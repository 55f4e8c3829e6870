"""What an exception landing between two steps of the Sentinel code (a signal
handler raising at a call, Ctrl-C) leaves behind, and what a second thread
arriving between two steps does: each test puts one exactly in such a window
(a trace hook raising, or acting, at a line) and checks nothing is left held,
stale or running twice. The signal storm of test_sentinel_signals.py found each
of these; here each is pinned."""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import Any

import pytest

from redispool import RedisPool
from redispool._sentinel_watch import _drop, _Link, _subscribe
from redispool.sentinel import SentinelService

from ..test_async_windows import Interrupt, at_event, interrupt, line_of, raise_at_line


@contextmanager
def raise_at_event(count: int, files: tuple[str, ...]) -> Iterator[list[str]]:
    """Raise ``Interrupt`` at the ``count``-th line event in a frame of ``files``;
    yields a list that gets where."""
    fired: list[str] = []
    seen = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen
        if event == "line" and not fired:
            seen += 1
            if seen == count:
                fired.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
                raise Interrupt(fired[0])
        return local

    def hook(frame: FrameType, event: str, arg: Any) -> Any:
        name = frame.f_code.co_filename.replace("\\", "/")
        return local if any(f in name for f in files) else None

    sys.settrace(hook)
    try:
        yield fired
    finally:
        sys.settrace(None)


def act_at_line(code: CodeType, line: int, action: Callable[[], object]) -> Any:
    """Run ``action()`` once, just before ``line`` of ``code`` runs (as another
    thread could, there)."""

    def at_line(frame: FrameType, event: str) -> bool:
        return event == "line" and frame.f_lineno == line

    return at_event(code, at_line, lambda frame: action())


def test_a_sentinel_query_cut_short_at_any_line_keeps_nothing_open_nor_owed(sentinel_setup):
    """Cut short at each line of a query in turn (Sentinel's code, redis-py's
    connection and client), the next query still reads its own reply, and once
    collected no connection is left open beyond the one kept. (Through
    redis-py's client and pool, a query cut short between ``get_connection()``
    and its ``try`` kept the connection borrowed from that pool for good, its
    socket open.)"""
    setup = sentinel_setup
    service = SentinelService(
        setup.addresses[:1], setup.service, "primary", {"client_name": "windows"}
    )
    want = service._ask_primary(0)
    files = ("redispool/sentinel.py", "redis/client.py", "redis/connection.py")
    admin = setup.sentinel_client(0)

    def ours() -> int:
        return sum(1 for x in admin.client_list() if x.get("name") == "windows")

    try:
        for count in range(1, 2000):
            with raise_at_event(count, files) as fired:
                try:
                    service._ask_primary(0)
                except Interrupt:
                    pass
            if not fired:
                break
            assert service._ask_primary(0) == want, fired  # no reply left owed
            if ours() > 1:
                gc.collect()  # (one dropped unreferenced in a cycle)
                assert ours() <= 1, fired  # nothing held open
        assert count > 20, "the query was not traced"
    finally:
        service.close()
        admin.close()


def test_the_listener_subscribes_again_after_more_than_100_connections(sentinel_setup):
    """The listener (and discovery) make their sentinel connections themselves:
    through the sentinel client pool's ``make_connection()`` each counted against
    its ``max_connections`` (100 in redis-py 8) for good, and the 101st
    re-subscription failed with "Too many connections"."""
    setup = sentinel_setup
    service = SentinelService(setup.addresses, setup.service, "primary", {})
    link = _Link()
    try:
        for i in range(150):
            assert _subscribe(service, 0, link, time.monotonic()), i
            _drop(link)
        assert service._ask_primary(0)[2]  # and discovery still asks
    finally:
        service.close()


def _listener_threads(service: SentinelService) -> list[threading.Thread]:
    name = f"redispool-sentinel-{service.service_name}-{service.role}"
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_two_threads_restarting_the_listener_leave_one_running(sentinel_setup):
    """A second thread calling ``ensure_listener()`` between the first one's lock
    and its ``start()`` sees a listener not alive (not started yet) and starts
    its own: the first one's, started next, must end at once (it ran for good,
    a second subscription to every sentinel, until the pool closed)."""
    setup = sentinel_setup
    pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=0)
    service: SentinelService = pool._sentinel  # type: ignore[attr-defined]
    try:
        first = service._listener
        assert first is not None
        first.stop()
        first._thread.join(5)
        assert not _listener_threads(service)
        line = line_of(SentinelService.ensure_listener, "listener.start()")
        with act_at_line(
            SentinelService.ensure_listener.__code__, line, service.ensure_listener
        ) as done:
            service.ensure_listener()
        assert done
        deadline = time.monotonic() + 3
        while len(_listener_threads(service)) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_listener_threads(service)) == 1
        assert service._listener is not None and service._listener.alive()
    finally:
        pool.close()


def test_a_move_cut_short_after_the_generation_moved_still_drains(sentinel_setup):
    """Cut short once the generation moved (at its log line), a switch still
    drains the pool: else each idle connection of the old generation refused
    its next borrower's first command ("moved away")."""
    setup = sentinel_setup
    pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=0, max_size=2)
    service: SentinelService = pool._sentinel  # type: ignore[attr-defined]
    try:
        with pool.client() as a, pool.client() as b:  # two idle connections
            a.ping()
            b.ping()
        assert pool.stats().idle == 2
        before = service.generation
        line = line_of(SentinelService._move, "log.warning(")
        with raise_at_line(SentinelService._move.__code__, lambda f: f.f_lineno == line) as fired:
            with pytest.raises(Interrupt):
                service.switch(None, why="test")
        assert fired and service.generation == before + 1
        assert pool.stats().idle == 0  # drained all the same
        assert pool.redis.set("k", 1)  # a new connection, of the new generation
        assert pool.stats().destroyed_by_reason.get("dirty", 0) == 0
    finally:
        pool.close()


def test_an_announcement_cut_short_after_clearing_settled_sets_it_again(sentinel_setup):
    """``announced`` clears ``_settled`` (new connections wait for it, up to 1 s)
    while it switches; an exception just after the clear must not leave it
    cleared (every new connection would then wait its full second)."""
    setup = sentinel_setup
    pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=0, max_size=2)
    service: SentinelService = pool._sentinel  # type: ignore[attr-defined]

    def after_clear(frame: FrameType, event: str) -> bool:  # Event.clear() did its work
        caller = frame.f_back
        return event == "return" and caller is not None and caller.f_code is announce

    announce = SentinelService.announced.__code__
    try:
        with at_event(threading.Event.clear.__code__, after_clear, interrupt) as fired:
            with pytest.raises(Interrupt):
                service.announced(("127.0.0.1", 1), "test")
        assert len(fired) == 1 and service._settled.is_set()
    finally:
        pool.close()


def test_a_switch_while_a_connection_commits_sends_it_to_ask_again(sentinel_setup, monkeypatch):
    """The listener switches to a new primary just as a new connection, made to
    the old one, is being committed: the connection must ask the sentinels
    again (and follow the new primary), not switch the service back to the old
    one (it did: the check of the generation and the commit were two steps)."""
    from redispool.testing import RedisServer

    setup = sentinel_setup
    pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=0, max_size=2)
    service: SentinelService = pool._sentinel  # type: ignore[attr-defined]
    with RedisServer() as other:  # a primary of its own: ROLE is master
        new = ("127.0.0.1", other.port)
        view = [next(iter(service.primaries([])))[0]]  # what "the sentinels" say: the old one

        def candidates(errors: list[str], deadline: float | None = None) -> Any:
            yield view[0], "master", "s0"

        monkeypatch.setattr(service, "candidates", candidates)

        def listener_switches() -> None:  # as +switch-master would, mid-commit
            view[0] = new
            service.switch(new, why="test: +switch-master")

        line = line_of(SentinelService.connect, 'if expected == "master":')
        try:
            with act_at_line(SentinelService.connect.__code__, line, listener_switches) as done:
                with pool.client() as r:
                    r.set("k", "v")
            assert done == [line]
            assert service.address == new  # not switched back to the old primary
            with pool.client() as r:
                assert r.get("k") == b"v"  # written to the new primary
        finally:
            pool.close()


def test_a_replica_pools_first_switch_drains_it(sentinel_setup):
    """A replica pool knows no primary address until a switch names one: its
    first switch drains it all the same (its idle connections are of the old
    generation, and each failed its next borrower's first command)."""
    setup = sentinel_setup
    pool = RedisPool.sentinel(setup.addresses, setup.service, role="replica", min_size=0)
    service: SentinelService = pool._sentinel  # type: ignore[attr-defined]
    try:
        with pool.client() as a, pool.client() as b:  # two idle connections
            a.ping()
            b.ping()
        assert pool.stats().idle == 2 and service.address is None
        service.switch(("127.0.0.1", 1), why="test: +switch-master")
        assert pool.stats().idle == 0  # drained
        with pool.client() as r:
            assert r.ping()  # a new connection, of the new generation
    finally:
        pool.close()
