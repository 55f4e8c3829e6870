"""Read and write timeouts kept by the kernel (``redispool._sockio``): one system
call per read or write instead of poll + call, the same bounds, the same errors.
Against a real redis-server (and the fault proxy for a peer that stops reading)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from redispool import RedisPool
from redispool._sockio import _TIMEVAL, kernel_timeouts, set_kernel_timeout
from redispool.connection import io_timeout
from redispool.testing import FaultProxy, RedisServer

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="kernel timeouts: Linux only")


def _kernel(sock: socket.socket) -> tuple[float, float]:
    """(SO_RCVTIMEO, SO_SNDTIMEO) in seconds."""
    out = []
    for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        sec, usec = _TIMEVAL.unpack(sock.getsockopt(socket.SOL_SOCKET, opt, _TIMEVAL.size))
        out.append(sec + usec / 1e6)
    return out[0], out[1]


@pytest.fixture
def pool(redis_url: str) -> Iterator[RedisPool]:
    p = RedisPool(redis_url, min_size=0, max_size=2, socket_timeout=0.5, background=False)
    yield p
    p.close()


def test_set_kernel_timeout_values() -> None:
    a, b = socket.socketpair()
    with a, b:
        for timeout, want in ((2.5, 2.5), (0.25, 0.25), (1e-9, 1e-6), (0.9999999, 1.0)):
            set_kernel_timeout(a, timeout)
            rcv, snd = _kernel(a)
            assert want <= rcv < want + 0.02 and want <= snd < want + 0.02, (timeout, rcv, snd)
        for off in (None, 0):
            set_kernel_timeout(a, off)
            assert _kernel(a) == (0.0, 0.0)


@linux_only
def test_connections_block_in_the_kernel_with_the_configured_timeout(pool: RedisPool) -> None:
    with pool.connection() as conn:
        sock = conn._sock
        assert sock.gettimeout() is None  # no poll before each send and recv
        assert _kernel(sock)[0] == pytest.approx(0.5, abs=0.02)
        assert _kernel(sock)[1] == pytest.approx(0.5, abs=0.02)
        assert io_timeout(conn) == 0.5
        conn.can_read(timeout=0)  # redis-py's short read restores blocking, not 0.5
        assert sock.gettimeout() is None
    with pool.connection(timeout=0.2) as conn:  # a shorter per-operation timeout:
        assert sock is conn._sock and io_timeout(conn) == 0.2  # on the Python socket
        assert sock.gettimeout() == 0.2 and _kernel(sock)[0] == pytest.approx(0.5, abs=0.02)
        conn.can_read(timeout=0)
        assert io_timeout(conn) == 0.2
    with pool.connection() as conn:  # and back
        assert io_timeout(conn) == 0.5 and sock.gettimeout() is None
    with pool.connection(timeout=1.5) as conn:  # a longer one: the kernel's changes
        assert sock is conn._sock and io_timeout(conn) == 1.5 and sock.gettimeout() is None
        assert _kernel(sock)[0] == pytest.approx(1.5, abs=0.02)
    with pool.connection() as conn:
        assert io_timeout(conn) == 0.5 and _kernel(sock)[0] == pytest.approx(0.5, abs=0.02)


class _Interrupt(BaseException):
    """Stands for an asynchronous exception (a signal handler raising)."""


@linux_only
def test_a_block_cut_short_as_it_sets_its_timeout_leaves_the_pools_bound(
    pool: RedisPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted once the kernel had a block's longer timeout (1.5 s), before the
    connection noted it: the next borrowers' reads were bounded by 1.5 s, not the
    pool's 0.5 s (``io_timeout`` said 0.5)."""
    from redispool import connection

    real = connection.set_kernel_timeout

    def then_interrupted(sock: Any, timeout: float | None) -> None:
        real(sock, timeout)
        monkeypatch.setattr(connection, "set_kernel_timeout", real)  # once
        raise _Interrupt

    with pool.client() as r:
        sock = r.connection._sock
    monkeypatch.setattr(connection, "set_kernel_timeout", then_interrupted)
    with pytest.raises(_Interrupt):
        with pool.client(timeout=1.5):
            pass
    for _ in range(2):
        with pool.client() as r:
            assert r.connection._sock is sock  # (not discarded: its state is clean)
            assert sock.gettimeout() is None and io_timeout(r.connection) == 0.5
            assert _kernel(sock) == (pytest.approx(0.5, abs=0.02),) * 2
    assert pool.stats().in_use == 0


@pytest.mark.parametrize("block_timeout", [0.3, 1.5])
def test_a_blocks_own_timeout_bounds_its_reads_either_way(
    pool: RedisPool, block_timeout: float
) -> None:
    """Shorter than the pool's 0.5 s (Python's timeout fires first) or longer (the
    kernel's is raised for the block): a 0.8 s BLPOP times out, or returns."""
    t0 = time.monotonic()
    if block_timeout < 0.8:
        with pytest.raises(redis.TimeoutError):
            with pool.client(timeout=block_timeout) as r:
                r.blpop(["nothing"], timeout=0.8)
        assert block_timeout - 0.01 <= time.monotonic() - t0 < block_timeout + 0.25
    else:
        with pool.client(timeout=block_timeout) as r:
            assert r.blpop(["nothing"], timeout=0.8) is None
        assert 0.79 <= time.monotonic() - t0 < 1.3
    with pool.client() as r:  # the pool's own bound is back: 0.8 s is too long
        with pytest.raises(redis.TimeoutError):
            r.blpop(["nothing"], timeout=0.8)
    assert pool.stats().in_use == 0


def test_a_slow_reply_raises_timeout_error_within_the_bound(pool: RedisPool) -> None:
    """redis-py's ``TimeoutError``, not a ``ConnectionError``; the connection goes."""
    with pool.client() as r:
        r.set("k", "v")
    with pytest.raises(redis.TimeoutError):
        with pool.client(timeout=0.15) as r:
            slow = r.connection
            t0 = time.monotonic()
            try:
                r.execute_command("DEBUG", "SLEEP", "0.6")
            finally:
                took = time.monotonic() - t0
    assert 0.14 <= took < 0.45, took
    assert slow._sock is None  # redis-py closed it: the late reply can reach nobody
    time.sleep(0.6)
    with pool.client() as r:  # the next borrower is served, with its own reply
        assert r.connection is not slow
        assert r.get("k") == b"v"
    assert pool.stats().in_use == 0


def test_a_peer_that_stops_reading_raises_timeout_error_on_write(
    redis_server: RedisServer, redis_url: str
) -> None:
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        pool = RedisPool(proxy.url, min_size=0, max_size=1, socket_timeout=0.3, background=False)
        with pool:
            with pool.client() as r:
                assert r.ping()
            proxy.stall()  # holds up to 1 MiB, then stops reading
            t0 = time.monotonic()
            with pytest.raises(redis.TimeoutError, match="writing"):
                with pool.client() as r:
                    r.set("big", b"x" * (16 * 1024 * 1024))
            assert time.monotonic() - t0 < 3.0
            proxy.unstall()
            with pool.client() as r:
                assert r.ping()
            s = pool.stats()
            assert s.in_use == 0 and sum(s.destroyed_by_reason.values()) == 1


def test_a_read_that_waits_for_ever_is_not_cut_by_the_kernel_timeout(
    pool: RedisPool, redis_url: str
) -> None:
    """redis-py's blocking pub/sub read asks for no timeout: it must get none."""
    publisher = redis.Redis.from_url(redis_url)
    with pool.connection() as conn:
        conn.send_command("SUBSCRIBE", "news")  # (replies are pushed messages on RESP3)
        assert conn.read_response(push_request=True)[0] in (b"subscribe", "subscribe")
        timer = threading.Timer(0.9, publisher.publish, args=("news", "hello"))
        timer.start()
        t0 = time.monotonic()
        message = conn.read_response(timeout=None, push_request=True)  # past the 0.5 s bound
        waited = time.monotonic() - t0
        timer.join()
        assert message[-1] in (b"hello", "hello") and waited >= 0.8
        assert io_timeout(conn) == 0.5  # the bound is back for what follows
        with pytest.raises(redis.TimeoutError):
            t0 = time.monotonic()
            conn.read_response(push_request=True)
        assert time.monotonic() - t0 < 0.9
    publisher.close()
    assert pool.stats().in_use == 0


def test_gevent_sockets_keep_python_timeouts(redis_url: str) -> None:
    """gevent's cooperative sockets never block the thread: the kernel's bound
    would not apply to them, so they keep their own timeouts, still enforced."""
    pytest.importorskip("gevent")
    code = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        import time, redis
        from redispool import RedisPool
        from redispool.connection import io_timeout
        with RedisPool({redis_url!r}, min_size=0, max_size=1, socket_timeout=0.2) as pool:
            with pool.connection() as conn:
                assert conn._rp_kernel == 0.0 and conn._sock.gettimeout() == 0.2
                assert io_timeout(conn) == 0.2
            t0 = time.monotonic()
            try:
                with pool.client() as r:
                    r.execute_command("DEBUG", "SLEEP", "0.5")
            except redis.TimeoutError:
                print("timed out after", round(time.monotonic() - t0, 3))
        time.sleep(0.5)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    took = float(out.stdout.split()[-1])
    assert 0.19 <= took < 0.45, out.stdout


def test_tls_and_patched_sockets_are_left_alone() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert kernel_timeouts(a, 2.0) == (sys.platform == "linux")

        class Wrapped(socket.socket):  # anything but the standard library's own class
            pass

        w = Wrapped(socket.AF_INET, socket.SOCK_STREAM)
        with w:
            assert not kernel_timeouts(w, 2.0)


@linux_only
def test_unix_socket_connections_too(redis_server_factory: Any) -> None:
    server = redis_server_factory(unixsocket=True)
    with RedisPool(server.unix_url, min_size=0, max_size=1, socket_timeout=0.3) as pool:
        with pool.connection() as conn:
            assert conn._sock.family == socket.AF_UNIX
            assert conn._sock.gettimeout() is None and io_timeout(conn) == 0.3
        t0 = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            with pool.client() as r:
                r.execute_command("DEBUG", "SLEEP", "0.6")
        assert time.monotonic() - t0 < 0.55
        time.sleep(0.5)
        with pool.client() as r:
            assert r.ping()


def test_a_plain_redis_py_connection_keeps_python_timeouts(redis_url: str) -> None:
    """Only the pool's connections turn the kernel's EAGAIN into ``TimeoutError``:
    ``set_io_timeout`` on anything else sets the Python timeout, as before."""
    from redispool.connection import set_io_timeout

    plain = redis.ConnectionPool.from_url(redis_url)
    conn = plain.get_connection()
    try:
        set_io_timeout(conn, 0.4)
        assert conn._sock.gettimeout() == 0.4 and _kernel(conn._sock) == (0.0, 0.0)
    finally:
        plain.release(conn)
        plain.disconnect()


def test_a_socket_class_other_than_the_standard_librarys_keeps_python_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """eventlet replaces ``socket.socket`` with its own green socket, whose file
    descriptor never blocks: a kernel timeout would never fire on it."""
    from redispool import _sockio

    class GreenSocket(socket.socket):  # a patcher's class, from a module not "socket"
        pass

    monkeypatch.setattr(_sockio, "_STDLIB_SOCKET", None)  # looked up afresh, then restored
    monkeypatch.setattr(socket, "socket", GreenSocket)
    a, b = socket.socketpair()
    with a, b, GreenSocket(socket.AF_INET, socket.SOCK_STREAM) as green:
        assert not kernel_timeouts(green, 2.0)
        assert not kernel_timeouts(a, 2.0)  # and nothing else either: the lookup failed


@linux_only
def test_a_periodic_signal_keeps_python_timeouts(redis_url: str) -> None:
    """CPython retries a call a signal interrupted, and the kernel's timeout starts
    afresh each time: with a timer firing every 0.1 s a 0.3 s kernel bound would
    never fire. Such connections keep Python's timeout (a deadline)."""
    import signal

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
    try:
        with RedisPool(redis_url, min_size=0, max_size=1, socket_timeout=0.3) as pool:
            with pool.connection() as conn:
                assert conn._sock.gettimeout() == 0.3 and conn._rp_kernel == 0.0
            t0 = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                with pool.client() as r:
                    r.execute_command("DEBUG", "SLEEP", "1.2")
            assert time.monotonic() - t0 < 0.8
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(1.0)  # the server's sleep ends
    with RedisPool(redis_url, min_size=0, max_size=1, socket_timeout=0.3) as pool:
        with pool.connection() as conn:  # no timer: the kernel's again
            assert conn._sock.gettimeout() is None and conn._rp_kernel == 0.3


class _Trickle:
    """A proxy to Redis that forwards what the client sends 8 KiB per 20 ms."""

    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = (host, port)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            upstream = socket.create_connection(self.target)
            for src, dst, slow in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, slow), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        src.settimeout(0.2)
        with src, dst:
            while not self.stop.is_set():
                try:
                    data = src.recv(8192)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return
                if slow:
                    time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for t in self.threads:
            t.join(2)


@linux_only
def test_a_large_write_to_a_slowly_draining_peer_is_bounded_as_a_whole(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Python's timeout bounds a whole ``sendall``; the kernel's each ``send``, which
    a peer taking 8 KiB every 20 ms would satisfy for ever: large writes use Python's."""
    proxy = _Trickle(redis_server.host, redis_server.port)
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        with RedisPool(url, min_size=0, max_size=1, socket_timeout=0.3) as pool:
            with pool.connection() as conn:
                assert conn._rp_kernel == 0.3  # small commands: the kernel's bound
            t0 = time.monotonic()
            with pytest.raises(redis.TimeoutError, match="writing"):
                with pool.client() as r:
                    r.set("big", b"x" * (24 * 1024 * 1024))
            assert time.monotonic() - t0 < 2.0
    finally:
        proxy.close()


@linux_only
def test_a_connect_refused_for_a_full_backlog_is_not_called_a_timeout(tmp_path: Any) -> None:
    """EAGAIN from connecting (a unix socket's full backlog) stays a ConnectionError:
    only the kernel's EAGAIN on a connection's own socket is a write timeout."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from redispool.connection import PooledUnixConnection

    path = str(tmp_path / "full.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            pass
        fillers.append(s)
    conn = PooledUnixConnection(path=path, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.ConnectionError, match="11"):
            conn.send_command("PING")
    finally:
        conn.disconnect()
        for s in (*fillers, listener):
            s.close()
