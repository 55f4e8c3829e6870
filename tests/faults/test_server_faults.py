"""Faults on the server side: crash, restart with a new password, CLIENT KILL,
the ``timeout`` directive, ``maxclients``, ``DEBUG SLEEP``.

Each case checks the end state (nothing borrowed, nobody waiting, size within
bounds, the server never saw more than ``max_size`` of the pool's connections)
and that the pool recovers by itself within a stated time once the fault ends.
The deterministic "first borrow after a server-side close succeeds" cases are in
tests/test_redis_faults.py::test_borrow_after_server_side_close.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from redispool import RedisPool, RedisPoolTimeout
from redispool.testing import RedisServer

from ._harness import (
    FAST,
    Load,
    ServerView,
    chain,
    check_end_state,
    check_load,
    describe,
    fault_pool,
    kind,
    probe,
    record,
    recovery,
    side_client,
    wait_for,
)

Factory = Callable[..., RedisServer]


def test_kill9_and_restart(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    name = "rp-kill9"
    pool = fault_pool(server.url, name)
    with pool, ServerView(server, name, 4) as view, Load(pool, threads=4) as load:
        time.sleep(0.3)
        server.kill()
        time.sleep(0.6)
        server.restart()
        ended = time.monotonic()
        took = recovery(pool, ended, 2.0, "kill -9")
        time.sleep(0.3)
        tally = load.stop()
    check_load(tally)
    assert tally.errors, "the crash went unnoticed"
    assert all(k.startswith(("ConnectionError", "RedisPoolTimeout")) for k in tally.errors), tally
    assert max(tally.ok_times) > ended, "the load never worked again after the restart"
    check_end_state(pool, view, 4)
    record("server kill -9, restart after 0.6 s", describe(tally.errors), took, 2.0)


def test_restart_with_a_new_password(redis_server_factory: Factory) -> None:
    server = redis_server_factory(password="old-pw")
    name = "rp-password"
    pool = fault_pool(server.url, name, min_size=1)
    with pool:
        assert probe(pool, "before")
        server.restart(password="new-pw")
        with ServerView(server, name, 4) as view:
            errors: Counter[str] = Counter()
            for _ in range(3):  # fails clearly and quickly, every time
                t0 = time.monotonic()
                with pytest.raises(RedisPoolTimeout) as info:
                    with pool.client() as r:
                        r.ping()
                took = time.monotonic() - t0
                assert took < FAST["timeout"] + 0.5, took  # no hang
                assert isinstance(info.value.__cause__, redis.AuthenticationError), chain(
                    info.value
                )
                assert "AuthenticationError" in str(info.value)
                errors[kind(info.value)] += 1
            with pytest.raises(redis.ConnectionError):  # pool.redis: the same error
                pool.redis.ping()
            s = pool.stats()
            assert s.last_create_error and "AuthenticationError" in s.last_create_error, s

            # What the user does: new credentials, then replace every connection.
            pool.connection_kwargs["password"] = "new-pw"
            pool.drain()
            fixed = time.monotonic()
            took = recovery(pool, fixed, 1.5, "new password")
            assert pool.redis.ping() is True
        check_end_state(pool, view, 4)
    record(
        "restart with a new password; fixed by connection_kwargs + drain()",
        describe(errors) + " (fails fast, no hang)",
        took,
        1.5,
    )


def _pool_clients(side: redis.Redis, name: str) -> list[dict[str, Any]]:
    return [c for c in side.client_list() if c.get("name") == name]


def test_client_kill_idle(redis_server_factory: Factory) -> None:
    """Kill the idle connections while another one is busy in a BLPOP: the busy
    one is untouched, the next borrowers see no error at all."""
    server = redis_server_factory()
    name = "rp-kill-idle"
    pool = fault_pool(server.url, name, min_size=4, max_size=4)
    popped: list[Any] = []

    def blocked() -> None:
        with pool.client(timeout=5) as r:
            popped.append(r.blpop(["idle:wake"], timeout=4))

    with pool, ServerView(server, name, 4) as view:
        pool.open(wait=True, timeout=5)
        waiter = threading.Thread(target=blocked, daemon=True)
        waiter.start()
        with side_client(server) as side:
            wait_for(lambda: any("b" in c["flags"] for c in _pool_clients(side, name)), 2, "BLPOP")
            idle = [c for c in _pool_clients(side, name) if "b" not in c["flags"]]
            assert len(idle) == 3, idle
            for c in idle:
                side.client_kill_filter(_id=c["id"])
            killed = time.monotonic()
            wait_for(lambda: len(_pool_clients(side, name)) == 1, 2, "the kills")
            time.sleep(0.05)
            errors: Counter[str] = Counter()
            results: list[bool] = []

            def borrow() -> None:
                try:
                    with pool.client() as r:
                        results.append(r.echo(b"hi") == b"hi")
                except redis.RedisError as exc:
                    errors[kind(exc)] += 1

            threads = [threading.Thread(target=borrow) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)
            took = time.monotonic() - killed
            assert errors == Counter() and results == [True] * 3
            side.rpush("idle:wake", "x")
            waiter.join(5)
        assert popped == [(b"idle:wake", b"x")]  # the busy connection was untouched
        assert pool.stats().destroyed_by_reason == {"dead": 3}, pool.stats()
        check_end_state(pool, view, 4)
    record("CLIENT KILL of idle connections", describe(errors), took, 0.5)
    assert took < 0.5


def test_client_kill_busy_blpop(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    name = "rp-kill-busy"
    pool = fault_pool(server.url, name, min_size=0, max_size=4)
    outcomes: list[tuple[str, float]] = []
    killed_at: list[float] = []

    def blocked(i: int) -> None:
        try:
            with pool.client(timeout=5) as r:
                r.blpop([f"busy:{i}"], timeout=4)
                outcomes.append(("returned", 0.0))
        except redis.RedisError as exc:
            outcomes.append((kind(exc), time.monotonic() - killed_at[0]))

    with pool, ServerView(server, name, 4) as view:
        threads = [threading.Thread(target=blocked, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        with side_client(server) as side:
            wait_for(
                lambda: sum("b" in c["flags"] for c in _pool_clients(side, name)) == 2, 2, "BLPOPs"
            )
            busy = [c for c in _pool_clients(side, name) if "b" in c["flags"]]
            killed_at.append(time.monotonic())
            for c in busy:
                side.client_kill_filter(_id=c["id"])
        for t in threads:
            t.join(5)
        assert [k for k, _ in outcomes] == ["ConnectionError"] * 2, outcomes
        assert max(s for _, s in outcomes) < 0.5, outcomes  # at once, not at the BLPOP timeout
        took = recovery(pool, killed_at[0], 0.5, "CLIENT KILL busy")
        with pool.client(timeout=5) as r:  # blocking commands work again
            side2 = side_client(server)
            side2.rpush("busy:again", "v")
            side2.close()
            assert r.blpop(["busy:again"], timeout=1) == (b"busy:again", b"v")
        s = pool.stats()
        assert s.destroyed_by_reason.get("dirty") == 2, s
        check_end_state(pool, view, 4)
    record(
        "CLIENT KILL of a connection blocked in BLPOP",
        f"ConnectionError in {max(s for _, s in outcomes) * 1000:.0f} ms (to that caller only)",
        took,
        0.5,
    )


def test_server_timeout_closes_idle(redis_server_factory: Factory) -> None:
    server = redis_server_factory(args=("--timeout", "1"))
    name = "rp-srv-timeout"
    pool = fault_pool(server.url, name, min_size=3, max_size=3)
    errors: Counter[str] = Counter()
    firsts: list[float] = []
    with pool, ServerView(server, name, 3) as view, side_client(server) as side:
        pool.open(wait=True, timeout=5)
        for rnd in range(2):
            # Idle past the server's timeout: the server closes all of them.
            wait_for(lambda: not _pool_clients(side, name), 4, "the server's idle timeout")
            closed = time.monotonic()
            done: list[float] = []

            def burst(i: int, rnd: int = rnd, done: list[float] = done) -> None:
                try:
                    with pool.client() as r:
                        assert r.echo(f"{rnd}:{i}".encode()) == f"{rnd}:{i}".encode()
                        done.append(time.monotonic())
                except redis.RedisError as exc:
                    errors[kind(exc)] += 1

            threads = [threading.Thread(target=burst, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)
            assert len(done) == 3 and not errors, errors
            firsts.append(min(done) - closed)
        s = pool.stats()
        assert s.destroyed_by_reason.get("dead", 0) >= 6, s
        check_end_state(pool, view, 3)
    took = max(firsts)
    record("server `timeout 1` closes idle connections", describe(errors), took, 0.5)
    assert took < 0.5


def _settled(pool: RedisPool) -> Any:
    """Stats at a moment when no connection is being created."""
    for _ in range(300):
        s = pool.stats()
        if s.creating == 0:
            return s
        time.sleep(0.01)
    pytest.fail(f"a connection is being created for 3s: {s}")


def test_maxclients_reached(redis_server_factory: Factory) -> None:
    """``maxclients 4``: the sampler holds one, so the pool (max 5) gets 3."""
    server = redis_server_factory(args=("--maxclients", "4"))
    name = "rp-maxclients"
    pool = fault_pool(server.url, name, min_size=0, max_size=5, timeout=1.0)
    with pool, ServerView(server, name, 5) as view:
        wait_for(lambda: view.samples > 0, 2, "the sampler")
        held: list[Any] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        release = threading.Event()

        def hold() -> None:
            try:
                with pool.client() as r:
                    r.ping()
                    with lock:
                        held.append(r)
                    release.wait(5)
            except redis.RedisError as exc:
                with lock:
                    errors.append(exc)

        t0 = time.monotonic()
        threads = [threading.Thread(target=hold, daemon=True) for _ in range(5)]
        for t in threads:
            t.start()
        wait_for(lambda: len(held) + len(errors) == 5, 3, "all five borrowers")
        failed_in = time.monotonic() - t0
        assert len(held) == 3 and len(errors) == 2, (held, errors)
        for exc in errors:
            assert isinstance(exc, RedisPoolTimeout), repr(exc)
            text = " | ".join(str(e) for e in chain(exc))
            assert "max number of clients reached" in text, text
        assert failed_in < 2.0
        s = _settled(pool)  # an upkeep probe may be connecting right now
        assert s.size == 3 and s.in_use == 3, s  # nothing leaked
        release.set()
        for t in threads:
            t.join(5)

        # The pool keeps working with the 3 it has: 3 threads, 30 ops each.
        ok = Counter[str]()

        def work(i: int) -> None:
            for j in range(30):
                try:
                    with pool.client() as r:
                        assert r.echo(f"{i}:{j}".encode()) == f"{i}:{j}".encode()
                        ok["ok"] += 1
                except redis.RedisError as exc:
                    ok[kind(exc)] += 1

        workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(10)
        assert ok == Counter(ok=90), ok
        assert _settled(pool).size == 3

        # More demand than the server allows: while creating keeps failing, a
        # borrower that finds all 3 busy fails fast (same clear error) rather than
        # queue; nobody hangs, the 3 keep serving.
        ok.clear()
        workers = [threading.Thread(target=work, args=(i,)) for i in range(5)]
        t_busy = time.monotonic()
        for t in workers:
            t.start()
        for t in workers:
            t.join(10)
        busy_took = time.monotonic() - t_busy
        assert sum(ok.values()) == 150 and ok["ok"] >= 30, ok
        assert set(ok) <= {"ok", "RedisPoolTimeout(ConnectionError)"}, ok
        assert busy_took < 5.0
        beyond = dict(ok)
        assert _settled(pool).size == 3

        view.command("CONFIG", "SET", "maxclients", "20")  # the fault ends
        ended = time.monotonic()

        def five_at_once() -> bool:
            with contextlib.ExitStack() as stack:
                try:
                    for _ in range(5):
                        stack.enter_context(pool.client(wait=0.3)).ping()
                except redis.RedisError:
                    return False
            return True

        wait_for(five_at_once, 2.5, "the pool to grow to 5 again")
        took = time.monotonic() - ended
        check_end_state(pool, view, 5)
    caller = "; ".join(sorted({kind(e) for e in errors}))
    record(
        "maxclients reached (server 3 for the pool, pool max 5)",
        f"borrowers beyond 3: {caller} 'max number of clients reached' in {failed_in:.2f}s; "
        f"5 threads on 3 connections: {beyond}",
        took,
        2.5,
    )


def test_debug_sleep_longer_than_socket_timeout(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    name = "rp-debug-sleep"
    pool = fault_pool(server.url, name)
    socket_timeout = FAST["socket_timeout"]
    with pool, ServerView(server, name, 4) as view, Load(pool, threads=4) as load:
        time.sleep(0.2)
        with side_client(server) as side:
            side.execute_command("DEBUG", "SLEEP", "1.5")
        ended = time.monotonic()
        took = recovery(pool, ended, 2.0, "DEBUG SLEEP")
        time.sleep(0.2)
        tally = load.stop()
    check_load(tally)
    timeouts = [s for k, s in tally.command_failures if k == "TimeoutError"]
    assert timeouts, tally
    # A command on a borrowed connection fails after socket_timeout, not after the sleep.
    assert max(timeouts) < socket_timeout + 1.0, timeouts  # < the 1.5 s sleep
    assert max(tally.ok_times) > ended
    check_end_state(pool, view, 4)
    record(
        "DEBUG SLEEP 1.5 s (socket_timeout 0.3 s)",
        describe(tally.errors) + f"; commands fail after <= {max(timeouts):.2f}s",
        took,
        2.0,
    )
