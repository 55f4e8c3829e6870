"""The demo app's own cost per request in each connection mode, without HTTP.

The open-loop ladder (``bench/ladder.py``) measures what users see, but on a
2-core machine its capacity is set by gunicorn, the load generator and Redis
sharing the cores, and the knee moves by a ladder step between repeats. Here the
demo's WSGI app is called in-process by C threads (gthread-like) or greenlets
(gevent-like) against one redis-server, so what differs between the modes is only
how each request gets its connections: ``pooled`` (``RedisPool``), ``redis-py``
(``BlockingConnectionPool``, 20 connections, 2 s socket timeout) or
``per-request``. Reported per mode and route: requests/s, CPU microseconds per
request in this process (the app, the helpers, redis-py and the pool; not the
server), and request latency p50/p99 and non-200 replies. Logins go to 1,000 users in turn
(``DEMO_LOAD_USERS``). Modes are interleaved over ``--rounds`` rounds and the
median round is shown.

    python bench/app_modes.py [--model threads|gevent] [--concurrency 8]
                              [--requests 6000] [--rounds 3] [--modes ...]

Loopback only; it starts and stops its own redis-server.
"""

from __future__ import annotations

import sys

if "--model" in sys.argv and sys.argv[sys.argv.index("--model") + 1] == "gevent":
    from gevent import monkey

    monkey.patch_all()

import argparse
import io
import itertools
import json
import os
import threading
import time
from typing import Any

ROUTES = ("login", "post")
_turn = itertools.count()


def _environ(route: str) -> dict[str, Any]:
    # logins as many users (DEMO_LOAD_USERS), as real traffic does
    from redispool.demo.load import LOGIN_BODIES

    body = LOGIN_BODIES[next(_turn) % len(LOGIN_BODIES)] if route == "login" else b""
    return {
        "REQUEST_METHOD": "POST" if route == "login" else "GET",
        "PATH_INFO": "/api/auth/login" if route == "login" else "/api/posts/7",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "REMOTE_ADDR": "127.0.0.1",
    }


def _run(app: Any, route: str, concurrency: int, requests: int) -> dict[str, float]:
    """``requests`` calls of the app by ``concurrency`` threads (or greenlets)."""
    statuses: list[str] = []
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    per = max(1, requests // concurrency)
    start = threading.Event()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        if not status.startswith("200"):
            statuses.append(status)

    def worker(i: int) -> None:
        mine = latencies[i]
        start.wait()
        for _ in range(per):
            t0 = time.perf_counter()
            for _chunk in app(_environ(route), start_response):
                pass
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    flat = sorted(x for per_thread in latencies for x in per_thread)
    n = len(flat)
    return {
        "rps": n / elapsed,
        "cpu_us": cpu / n * 1e6,
        "p50_ms": flat[n // 2] * 1000,
        "p99_ms": flat[min(n - 1, int(n * 0.99))] * 1000,
        "errors": len(statuses),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("threads", "gevent"), default="threads")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=6000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="pooled,redis-py,per-request")
    p.add_argument("--json", action="store_true")
    opts = p.parse_args()
    if not (1 <= opts.concurrency <= 2000 and 1 <= opts.requests <= 200_000):
        raise SystemExit("--concurrency must be 1-2000 and --requests 1-200,000")
    os.environ["DEMO_LOGIN_LIMIT"] = "100000000/minute"  # measure, do not limit
    from redispool.demo.load import LOAD_USERS

    os.environ["DEMO_LOAD_USERS"] = str(LOAD_USERS)
    import logging

    logging.getLogger("redispool").setLevel(logging.ERROR)  # slow-call notes at startup
    from redispool.demo.app import create_app
    from redispool.testing import RedisServer

    modes = opts.modes.split(",")
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {}
    with RedisServer(args=("--maxclients", "10000")) as server:
        apps = {}
        for mode in modes:
            os.environ["DEMO_POOL"] = mode
            apps[mode] = create_app(server.url)
            for route in ROUTES:  # warm: the cache, the scripts, the pool
                _run(apps[mode], route, min(opts.concurrency, 20), 200)
        for _ in range(opts.rounds):
            for route in ROUTES:
                for mode in modes:
                    n = opts.requests if mode != "per-request" else max(100, opts.requests // 4)
                    result = _run(apps[mode], route, opts.concurrency, n)
                    rounds.setdefault((mode, route), []).append(result)
    table = []
    for (mode, route), runs in rounds.items():
        best = sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]
        table.append({"mode": mode, "route": route, **best, "rounds_rps": [r["rps"] for r in runs]})
    if opts.json:
        print(json.dumps(table, indent=2))
        return 0
    print(
        f"{opts.model}, concurrency {opts.concurrency}, median of {opts.rounds} rounds "
        f"(in-process: no HTTP)"
    )
    print("| route | mode | req/s | CPU us/req | p50 ms | p99 ms | non-200 | each round req/s |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for row in sorted(table, key=lambda r: (r["route"], modes.index(r["mode"]))):
        each = ", ".join(f"{x:,.0f}" for x in row["rounds_rps"])
        print(
            f"| {row['route']} | {row['mode']} | {row['rps']:,.0f} | {row['cpu_us']:,.0f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {int(row['errors'])} | {each} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
