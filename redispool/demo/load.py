"""A short, bounded HTTP load on the demo API: pooled vs per-request."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .run import Stopping, spawn_app, stop, wait_until_serving

__all__ = ["compare", "run_load", "summarize"]

LOGIN = json.dumps({"username": "alice", "password": "wonderland"})


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_load(
    host: str,
    port: int,
    seconds: float,
    concurrency: int,
    stopping: Stopping | None = None,
    max_requests: int = 200_000,
) -> dict[str, Any]:
    """``concurrency`` keep-alive clients for ``seconds`` (and at most
    ``max_requests``; until ``stopping``): login and cached reads, half each.
    Loopback only."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load is only sent to loopback, not to {host!r}")
    latencies: dict[str, list[float]] = {"login": [], "post": []}
    statuses: dict[int, int] = {}
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    sent = [0]

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        local: dict[str, list[float]] = {"login": [], "post": []}
        local_status: dict[int, int] = {}
        while time.monotonic() < deadline and not stopping:
            with lock:
                if sent[0] >= max_requests:
                    break
                sent[0] += 1
            kind = "login" if rnd.random() < 0.5 else "post"
            t0 = time.perf_counter()
            try:
                if kind == "login":
                    conn.request(
                        "POST", "/api/auth/login", LOGIN, {"Content-Type": "application/json"}
                    )
                else:
                    conn.request("GET", f"/api/posts/{rnd.randint(1, 100)}")
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                continue
            local[kind].append(time.perf_counter() - t0)
            local_status[resp.status] = local_status.get(resp.status, 0) + 1
        conn.close()
        with lock:
            for k, v in local.items():
                latencies[k].extend(v)
            for code, n in local_status.items():
                statuses[code] = statuses.get(code, 0) + n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {"latencies": latencies, "statuses": statuses, "errors": errors[0], "elapsed": elapsed}


def summarize(name: str, result: dict[str, Any]) -> list[str]:
    rows = []
    for kind, values in result["latencies"].items():
        rows.append(
            f"{name:<12} {kind:<6} {len(values):>7} {len(values) / result['elapsed']:>9.0f} "
            f"{_percentile(values, 0.5) * 1000:>8.1f} {_percentile(values, 0.99) * 1000:>8.1f} "
            f"{max(values, default=float('nan')) * 1000:>8.1f}"
        )
    server_errors = sum(n for code, n in result["statuses"].items() if code >= 500)
    rows.append(
        f"{'':<12} errors: {result['errors']} connection, {server_errors} 5xx; "
        f"statuses {dict(sorted(result['statuses'].items()))}"
    )
    return rows


def warm_cache(host: str, port: int, concurrency: int) -> None:
    """Read every post once: without it the first mode measured would pay for the
    cold cache (50 ms database reads) and the second would get the hits."""

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


def compare(opts: argparse.Namespace, url: str, stopping: Stopping) -> int:
    """Pooled, then per-request: one server each, stopped before the next starts."""
    os.environ.setdefault("DEMO_LOGIN_LIMIT", "1000000/minute")  # measure, not limit
    lines = [
        f"{opts.concurrency} clients x {opts.seconds:.0f} s per mode, "
        f"{opts.workers} {opts.worker_class} workers",
        f"{'mode':<12} {'route':<6} {'requests':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8}",
    ]
    for per_request in (False, True):
        proc = spawn_app(opts.host, opts.port, url, opts, per_request)
        try:
            if not wait_until_serving(proc, opts.host, opts.port, stopping):
                return 0
            warm_cache(opts.host, opts.port, opts.concurrency)
            result = run_load(opts.host, opts.port, opts.seconds, opts.concurrency, stopping)
        finally:
            stop(proc)
        if stopping:
            return 0
        lines += summarize("per-request" if per_request else "pooled", result)
    print("\n".join(lines), flush=True)
    return 0
