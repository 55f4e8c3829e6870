"""The open-loop load generator keeps its schedule and counts latency from each
request's intended send time (no coordinated omission)."""

from __future__ import annotations

import gc
import select
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

from redispool.demo import _ticker, openloop
from redispool.demo._ticker import Ticker
from redispool.demo.load import bisect_rate, probe_rate
from redispool.demo.openloop import LoadResult, http_request, percentile, run_open_loop

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def stalling_server() -> Iterator[tuple[int, list[float]]]:
    """A keep-alive HTTP server on loopback, one thread per connection, that
    answers the very first request after 0.5 s and the rest at once. Yields its
    port and the times requests arrived."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    arrivals: list[float] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        buf = b""
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    arrivals.append(time.monotonic())
                    if len(arrivals) == 1:
                        time.sleep(0.5)
                    conn.sendall(OK)

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], arrivals
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("precise", [True, False], ids=["timerfd", "asyncio-sleep"])
def test_latency_counts_from_the_intended_send_time(
    stalling_server: tuple[int, list[float]], precise: bool
) -> None:
    port, arrivals = stalling_server
    # One connection: while the first request stalls for 0.5 s, the next ones
    # are due every 20 ms and must wait. A closed-loop tool would report one
    # slow request; an open-loop one reports every request that was held up.
    result = run_open_loop(
        "127.0.0.1", port, [http_request("GET", "/")], 50, 1.0, max_connections=1,
        precise=precise,
    )  # fmt: skip
    assert result.sent == 50 and result.statuses == {200: 50}, result.statuses
    assert result.failed == 0
    held_up = [lat for lat in result.latencies if lat > 0.1]
    assert len(held_up) >= 15, sorted(result.latencies)
    assert max(result.latencies) >= 0.45
    assert len(arrivals) == 50


@pytest.mark.parametrize("precise", [True, False], ids=["timerfd", "asyncio-sleep"])
def test_schedule_is_kept_and_spread(
    stalling_server: tuple[int, list[float]], precise: bool
) -> None:
    port, arrivals = stalling_server
    result = run_open_loop("127.0.0.1", port, [http_request("GET", "/")], 200, 1.0, precise=precise)
    assert result.sent == 200 and result.failed == 0
    # Never early: a request sent before it is due would shorten its latency.
    assert min(result.lags) >= 0, min(result.lags)
    # The generator issued requests on time (it is the server that stalled) ...
    assert percentile(sorted(result.lags), 0.5) < 0.05
    # ... spread over the second, not in a burst: arrivals span most of it.
    assert arrivals[-1] - arrivals[0] > 0.8


def test_refused_connections_are_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    result = run_open_loop("127.0.0.1", port, [http_request("GET", "/")], 50, 0.2, timeout=1)
    assert result.sent == 0 and result.failed == 10 and not result.latencies


def test_only_loopback_and_valid_arguments() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_open_loop("10.0.0.1", 80, [b"x"], 10, 1)
    with pytest.raises(ValueError, match="rate"):
        run_open_loop("127.0.0.1", 80, [b"x"], 0, 1)
    with pytest.raises(ValueError, match="requests"):
        run_open_loop("127.0.0.1", 80, [], 10, 1)


def test_probe_climbs_until_p99_breaks() -> None:
    seen: list[float] = []

    def fake_run(host: str, port: int, requests: object, rate: float, seconds: float,
                 **kw: object) -> LoadResult:  # fmt: skip
        seen.append(rate)
        result = LoadResult(rate=rate, duration=seconds)
        result.latencies = [0.002 if rate < 400 else 0.2] * 100
        return result

    assert probe_rate("127.0.0.1", 1, [b"x"], run=fake_run) == 200
    assert seen == [50, 100, 200, 400]


def _tickers() -> list[Ticker]:
    """Every way this Python can make a ticker: os.timerfd_* (3.13+) and ctypes."""
    found = []
    ticker = Ticker.open()
    if ticker is not None:
        found.append(ticker)
    libc = _ticker._libc()
    if ticker is not None and ticker._libc is None and libc is not None:
        fd = libc.timerfd_create(_ticker._CLOCK_MONOTONIC, _ticker._TFD_NONBLOCK)
        found.append(Ticker(fd, libc))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_ticker_fires_at_its_time_and_never_before() -> None:
    tickers = _tickers()
    assert tickers, "no timerfd on Linux"
    for ticker in tickers:
        poller = select.poll()
        poller.register(ticker.fd, select.POLLIN)
        try:
            for offset in (0.02, 0.0013, 0.0002):
                when = time.monotonic() + offset
                ticker.arm(when)
                assert not poller.poll(0) or time.monotonic() >= when
                assert poller.poll(2000), "the ticker never fired"
                assert time.monotonic() >= when  # readable no earlier than armed for
                ticker.clear()
                assert not poller.poll(0)  # cleared until armed again
            ticker.arm(time.monotonic() - 1)  # in the past: at once
            assert poller.poll(0)
            ticker.clear()
            ticker.arm(time.monotonic() + 0.05)  # re-arming replaces the earlier time
            ticker.arm(time.monotonic() + 5)
            assert not poller.poll(300)
        finally:
            ticker.close()


def test_bisect_narrows_a_capacity_between_a_pass_and_a_fail() -> None:
    tried: list[float] = []

    def passes(rate: float) -> bool:
        tried.append(rate)
        return rate <= 612

    assert bisect_rate(passes, 500, 700, 3) == 600
    assert tried == [600, 650, 625]  # halvings, each within the last bounds
    tried.clear()
    assert bisect_rate(passes, 500, 700, 10) == 612  # to the rate, then stops
    assert len(tried) < 10
    assert bisect_rate(passes, 500, 700, 0) == 500
    with pytest.raises(ValueError, match="low"):
        bisect_rate(passes, 700, 500, 3)


@pytest.mark.parametrize("precise", [True, False], ids=["timerfd", "asyncio-sleep"])
def test_an_error_while_sending_ends_the_run(
    stalling_server: tuple[int, list[float]], precise: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = stalling_server
    calls = []
    real = openloop._Generator.submit

    def failing(self: openloop._Generator, due: float) -> None:
        calls.append(due)
        if len(calls) == 3:
            raise RuntimeError("boom")
        real(self, due)

    monkeypatch.setattr(openloop._Generator, "submit", failing)
    raised: list[BaseException] = []

    unclosed: list[warnings.WarningMessage] = []

    def run() -> None:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ResourceWarning)
            try:
                run_open_loop(
                    "127.0.0.1", port, [http_request("GET", "/")], 100, 1.0, precise=precise
                )
            except BaseException as exc:
                raised.append(exc)
            gc.collect()  # a socket left open warns when collected
        unclosed.extend(w for w in seen if issubclass(w.category, ResourceWarning))

    thread = threading.Thread(target=run, daemon=True)  # (a hang must not hang the suite)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the run hung after the error"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert unclosed == [], [str(w.message) for w in unclosed]  # its connections closed
