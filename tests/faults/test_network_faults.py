"""Faults on the way to the server: a stalled network, connections cut mid-reply and
mid-pipeline (``FaultProxy``), and a DNS name that stops resolving."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from redispool import RedisPoolTimeout
from redispool.dns import DNSCache
from redispool.testing import FaultProxy, RedisServer

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
    record,
    recovery,
    side_client,
)

Factory = Callable[..., RedisServer]


@pytest.fixture
def server(redis_server_factory: Factory) -> RedisServer:
    return redis_server_factory()


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port) as p:
        yield p


def test_proxy_stall(server: RedisServer, proxy: FaultProxy) -> None:
    name = "rp-stall"
    pool = fault_pool(proxy.url, name)
    socket_timeout = FAST["socket_timeout"]
    with pool, ServerView(server, name, 4) as view, Load(pool, threads=4) as load:
        time.sleep(0.3)
        proxy.stall()
        time.sleep(1.2)
        proxy.unstall()
        ended = time.monotonic()
        took = recovery(pool, ended, 2.0, "stall")
        time.sleep(0.3)
        tally = load.stop()
    check_load(tally)
    timeouts = [s for k, s in tally.command_failures if k == "TimeoutError"]
    assert timeouts, tally
    assert max(timeouts) < socket_timeout + 0.8, timeouts  # < the 1.2 s stall
    assert set(tally.errors) <= {"TimeoutError", "RedisPoolTimeout(TimeoutError)"}, tally
    assert max(tally.ok_times) > ended
    check_end_state(pool, view, 4)
    record(
        "network stall 1.2 s (socket_timeout 0.3 s)",
        describe(tally.errors) + f"; commands fail after <= {max(timeouts):.2f}s",
        took,
        2.0,
    )


def _handshake_bytes(proxy: FaultProxy, name: str) -> int:
    """Bytes server -> client of a pool connection's handshake (CLIENT SETNAME, ...)."""
    probe = fault_pool(proxy.url, name, min_size=0, max_size=1)
    with probe:
        before = proxy.bytes_to_client
        with probe.client():
            pass
        return proxy.bytes_to_client - before


def test_proxy_drop_mid_reply(server: RedisServer, proxy: FaultProxy) -> None:
    name = "rp-drop"
    big = b"".join(b"%08d" % i for i in range(8192))  # 64 KiB, every slice distinct
    with side_client(server) as side:
        side.set("big", big)
    handshake = _handshake_bytes(proxy, name)
    pool = fault_pool(proxy.url, name)
    errors: Counter[str] = Counter()
    with pool, ServerView(server, name, 4) as view:
        assert pool.redis.get("big") == big
        proxy.drop_after(handshake + 20_000)  # new connections: cut 20 KB into a reply
        pool.drain()
        for i in range(6):
            api = i % 2
            try:
                if api:
                    pool.redis.get("big")
                else:
                    with pool.client() as r:
                        r.get("big")
                pytest.fail("a cut reply came back whole")
            except redis.RedisError as exc:
                errors[kind(exc)] += 1
        assert errors == Counter(ConnectionError=6), errors
        assert pool.stats().destroyed_by_reason.get("dirty", 0) >= 6
        with pool.client() as r:  # small replies still fit under the limit
            assert r.echo(b"small") == b"small"
        proxy.clear()
        ended = time.monotonic()
        took = recovery(pool, ended, 0.5, "drop mid-reply")
        for _ in range(4):  # every connection, old or new, reads whole replies again
            with pool.client() as r:
                assert r.get("big") == big
                assert r.echo(b"after") == b"after"
        check_end_state(pool, view, 4)
    record("connection cut 20 KB into a 64 KB reply", describe(errors), took, 0.5)


def test_proxy_drop_mid_pipeline(server: RedisServer, proxy: FaultProxy) -> None:
    name = "rp-drop-pipe"
    handshake = _handshake_bytes(proxy, name)
    pool = fault_pool(proxy.url, name)
    n = 100
    value = b"x" * 200

    def run(r: redis.Redis, tag: str, transaction: bool) -> list[Any]:
        p = r.pipeline(transaction=transaction)
        for i in range(n):
            p.set(f"{tag}:{i}", value + tag.encode() + b"%d" % i)
            p.get(f"{tag}:{i}")
        return p.execute()

    def want(tag: str) -> list[Any]:
        out: list[Any] = []
        for i in range(n):
            out += [True, value + tag.encode() + b"%d" % i]
        return out

    errors: Counter[str] = Counter()
    with pool, ServerView(server, name, 4) as view:
        with pool.client() as r:  # the size of the replies, uncut
            before = proxy.bytes_to_client
            assert run(r, "size", False) == want("size")
            replies = proxy.bytes_to_client - before
        for transaction in (False, True, False, True):
            proxy.drop_after(handshake + replies // 2)
            pool.drain()
            try:
                with pool.client() as r:
                    run(r, f"cut{transaction}", transaction)
                pytest.fail("a cut pipeline completed")
            except redis.RedisError as exc:
                errors[kind(exc)] += 1
        with side_client(server) as side:  # nothing left half-done in a MULTI
            for c in side.client_list():
                assert c["multi"] == "-1", c
        proxy.clear()
        ended = time.monotonic()
        took = recovery(pool, ended, 0.5, "drop mid-pipeline")
        for k in range(4):
            with pool.client() as r:
                assert run(r, f"ok{k}", k % 2 == 1) == want(f"ok{k}")
        check_end_state(pool, view, 4)
    assert errors == Counter(ConnectionError=4), errors
    record("connection cut half-way through a 200-command pipeline", describe(errors), took, 0.5)


class _Resolver:
    """A fake resolver for ``redis-fault.test``: answers until told to fail."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        if not self.up:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ["127.0.0.1"]


def test_dns_name_stops_resolving(server: RedisServer) -> None:
    name = "rp-dns"
    resolver = _Resolver()
    ttl, stale_ttl = 0.1, 1.5
    pool = fault_pool(f"redis://redis-fault.test:{server.port}/0", name, min_size=0)
    pool._dns = DNSCache(ttl=ttl, stale_ttl=stale_ttl, resolver=resolver)
    seen: Counter[str] = Counter()
    with pool, ServerView(server, name, 4) as view:
        with pool.client() as held:  # an existing connection, kept throughout
            assert held.echo(b"held") == b"held"
            with pool.client() as r:
                r.ping()
            answered = time.monotonic()  # the last good answer
            resolver.up = False
            time.sleep(ttl + 0.05)

            # Within stale_ttl: new connections use the last answer.
            calls = resolver.calls
            pool.drain()
            with pool.client() as r:
                assert r.echo(b"stale") == b"stale"
            assert resolver.calls > calls  # it did try the resolver
            assert time.monotonic() - answered < ttl + stale_ttl

            # Past it: new connections fail with a clear error; the held one works.
            time.sleep(max(0.0, answered + ttl + stale_ttl + 0.05 - time.monotonic()))
            pool.drain()
            t0 = time.monotonic()
            with pytest.raises(RedisPoolTimeout) as info:
                with pool.client() as r:
                    r.ping()
            assert time.monotonic() - t0 < FAST["timeout"] + 0.5
            text = " | ".join(f"{type(e).__name__}: {e}" for e in chain(info.value))
            assert "Name or service not known" in text and "redis-fault.test" in text, text
            seen[kind(info.value)] += 1
            with pytest.raises(redis.ConnectionError):
                pool.redis.ping()
            assert held.echo(b"still here") == b"still here"

            resolver.up = True
            ended = time.monotonic()
            took = recovery(pool, ended, 2.0, "dns back")
            assert held.echo(b"held") == b"held"
        check_end_state(pool, view, 4)
    record(
        f"DNS stops resolving (ttl {ttl}s, stale_ttl {stale_ttl}s)",
        f"nothing within stale_ttl; then {describe(seen)} naming the resolver error; "
        "existing connections keep working",
        took,
        2.0,
    )
