"""RedisClusterPool under cluster events, on the shared real cluster (restored
after the tests that damage it): MOVED after a failover, ASK during a slot
migration, exhaustion (FIFO per node, no refresh storm), multi-node pipelines
under contention, a node leaving, kill -9 of a primary."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.cluster import LoadBalancingStrategy
from redis.crc import key_slot
from redis.exceptions import MovedError

from redispool import ClusterPoolTimeout, PoolError, RedisClusterPool
from redispool.cluster_nodes import _HELD
from redispool.helpers.ratelimit import RateLimiter
from redispool.testing import RedisClusterServer

Make = Callable[..., RedisClusterPool]


def _name(node: object) -> str:
    return f"{node.host}:{node.port}"  # type: ignore[attr-defined]


def _node_of(pool: RedisClusterPool, key: str) -> str:
    cluster = pool.redis
    return str(cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key)).name)


def _wait_until(ok: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def restored(redis_cluster: RedisClusterServer) -> Iterator[RedisClusterServer]:
    """The shared cluster, restored to 3+3 healthy nodes after the test."""
    yield redis_cluster
    redis_cluster.restore()


def test_moved_after_cluster_failover(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    pool = cluster_pool(max_size=4)
    keys = [f"m{i}" for i in range(90)]
    for k in keys:
        pool.redis.set(k, k)
    victim = redis_cluster.node_for_key("m0")
    replica = redis_cluster.replica_of(victim)
    redis_cluster.failover(replica)
    before = redis_cluster.refresh_count()
    for k in keys:  # the old primary answers MOVED; no error reaches the caller
        assert pool.redis.get(k) == k.encode()
    assert _node_of(pool, "m0") == _name(replica)
    s = pool.stats()
    assert s.in_use == 0 and s.command_errors <= 90  # MOVED replies are counted errors
    # redis-py patches the slot from each MOVED and refreshes fully every 5th
    assert redis_cluster.refresh_count() - before <= 3


def test_ask_during_slot_migration_keeps_connections(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    pool = cluster_pool(max_size=2)
    key = "{mig}k"
    slot = key_slot(key.encode())
    pool.redis.set(key, "v")
    src = redis_cluster.node_for_slot(slot)
    dst = next(n for n in redis_cluster.primaries() if n.port != src.port)
    src_id, dst_id = redis_cluster.node_id(src), redis_cluster.node_id(dst)
    with dst.client() as d, src.client() as s:
        d.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        s.execute_command("MIGRATE", dst.host, dst.port, key, 0, 5000)
    try:
        for i in range(30):
            assert pool.redis.get(key) == b"v"  # ASK -> ASKING + GET on the target
            assert pool.redis.set(f"{{mig}}n{i}", i)  # a new key of the slot: ASK too
        target = pool.node_pools()[_name(dst)].stats()
        assert target.destroyed_by_reason.get("dirty", 0) == 0, target.destroyed_by_reason
        assert target.created <= 2  # the connections that sent ASKING were reused
        assert pool.stats().in_use == 0
    finally:
        for node in (dst, src, *redis_cluster.primaries()):
            with node.client() as c:
                c.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    assert pool.redis.get(key) == b"v" and pool.redis.get("{mig}n29") == b"29"


def test_exhaustion_20_threads_served_fifo_per_node(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    """20 threads BLPOP on a node whose pool has 2 connections: they are served
    in arrival order, nobody times out and the topology is not refreshed."""
    pool = cluster_pool(max_size=2, timeout=30, socket_timeout=30)
    q = "{fifo}q"
    pool.redis.delete(q)
    node = pool.node_pools()[_node_of(pool, q)]
    got: dict[int, object] = {}

    def worker(i: int) -> None:
        got[i] = pool.redis.blpop([q], timeout=25)

    side = redis_cluster.node_for_key(q).client()

    def blocked() -> int:
        return int(side.info("clients")["blocked_clients"])

    threads = []
    for i in range(20):  # queue them one by one: the arrival order is known
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        _wait_until(lambda i=i: blocked() + node.stats().waiting == i + 1, f"thread {i} queued")
    before = redis_cluster.refresh_count()
    for i in range(20):
        side.rpush(q, i)
        _wait_until(lambda i=i: len(got) == i + 1, f"item {i} taken")
        _wait_until(lambda i=i: blocked() == min(2, 19 - i), "the next waiter to block")
    for t in threads:
        t.join(10)
    side.close()
    assert [tuple(got[i]) for i in range(20)] == [(q.encode(), str(i).encode()) for i in range(20)]  # type: ignore[call-overload]
    assert node.stats().timeouts == 0 and node.stats().size <= 2
    assert redis_cluster.refresh_count() == before


def test_wait_timeouts_under_exhaustion_cause_no_refresh_storm(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    pool = cluster_pool(max_size=2, timeout=0.1, socket_timeout=5)
    pool.redis.ping()
    before = redis_cluster.refresh_count()
    kinds: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + 1.5

    def worker() -> None:
        while time.monotonic() < stop:
            try:
                pool.redis.blpop(["{storm}q"], timeout=0.3)
                kind = "ok"
            except ClusterPoolTimeout:
                kind = "wait timeout"
            except Exception as exc:  # anything else is a failure of this test
                kind = type(exc).__name__
            with lock:
                kinds[kind] += 1

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert set(kinds) <= {"ok", "wait timeout"}, kinds
    assert kinds["wait timeout"] >= 20 and kinds["ok"] >= 2
    assert redis_cluster.refresh_count() == before, kinds  # BlockingConnectionPool: hundreds
    assert pool.stats().topology_refreshes == 1 and pool.stats().in_use == 0


def test_multi_node_pipelines_under_contention(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    """16 threads, pipelines over all three primaries in random order, 2
    connections per node: every call ends within its wait bound (no deadlock),
    replies are each caller's own, nothing stays borrowed, and busy pools
    refresh no topology."""
    timeout = 0.5
    pool = cluster_pool(max_size=2, timeout=timeout)
    by_node: dict[str, str] = {}
    for i in range(200):
        by_node.setdefault(_node_of(pool, f"{{p{i}}}"), f"{{p{i}}}")
    tags = list(by_node.values())
    assert len(tags) == 3
    before = redis_cluster.refresh_count()
    outcome: Counter[str] = Counter()
    longest = [0.0]
    lock = threading.Lock()
    stop = time.monotonic() + 2.0

    def worker(tid: int) -> None:
        rnd = random.Random(tid)
        seq = 0
        while time.monotonic() < stop:
            seq += 1
            order = rnd.sample(tags, 3)
            keys = [f"{tag}:{tid}:{seq}:{j}" for j, tag in enumerate(order * 2)]
            pipe = pool.redis.pipeline()
            for k in keys:
                pipe.set(k, k)
            for k in keys:
                pipe.get(k)
            t0 = time.monotonic()
            try:
                out = pipe.execute()
                kind = "ok"
                assert out == [True] * len(keys) + [k.encode() for k in keys], "misdelivered"
            except (redis.ConnectionError, PoolError) as exc:
                kind = type(exc).__name__
            took = time.monotonic() - t0
            with lock:
                outcome[kind] += 1
                longest[0] = max(longest[0], took)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "a pipeline is stuck"
    assert outcome["ok"] >= 100, outcome  # waiting in a circle: ~20 in 2 s
    # at most one wait per node per attempt (redis-py: 1 + 3 attempts), then
    # the socket: bounded, where two pipelines waiting for each other would
    # each sit out every wait
    assert longest[0] < 4 * 3 * timeout + 2.0, (longest, outcome)
    s = pool.stats()
    assert s.in_use == 0 and s.waiting == 0, s
    assert all(n.size <= 2 for n in s.nodes.values())
    assert redis_cluster.refresh_count() == before, (outcome, s)


def test_node_leaving_has_its_pool_closed(
    restored: RedisClusterServer, redis_cluster_url: str
) -> None:
    cluster = restored
    pool = RedisClusterPool(
        redis_cluster_url,
        max_size=2,
        client_name="rp-leave",
        load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN_REPLICAS,
    )
    try:
        keys = [f"l{i}" for i in range(60)]
        for k in keys:
            pool.redis.set(k, k)
        for k in keys:
            pool.redis.get(k)  # reads go to the replicas
        counts = cluster.clients_named("rp-leave")
        leaving = next(n for n in cluster.replicas() if counts[n.port])
        cluster.forget(leaving)
        deadline = time.monotonic() + 10
        while _name(leaving) in pool.node_pools():  # the next refresh drops it
            assert time.monotonic() < deadline, "the departed node's pool is still there"
            for k in keys:
                try:
                    pool.redis.get(k)
                except redis.RedisError:
                    pass
        _wait_until(
            lambda: cluster.clients_named("rp-leave")[leaving.port] == 0, "sockets closed", 5
        )
        for k in keys:
            assert pool.redis.get(k) in (k.encode(), None)
        assert pool.stats().in_use == 0
    finally:
        pool.close()


def test_restore_takes_back_a_removed_node_that_holds_keys(
    redis_cluster: RedisClusterServer,
) -> None:
    """The fixture's own repair: a removed node with keys (seen once after the test
    above, cause unknown) refused ``CLUSTER REPLICATE`` ("must be empty"), which
    left the shared cluster short of a replica for every later test."""
    leaving = redis_cluster.replicas()[0]
    redis_cluster.forget(leaving)
    with leaving.client() as c:
        c.execute_command("DEBUG", "POPULATE", "3", "stray")  # no slot check
        assert c.dbsize() == 3
    redis_cluster.restore()
    assert redis_cluster.is_ready()
    with leaving.client() as c:
        assert c.info("replication")["role"] == "slave"


def test_restore_leaves_a_primary_the_others_do_not_know_of_yet(
    redis_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture's own repair after a kill -9: a replica promoted a moment ago
    serves its slots before the other nodes' views (``slot_owners``) say so.
    ``restore()`` took it for a removed node and asked it to replicate, which a
    primary with slots refuses: it timed out (seen in about 1 restore in 8 after
    killing a primary), leaving the shared cluster broken for later tests."""
    fresh = redis_cluster.primaries()[-1]
    owners = redis_cluster.slot_owners()
    stale = {port: ranges for port, ranges in owners.items() if port != fresh.port}
    monkeypatch.setattr(redis_cluster, "slot_owners", lambda: stale)
    redis_cluster.restore(timeout=3)
    monkeypatch.undo()
    assert redis_cluster.slot_owners() == owners and redis_cluster.is_ready()


def test_kill9_of_a_primary_errors_briefly_then_recovers(
    restored: RedisClusterServer, redis_cluster_url: str
) -> None:
    cluster = restored
    pool = RedisClusterPool(
        redis_cluster_url, max_size=4, timeout=1.0, connect_timeout=0.5, socket_timeout=0.5
    )
    events: list[tuple[float, str]] = []
    wrong: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(tid: int) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            key = f"kill:{tid}:{seq}"
            try:
                pool.redis.set(key, key)
                got = pool.redis.get(key)
                if got not in (key.encode(), None):  # None: a write lost in the crash
                    wrong.append(f"{key} -> {got!r}")
                kind = "ok"
            except (redis.RedisError, PoolError) as exc:
                kind = type(exc).__name__
                time.sleep(0.01)
            with lock:
                events.append((time.monotonic(), kind))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        cluster.reset_stats()
        victim = cluster.node_for_key("kill:victim")
        killed_at = time.monotonic()
        victim.kill()
        cluster.wait_ready(replicas=-1)
        time.sleep(1.5)  # keep going after the failover
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    refreshes = cluster.refresh_count()
    departed = _name(victim) not in pool.node_pools()
    pool.close()
    assert not wrong, wrong[:5]
    errors = [t for t, kind in events if kind != "ok" and t >= killed_at]
    after = [kind for t, kind in events if errors and t > errors[-1]]
    print(
        f"kill -9: {len(errors)} errors over {errors[-1] - errors[0] if errors else 0:.2f}s, "
        f"{refreshes} refreshes, {Counter(k for _, k in events)}"
    )
    assert errors, "the kill went unnoticed"
    assert errors[-1] - killed_at < 6.0  # failover takes ~2.5 s here
    assert len(after) >= 20 and set(after) == {"ok"}
    assert departed, "the dead primary's pool was not closed"
    # Each call that meets the dead node refreshes once per attempt (redis-py's
    # retry policy: 1 + 3 attempts), as with redis-py's own pools: bounded by
    # the outage and the callers, not by anything in the pool (measured: ~300).
    window = errors[-1] - killed_at
    assert refreshes <= 60 * len(threads) * (window + 1), (refreshes, window)


def test_a_thread_with_a_pubsub_still_waits_for_a_busy_node(cluster_pool: Make) -> None:
    """A subscribed connection held by this thread is not a pipeline's: the
    thread's commands still wait their turn for a busy node."""
    pool = cluster_pool(max_size=1, timeout=5.0)
    r = pool.redis
    nodes = sorted(r.get_primaries(), key=lambda n: n.name)
    low, high = nodes[0], nodes[-1]
    key = next(f"ps{i}" for i in range(500) if _node_of(pool, f"ps{i}") == low.name)
    pubsub = r.pubsub(node=high)
    try:
        pubsub.subscribe("news")
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
        busy = pool.node_pools()[low.name]
        holding = threading.Event()

        def hold() -> None:
            with busy.connection():
                holding.set()
                time.sleep(0.3)

        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait(5)
        t0 = time.monotonic()
        assert r.get(key) is None  # waited for the holder, no ClusterPoolTimeout
        assert time.monotonic() - t0 >= 0.1
        holder.join(5)
    finally:
        pubsub.close()


def test_helpers_and_pinned_clients_follow_a_failover(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    """Only helpers and pinned clients, no ``pool.redis`` traffic to refresh the
    slot table as a side effect: after CLUSTER FAILOVER every helper call still
    succeeds (one MOVED, the slot table updated, the call run once more), and a
    pinned block that got MOVED leaves the next block on the new primary."""
    pool = cluster_pool(max_size=4)
    limiter = RateLimiter(pool, "1000/hour", algorithm="gcra", timeout=2.0)
    for _ in range(5):
        assert not limiter.hit("client-a").degraded
    victim = redis_cluster.node_for_key(limiter.key_for("client-a"))
    with pool.client("{anchor}k") as c:
        c.set("{anchor}k", 1)
    anchor_victim = redis_cluster.node_for_key("{anchor}k")
    redis_cluster.failover(redis_cluster.replica_of(victim))
    if anchor_victim.port != victim.port:
        redis_cluster.failover(redis_cluster.replica_of(anchor_victim))
    results = [limiter.hit("client-a") for _ in range(20)]
    assert not any(r.degraded for r in results), results
    assert results[-1].remaining == 1000 - 25  # exact across the failover
    assert limiter.breaker.state == "closed" and limiter.errors == 0
    moved = 0
    for _ in range(3):
        try:
            with pool.client("{anchor}k") as c:
                assert c.get("{anchor}k") == b"1"
        except MovedError:
            moved += 1
    assert moved <= 1  # at most the first block; the slot table followed
    assert pool.stats().in_use == 0


def test_a_cluster_transaction_gives_its_connection_back_to_the_pool_that_lent_it(
    cluster_pool: Make, redis_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a moment after a failover the old primary is in no node's CLUSTER
    SLOTS (0.1-0.3 s here): a refresh then closes its node pool and the next one
    makes a new pool for it. redis-py's cluster transaction gives its connection
    back to the pool of the node that owns it now (``find_connection_owner``):
    the new one, which never lent it; the old one kept it borrowed for good."""
    pool = cluster_pool(max_size=2)
    r = pool.redis
    key = "{txflap}k"
    r.set(key, 1)
    node = pool.node_of(key)
    lender = pool.node_pools()[node]
    pipe = r.pipeline(transaction=True)
    pipe.watch(key)  # borrows the transaction's connection
    assert lender.stats().in_use == 1
    victim = redis_cluster.node_for_key(key)
    redis_cluster.failover(redis_cluster.replica_of(victim))
    real = redis.Redis.execute_command

    def without_victim(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        reply = real(self, *args, **kwargs)
        if args == ("CLUSTER SLOTS",):  # as seen in that moment
            reply = [[*s[:2], *(n for n in s[2:] if int(n[1]) != victim.port)] for s in reply]
        return reply

    monkeypatch.setattr(redis.Redis, "execute_command", without_victim)
    r.nodes_manager.initialize()
    monkeypatch.undo()
    assert node not in pool.node_pools() and lender.closed
    r.nodes_manager.initialize()
    assert pool.node_pools()[node] is not lender  # the node is back, with a new pool
    pipe.reset()  # UNWATCH, and the connection goes back
    assert lender.stats().in_use == 0, lender.stats()
    assert threading.get_ident() not in _HELD
    assert pool.stats().in_use == 0


def test_a_cluster_transaction_on_a_node_that_left_the_topology_gives_its_connection_back(
    cluster_pool: Make, redis_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the transaction ends while its node is out of the slot
    table: redis-py finds no owner and gave the connection back to no pool (the
    closed node pool kept it borrowed and the thread stayed marked as holding a
    connection of that node, so it never waited for a node ordered before it)."""
    pool = cluster_pool(max_size=2)
    r = pool.redis
    key = "{txgone}k"
    r.set(key, 1)
    node = pool.node_of(key)
    lender = pool.node_pools()[node]
    pipe = r.pipeline(transaction=True)
    pipe.watch(key)
    victim = redis_cluster.node_for_key(key)
    redis_cluster.failover(redis_cluster.replica_of(victim))
    real = redis.Redis.execute_command

    def without_victim(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        reply = real(self, *args, **kwargs)
        if args == ("CLUSTER SLOTS",):
            reply = [[*s[:2], *(n for n in s[2:] if int(n[1]) != victim.port)] for s in reply]
        return reply

    monkeypatch.setattr(redis.Redis, "execute_command", without_victim)
    r.nodes_manager.initialize()
    assert node not in pool.node_pools() and lender.closed
    pipe.reset()  # UNWATCH, and the connection goes back
    monkeypatch.undo()
    assert lender.stats().in_use == 0, lender.stats()
    assert threading.get_ident() not in _HELD
    assert pool.stats().in_use == 0


def test_a_cluster_transaction_whose_unwatch_times_out_gives_its_connection_back(
    cluster_pool: Make, redis_cluster: RedisClusterServer
) -> None:
    """redis-py's cluster transaction gives its connection back on reset() after
    UNWATCH, unless UNWATCH fails with anything but a connection error: a read
    timeout (a hung node) left it borrowed, and the thread marked as holding a
    connection of that node, until the pipeline was collected (and for good if
    its reset then failed too: the node still hung)."""
    pool = cluster_pool(max_size=2, socket_timeout=0.1, connect_timeout=0.1)
    r = pool.redis
    key = "{txhung}k"
    r.set(key, 1)
    lender = pool.node_pools()[pool.node_of(key)]
    pipe = r.pipeline(transaction=True)
    pipe.watch(key)
    node = redis_cluster.node_for_key(key)
    node.pause()  # well under the cluster's node timeout: no failover
    try:
        with pytest.raises(redis.TimeoutError):
            pipe.reset()  # UNWATCH times out
        del pipe  # (its __del__ resets once more, and fails the same way)
    finally:
        node.resume()
    assert lender.stats().in_use == 0, lender.stats()
    assert threading.get_ident() not in _HELD


def test_a_node_pool_made_outside_a_refresh_is_not_closed_before_it_is_the_nodes(
    cluster_pool: Make,
) -> None:
    """redis-py makes the pool of a node it learnt of from a MOVED (one missing
    from the last refresh: a failover's moment, a new node) at the node's first
    use, outside any refresh. Another thread's MOVED patch in the moment between
    the pool's making and the node getting it used to close it as departed, and
    the node kept the closed pool across refreshes: every command to it failed
    with a ConnectionError, for good."""
    pool = cluster_pool(max_size=2)
    r = pool.redis
    key = "{race}k"
    r.set(key, "v")
    slot = r.keyslot(key)
    manager = r.nodes_manager
    node = manager.get_node_from_slot(slot)
    with manager._lock:  # a refresh in the moment the node was missing from CLUSTER SLOTS
        del manager.nodes_cache[node.name]
    pool._after_refresh()
    manager.move_slot(MovedError(f"{slot} {node.host}:{node.port}"))  # a new ClusterNode
    make = manager.connection_pool_class

    def made_then_another_thread_patches_a_slot(**kwargs: Any) -> Any:
        made = make(**kwargs)
        # (what a MOVED patch's refresh event does, from a thread of its own: it
        # must wait for the node to have its pool, not look now)
        other = threading.Thread(target=pool._after_refresh)
        other.start()
        other.join(0.2)
        return made

    manager.connection_pool_class = made_then_another_thread_patches_a_slot
    try:
        assert r.get(key) == b"v"
    finally:
        manager.connection_pool_class = make
    assert r.get(key) == b"v"
    assert not manager.get_node_from_slot(slot).redis_connection.connection_pool.redis_pool.closed
