"""``python -m redispool demo --load``: open-loop load on the demo API, the same
offered rate for each way of getting connections (pooled, redis-py's
``BlockingConnectionPool``, a new connection per request).

The rate is picked by a short probe of the pooled mode (the highest rate whose
p99 stays under 50 ms, of a few short steps) times ``--load-fraction``, unless
``--rate`` is given. Latency is counted from each request's intended send time
(see ``openloop``). Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .app import load_account
from .modes import MODES
from .openloop import LoadResult, http_request, run_open_loop
from .run import Stopping, spawn_app, stop, wait_until_serving

__all__ = ["ROUTES", "bisect_rate", "compare", "format_row", "probe_rate", "warm_cache"]

# Logins as many users (the demo's DEMO_LOAD_USERS accounts), as real traffic
# does: one user's logins in flight at once beyond the lockout's 5 get 423.
LOAD_USERS = 1000
LOGIN_BODIES = [
    json.dumps({"username": load_account(i), "password": load_account(i)}).encode()
    for i in range(LOAD_USERS)
]
ROUTES: dict[str, list[bytes]] = {
    "login": [http_request("POST", "/api/auth/login", body) for body in LOGIN_BODIES],
    "post": [http_request("GET", f"/api/posts/{i}") for i in range(1, 101)],
}
PROBE_RATES = (50, 100, 200, 400, 700, 1000, 1500, 2000, 3000, 4000)
HEADER = (
    f"{'mode':<12} {'route':<6} {'rate/s':>7} {'done/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'p99.9 ms':>9} {'errors':>7} {'non-2xx':>7} {'lag p99':>8}"
)


def format_row(mode: str, route: str, result: LoadResult) -> str:
    s = result.summary()
    return (
        f"{mode:<12} {route:<6} {s['rate']:>7.0f} {s['achieved']:>7.0f} {s['p50_ms']:>8.1f} "
        f"{s['p99_ms']:>8.1f} {s['p999_ms']:>9.1f} {int(s['errors']):>7} {int(s['non_2xx']):>7} "
        f"{s['lag_p99_ms']:>8.1f}"
    )


def warm_cache(host: str, port: int, concurrency: int) -> None:
    """Read every post once: without it the first mode measured would pay for the
    cold cache (50 ms database reads) and the next would get the hits."""

    def get(post_id: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("GET", f"/api/posts/{post_id}")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()

    with ThreadPoolExecutor(max(1, min(concurrency, 20))) as executor:
        list(executor.map(get, range(1, 101)))


def probe_rate(
    host: str, port: int, requests: Sequence[bytes], *, seconds: float = 1.0,
    limit_ms: float = 50.0, rates: Sequence[float] = PROBE_RATES,
    run: Callable[..., LoadResult] = run_open_loop,
) -> float:  # fmt: skip
    """The highest of ``rates`` (climbing, ``seconds`` each) with no error and a
    p99 under ``limit_ms``; the first rate if even that one fails."""
    best = float(rates[0])
    for rate in rates:
        result = run(host, port, requests, rate, seconds, timeout=2.0)
        if result.failed or result.summary()["p99_ms"] >= limit_ms:
            break
        best = float(rate)
    return best


def bisect_rate(passes: Callable[[float], bool], low: float, high: float, rounds: int) -> float:
    """Narrow a capacity down between ``low`` (a rate that passed) and ``high``
    (one that did not) by ``rounds`` halvings, measuring with ``passes(rate)``;
    the highest rate seen to pass. A ladder's steps only bound a capacity: with
    steps 1.4x apart, the last passing step can be 30% under it."""
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low!r}, high={high!r}")
    for _ in range(rounds):
        mid = round((low + high) / 2)
        if not low < mid < high:
            break
        if passes(mid):
            low = mid
        else:
            high = mid
    return low


def compare(opts: argparse.Namespace, url: str, stopping: Stopping) -> int:
    """Start the demo once per mode (each stopped before the next starts) and load
    each route at one fixed rate; a stop signal ends it between steps."""
    os.environ.setdefault("DEMO_LOGIN_LIMIT", "100000000/minute")  # measure, not limit
    os.environ["DEMO_LOAD_USERS"] = str(LOAD_USERS)  # the accounts ROUTES logs in as
    host, port = opts.host, opts.port
    rate: float | None = opts.rate
    rows: list[str] = []
    for mode in MODES:
        proc = spawn_app(host, port, url, opts, False, mode)
        try:
            if not wait_until_serving(proc, host, port, stopping):
                return 0
            warm_cache(host, port, 20)
            if rate is None:  # probed on the first mode, the pooled one
                probed = probe_rate(host, port, ROUTES["login"], seconds=opts.probe_seconds)
                rate = max(10.0, round(probed * opts.load_fraction))
                print(f"probe: pooled login keeps p99 < 50 ms up to {probed:.0f}/s", flush=True)
            for route, requests in ROUTES.items():
                if stopping:
                    return 0
                result = run_open_loop(host, port, requests, rate, opts.seconds)
                rows.append(format_row(mode, route, result))
        finally:
            stop(proc)
    print(
        f"open loop at {rate:.0f} requests/s x {opts.seconds:g} s per mode and route, "
        f"{opts.workers} {opts.worker_class} workers; latency from the intended send time",
        HEADER,
        *rows,
        sep="\n",
        flush=True,
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--load`` options of ``python -m redispool demo``."""
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per case")
    parser.add_argument("--rate", type=float, default=None, help="requests/s (default: probe)")
    parser.add_argument("--load-fraction", type=float, default=0.7, help="of the probed rate")
    parser.add_argument("--probe-seconds", type=float, default=1.0)
