"""A signal handler that raises (Ctrl-C, gunicorn's SIGQUIT, Celery's soft time
limit) in the cluster pool's code: the storm of tests/_signal_storm_cluster.py
against the shared cluster (in a subprocess: a deadlock cannot hang the run),
and each window it found, pinned by an exception put exactly there."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import pytest
import redis
import redis.cluster
from redis.exceptions import TryAgainError

from redispool import PoolError, RedisClusterPool
from redispool.cluster_client import SlotLease
from redispool.cluster_nodes import _HELD, NodePool, _unhold
from redispool.redis_pool import RedisPool, _ClientLease

from ..test_async_windows import Interrupt, at_event, interrupt, line_of
from ..test_signals import STORM_MARKS, _child
from ._tryagain import TryAgainToAWaiter

Make = Callable[..., RedisClusterPool]


def raise_in(code: CodeType, when: Callable[[FrameType, str], bool]) -> Any:
    """Raise ``Interrupt`` once, at the first event ("call": before the first
    line; "line") in ``code`` for which ``when(frame, event)`` holds."""
    return at_event(code, when, interrupt)


def _borrowed(pool: RedisClusterPool) -> int:
    return sum(p.stats().in_use for p in pool.node_pools().values())


# -- the storm ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@STORM_MARKS[0]
@STORM_MARKS[1]
def test_a_signal_raising_in_cluster_operations_loses_nothing_and_misdelivers_nothing(
    redis_cluster_url: str, seed: int
) -> None:
    """redis-py's routed commands, cluster pipelines and multi-key commands over
    the node pools, pinned blocks with and without a key, a block ending with
    MOVED, under the storm (raising in redispool's code and redis-py's, but for
    redis-py's own windows: see the child's docstring), while a second thread
    does the same. (Before the fixes below, every run left connections borrowed.)"""
    out = _child("_signal_storm_cluster", redis_cluster_url, seed)
    by_file = out["by_file"]  # it did land all over the pool's code, the cluster's too
    assert out["raised"] >= 100 and len(out["where"]) >= 20, out
    assert sum(n for name, n in by_file.items() if name.startswith("redispool/cluster")) >= 10
    assert by_file.get("redispool/pool.py", 0) + by_file.get("redispool/redis_pool.py", 0) >= 5
    assert out["other_done"] and all(out["locks_free"].values()), out
    assert out["wrong"] == [] and out["errors"] == {} and out["other_errors"] == {}, out
    assert out["held"] == 0, out  # no connection left marked as held by a thread
    for node, s in out["stats"].items():
        assert s == {**s, "in_use": 0, "creating": 0, "closing": 0, "waiting": 0}, (node, out)
        assert s["size"] == s["idle"], (node, out)
    assert out["stale"] == [], out  # every idle connection: db 0, no MULTI, no flags
    assert set(out["lends"].values()) == {3}, out
    assert out["server_connections"] == out["pool_size"], out  # no socket left behind


# -- the windows it found ----------------------------------------------------------


@pytest.mark.parametrize(
    "func, text",
    [
        (NodePool.release, "_unhold(connection, self.node)"),  # what it was lent as read
        (NodePool.release, "ConnectionPool.release(lender, connection)"),  # off held, not back
        (_unhold, "connection._rp_held = None"),  # off the held list, still marked
        (RedisPool._put, None),  # at the start of the return proper (None: its first line)
    ],
)
def test_a_node_connection_release_cut_short_still_gives_it_back(
    cluster_pool: Make, func: Callable[..., Any], text: str | None
) -> None:
    """An exception in ``NodePool.release`` past its first instruction (which no
    code of its own can catch: redis-py's ``finally`` calls it): the connection
    goes back all the same, discarded, and off the thread's held list (where it
    would make the thread's later borrows of lower nodes not wait)."""
    pool = cluster_pool(max_size=1)
    r = pool.redis
    assert r.set("k", "v")
    line = None if text is None else line_of(func, text)

    def when(frame: FrameType, event: str) -> bool:
        if line is None:
            return event == "call"
        return event == "line" and frame.f_lineno == line

    with raise_in(func.__code__, when) as fired:
        with pytest.raises(Interrupt):
            r.get("k")
    assert fired, "the window was not reached"
    assert _borrowed(pool) == 0
    assert threading.get_ident() not in _HELD
    assert r.get("k") == b"v"  # max_size=1: the node's one connection lends again


@pytest.mark.parametrize(
    "keyed, func",
    [(True, _ClientLease.__exit__), (False, _ClientLease.__exit__), (False, SlotLease.__exit__)],
)
def test_a_pinned_block_whose_lease_exit_is_cut_short_at_its_start_gives_back(
    cluster_pool: Make, keyed: bool, func: Callable[..., Any]
) -> None:
    """``client(key)`` and ``client()`` wrap a node pool's lease (``client()``
    through a ``SlotLease``): an exception at the first instruction of a wrapped
    ``__exit__`` is no code of its own to catch; the wrapper gives the
    connection back, discarded, and the client refuses to run after the block."""
    pool = cluster_pool(max_size=1)
    assert pool.redis.set("k", "v")
    with raise_in(func.__code__, lambda frame, event: event == "call") as fired:
        with pytest.raises(Interrupt):
            with pool.client("k" if keyed else None) as c:
                assert c.get("k") == b"v"
    assert fired, "the window was not reached"
    assert _borrowed(pool) == 0
    with pytest.raises(PoolError):
        c.get("k")  # a stale client does not touch the connection that went back
    with pool.client("k") as c:  # max_size=1: the node's one connection lends again
        assert c.get("k") == b"v"


def test_a_departed_node_pool_whose_retirement_is_cut_short_is_closed_next_time(
    cluster_pool: Make,
) -> None:
    """A node pool no longer in the topology is closed, then taken off the list
    and counted: cut short before the close, it stays listed, so the next
    refresh closes it (it used to be dropped from the list first: left open for
    good, its connections and upkeep thread with it)."""
    pool = cluster_pool(max_size=2)
    assert pool.redis.set("k", "v")
    host, port = next(iter(pool.node_pools())).rsplit(":", 1)
    departed = pool._new_node_pool(host=host, port=int(port))  # (in no topology)
    departed.redis_pool._put(departed.redis_pool._get())  # one connection made
    retired, made = pool._retired["created"], departed.redis_pool.stats().created
    line = line_of(RedisClusterPool._retire, "pool.redis_pool.close(timeout=0)")
    with raise_in(RedisClusterPool._retire.__code__, lambda f, e: f.f_lineno == line) as fired:
        with pytest.raises(Interrupt):
            pool._close_departed()
    assert fired == [line] and not departed.redis_pool.closed
    pool._close_departed()  # (as the next refresh does)
    assert departed.redis_pool.closed and departed not in pool._pools.values()
    pool._close_departed()
    assert made == 1 and pool._retired["created"] == retired + made  # counted once


# -- the double-return guard under an interrupt (see test_cluster_pool.py) ---------


def _try_again_once(tried: list[bool]) -> Callable[..., Any]:
    """``redis.Redis.parse_response`` that answers TRYAGAIN once (after reading
    the reply): redis-py's cluster command then retries on the same node."""
    real = redis.Redis.parse_response

    def parse(self: redis.Redis, connection: Any, command: str, **kw: Any) -> Any:
        out = real(self, connection, command, **kw)
        if not tried:
            tried.append(True)
            raise TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot")
        return out

    return parse


def test_an_interrupted_reborrow_of_a_connection_the_command_gave_back_gives_it_back(
    cluster_pool: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a TRYAGAIN the retry borrows the connection it just gave back; an
    exception before that borrow is recorded must not make its return read as
    redis-py's ignored second one (it stayed borrowed for good)."""
    pool = cluster_pool(max_size=1, timeout=0.3)
    r = pool.redis
    assert r.set("k", "v")
    tried: list[bool] = []
    monkeypatch.setattr(redis.Redis, "parse_response", _try_again_once(tried))
    line = line_of(NodePool.get_connection, "returned = _RETURNED.get(ident)")

    def when(frame: FrameType, event: str) -> bool:
        return bool(tried) and event == "line" and frame.f_lineno == line

    with raise_in(NodePool.get_connection.__code__, when) as fired:
        with pytest.raises(Interrupt):
            r.get("k")
    monkeypatch.undo()
    assert fired == [line]
    assert _borrowed(pool) == 0 and threading.get_ident() not in _HELD
    assert r.get("k") == b"v"


def test_an_interrupted_ignored_second_return_leaves_the_holder_its_connection(
    cluster_pool: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's second return of a connection another thread now holds is
    ignored; an exception landing in it (before the guard decides) must not
    take that thread's connection off the pool's books."""
    pool = cluster_pool(max_size=1, timeout=0.3)
    r = pool.redis
    assert r.set("k", "v")
    waiter = TryAgainToAWaiter(pool, "k")
    waiter.install(monkeypatch)
    line = line_of(NodePool.release, "returned = _RETURNED.get(threading.get_ident())")
    seen: list[int] = []

    def when(frame: FrameType, event: str) -> bool:  # at the second return's guard
        if event == "line" and frame.f_lineno == line:
            seen.append(line)
        return len(seen) == 2

    with raise_in(NodePool.release.__code__, when) as fired:
        with pytest.raises(Interrupt):
            r.get("k")
    monkeypatch.undo()
    held, node_pool = waiter.held, waiter.node_pool
    assert fired == [line] and len(held) == 1
    s = node_pool.stats()
    assert s.in_use == 1 and id(held[0]) in node_pool._pool._in_use, s  # still theirs
    waiter.finish()
    assert node_pool.stats().in_use == 0 and r.get("k") == b"v"


@pytest.mark.parametrize(
    "text",
    ["objects = lender.redis_pool._pool", "lent = objects._in_use.get(id(connection))"],
)
def test_a_release_to_another_pool_of_the_node_cut_short_gives_back_to_the_lender(
    cluster_pool: Make, text: str
) -> None:
    """A cluster transaction gives its connection back to the node's pool of the
    moment (after a refresh replaced the lender), which passes it to the pool
    that lent it: cut short before it read what the lender lent, the connection
    still goes back to the lender (the other pool does not know it: nothing went
    back, the lender kept it borrowed and the thread marked as holding it)."""
    pool = cluster_pool(max_size=1)
    assert pool.redis.set("k", "v")
    node = pool.node_of("k")
    lender = next(p for p in pool._pools.values() if p.node == node)
    host, port = node.rsplit(":", 1)
    other = pool._new_node_pool(host=host, port=int(port))  # (the node's pool now)
    conn = lender.get_connection()
    line = line_of(NodePool.release, text)
    when = lambda frame, event: event == "line" and frame.f_lineno == line  # noqa: E731
    with raise_in(NodePool.release.__code__, when) as fired:
        with pytest.raises(Interrupt):
            other.release(conn)
    assert fired == [line]
    assert lender.redis_pool.stats().in_use == 0 and other.redis_pool.stats().in_use == 0
    assert threading.get_ident() not in _HELD


def test_a_transaction_reset_cut_short_after_giving_back_does_not_give_back_again(
    cluster_pool: Make,
) -> None:
    """redis-py's transaction reset gives its connection back, then forgets it:
    an exception in between (a signal handler raising) left it on the strategy,
    and the reset's guard (``gives_back_on_failure``) disconnected it and gave it
    back again, though it had gone to a waiting thread: that thread's socket
    closed under it, and the connection idle in the pool while still lent."""
    pool = cluster_pool(max_size=1, timeout=5.0)
    r = pool.redis
    key = "{txtwice}k"
    assert r.set(key, "v")
    lender = next(p for p in pool._pools.values() if p.node == pool.node_of(key))
    pipe = r.pipeline(transaction=True)
    pipe.watch(key)  # the node's one connection
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(lender.get_connection()))
    waiter.start()
    deadline = time.monotonic() + 5
    while lender.redis_pool.stats().waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    strategy = redis.cluster.TransactionStrategy
    line = line_of(strategy.reset, "self._transaction_connection = None")

    def when(frame: FrameType, event: str) -> bool:
        if event == "line" and frame.f_lineno == line:
            waiter.join(5)  # (it has the connection, checked, in use)
            return True
        return False

    with raise_in(strategy.reset.__code__, when) as fired:
        with pytest.raises(Interrupt):
            pipe.reset()
    assert fired == [line] and got
    conn = got[0]
    s = lender.redis_pool.stats()
    assert (s.in_use, s.idle) == (1, 0), s  # lent to the waiter only
    assert conn.is_connected  # its socket left alone
    lender.release(conn)
    assert r.get(key) == b"v"
