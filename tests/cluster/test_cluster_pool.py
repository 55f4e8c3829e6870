"""RedisClusterPool on the shared real cluster: routing, pinned clients, stats,
error types, handshake and ASKING, configuration."""

from __future__ import annotations

import linecache
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any
from unittest.mock import Mock

import pytest
import redis
from redis.cluster import LoadBalancingStrategy
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MaxConnectionsError,
    MovedError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from redispool import (
    ClusterPoolTimeout,
    PoolError,
    RedisClusterPool,
    RedisClusterPoolStats,
    RedisPoolTimeout,
)
from redispool.cluster_nodes import _RETURNED, NodePool, _wait_error
from redispool.testing import RedisClusterServer

from ._tryagain import TryAgainToAWaiter

Make = Callable[..., RedisClusterPool]


def _node_of(pool: RedisClusterPool, key: str) -> str:
    cluster = pool.redis
    return str(cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key)).name)


def test_commands_pipelines_and_stats_per_node(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    pool = cluster_pool(max_size=3)
    r = pool.redis
    for i in range(60):
        assert r.set(f"k{i}", f"v{i}")
    pipe = r.pipeline()
    for i in range(60):
        pipe.get(f"k{i}")
    assert pipe.execute() == [f"v{i}".encode() for i in range(60)]
    s = pool.stats()
    assert isinstance(s, RedisClusterPoolStats)
    primaries = {f"{n.host}:{n.port}" for n in redis_cluster.primaries()}
    assert primaries <= set(s.nodes)
    assert s.in_use == 0 and s.size == sum(n.size for n in s.nodes.values())
    # counters include departed pools (here the startup node's first one)
    assert s.commands >= sum(n.commands for n in s.nodes.values()) >= 120
    assert all(n.max_size == 3 and n.size <= 3 for n in s.nodes.values())
    assert s.max_size == 3 * len(s.nodes)
    assert s.topology_refreshes == 1  # the first discovery only
    assert s.as_dict()["nodes"][sorted(primaries)[0]]["max_size"] == 3


def test_client_with_key_pins_the_slot_primary(cluster_pool: Make) -> None:
    pool = cluster_pool()
    pool.redis.set("{acct}balance", 10)
    with pool.client("{acct}balance") as r:
        conn = r.connection
        assert conn is not None
        assert f"{conn.host}:{conn.port}" == _node_of(pool, "{acct}balance")
        with r.pipeline() as tx:  # optimistic transaction on one slot
            tx.watch("{acct}balance")
            balance = int(tx.get("{acct}balance"))
            tx.multi()
            tx.set("{acct}balance", balance - 3)
            tx.rpush("{acct}log", "-3")
            assert tx.execute() == [True, 1]
        other = next(
            k for k in ("a", "b", "c", "d") if _node_of(pool, k) != _node_of(pool, "{acct}balance")
        )
        with pytest.raises(MovedError):
            r.get(other)
    assert pool.redis.get("{acct}balance") == b"7"
    assert pool.stats().in_use == 0


def test_client_without_key_pins_at_its_first_command(cluster_pool: Make) -> None:
    pool = cluster_pool()
    with pool.client() as r:
        with pytest.raises(RedisClusterException, match="hash slots"):
            r.mget("{u1}a", "{u2}a")  # keys of two slots, and no connection pinned yet
    with pool.client(timeout=1.0, wait=1.0) as r:
        assert r.set("{u1}a", "1") and r.incr("{u1}n") == 1
        pipe = r.pipeline()
        pipe.get("{u1}a").get("{u1}n")
        assert pipe.execute() == [b"1", b"1"]
        in_use = pool.stats().in_use
        assert in_use == 1
        with pytest.raises(ResponseError, match="same slot"):
            r.mget("{u1}a", "{u2}a")  # CROSSSLOT from the pinned node
    assert pool.stats().in_use == 0
    with pytest.raises(PoolError, match="block has ended"):
        r.get("{u1}a")
    with pool.client() as r2:
        assert r2.ping()  # a keyless command pins to some primary


def test_multi_on_a_pipeline_of_a_client_without_key_is_a_transaction(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    """``pipeline(transaction=False)`` then ``multi()`` (redis-py's explicit
    transaction) runs in MULTI/EXEC, as on any ``redis.Redis``."""
    pool = cluster_pool()
    node = redis_cluster.node_for_key("{tx}a")

    def execs() -> int:
        with node.client() as c:
            return int(c.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))

    before = execs()
    with pool.client() as r:
        pipe = r.pipeline(transaction=False)
        pipe.multi()
        pipe.set("{tx}a", 1).incr("{tx}a")
        assert pipe.execute() == [True, 2]
        assert pipe.incr("{tx}a").execute() == [3]  # (multi() was for that execute only)
    assert execs() == before + 1


def test_replica_reads_keep_their_connections(cluster_pool: Make) -> None:
    """READONLY (sent by RedisCluster.on_connect to every connection of a
    replica-reading client) is handshake, not state: connections are reused."""
    pool = cluster_pool(load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN, max_size=2)
    pool.redis.mset({"{r}a": "1"})
    for _ in range(100):
        assert pool.redis.get("{r}a") in (b"1", None)  # a replica may lag a moment
    for name, s in pool.stats().nodes.items():
        assert "dirty" not in s.destroyed_by_reason, (name, s.destroyed_by_reason)
        assert s.created <= 2, (name, s.created)


def test_asking_is_one_shot_not_session_state(cluster_pool: Make) -> None:
    pool = cluster_pool()
    name = _node_of(pool, "{ask}k")
    node = pool.node_pools()[name]
    with node.connection() as conn:
        conn.send_command("ASKING")
        assert conn.read_response() == b"OK"
        conn.send_command("GET", "{ask}k")  # the command ASKING allows
        conn.read_response()
    assert node.stats().destroyed_by_reason.get("dirty", 0) == 0
    with node.connection() as conn:
        conn.send_command("ASKING")
        assert conn.read_response() == b"OK"  # returned with ASKING still armed
    assert node.stats().destroyed_by_reason.get("dirty", 0) == 1


def test_wait_timeout_is_max_connections_error_without_refresh(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    pool = cluster_pool(max_size=1, timeout=0.2)
    pool.redis.set("{busy}k", "v")
    node = pool.node_pools()[_node_of(pool, "{busy}k")]
    before = redis_cluster.refresh_count()
    with node.connection():  # the node's only connection
        with pytest.raises(ClusterPoolTimeout) as info:
            pool.redis.get("{busy}k")
    err = info.value
    assert isinstance(err, MaxConnectionsError) and isinstance(err, RedisPoolTimeout)
    assert isinstance(err, RedisConnectionError)  # what callers already catch
    assert pool.stats().topology_refreshes == 1
    assert redis_cluster.refresh_count() == before
    assert pool.redis.get("{busy}k") == b"v"


def test_failing_node_raises_the_exact_error_redis_py_retries() -> None:
    for cause in (RedisConnectionError("refused"), RedisTimeoutError("connect timed out")):
        exc = RedisPoolTimeout("no connection")
        exc.__cause__ = cause
        err = _wait_error(exc, "127.0.0.1:1")
        assert type(err) is type(cause)  # exact: RedisCluster retries only these
    busy = _wait_error(RedisPoolTimeout("all busy"), "127.0.0.1:1")
    assert type(busy) is ClusterPoolTimeout


def test_from_env_and_startup_node_list(redis_cluster: RedisClusterServer) -> None:
    env = {"REDIS_CLUSTER_URL": redis_cluster.url, "REDIS_CLUSTER_POOL_MAX_SIZE": "3"}
    with RedisClusterPool.from_env(environ=env) as pool:
        assert pool.redis.ping()
        assert {s.max_size for s in pool.stats().nodes.values()} == {3}
    nodes = redis_cluster.startup_nodes()
    listed = [nodes[0], f"{nodes[1][0]}:{nodes[1][1]}"]
    with RedisClusterPool(listed, max_size=2) as pool:
        assert pool.redis.set("{s}k", 1) and pool.redis.get("{s}k") == b"1"
    with pytest.raises(ValueError, match="REDIS_CLUSTER_URL is not set"):
        RedisClusterPool.from_env(environ={})
    with pytest.raises(ValueError, match="REDIS_CLUSTER_URL is not set"):
        RedisClusterPool.from_env(environ={"ENABLE_REDIS_CLUSTER_TLS_MODE": "1"})
    with pytest.raises(ValueError, match="READ_REDIS_CLUSTER_URL"):
        RedisClusterPool.from_env(environ={**env, "READ_REDIS_CLUSTER_URL": redis_cluster.url})


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("redis://127.0.0.1:7000",), {"db": 1}, TypeError, "db"),
        (("redis://127.0.0.1:7000",), {"timeout": None}, ValueError, "timeout"),
        (("redis://127.0.0.1:7000",), {"max_connections": 5}, TypeError, "max_size"),
        (("redis://127.0.0.1:7000",), {"client_name": "a b"}, ValueError, "client_name"),
        (("unix:///tmp/x.sock",), {}, ValueError, "unix"),
        (([],), {}, ValueError, "empty"),
        ((["127.0.0.1"],), {}, TypeError, "startup node"),
        ((["127.0.0.1:99999"],), {}, ValueError, "port"),
        ((42,), {}, TypeError, "url_or_startup_nodes"),
    ],
)
def test_bad_input_names_the_field(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RedisClusterPool(*args, **kwargs)  # type: ignore[arg-type]


def test_close_leaves_no_socket_on_any_node(
    redis_cluster_url: str, redis_cluster: RedisClusterServer
) -> None:
    pool = RedisClusterPool(
        redis_cluster_url,
        max_size=2,
        client_name="rp-close",
        load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN,
    )
    for i in range(50):
        pool.redis.set(f"c{i}", i)
        pool.redis.get(f"c{i}")
    counts = redis_cluster.clients_named("rp-close")
    assert sum(counts.values()) >= 3 and max(counts.values()) <= 2  # the startup pool is gone
    pool.close()
    deadline = time.monotonic() + 5
    while sum(redis_cluster.clients_named("rp-close").values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_cluster.clients_named("rp-close") == dict.fromkeys(counts, 0)
    with pytest.raises(redis.ConnectionError):
        pool.redis  # noqa: B018


def test_a_refresh_running_into_close_opens_no_node_pool(
    redis_cluster_url: str, redis_cluster: RedisClusterServer
) -> None:
    """A command still running when the pool closes may refresh the topology
    (redis-py's every 5th MOVED asks the node named in it, through a node pool
    made for that): the pool it makes is closed too, not left open for good
    (with its upkeep thread, refilling it to ``min_size``)."""
    pool = RedisClusterPool(redis_cluster_url, min_size=1, max_size=2, client_name="rp-late")
    r = pool.redis
    r.ping()
    pool.close()
    node = redis_cluster.primaries()[0]
    try:
        r.nodes_manager.initialize(additional_startup_nodes_info=[(node.host, node.port)])
    except (redis.RedisError, RedisClusterException):
        pass
    assert all(p.closed for p in pool.node_pools().values())
    time.sleep(0.3)  # (an upkeep thread left running would have refilled by now)
    assert sum(redis_cluster.clients_named("rp-late").values()) == 0


def test_concurrent_first_use_discovers_once(cluster_pool: Make) -> None:
    """Callers racing on a fresh pool share one discovery (a second one would
    close the node pools the first is still using)."""
    pool = cluster_pool(max_size=2)
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def worker(i: int) -> None:
        start.wait()
        try:
            assert pool.redis.set(f"first{i}", i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors[:3]
    assert pool.stats().topology_refreshes == 1


GEVENT_CHILD = """
import sys
import redispool  # before monkey-patching, as with gunicorn's preload_app
from gevent import monkey
monkey.patch_all()
import gevent
pool = redispool.RedisClusterPool(sys.argv[1], max_size=2, timeout=20)
errors = []
def work(i):
    for j in range(5):
        try:
            pool.redis.get(f"g{(i * 5 + j) % 60}")
        except Exception as exc:
            errors.append(repr(exc))
gevent.joinall([gevent.spawn(work, i) for i in range(200)])
print(len(errors), errors[:3])
"""


def test_greenlets_wait_when_imported_before_monkey_patching(redis_cluster_url: str) -> None:
    """Each greenlet keeps its own record of the node connections it holds
    (a thread-local made before patching would be shared: waits became
    immediate ClusterPoolTimeouts)."""
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_CHILD, redis_cluster_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith("0 "), out.stdout


FORK_CHILD = """
import os, signal, sys
import redispool
pool = redispool.RedisClusterPool(sys.argv[1], max_size=4, timeout=5)
pool.redis.ping()  # used in the parent (gunicorn's master with --preload)
pid = os.fork()
if pid == 0:
    from gevent import monkey
    monkey.patch_all()  # gevent patches in the worker, after the fork
    import gevent
    signal.alarm(30)
    gs = [gevent.spawn(lambda i=i: pool.redis.set(f"fork{i}", i)) for i in range(20)]
    gevent.joinall(gs, timeout=20)
    print("child", sum(1 for g in gs if g.successful()), flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("status", status, pool.redis.get("fork19"), flush=True)
pool.close()
"""


def test_pool_made_before_a_fork_works_under_gevent_in_the_child(redis_cluster_url: str) -> None:
    """gunicorn --preload + gevent workers: the child gets new locks and a new
    RedisCluster (the parent's would block the hub on an OS lock held across
    discovery I/O)."""
    out = subprocess.run(
        [sys.executable, "-c", FORK_CHILD, redis_cluster_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "child 20" in out.stdout and "status 0 b'19'" in out.stdout, (out.stdout, out.stderr)


def test_a_node_connection_interrupted_on_its_way_to_redis_py_is_given_back(
    cluster_pool: Make,
) -> None:
    """An exception (a signal handler, Ctrl-C) as a node pool records a connection
    it lends: redis-py never sees it, so the pool takes it back itself."""
    from redispool.cluster_nodes import _HELD, NodePool

    pool = cluster_pool(max_size=1)
    r = pool.redis
    assert r.set("k", "v")  # every node pool of the key's node made
    code = NodePool.get_connection.__code__
    fired: list[int] = []

    def local(frame: FrameType, event: str, arg: object) -> object:
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        if event == "line" and not fired and "_rp_held = (ident, held)" in line:
            fired.append(1)  # appended to the thread's list, not yet marked
            raise KeyboardInterrupt
        return local

    def hook(frame: FrameType, event: str, arg: object) -> object:
        return local if frame.f_code is code else None

    sys.settrace(hook)
    try:
        with pytest.raises(KeyboardInterrupt):
            r.get("k")
    finally:
        sys.settrace(None)
    assert fired
    assert pool.stats().in_use == 0
    assert threading.get_ident() not in _HELD
    assert r.get("k") == b"v"  # max_size=1: the node's one connection lends again


@pytest.mark.parametrize(
    "retry, via",
    [("times_out", "command"), ("cannot_connect", "command"), ("times_out", "pipeline")],
)
def test_redis_pys_retry_giving_a_connection_back_twice_does_not_lend_it_twice(
    cluster_pool: Callable[..., RedisClusterPool],
    monkeypatch: pytest.MonkeyPatch,
    retry: str,
    via: str,
) -> None:
    """redis-py's cluster command keeps its last connection across retries: a
    TRYAGAIN, then a retry that fails before it gets a connection (it times out
    waiting for the node, whose connection another thread was handed meanwhile;
    or the node cannot be reached), and its ``finally`` gives that connection
    back again (after closing it, for a connection error). It must stay the
    other thread's, open, not go idle to be lent to a third (two callers on one
    socket read each other's replies). A cluster pipeline runs its commands
    one by one the same way (``via="pipeline"``: its own ``_execute_command``)."""
    pool = cluster_pool(max_size=1, timeout=0.3)
    r = pool.redis
    r.set("k", "v")
    waiter = TryAgainToAWaiter(pool, "k")
    waiter.install(monkeypatch)
    expected: type[Exception] = ClusterPoolTimeout
    if retry == "cannot_connect":
        expected = RedisConnectionError
        real_get = NodePool.get_connection

        def unreachable(self: NodePool, *args: Any, **kw: Any) -> Any:
            if threading.current_thread() is threading.main_thread() and waiter.tried:
                waiter.wait_held()  # the other has it
                raise RedisConnectionError("Error 111 connecting: Connection refused.")
            return real_get(self, *args, **kw)

        monkeypatch.setattr(NodePool, "get_connection", unreachable)
        monkeypatch.setattr(r.nodes_manager, "initialize", Mock())  # (no refresh)
    with pytest.raises(expected):  # TRYAGAIN: the connection goes to the waiter; the retry fails
        if via == "pipeline":
            r.pipeline().parent_execute_command("GET", "k")  # (its one-by-one path)
        else:
            r.get("k")
    monkeypatch.undo()
    waiter.wait_held()
    held, node_pool = waiter.held, waiter.node_pool
    assert len(held) == 1
    assert held[0]._sock is waiter.socks[0] is not None  # not closed under the other thread
    held[0].send_command("PING")
    assert held[0].read_response() == b"PONG"
    s = node_pool.stats()
    assert s.in_use == 1 and s.idle == 0, s  # still the other thread's, not idle
    with pytest.raises(RedisPoolTimeout):
        node_pool._get(0.05)  # nobody else gets it while it is held
    waiter.finish()
    assert r.get("k") == b"v"


def test_the_double_return_guard_lets_a_command_close_an_idle_connection(
    cluster_pool: Callable[..., RedisClusterPool],
) -> None:
    """A connection the running command gave back is left open only while
    another thread holds it: idle, it is closed when asked (the pool destroying
    it, redis-py dropping a node's idle connections)."""
    pool = cluster_pool(max_size=1)
    pool.redis.set("k", "v")
    (conn,) = pool.node_pools()[pool.node_of("k")]._pool.objects()  # idle, given back
    ident = threading.get_ident()
    _RETURNED[ident] = {id(conn)}  # (as inside the command that gave it back)
    try:
        conn.disconnect()
    finally:
        _RETURNED.pop(ident, None)
    assert conn._sock is None


def test_stats_never_count_a_retiring_node_pool_twice(
    cluster_pool: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A departed node pool's numbers move to the retired totals as it is taken
    off the list: a ``stats()`` that listed it, then read the retired totals
    after the move, counted it twice, and the next one went down (which
    ``PoolMetrics`` reads as a new pool, adding the whole count again)."""
    pool = cluster_pool(max_size=2)
    assert pool.redis.set("k", "v")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    departed = pool._new_node_pool(host="127.0.0.1", port=port)  # (in no topology)
    with pytest.raises(redis.ConnectionError):
        departed.redis_pool._get(0.5)
    assert departed.redis_pool.stats().create_errors >= 1
    node_stats = departed.redis_pool.stats
    retired: list[bool] = []

    def stats_as_it_retires() -> Any:
        if not retired:  # (another thread's refresh, just as this stats() reads the node's)
            retired.append(True)
            pool._close_departed()
        return node_stats()

    monkeypatch.setattr(departed.redis_pool, "stats", stats_as_it_retires)
    first = pool.stats()
    assert retired and departed not in pool._pools.values()
    second = pool.stats()
    assert second.create_errors >= first.create_errors, (first, second)
