"""FaultProxy: a TCP proxy in front of a server that injects network faults
(stalls, cuts, delays, refusals) on loopback only."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import selectors
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    pass

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pytest = None  # type: ignore[assignment]

from .server import HOST

# -- a fault-injecting TCP proxy ---------------------------------------------------

_PROXY_CHUNK = 65536
_PROXY_BUFFER = 1 << 20  # bytes held per direction per connection before reading stops
_PROXY_JOIN = 5.0
_TO_CLIENT, _TO_SERVER = 0, 1


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Link:
    """One proxied connection: the client's socket and ours to the server.

    Index 0 is the client side, 1 the server side; ``out[i]`` holds
    ``[due, bytes]`` chunks waiting to be written to ``socks[i]``.
    """

    __slots__ = ("blocked", "closed", "connected", "drop_after", "masks", "out", "queued", "socks")

    def __init__(self, client: socket.socket, upstream: socket.socket, drop_after: int | None):
        self.socks = (client, upstream)
        self.out: tuple[deque[list[Any]], deque[list[Any]]] = (deque(), deque())
        self.queued = [0, 0]
        self.blocked = [False, False]  # the last write would block: wait for EVENT_WRITE
        self.masks = [0, 0]  # what the selector watches now
        self.connected = False  # the upstream connect finished
        self.closed = False
        self.drop_after = drop_after  # bytes server->client left before the cut (None: off)


class _CutRequest:
    __slots__ = ("count", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.count = 0


class FaultProxy(contextlib.AbstractContextManager["FaultProxy"]):
    """A TCP proxy on loopback in front of a test server, with faults switched at run time.

    ``latency(s)`` delays every chunk in both directions; ``stall()`` holds every
    byte (up to 1 MiB per direction and connection, then reading stops) and
    forwards nothing until ``unstall()``; ``cut()`` closes every current connection,
    both sides; ``refuse(True)`` accepts new connections and closes them at once;
    ``drop_after(n)`` makes connections accepted from now on close after ``n``
    bytes server -> client (a cut mid-reply); ``clear()`` ends every fault,
    including the byte limits of existing connections.

    A close (or error) on either side closes both sides at once, even while
    stalled or delayed; bytes still held are dropped. So a client's close reaches
    the server at once, before any connection the client opens afterwards.

    Counters: ``connections_total`` (proxied), ``connections_refused``,
    ``connections_open``, ``bytes_to_server`` and ``bytes_to_client`` (forwarded;
    counted before the bytes are sent, so a client that read a reply finds it
    counted already).

    One daemon thread runs an event loop for all connections (at most
    ``max_connections``; more are closed at once); ``close()`` stops and joins
    it. Built on the ``socket``, ``selectors`` and ``threading`` modules looked up
    at call time, so it also runs under gevent's monkey-patching.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = HOST,
        port: int | None = None,
        password: str | None = None,
        max_connections: int = 256,
    ) -> None:
        for label, h in (("host", host), ("target_host", target_host)):
            if not _loopback(h):
                raise ValueError(f"FaultProxy is loopback-only; {label}={h!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        self.target = (target_host, int(target_port))
        self.host = host
        self.password = password
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._latency = 0.0
        self._stalled = False
        self._refusing = False
        self._drop_after: int | None = None
        self._cut_requests: list[_CutRequest] = []
        self._clear_limits = False
        self._stopping = False
        self._links: list[_Link] = []
        self._thread: threading.Thread | None = None
        self.connections_total = 0  # proxied (accepted and not refused)
        self.connections_refused = 0
        self.bytes_to_server = 0
        self.bytes_to_client = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, 0 if port is None else port))
            self._listener.listen(128)
            self._listener.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._listener.close()
            raise
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._sel: selectors.BaseSelector | None = None

    # -- URLs and lifecycle -----------------------------------------------

    def url_for(self, db: int = 0) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for(0)

    @property
    def connections_open(self) -> int:
        return len(self._links)

    def start(self) -> FaultProxy:
        """Start forwarding (no-op if running)."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("FaultProxy is closed")
            if self._thread is not None:
                return self
            sel = selectors.DefaultSelector()
            sel.register(self._listener, selectors.EVENT_READ, None)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            self._sel = sel
            self._thread = threading.Thread(
                target=self._run, name=f"fault-proxy-{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop: close every connection and the listener, join the thread."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_PROXY_JOIN)
        if thread is None or not thread.is_alive():
            self._shutdown()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} "
            f"open={self.connections_open}>"
        )

    # -- faults -------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        """Delay each chunk by ``seconds`` in both directions (0: off)."""
        if not seconds >= 0:
            raise ValueError(f"latency must be >= 0, got {seconds!r}")
        self._set(_latency=float(seconds))

    def stall(self) -> None:
        """Hold every byte, forward nothing (connections stay open)."""
        self._set(_stalled=True)

    def unstall(self) -> None:
        """Forward what was held, and everything after."""
        self._set(_stalled=False)

    def refuse(self, on: bool = True) -> None:
        """Accept new connections and close them at once (``False``: stop refusing)."""
        self._set(_refusing=bool(on))

    def drop_after(self, n_bytes: int | None) -> None:
        """Connections accepted from now on are closed after ``n_bytes`` were
        forwarded server -> client (``None``: off for new connections)."""
        if n_bytes is not None and n_bytes < 0:
            raise ValueError(f"n_bytes must be >= 0, got {n_bytes!r}")
        self._set(_drop_after=n_bytes)

    def clear(self) -> None:
        """No faults: no latency or stall, no refusing, no byte limits (old or new)."""
        self._set(_latency=0.0, _stalled=False, _refusing=False, _drop_after=None, _clear=True)

    def cut(self, timeout: float = 5.0) -> int:
        """Close every current connection (both sides) now; return how many."""
        request = _CutRequest()
        with self._lock:
            running = self._thread is not None and not self._stopping
            if running:
                self._cut_requests.append(request)
        if not running:
            return 0
        self._wake()
        if not request.done.wait(timeout):
            raise RuntimeError(f"FaultProxy.cut() not done after {timeout}s")
        return request.count

    def _set(self, **changes: Any) -> None:
        clear = changes.pop("_clear", False)
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)
            if clear:
                self._clear_limits = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    # -- the event loop (its own thread) ---------------------------------------

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                accept = False
                for key, mask in sel.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        accept = True
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        link, side = key.data
                        if not link.closed:
                            self._on_event(link, side, mask)
                if accept:  # after the closes seen in the same round: they came first
                    self._accept()
                self._commands()
                self._flush_all()
        finally:
            self._shutdown()

    def _next_timeout(self) -> float | None:
        if self._stalled:
            return None
        now = time.monotonic()
        soonest = _INF_TIME
        for link in self._links:
            for side in (_TO_CLIENT, _TO_SERVER):
                q = link.out[side]
                if q and not link.blocked[side] and q[0][0] < soonest:
                    soonest = q[0][0]
        if soonest == _INF_TIME:
            return None
        return max(0.0, soonest - now)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _commands(self) -> None:
        with self._lock:
            requests, self._cut_requests = self._cut_requests, []
            clear, self._clear_limits = self._clear_limits, False
        if clear:
            for link in self._links:
                link.drop_after = None
        for request in requests:
            request.count = len(self._links)
            for link in list(self._links):
                self._close_link(link)
            request.done.set()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: leave it in the backlog
                return
            if self._refusing or len(self._links) >= self.max_connections:
                self.connections_refused += 1
                client.close()
                continue
            self.connections_total += 1
            client.setblocking(False)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            link = _Link(client, upstream, self._drop_after)
            self._links.append(link)
            for sock in link.socks:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            err = upstream.connect_ex(self.target)
            if err == 0:
                link.connected = True
            elif err not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                self._close_link(link)
                continue
            self._update(link)

    def _on_event(self, link: _Link, side: int, mask: int) -> None:
        if side == _TO_SERVER and not link.connected:
            if not mask & selectors.EVENT_WRITE:
                return
            err = link.socks[1].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._close_link(link)
                return
            link.connected = True
            self._update(link)
            self._flush(link, _TO_SERVER)
            return
        if mask & selectors.EVENT_READ:
            try:
                data = link.socks[side].recv(_PROXY_CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":  # EOF or error: close both sides
                self._close_link(link)
                return
            if data:
                dest = 1 - side
                link.out[dest].append([time.monotonic() + self._latency, data])
                link.queued[dest] += len(data)
                self._flush(link, dest)
                if link.closed:
                    return
        if mask & selectors.EVENT_WRITE:
            link.blocked[side] = False
            self._flush(link, side)
        if not link.closed:
            self._update(link)

    def _flush_all(self) -> None:
        for link in list(self._links):
            for side in (_TO_CLIENT, _TO_SERVER):
                if not link.closed and link.out[side] and not link.blocked[side]:
                    self._flush(link, side)

    def _flush(self, link: _Link, side: int) -> None:
        """Write the due chunks queued for ``link.socks[side]``."""
        q = link.out[side]
        if self._stalled or link.blocked[side] or (side == _TO_SERVER and not link.connected):
            return
        now = time.monotonic()
        sock = link.socks[side]
        while q and q[0][0] <= now:
            data = q[0][1]
            limit = link.drop_after if side == _TO_CLIENT else None
            if limit is not None:
                if limit <= 0:
                    self._close_link(link)
                    return
                data = data[:limit]
            # Counted before the send: a reader of the counters never sees less
            # than what the other end may already have received.
            self._count(side, len(data))
            try:
                n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._close_link(link)
                return
            if n < len(data):
                self._count(side, n - len(data))
            link.queued[side] -= n
            if side == _TO_CLIENT and link.drop_after is not None:
                link.drop_after -= n
                if link.drop_after <= 0:
                    self._close_link(link)
                    return
            if n < len(q[0][1]):
                q[0][1] = q[0][1][n:]
                if n < len(data):  # the socket is full
                    link.blocked[side] = True
                    break
            else:
                q.popleft()
        self._update(link)

    def _count(self, side: int, n: int) -> None:
        if side == _TO_CLIENT:
            self.bytes_to_client += n
        else:
            self.bytes_to_server += n

    def _update(self, link: _Link) -> None:
        """Watch each socket for what it can do now (reads stop while the other
        direction's buffer is full)."""
        sel = self._sel
        if link.closed or sel is None:
            return
        for side in (_TO_CLIENT, _TO_SERVER):
            if side == _TO_SERVER and not link.connected:
                want = selectors.EVENT_WRITE
            else:
                want = selectors.EVENT_READ if link.queued[1 - side] < _PROXY_BUFFER else 0
                if link.blocked[side]:
                    want |= selectors.EVENT_WRITE
            have = link.masks[side]
            if want == have:
                continue
            sock = link.socks[side]
            if have and want:
                sel.modify(sock, want, (link, side))
            elif want:
                sel.register(sock, want, (link, side))
            else:
                sel.unregister(sock)
            link.masks[side] = want

    def _close_link(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        for side in (_TO_CLIENT, _TO_SERVER):
            sock = link.socks[side]
            if link.masks[side] and self._sel is not None:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError, OSError):
                    pass
            sock.close()
        try:
            self._links.remove(link)
        except ValueError:
            pass

    def _shutdown(self) -> None:
        for link in list(self._links):
            self._close_link(link)
        with self._lock:
            requests, self._cut_requests = self._cut_requests, []
        for request in requests:
            request.done.set()
        if self._sel is not None:
            self._sel.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()


_INF_TIME = float("inf")
