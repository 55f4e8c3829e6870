"""The signal storm of ``_signal_storm.py`` on a ``RedisClusterPool`` against a
real cluster, raising in redispool's code and in redis-py's (its cluster client,
client and connection): run in a subprocess by tests/cluster/test_cluster_signals.py.

``python -m tests._signal_storm_cluster URL SEED``: the main thread runs random
operations (``pool.redis`` commands routed by redis-py through the node pools,
``pool.client(key)`` and ``pool.client()`` blocks with commands and pipelines,
cluster pipelines and multi-key commands spread over the nodes, cluster
transactions (WATCH, MULTI/EXEC), a pinned block that gets MOVED), each writing
values of its own and reading them back, while a second thread does the same.
Then, for every node pool: nothing borrowed, creating, closing or waiting;
every idle connection alive, on db 0, with no flags (no MULTI, no READONLY); no
reply ever read by the wrong operation; once the garbage collector has run, no
connection of the pool's on any node beyond those the pools hold; each still
lends all it may; no lock left held, no connection left marked as held by a
thread. One JSON line.

redis-py's own windows are left out (``_redis_py_windows``): where redis-py
holds a connection it has not yet put under the ``try`` that gives it back, or
is in the middle of giving several back, an exception loses a connection (or
gives one back twice) whatever the pool does; redis-py, not redispool, would
have to close them. Calls from redis-py's cluster client into redispool are
calls from outside (their first instruction is left out, as for any caller).
Most signals arrive during a blocking send, connect or read: 4 in 5 of those
pass (``_IO``), so that more land in the pool's own code.
"""

from __future__ import annotations

import ast
import gc
import inspect
import json
import random
import sys
import textwrap
import time
from typing import Any

import redis
import redis.client
import redis.cluster
from redis.exceptions import RedisClusterException

from redispool import PoolError, RedisClusterPool, cluster_nodes

from ._signal_storm import (
    _POOL_FILES,
    Interrupt,
    Storm,
    Windows,
    alongside,
    execute_command_window,
    lines_of,
)

_OWN = ("redis_pool", "redis_adapter", "connection", "cluster", "cluster_nodes", "cluster_client")
_REDISPOOL = (*_POOL_FILES, *(f"redispool/{name}.py" for name in _OWN))
_FILES = (*_REDISPOOL, "redis/client.py", "redis/connection.py", "redis/cluster.py")
# Whose calls into the pool are the pool's own: not redis-py's cluster client's
# (it calls NodePool.release in its finally blocks; an exception at release's
# first instruction is the window no Python code can close).
_INSIDE = tuple(f for f in _FILES if f != "redis/cluster.py")
NAME = "cstorm"  # the client name of the pool's connections (CLIENT LIST)
EXPECTED = (redis.RedisError, RedisClusterException, PoolError)


def _redis_py_windows() -> Windows:
    """code -> (lines, condition): an exception raised while a frame of that
    code is at one of those lines (or in anything called from there) loses a
    connection, in redis-py's code:

    * ``PipelineStrategy._send_cluster_commands`` (a cluster pipeline): from
      ``get_connection()``'s return until the connection is in ``nodes`` (the
      ``NodeCommands(...)`` statement); its ``finally`` giving each back (an
      exception there skips the rest); and its ``except (ConnectionError,
      TimeoutError)`` giving back before it empties ``nodes`` (an exception
      there has the ``finally`` give them back again: a connection maybe lent
      to another thread by then).
    * ``Redis._execute_command`` (a node client's own command, as the topology
      refresh's CLUSTER SLOTS): from ``pool.get_connection()``'s return to the
      ``try`` whose ``finally`` gives it back, when it came from the pool.
    """
    windows: Windows = {}

    send = redis.cluster.PipelineStrategy._send_cluster_commands
    source, first = inspect.getsourcelines(send)
    tree = ast.parse(textwrap.dedent("".join(source)))
    lines: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "NodeCommands"
        ):
            lines |= lines_of(node, first)
        elif isinstance(node, ast.Try):
            if len(node.body) == 1 and "get_connection" in ast.unparse(node.body[0]):
                for handler in node.handlers:  # the release loop before nodes = {}
                    lines |= lines_of(handler, first)
            for stmt in node.finalbody:
                if "release" in ast.unparse(stmt):
                    lines |= lines_of(stmt, first)
    assert len(lines) >= 10, f"redis-py's pipeline changed: {sorted(lines)}"
    windows[send.__code__] = (lines, lambda frame: True)

    windows.update(_transaction_windows())
    windows.update(execute_command_window())
    return windows


def _transaction_windows() -> Windows:
    """redis-py's ``TransactionStrategy`` (a cluster transaction): from
    ``get_connection()``'s return until the connection is the strategy's; and in
    ``_reinitialize_on_error``, from giving it back until it is forgotten (an
    exception there leaves it on the strategy, whose reset sends UNWATCH on it
    and gives it back again, though it may be lent to another thread by then)."""
    windows: Windows = {}
    strategy = redis.cluster.TransactionStrategy
    got = strategy._get_client_and_connection_for_transaction
    source, first = inspect.getsourcelines(got)
    lines = {
        line
        for node in ast.walk(ast.parse(textwrap.dedent("".join(source))))
        if isinstance(node, ast.Assign) and "get_connection(" in ast.unparse(node)
        for line in lines_of(node, first)
    }
    assert lines, "redis-py's transaction changed"
    windows[got.__code__] = (lines, lambda frame: True)
    on_error = strategy._reinitialize_on_error
    source, first = inspect.getsourcelines(on_error)
    lines = set()
    for node in ast.walk(ast.parse(textwrap.dedent("".join(source)))):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for i, stmt in enumerate(body[:-1]):  # `if node and ...: release(...)`, `... = None`
            if isinstance(stmt, ast.If) and "redis_connection" in ast.unparse(stmt.test):
                lines |= set(range(first + stmt.lineno - 1, first + (body[i + 1].end_lineno or 0)))
    assert lines, "redis-py's transaction changed"
    windows[on_error.__code__] = (lines, lambda frame: True)
    return windows


# Where most signals land (a blocking send, connect or read: redis-py's functions
# or connection.py's), most pass: the operation goes on, and the next signal
# lands elsewhere, in the pool's code more often.
_IO = frozenset(["send_packed_command", "_connect", "_read_from_socket", "read_response"])


class ClusterStorm(Storm):
    """The storm, minus redis-py's own windows; ``by_file``: where it raised;
    with ``trace``, the stack of the last signal is kept (to find a window)."""

    def __init__(self, seed: int, trace: bool = False) -> None:
        super().__init__(seed, files=_FILES, inside=_INSIDE, windows=_redis_py_windows())
        self.by_file: dict[str, int] = {}
        self.trace = trace
        self.last_stack: list[tuple[str, int, str]] = []

    def handler(self, signum: int, frame: Any) -> None:
        if not self.on or not self.armed or frame is None:
            return
        if frame.f_code.co_name in _IO and self.rnd.random() < 0.8:
            return
        if self.trace:
            stack: list[tuple[str, int, str]] = []
            f = frame
            while f is not None and len(stack) < 14:
                stack.append((f.f_code.co_filename, f.f_lineno, f.f_code.co_name))
                f = f.f_back
            self.last_stack = stack
        try:
            super().handler(signum, frame)
        except Interrupt:
            name = "/".join(frame.f_code.co_filename.replace("\\", "/").split("/")[-2:])
            self.by_file[name] = self.by_file.get(name, 0) + 1
            raise


def _op(
    pool: RedisClusterPool, rnd: random.Random, tag: str, n: int, wrong: list[str], moves: bool
) -> None:
    key, value = f"{tag}:{n % 50}", f"{tag}-{n}"
    got: Any
    want: Any = value.encode()
    kind = rnd.randrange(9)
    if kind == 0:  # routed by redis-py
        r = pool.redis
        r.set(key, value)
        got = r.get(key)
    elif kind == 1:  # pinned to the key's primary
        with pool.client(key, timeout=rnd.choice((None, 1.0))) as c:
            c.set(key, value)
            got = c.get(key)
    elif kind == 2:
        with pool.client(key) as c:
            pipe = c.pipeline(transaction=rnd.random() < 0.5)
            pipe.set(key, value)
            pipe.get(key)
            got = pipe.execute()[1]
    elif kind == 3:  # pinned at the first command
        with pool.client() as c:
            if rnd.random() < 0.5:
                c.set(key, value)
                got = c.get(key)
            else:
                pipe = c.pipeline(transaction=rnd.random() < 0.5)
                pipe.set(key, value)
                pipe.get(key)
                got = pipe.execute()[1]
    elif kind == 4:  # a cluster pipeline over the nodes
        keys = [f"{key}:p{i}" for i in range(4)]
        pipe = pool.redis.pipeline()
        for i, k in enumerate(keys):
            pipe.set(k, f"{value}.{i}")
        for k in keys:
            pipe.get(k)
        got = pipe.execute()[len(keys) :]
        want = [f"{value}.{i}".encode() for i in range(len(keys))]
    elif kind == 5:  # multi-key commands split by slot (pipelines of redis-py's)
        keys = [f"{key}:m{i}" for i in range(4)]
        pool.redis.mset_nonatomic({k: f"{value}.{i}" for i, k in enumerate(keys)})
        got = pool.redis.mget_nonatomic(keys)
        want = [f"{value}.{i}".encode() for i in range(len(keys))]
    elif kind == 6:  # a pinned block and routed commands at once
        with pool.client(key) as c:
            c.set(key, value)
            pool.redis.set(f"{key}:n", value)
            got = [c.get(key), pool.redis.get(f"{key}:n")]
        want = [want, want]
    elif kind == 7 and moves and rnd.random() < 0.2:  # MOVED ends a pinned block
        other = next(k for i in range(99) if pool.node_of(k := f"{key}:o{i}") != pool.node_of(key))
        try:
            with pool.client(key) as c:
                c.get(other)
        except redis.exceptions.MovedError:
            pass
        return
    elif kind == 8 and rnd.random() < 0.5:  # a cluster transaction (WATCH, MULTI/EXEC)
        tkey = f"{{{key}}}:t"
        with pool.redis.pipeline(transaction=True) as pipe:
            pipe.watch(tkey)
            pipe.multi()
            pipe.set(tkey, value)
            pipe.get(tkey)
            got = pipe.execute()[1]
    else:
        r = pool.redis
        r.set(f"{key}:i", n)
        got = r.incr(f"{key}:i")
        want = n + 1
    if got != want:
        wrong.append(f"{tag} kind {kind}: {want!r} read {got!r}")


def _locks_free(pool: RedisClusterPool) -> dict[str, bool]:
    """Each lock, taken and let go from this thread (the other one has stopped)."""
    cluster = pool.redis
    manager = cluster.nodes_manager
    locks: dict[str, Any] = {
        "cluster": pool._lock,
        "connect": pool._connect_lock,
        "nodes_manager": manager._lock,
        "initialization": manager._initialization_lock,
    }
    for node, node_pool in pool.node_pools().items():
        locks[node] = node_pool._pool._lock
    free = {}
    for name, lock in locks.items():
        owned = getattr(lock, "_is_owned", lambda: False)()
        got = not owned and lock.acquire(timeout=2)
        if got:
            lock.release()
        free[name] = got
    return free


def main(url: str, seed: int, seconds: float = 1.5) -> None:
    rnd = random.Random(seed)
    pool = RedisClusterPool(
        url,
        min_size=0,
        max_size=3,
        timeout=2.0,
        socket_timeout=2.0,
        health_check_interval=0,
        client_name=NAME,
    )
    pool.redis.set("warm", "up")  # discovery (not under the storm)
    storm = ClusterStorm(seed)
    wrong: list[str] = []
    other_errors: dict[str, int] = {}
    samples: dict[str, str] = {}  # the first message of each (shown if the test fails)
    r = random.Random(seed + 1)

    def other(n: int) -> None:
        try:
            _op(pool, r, "other", n, wrong, moves=False)
        except EXPECTED as exc:
            name = type(exc).__name__
            other_errors[name] = other_errors.get(name, 0) + 1
            samples.setdefault(f"other {name}", str(exc)[:400])

    helper, stop = alongside(other, ())
    main_errors: dict[str, int] = {}

    def mine(n: int) -> None:
        try:
            _op(pool, rnd, "main", n, wrong, moves=True)
        except EXPECTED as exc:
            name = type(exc).__name__
            main_errors[name] = main_errors.get(name, 0) + 1
            samples.setdefault(f"main {name}", str(exc)[:400])

    def stuck() -> bool:  # a node pool's lock left held by this thread (no call of
        # the pool's here: the storm is still on)
        return any(p.redis_pool._pool._lock._is_owned() for p in list(pool._pools.values()))

    def enough() -> bool:  # (the test's floors, with a margin: a busy machine runs longer)
        by_file = storm.by_file
        in_cluster = sum(n for f, n in by_file.items() if f.startswith("redispool/cluster"))
        in_pool = by_file.get("redispool/pool.py", 0) + by_file.get("redispool/redis_pool.py", 0)
        return in_cluster >= 15 and in_pool >= 8 and len(storm.where) >= 25

    ops, _ = storm.run(mine, seconds, (), stuck=stuck, enough=enough)
    stop.set()
    helper.join(10)
    out: dict[str, Any] = {
        "ops": ops, "raised": storm.raised, "skipped": storm.skipped, "where": storm.where,
        "by_file": storm.by_file,
        "errors": main_errors, "other_errors": other_errors, "wrong": wrong[:5],
        "samples": samples,
        "other_done": not helper.is_alive(),
    }  # fmt: skip
    out["locks_free"] = _locks_free(pool)
    out["held"] = len(cluster_nodes._HELD)  # connections marked as held by a thread
    keys = ("size", "idle", "in_use", "creating", "closing", "waiting")
    nodes = pool.node_pools()
    out["stats"] = {
        node: {k: getattr(p.stats(), k) for k in keys} for node, p in sorted(nodes.items())
    }
    stale = []
    for node, p in nodes.items():  # every idle one: alive, db 0, no MULTI, no flags
        for conn in p._pool.objects():
            conn.send_command("CLIENT", "INFO")
            info = conn.read_response().decode()
            if not all(f" {part} " in info for part in ("flags=N", "db=0", "multi=-1")):
                stale.append(f"{node}: {info.strip()}")
    out["stale"] = stale[:5]
    size = sum(p.stats().size for p in nodes.values())
    admins = [
        redis.Redis(host=n.host, port=n.port, socket_timeout=5)
        for n in pool.redis.get_nodes()  # every node, replicas too
    ]
    for _ in range(50):  # dropped ones (see ObjectPool._make) close when collected
        gc.collect()
        mine_ = sum(1 for a in admins for c in a.client_list() if c.get("name") == NAME)
        if mine_ <= size:
            break
        time.sleep(0.02)
    out["server_connections"] = mine_
    out["pool_size"] = size
    lends = {}
    for node, p in nodes.items():
        got = []
        try:
            for _ in range(3):
                got.append(p._get(1.0))
        except PoolError:
            pass
        lends[node] = len(got)
        for conn in got:
            p._put(conn)
    out["lends"] = lends
    pool.close()
    for a in admins:
        a.close()
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
