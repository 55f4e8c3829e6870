"""An open-loop HTTP load generator (constant arrival rate, as wrk2 and k6's
``constant-arrival-rate``): request *i* is due at ``start + i / rate`` whether or
not earlier ones have been answered, and its latency is counted from that
intended time. A stalled server therefore cannot hide its queue behind a load
generator that politely waits (coordinated omission).

One asyncio event loop, woken for each due request by a timerfd (``_ticker``:
asyncio's own timers round up to whole milliseconds, which would count up to
1 ms of the generator's own lateness in every latency); raw HTTP/1.1 on
keep-alive connections (a new one when the server closes, as gunicorn's sync
workers do; up to ``max_connections``, after which due requests queue in the
generator, still timed from their due time). ``lags`` in the result are how
late the generator itself issued each request: when their p99 is small next to
the latencies, the schedule was kept. Loopback only; bounded by ``duration``
and ``max_connections``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ._ticker import Ticker

__all__ = ["LoadResult", "http_request", "percentile", "run_open_loop"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def http_request(
    method: str, path: str, body: bytes = b"", content_type: str = "application/json"
) -> bytes:
    """A raw HTTP/1.1 keep-alive request."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values (nearest rank), nan if empty."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class LoadResult:
    """What one run at one rate saw. Latencies and lags are in seconds."""

    rate: float
    duration: float
    sent: int = 0
    latencies: list[float] = field(default_factory=list)  # completed requests, any status
    lags: list[float] = field(default_factory=list)  # actual send - intended send
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connection errors and timeouts
    unfinished: int = 0  # still unanswered when the run stopped (counted as errors)

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if code < 400)

    @property
    def failed(self) -> int:
        """Errors, unanswered requests and 5xx answers."""
        server = sum(n for code, n in self.statuses.items() if code >= 500)
        return self.errors + self.unfinished + server

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        lag = sorted(self.lags)
        return {
            "rate": self.rate,
            "achieved": len(lat) / self.duration if self.duration else 0.0,
            "p50_ms": percentile(lat, 0.50) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000,
            "p999_ms": percentile(lat, 0.999) * 1000,
            "max_ms": (lat[-1] if lat else math.nan) * 1000,
            "errors": float(self.failed),
            # answered, but not with a 2xx (a refused login would measure refusals)
            "non_2xx": float(sum(n for code, n in self.statuses.items() if not 200 <= code < 300)),
            "lag_p99_ms": percentile(lag, 0.99) * 1000,
        }


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.due = 0.0
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self.busy, self.due = True, due
        self.buf.clear()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        keep = b"connection: close" not in head
        self.busy = False
        self.gen.done(self, status, keep)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy:
            self.busy = False
            self.gen.failed(self)
        else:
            self.gen.forget(self)


class _Generator:
    def __init__(
        self, host: str, port: int, requests: Sequence[bytes], rate: float, duration: float,
        max_connections: int, timeout: float, precise: bool = True,
    ) -> None:  # fmt: skip
        self.precise = precise
        self.host, self.port = host, port
        self.requests = itertools.cycle(requests)
        self.rate, self.duration = rate, duration
        self.max_connections, self.timeout = max_connections, timeout
        self.result = LoadResult(rate=rate, duration=duration)
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.opening = 0
        self.backlog: list[tuple[bytes, float]] = []  # due but no connection free yet
        self.loop = asyncio.get_running_loop()
        self.inflight = 0

    def done(self, conn: _Conn, status: int, keep: bool) -> None:
        now = self.loop.time()
        self.inflight -= 1
        self.result.latencies.append(now - conn.due)
        self.result.statuses[status] = self.result.statuses.get(status, 0) + 1
        if keep:
            self._give(conn)
        else:
            self._drop(conn)

    def failed(self, conn: _Conn) -> None:
        self.inflight -= 1
        self.result.errors += 1
        self.conns.discard(conn)
        self._fill()

    def forget(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._fill()

    def _drop(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn.transport is not None:
            conn.transport.close()
        self._fill()

    def _give(self, conn: _Conn) -> None:
        if self.backlog:
            request, due = self.backlog.pop(0)
            self._send(conn, request, due)
        else:
            self.idle.append(conn)

    def _send(self, conn: _Conn, request: bytes, due: float) -> None:
        self.result.sent += 1
        self.inflight += 1
        conn.send(request, due)

    def _fill(self) -> None:
        """Open connections for waiting requests, up to ``max_connections``."""
        while self.backlog and len(self.conns) + self.opening < self.max_connections:
            if self.opening >= len(self.backlog):
                return
            self.opening += 1
            self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.opening -= 1
            if self.backlog:  # the request that wanted it fails
                self.backlog.pop(0)
                self.result.errors += 1
            return
        self.opening -= 1
        self.conns.add(conn)
        self._give(conn)

    def submit(self, due: float) -> None:
        self.result.lags.append(self.loop.time() - due)
        request = next(self.requests)
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                self._send(conn, request, due)
                return
        self.backlog.append((request, due))
        self._fill()

    async def _tick(self, ticker: Ticker, start: float, total: int, interval: float) -> None:
        """Submit each request when the timerfd says it is due (never before)."""
        finished: asyncio.Future[None] = self.loop.create_future()
        sent = 0

        def due_now() -> None:
            nonlocal sent
            if finished.done():
                return
            try:
                ticker.clear()
                batch = 0
                while sent < total and batch < 32:  # behind schedule: still let replies in
                    due = start + sent * interval
                    if due > self.loop.time():
                        break
                    self.submit(due)
                    sent += 1
                    batch += 1
                if sent < total:
                    ticker.arm(start + sent * interval)
                else:
                    finished.set_result(None)
            except BaseException as exc:  # (a reader callback's error would only be logged)
                finished.set_exception(exc)

        self.loop.add_reader(ticker.fd, due_now)
        try:
            ticker.arm(start)
            await finished
        finally:
            self.loop.remove_reader(ticker.fd)

    async def run(self) -> LoadResult:
        try:
            await self._run()
        finally:  # an error too closes the connections (not left to the collector)
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.close()
            await asyncio.sleep(0)
        return self.result

    async def _run(self) -> None:
        start = self.loop.time() + 0.05
        total = int(self.rate * self.duration)
        interval = 1.0 / self.rate
        ticker = Ticker.open() if self.precise else None
        if ticker is None:
            for i in range(total):
                due = start + i * interval
                delay = due - self.loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # (epoll: whole milliseconds, rounded up)
                elif i % 32 == 0:  # behind schedule: still let replies in
                    await asyncio.sleep(0)
                self.submit(due)
        else:
            try:
                await self._tick(ticker, start, total, interval)
            finally:
                ticker.close()
        end = start + self.duration + self.timeout
        while (self.inflight or self.backlog) and self.loop.time() < end:
            await asyncio.sleep(0.01)
        self.result.unfinished = self.inflight + len(self.backlog)


def run_open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    rate: float,
    duration: float,
    *,
    max_connections: int = 1000,
    timeout: float = 10.0,
    precise: bool = True,
) -> LoadResult:
    """Send ``requests`` (cycled) at ``rate`` per second for ``duration`` seconds,
    on up to ``max_connections`` connections; wait up to ``timeout`` for the last.
    ``precise``: wake for each request with a timerfd (Linux), not asyncio's
    millisecond timers."""
    if host not in _LOOPBACK:
        raise ValueError(f"load is only sent to loopback, not to {host!r}")
    if not rate > 0 or not duration > 0:
        raise ValueError(f"rate and duration must be > 0, got rate={rate!r}, duration={duration!r}")
    if not requests:
        raise ValueError("requests must not be empty")

    async def main() -> LoadResult:
        return await _Generator(
            host, port, requests, rate, duration, max_connections, timeout, precise
        ).run()

    return asyncio.run(main())
