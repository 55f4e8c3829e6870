"""Helpers on a Redis Cluster while a slot migrates (``CLUSTER SETSLOT
IMPORTING/MIGRATING``, keys moved with ``MIGRATE``): a key not on the migrating
node (moved, or new) is answered ASK, a multi-key call with its keys on both
nodes TRYAGAIN. Neither is an outage: calls keep their answers, and the
breaker stays closed for every key."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import MovedError

from redispool import RedisClusterPool
from redispool.helpers.analytics import Analytics
from redispool.helpers.base import key_digest
from redispool.helpers.cache import Cache
from redispool.helpers.lockout import Lockout
from redispool.helpers.ratelimit import RateLimiter
from redispool.redis_adapter import PinnedRedis
from redispool.testing import RedisClusterServer, RedisServer

Make = Callable[..., RedisClusterPool]


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


def _in_slot(slot: int, key_of: Callable[[str], str], prefix: str, n: int) -> list[str]:
    """``n`` names whose ``key_of(name)`` is in ``slot`` (found by trying)."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        name = f"{prefix}{i}"
        if _slot(key_of(name)) == slot:
            found.append(name)
        i += 1
    return found


class Migration:
    """``slot`` migrating from its primary to another; ``restore()`` gives it
    back to its primary as it was (its keys deleted: every test flushes first)."""

    def __init__(self, cluster: RedisClusterServer, slot: int) -> None:
        self.cluster, self.slot = cluster, slot
        self.src = cluster.node_for_slot(slot)
        self.dst = next(n for n in cluster.primaries() if n.port != self.src.port)
        self.src_id, self.dst_id = cluster.node_id(self.src), cluster.node_id(self.dst)
        self.finished = False
        with self.dst.client() as d, self.src.client() as s:
            d.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.src_id)
            s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.dst_id)

    def keys_on(self, node: RedisServer) -> set[str]:
        with node.client() as c:
            keys = c.execute_command("CLUSTER GETKEYSINSLOT", self.slot, 1000)
        return {k.decode() if isinstance(k, bytes) else k for k in keys}

    def move(self, *keys: str) -> None:
        with self.src.client() as s:
            s.execute_command("MIGRATE", self.dst.host, self.dst.port, "", 0, 5000, "KEYS", *keys)

    def finish(self) -> None:
        """Move what is left, then give the slot to the importing node."""
        left = self.keys_on(self.src)
        if left:
            self.move(*left)
        for node in (self.dst, self.src, *self.cluster.primaries()):
            with node.client() as c:
                c.execute_command("CLUSTER SETSLOT", self.slot, "NODE", self.dst_id)
        self.finished = True

    def restore(self) -> None:
        keys = self.keys_on(self.dst)
        if keys:
            with self.dst.client() as d:
                pipe = d.pipeline(transaction=False)
                for key in keys:  # (ASKING: the slot is not its own unless finished)
                    pipe.execute_command("ASKING")
                    pipe.delete(key)
                pipe.execute()
        if self.finished:
            for node in (self.dst, self.src, *self.cluster.primaries()):
                with node.client() as c:
                    c.execute_command("CLUSTER SETSLOT", self.slot, "NODE", self.src_id)
            with self.src.client() as s:
                s.execute_command("CLUSTER BUMPEPOCH")  # its claim wins on every node
        else:
            for node in (self.src, self.dst):
                with node.client() as c:
                    c.execute_command("CLUSTER SETSLOT", self.slot, "STABLE")
        deadline = time.monotonic() + 10
        while not self._back():
            assert time.monotonic() < deadline, "the slot did not go back to its primary"
            time.sleep(0.02)

    def _back(self) -> bool:
        for node in self.cluster.running():
            with node.client() as c:
                slots = c.execute_command("CLUSTER SLOTS")
            owner = [int(s[2][1]) for s in slots if int(s[0]) <= self.slot <= int(s[1])]
            if owner != [self.src.port]:
                return False
        return True


@pytest.fixture
def migrating(redis_cluster: RedisClusterServer) -> Iterator[Callable[[int], Migration]]:
    started: list[Migration] = []

    def start(slot: int) -> Migration:
        started.append(Migration(redis_cluster, slot))
        return started[-1]

    yield start
    for migration in started:
        migration.restore()


def _asked_leaves_no_asking(pool: RedisClusterPool, m: Migration, moved_key: str) -> None:
    """Every idle connection of the importing node's pool, borrowed at once, reads
    a moved key without ASKING: MOVED (an ASKING left on one would let it through)."""
    node = pool.node_pools()[f"{m.dst.host}:{m.dst.port}"]
    assert node.stats().in_use == 0
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(node.client()) for _ in range(node.stats().idle or 1)]
        for c in clients:
            with pytest.raises(MovedError):
                c.get(moved_key)


def test_single_key_helpers_follow_ask_while_a_slot_migrates(
    cluster_pool: Make, migrating: Callable[[int], Migration]
) -> None:
    """A rate limiter and analytics (one key per command, pipelines too) on keys
    staying on the migrating node, moved to the importing one, and new: exact
    answers, no call degraded, the breakers closed."""
    pool = cluster_pool(max_size=3)
    rl = RateLimiter(pool, "100/minute", algorithm="gcra", timeout=2)
    fixed = RateLimiter(pool, "100/minute", algorithm="fixed", timeout=2)
    stays = "rl-stays"
    slot = _slot(rl.key_for(stays))
    moved, new = _in_slot(slot, rl.key_for, "rl-", 2)
    f_stays, f_moved, f_new = _in_slot(slot, fixed.key_for, "fx-", 3)
    an = Analytics(pool, namespace="mig-an", timeout=2, on_error="raise")
    a_stays, a_moved, a_new = _in_slot(slot, lambda n: an._key("c", n, 0), "an", 3)
    for _ in range(3):
        assert not rl.hit(stays).degraded and not rl.hit(moved).degraded
        assert not fixed.hit(f_stays).degraded and not fixed.hit(f_moved).degraded
    for name in (a_stays, a_moved):
        an.incr(name, 5)
        an.add_unique(name, "x")
    m = migrating(slot)
    m.move(rl.key_for(moved), fixed.key_for(f_moved))
    m.move(*(an._key(kind, a_moved, an.bucket_start()) for kind in "cu"))
    assert len(m.keys_on(m.dst)) == 4

    for _ in range(2):
        for limiter, names in ((rl, (stays, moved, new)), (fixed, (f_stays, f_moved, f_new))):
            for name in names:
                result = limiter.hit(name)
                assert result.allowed and not result.degraded, (name, result)
    assert [rl.peek(n).remaining for n in (stays, moved, new)] == [95, 95, 98]
    assert [fixed.peek(n).remaining for n in (f_stays, f_moved, f_new)] == [95, 95, 98]
    for name in (a_stays, a_moved, a_new):
        an.incr(name, 2)
        assert an.add_unique(name, "y") is True  # a pipeline: PFADD and EXPIRE
    assert [an.get(n) for n in (a_stays, a_moved, a_new)] == [7, 7, 2]
    assert [an.count_unique(n) for n in (a_stays, a_moved, a_new)] == [2, 2, 1]
    buffered = Analytics(pool, namespace="mig-an", buffered=True, flush_interval=60)
    for name in (a_stays, a_moved, a_new):
        buffered.incr(name, 10)
    assert buffered.flush() == 3  # one pipeline, its commands on both nodes
    assert [an.get(n) for n in (a_stays, a_moved, a_new)] == [17, 17, 12]
    buffered.close(timeout=2)

    assert rl.key_for(new) in m.keys_on(m.dst)  # new keys: on the importing node
    assert rl.key_for(stays) in m.keys_on(m.src)
    for helper in (rl, fixed, an, buffered):
        assert helper.errors == 0 and helper.breaker.failures == 0, helper
        assert helper.breaker.state == "closed"
    assert pool.stats().in_use == 0
    dst = pool.node_pools()[f"{m.dst.host}:{m.dst.port}"].stats()
    assert dst.destroyed_by_reason.get("dirty", 0) == 0, dst.destroyed_by_reason
    _asked_leaves_no_asking(pool, m, rl.key_for(moved))


def test_a_pipeline_whose_ask_cannot_be_followed_keeps_what_it_applied(
    cluster_pool: Make, migrating: Callable[[int], Migration]
) -> None:
    """A buffered Analytics flush (one pipeline) whose commands answered ASK
    cannot be sent to the importing node (no connection free in time): the
    commands applied on the migrating node count as written, only those answered
    ASK go back into the buffer, so nothing is counted twice."""
    pool = cluster_pool(max_size=1)
    an = Analytics(pool, namespace="mig-an", timeout=2, on_error="raise")
    stays, moved = _in_slot(_slot("{an0}"), lambda n: an._key("c", n, 0), "an", 2)
    an.incr(stays, 1)
    an.incr(moved, 1)
    m = migrating(_slot("{an0}"))
    m.move(an._key("c", moved, an.bucket_start()))
    buffered = Analytics(pool, namespace="mig-an", buffered=True, flush_interval=60, timeout=0.2)
    buffered.incr(stays, 10)
    buffered.incr(moved, 10)
    with pool.node_pools()[f"{m.dst.host}:{m.dst.port}"].client():  # its one connection
        assert buffered.flush() == 1
    assert buffered.stats()["buffered"] == 1
    assert buffered.breaker.failures == 0  # the node is up: its pool was busy
    assert buffered.flush() == 1
    assert [an.get(stays), an.get(moved)] == [11, 11]
    buffered.close(timeout=2)
    assert pool.stats().in_use == 0


def test_an_ask_goes_through_address_remap(
    cluster_pool: Make, migrating: Callable[[int], Migration]
) -> None:
    """Behind NAT the ASK reply names the node's own address: ``address_remap``
    maps it, as every address from the cluster (here, onto itself)."""
    seen: list[tuple[str, int]] = []

    def remap(address: tuple[str, int]) -> tuple[str, int]:
        seen.append(address)
        return address

    pool = cluster_pool(address_remap=remap)
    rl = RateLimiter(pool, "100/minute", timeout=2)
    key = rl.key_for("nat")
    rl.hit("nat")
    m = migrating(_slot(key))
    m.move(key)
    seen.clear()
    assert not rl.hit("nat").degraded and rl.peek("nat").remaining == 98
    assert (m.dst.host, m.dst.port) in seen


class Cut(BaseException):
    """An interruption (``gevent.Timeout``, Ctrl-C) between ASKING and the command."""


def test_an_asking_cut_short_before_its_command_is_not_lent_again(
    cluster_pool: Make, migrating: Callable[[int], Migration], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = cluster_pool(max_size=1)
    rl = RateLimiter(pool, "100/minute", timeout=2)
    key = rl.key_for("victim")
    rl.hit("victim")
    m = migrating(_slot(key))
    m.move(key)
    real = PinnedRedis.execute_command
    asked: list[Any] = []

    def cut(self: PinnedRedis, *args: Any, **options: Any) -> Any:
        if asked and asked[-1] is self:
            asked.clear()
            raise Cut
        result = real(self, *args, **options)
        if args[0] == "ASKING":
            asked.append(self)
        return result

    monkeypatch.setattr(PinnedRedis, "execute_command", cut)
    with pytest.raises(Cut):
        rl.hit("victim")
    monkeypatch.undo()
    dst = pool.node_pools()[f"{m.dst.host}:{m.dst.port}"]
    assert dst.stats().destroyed_by_reason.get("dirty") == 1  # not put back as it was
    _asked_leaves_no_asking(pool, m, key)
    assert rl.peek("victim").remaining == 99  # the cut hit did not run
    assert pool.stats().in_use == 0


def test_multi_key_helpers_retry_tryagain_until_the_migration_ends(
    cluster_pool: Make, migrating: Callable[[int], Migration]
) -> None:
    """Lockout (four keys per call) and the cache (the namespace's version key and
    the value's) with their keys on both nodes get TRYAGAIN until the migration
    ends: they retry within their timeout, then answer exactly (MOVED at the end
    followed as before), breakers closed."""
    pool = cluster_pool(max_size=4)
    lo = Lockout(pool, max_attempts=5, timeout=3, on_error="raise")
    ident, fresh = "lo-0", "lo-1"
    slot = _slot(key_digest(lo.namespace, ident, None))
    fresh = _in_slot(slot, lambda n: "{" + key_digest(lo.namespace, n, None) + "}", "lo-", 2)[1]
    ns = _in_slot(slot, lambda n: "{" + n + "}", "mc", 1)[0]
    cache = Cache(pool, ns, get_timeout=3, set_timeout=3)
    for _ in range(2):
        assert lo.record_failed_attempt(ident).attempts in (1, 2)
    cache.invalidate_all()  # (the namespace's version key: on the migrating node)
    assert cache.set("k", "v1")
    m = migrating(slot)
    lo_keys = sorted(k for k in m.keys_on(m.src) if "{" + ns + "}" not in k)
    m.move(lo_keys[0])  # one of the identity's keys: TRYAGAIN until it is over
    m.move(*(k for k in m.keys_on(m.src) if ":v:" in k))  # the value, not the version

    calls: dict[str, Callable[[], Any]] = {
        "record": lambda: lo.record_failed_attempt(ident),  # keys split
        "fresh": lambda: lo.check_lockout(fresh),  # ASK, then TRYAGAIN there
        "get": lambda: cache.get("k"),  # the value moved, the version not
        "fallback": lambda: cache.get_with_fallback("k2", lambda: "v2"),  # a miss
    }
    got: dict[str, Any] = {}
    took: dict[str, float] = {}

    def call(name: str) -> None:
        t0 = time.monotonic()
        got[name] = calls[name]()
        took[name] = time.monotonic() - t0

    threads = [threading.Thread(target=call, args=(name,)) for name in calls]
    for t in threads:
        t.start()
    time.sleep(0.4)
    m.finish()
    for t in threads:
        t.join(10)
    assert not got["record"].degraded and got["record"].attempts == 3, got
    assert not got["fresh"].degraded and got["fresh"].attempts == 0, got
    assert got["get"] == "v1" and got["fallback"] == "v2", got
    assert min(took.values()) >= 0.3, took  # each waited for the migration to end
    assert cache.flush(timeout=3)
    assert cache.get("k2") == "v2"
    assert not lo.clear_lockout(ident).degraded
    assert lo.check_lockout(ident).attempts == 0
    assert lo.errors == 0 and lo.breaker.failures == 0
    assert cache.stats()["errors"] == 0 and cache.breaker.failures == 0
    cache.close()
    assert pool.stats().in_use == 0


def test_a_migration_that_does_not_end_opens_no_breaker(
    cluster_pool: Make, migrating: Callable[[int], Migration]
) -> None:
    """Calls whose keys stay split (TRYAGAIN past their timeout) get the policy,
    but the breaker stays closed: other keys are served as before."""
    pool = cluster_pool(max_size=3)
    lo = Lockout(pool, max_attempts=5, timeout=0.1, on_error="closed")
    ident = "split"
    slot = _slot(key_digest(lo.namespace, ident, None))
    other = next(
        n for n in (f"o{i}" for i in range(100)) if _slot(key_digest(lo.namespace, n, None)) != slot
    )
    lo.record_failed_attempt(ident)
    m = migrating(slot)
    m.move(sorted(m.keys_on(m.src))[0])
    for _ in range(lo.breaker.threshold + 2):
        result = lo.record_failed_attempt(ident)
        assert result.degraded and result.locked  # fail-closed, by policy
    assert lo.breaker.state == "closed" and lo.breaker.failures == 0
    served = lo.record_failed_attempt(other)
    assert not served.degraded and served.attempts == 1
    assert pool.stats().in_use == 0
