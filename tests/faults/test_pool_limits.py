"""The pool's own limits under pressure: 1000 waiters against ``max_waiting``,
``close()`` while 100 threads borrow, ``os.fork()`` with connections borrowed."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from redispool import RedisPool, RedisPoolClosed, RedisPoolTimeout, RedisTooManyWaiters
from redispool.testing import RedisServer

from ._harness import (
    ServerView,
    check_end_state,
    describe,
    kind,
    record,
    recovery,
    side_client,
    wait_for,
)

Factory = Callable[..., RedisServer]


def test_exhaustion_1000_waiters_with_max_waiting(redis_server_factory: Factory) -> None:
    """max_size 1, max_waiting 600, 1000 threads: 400 are refused at once, the
    600 in the queue are served strictly in arrival order until their wait runs
    out, then time out; none is left stuck."""
    server = redis_server_factory()
    name = "rp-exhaust"
    wait = 2.5
    pool = RedisPool(
        server.url,
        min_size=0,
        max_size=1,
        max_waiting=600,
        timeout=wait,
        client_name=name,
        name=name,
    )
    n, cap = 1000, 600
    outcome: list[Any] = [None] * n  # ("served", incr) / ("timeout", s) / ("refused", s)
    with pool, ServerView(server, name, 1) as view:
        with side_client(server) as side:
            side.delete("order")
        hold = pool.client()
        hold.__enter__()

        def waiter(i: int) -> None:
            t0 = time.monotonic()
            try:
                with pool.client() as r:
                    outcome[i] = ("served", r.incr("order"))
                    time.sleep(0.01)
            except RedisTooManyWaiters:
                outcome[i] = ("refused", time.monotonic() - t0)
            except RedisPoolTimeout:
                outcome[i] = ("timeout", time.monotonic() - t0)
            except BaseException as exc:
                outcome[i] = ("error", repr(exc))

        threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(n)]
        t_start = time.monotonic()
        for i, t in enumerate(threads):
            t.start()
            if i < cap:  # known queue order: wait until this one is queued
                wait_for(lambda i=i: pool.stats().waiting == i + 1, 5, f"waiter {i}")
        started = time.monotonic() - t_start
        assert started < wait - 0.5, f"starting the threads took {started:.2f}s"
        wait_for(lambda: sum(o is not None for o in outcome) == n - cap, 5, "the refusals")
        assert pool.stats().waiting == cap
        hold.__exit__(None, None, None)
        released = time.monotonic()
        for t in threads:
            t.join(max(0.1, released + wait + 5 - time.monotonic()))
        ended = time.monotonic() - released
        assert not any(t.is_alive() for t in threads), "stuck waiters"
        took = recovery(pool, time.monotonic(), 0.5, "after exhaustion")
        check_end_state(pool, view, 1)

    kinds = Counter(o[0] for o in outcome)
    assert kinds["refused"] == n - cap and kinds["error"] == 0, kinds
    assert all(o[0] == "refused" for o in outcome[cap:]), "a thread past the cap was queued"
    assert max(o[1] for o in outcome[cap:]) < 0.5  # refused at once
    served = [(i, o[1]) for i, o in enumerate(outcome) if o[0] == "served"]
    timed_out = [o[1] for o in outcome if o[0] == "timeout"]
    assert len(served) >= 20 and len(timed_out) >= 20, kinds  # both outcomes happened
    assert len(served) + len(timed_out) == cap
    # FIFO: the order in which the queued threads got the connection (INCR)
    # is their arrival order.
    assert [c for _, c in sorted(served)] == list(range(1, len(served) + 1))
    assert all(wait - 0.05 <= s < wait + 1.5 for s in timed_out), (min(timed_out), max(timed_out))
    record(
        "exhaustion: 1000 threads, max_size 1, max_waiting 600",
        f"400 RedisTooManyWaiters at once; {len(served)} served FIFO; "
        f"{len(timed_out)} RedisPoolTimeout after {wait}s; all done {ended:.2f}s after release",
        took,
        0.5,
    )


def test_close_while_100_threads_borrow(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    name = "rp-close"
    pool = RedisPool(server.url, min_size=2, max_size=5, timeout=5.0, client_name=name, name=name)
    n = 100
    ends: list[tuple[str, float]] = []
    ops = [0] * n
    lock = threading.Lock()

    def worker(i: int) -> None:
        j = 0
        try:
            while True:
                j += 1
                with pool.client() as r:
                    key, val = f"close:{i}:{j}", f"{i}:{j}".encode()
                    assert r.set(key, val) is True
                    assert r.get(key) == val
                    time.sleep(0.002)
                ops[i] += 1
        except RedisPoolClosed:
            outcome = "RedisPoolClosed"
        except BaseException as exc:
            outcome = repr(exc)
        with lock:
            ends.append((outcome, time.monotonic()))

    with ServerView(server, name, 5) as view, side_client(server) as side:
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        wait_for(lambda: sum(ops) > 300 and pool.stats().waiting > 50, 10, "a busy pool")
        t_close = time.monotonic()
        pool.close(timeout=2.0)
        closed_in = time.monotonic() - t_close
        for t in threads:
            t.join(max(0.1, t_close + 5 - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "threads still running after close()"
        gone = wait_for(
            lambda: not [c for c in side.client_list() if c.get("name") == name],
            2.0,
            "the server to drop every pool connection",
        )
        s = pool.stats()
        assert s.closed and s.size == 0 and s.idle == 0, s
        check_end_state(pool, view, 5)
    outcomes = Counter(o for o, _ in ends)
    assert outcomes == Counter(RedisPoolClosed=n), outcomes
    last = max(t for _, t in ends) - t_close
    assert closed_in < 1.0 and last < 1.0, (closed_in, last)
    with pytest.raises(RedisPoolClosed):
        pool.redis.ping()
    record(
        "close() while 100 threads borrow",
        f"RedisPoolClosed x{n} (waiters at once, borrowers on their next borrow); "
        f"close() took {closed_in:.3f}s, last thread out {last:.3f}s, "
        f"server clean {gone:.3f}s later",
        None,
        None,
    )


def test_fork_while_connections_are_borrowed(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    name = "rp-fork"
    pool = RedisPool(server.url, min_size=2, max_size=3, client_name=name, name=name)
    with pool, ServerView(server, name, 3) as view, side_client(server) as side:
        pool.open(wait=True, timeout=5)
        with pool.client() as held:
            parent_id = held.client_id()
            assert held.set("parent", "p") is True
            with pool.client() as idle:  # used once, then idle in the pool
                idle_id = idle.client_id()
            parent_conns = [id(c) for c in pool._pool.objects()]
            r_fd, w_fd = os.pipe()
            t_fork = time.monotonic()
            pid = os.fork()
            if pid == 0:  # the child: report, then leave without running anything else
                signal.alarm(20)  # never outlive a hang
                report: dict[str, Any] = {}
                try:
                    with pool.client(wait=2) as r:
                        report["fresh"] = id(r.connection) not in parent_conns
                        report["id"] = r.client_id()
                        report["get"] = (r.get("parent") or b"").decode()
                        r.set("child", "c")
                    report["redis"] = pool.redis.echo(b"child") == b"child"
                    report["ms"] = (time.monotonic() - t_fork) * 1000
                    pool.close()  # must leave the parent's connections alone
                    gc.collect()
                except BaseException as exc:
                    report["error"] = repr(exc)
                os.write(w_fd, json.dumps(report).encode())
                os._exit(0)
            os.close(w_fd)
            with os.fdopen(r_fd) as f:
                report = json.loads(f.read() or "{}")
            _, status = os.waitpid(pid, 0)
            assert status == 0
            assert "error" not in report, report
            assert report["fresh"] and report["redis"] and report["get"] == "p", report
            assert report["id"] not in (parent_id, idle_id), report
            # The parent's borrowed connection still works after the child exited.
            assert held.echo(b"parent") == b"parent"
            assert held.client_id() == parent_id
            assert held.get("child") == b"c"
        with pool.client() as again:  # and so does the idle one
            assert again.echo(b"idle") == b"idle"
        ids = {int(c["id"]) for c in side.client_list() if c.get("name") == name}
        assert {parent_id, idle_id} <= ids, ids
        assert report["id"] not in ids  # the child's connection died with it
        s = pool.stats()
        assert s.destroyed_by_reason == {}, s
        check_end_state(pool, view, 3)
    record(
        "fork() with a connection borrowed",
        f"child: fresh connections ({report['ms']:.0f} ms to the first reply), parent's untouched",
        None,
        None,
    )


def test_errors_are_redis_errors() -> None:
    """What callers catch: every pool error above is a redis ConnectionError."""
    for cls in (RedisPoolClosed, RedisPoolTimeout, RedisTooManyWaiters):
        assert issubclass(cls, redis.ConnectionError)
    assert kind(RedisPoolTimeout("x")) == "RedisPoolTimeout"
    assert describe({}) == "nothing (no error)"
