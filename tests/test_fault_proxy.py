"""Tests for :class:`redispool.testing.FaultProxy` against a real redis-server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redispool.testing import FaultProxy, RedisServer

Factory = Callable[..., RedisServer]


def _resp(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _client(url: str, **kwargs: Any) -> redis.Redis:
    opts: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": 1,
        "socket_timeout": 2,
    }
    opts.update(kwargs)
    return redis.Redis.from_url(url, **opts)


def _raw(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    """A plain socket through the proxy, once the proxy has accepted it (a fault
    switched on after this applies to it as to an existing connection)."""
    seen = proxy.connections_total + proxy.connections_refused
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    _wait_for(lambda: proxy.connections_total + proxy.connections_refused > seen, 2.0, "the accept")
    return sock


def _read_until(sock: socket.socket, want: bytes, timeout: float = 2.0) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while want not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _named(server: RedisServer, name: str) -> int:
    with _client(server.url) as side:
        return sum(1 for c in side.client_list() if c.get("name") == name)


@pytest.fixture
def server(redis_server_factory: Factory) -> RedisServer:
    return redis_server_factory()


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host, server.port) as p:
        yield p


def test_forwards_and_counts(server: RedisServer, proxy: FaultProxy) -> None:
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    assert proxy.url_for(2).endswith(f":{proxy.port}/2")
    with _client(proxy.url) as r:
        assert r.set("k", b"v" * 100_000) is True
        assert r.get("k") == b"v" * 100_000
        assert r.echo(b"x") == b"x"
        assert proxy.connections_total == 1 and proxy.connections_open == 1
        assert proxy.bytes_to_server > 100_000 and proxy.bytes_to_client > 100_000
    _wait_for(lambda: proxy.connections_open == 0, 2.0, "the close to pass through")
    assert proxy.connections_total == 1


def test_byte_counters_never_lag_the_client(proxy: FaultProxy) -> None:
    """A reply the client has read is already counted (tests size replies this way)."""
    with _client(proxy.url) as r:
        r.set("k", b"z" * 10_000)
        reply = len(b"$10000\r\n") + 10_000 + 2
        for _ in range(200):
            before = proxy.bytes_to_client
            assert r.get("k") == b"z" * 10_000
            assert proxy.bytes_to_client - before >= reply


def test_password_passthrough(redis_server_factory: Factory) -> None:
    server = redis_server_factory(password="p@ss word")
    with FaultProxy(server.host, server.port, password="p@ss word") as proxy:
        assert proxy.url == f"redis://:p%40ss%20word@127.0.0.1:{proxy.port}/0"
        with _client(proxy.url) as r:
            assert r.ping() is True


def test_fixed_port_and_close_joins(server: RedisServer) -> None:
    probe = FaultProxy(server.host, server.port)
    port = probe.port
    probe.close()  # never started: closes the listener
    proxy = FaultProxy(server.host, server.port, port=port)
    proxy.start()
    assert proxy.start() is proxy  # idempotent
    sock = _raw(proxy)
    sock.sendall(_resp("PING"))
    assert _read_until(sock, b"\r\n") == b"+PONG\r\n"
    thread = proxy._thread
    assert thread is not None and thread.daemon
    proxy.close()
    assert not thread.is_alive()
    assert sock.recv(10) == b""  # the connection was closed too
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, port), timeout=0.5).close()
    proxy.close()  # twice is fine
    with pytest.raises(RuntimeError):
        proxy.start()


def test_loopback_only(server: RedisServer) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("10.1.2.3", server.port)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(server.host, server.port, host="0.0.0.0")
    FaultProxy("localhost", server.port, host="127.0.0.1").close()


def test_latency_both_directions(proxy: FaultProxy) -> None:
    with _client(proxy.url) as r:
        r.ping()
        t0 = time.monotonic()
        r.ping()
        fast = time.monotonic() - t0
        proxy.latency(0.1)
        t0 = time.monotonic()
        assert r.ping() is True
        slow = time.monotonic() - t0
        assert 0.2 <= slow < 1.5, slow  # 0.1 s each way
        proxy.latency(0)
        t0 = time.monotonic()
        r.ping()
        assert time.monotonic() - t0 < 0.1 + fast
    with pytest.raises(ValueError):
        proxy.latency(-1)


def test_stall_holds_bytes_then_delivers(server: RedisServer, proxy: FaultProxy) -> None:
    with _client(proxy.url, socket_timeout=0.2) as r:
        r.ping()
        proxy.stall()
        t0 = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            r.ping()
        assert time.monotonic() - t0 < 1.0
    sock = _raw(proxy)
    sock.sendall(_resp("SET", "stalled", "1") + _resp("ECHO", "held"))
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(100)
    with _client(server.url) as side:
        assert side.get("stalled") is None  # nothing reached the server
    proxy.unstall()
    assert _read_until(sock, b"held\r\n") == b"+OK\r\n$4\r\nheld\r\n"
    sock.close()


def test_stall_is_bounded(proxy: FaultProxy) -> None:
    """While stalled the proxy holds at most ~1 MiB per direction, then stops reading:
    the sender is pushed back instead of the proxy buffering without limit."""
    proxy.stall()
    sock = _raw(proxy, timeout=0.5)
    payload = b"x" * (16 << 20)
    sent = 0
    with pytest.raises(TimeoutError):
        while sent < len(payload):
            sent += sock.send(payload[sent : sent + 65536])
    assert sent < len(payload)
    sock.close()


def test_closes_pass_through_while_stalled(server: RedisServer, proxy: FaultProxy) -> None:
    with _client(proxy.url, client_name="rp-stalled") as r:
        r.ping()
        assert _named(server, "rp-stalled") == 1
        proxy.stall()
    _wait_for(lambda: _named(server, "rp-stalled") == 0, 2.0, "the server to see the close")
    assert proxy.connections_open == 0


def test_cut_closes_both_sides(server: RedisServer, proxy: FaultProxy) -> None:
    clients = [_client(proxy.url, client_name="rp-cut") for _ in range(3)]
    for c in clients:
        c.ping()
    assert proxy.connections_open == 3 and _named(server, "rp-cut") == 3
    assert proxy.cut() == 3
    assert proxy.connections_open == 0
    _wait_for(lambda: _named(server, "rp-cut") == 0, 2.0, "the server side to close")
    conn = clients[0].connection_pool.get_connection()  # redis-py notices the EOF
    assert conn._sock is not None
    clients[0].connection_pool.release(conn)
    sock = _raw(proxy)
    sock.sendall(_resp("PING"))
    assert _read_until(sock, b"\r\n") == b"+PONG\r\n"
    proxy.cut()
    assert sock.recv(10) == b""
    sock.close()
    for c in clients:
        c.close()


def test_refuse(proxy: FaultProxy) -> None:
    with _client(proxy.url) as kept:
        kept.ping()
        proxy.refuse(True)
        with pytest.raises(redis.ConnectionError):
            _client(proxy.url).ping()
        assert proxy.connections_refused == 1
        assert kept.ping() is True  # existing connections are not affected
        proxy.refuse(False)
        with _client(proxy.url) as again:
            assert again.ping() is True


def test_drop_after_cuts_mid_reply(server: RedisServer, proxy: FaultProxy) -> None:
    with _client(server.url) as side:
        side.set("big", b"b" * 50_000)
    old = _raw(proxy)
    proxy.drop_after(1000)  # for new connections only
    sock = _raw(proxy)
    sock.sendall(_resp("GET", "big"))
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    assert len(got) == 1000 and got.startswith(b"$50000\r\nbbb")
    sock.close()
    old.sendall(_resp("GET", "big"))
    assert len(_read_until(old, b"b\r\n")) == 50_000 + len(b"$50000\r\n\r\n")

    limited = _raw(proxy)  # made under the limit; clear() lifts it
    proxy.clear()
    limited.sendall(_resp("GET", "big"))
    assert len(_read_until(limited, b"b\r\n")) == 50_008 + 2
    for s in (old, limited):
        s.close()
    with pytest.raises(ValueError):
        proxy.drop_after(-1)


def test_drop_after_zero_and_none(proxy: FaultProxy) -> None:
    proxy.drop_after(0)
    sock = _raw(proxy)
    sock.sendall(_resp("PING"))
    assert sock.recv(100) == b""
    sock.close()
    proxy.drop_after(None)
    with _client(proxy.url) as r:
        assert r.ping() is True


def test_server_down_closes_clients(server: RedisServer, proxy: FaultProxy) -> None:
    with _client(proxy.url) as r:
        r.ping()
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            r.ping()
        with pytest.raises(redis.ConnectionError):
            _client(proxy.url).ping()  # connect refused upstream: closed at once
        assert time.monotonic() - t0 < 1.0
        _wait_for(lambda: proxy.connections_open == 0, 2.0, "the links to close")
        server.restart()
        assert r.ping() is True  # redis-py reconnects through the proxy


def test_max_connections(server: RedisServer) -> None:
    with FaultProxy(server.host, server.port, max_connections=2) as proxy:
        socks = [_raw(proxy) for _ in range(3)]
        for s in socks:
            s.sendall(_resp("PING"))
        replies = [_read_until(s, b"\r\n") for s in socks]
        assert sorted(replies) == [b"", b"+PONG\r\n", b"+PONG\r\n"]
        assert proxy.connections_total == 2 and proxy.connections_refused == 1
        for s in socks:
            s.close()


def test_concurrent_clients(proxy: FaultProxy) -> None:
    errors: list[str] = []

    def work(i: int) -> None:
        with _client(proxy.url) as r:
            for j in range(200):
                v = f"{i}:{j}".encode()
                if r.echo(v) != v:
                    errors.append(f"{i}:{j}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    proxy.latency(0.001)
    for t in threads:
        t.join(30)
    assert errors == []
    assert proxy.connections_total == 8
