"""Load benchmark: N concurrent workers x M GETs against one redis-server, for a
new connection per request, redis-py's pools and RedisPool, side by side.

``python -m redispool bench [--workers 1000] [--ops 20] [--gevent] [--maxclients 100]
[--rounds 3]`` (also ``bench/load.py``). Each case runs ``--rounds`` times, the
cases interleaved (one process per case and round), and the round with the median
throughput is reported: one 2-second sample on a shared machine varies by 20% or
more. Loopback only; bounded in count and time; starts and stops its own
redis-server unless ``--url`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["drive", "main", "run_case", "run_child", "summarize"]

CASES = ("per-request", "redis-py BlockingConnectionPool", "redis-py ConnectionPool", "RedisPool")


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _make_op(case: str, url: str, size: int) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(one GET as the case does it, cleanup)."""
    import redis

    from .redis_pool import RedisPool

    if case == "per-request":

        def op() -> Any:
            r = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=30)
            try:
                return r.get("k")
            finally:
                r.close()

        return op, lambda: None
    if case == "redis-py BlockingConnectionPool":
        bpool = redis.BlockingConnectionPool.from_url(url, max_connections=size, timeout=30)
        r = redis.Redis(connection_pool=bpool)
        return (lambda: r.get("k")), bpool.disconnect
    if case == "redis-py ConnectionPool":
        cpool = redis.ConnectionPool.from_url(url, socket_timeout=30)
        r = redis.Redis(connection_pool=cpool)
        return (lambda: r.get("k")), cpool.disconnect
    if case == "RedisPool":
        pool = RedisPool(url, min_size=size, max_size=size, timeout=30, socket_timeout=30)
        pool.open(wait=True, timeout=10)
        client = pool.client

        def pooled() -> Any:
            with client() as c:
                return c.get("k")

        return pooled, pool.close
    raise ValueError(f"unknown case {case!r}; choose from {CASES}")


def drive(
    op: Callable[[int, int], Any], workers: int, ops: int
) -> tuple[list[float], dict[str, int], float]:
    """``workers`` threads (greenlets when patched) each calling ``op(worker, n)``
    ``ops`` times, all released at once: (sorted latencies of the calls that
    succeeded, error counts by exception name, elapsed seconds)."""
    latencies: list[list[float]] = [[] for _ in range(workers)]
    errors: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Event()

    def worker(i: int) -> None:
        mine = latencies[i]
        start.wait()
        for j in range(ops):
            t0 = time.perf_counter()
            try:
                op(i, j)
            except Exception as exc:  # counted, not fatal
                with lock:
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1
                continue
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.perf_counter() - t0
    return sorted(x for per in latencies for x in per), errors, elapsed


def summarize(
    case: str, flat: list[float], errors: dict[str, int], elapsed: float, workers: int
) -> dict[str, Any]:
    """Throughput, percentiles and fairness (p99 over the Little's-law mean)."""
    throughput = len(flat) / elapsed if elapsed else 0.0
    little_mean = workers / throughput if throughput else float("nan")
    p99 = _percentile(flat, 0.99)
    return {
        "case": case,
        "ops": len(flat),
        "throughput": throughput,
        "p50_ms": _percentile(flat, 0.5) * 1000,
        "p99_ms": p99 * 1000,
        "p999_ms": _percentile(flat, 0.999) * 1000,
        "max_ms": (flat[-1] if flat else float("nan")) * 1000,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "little_mean_ms": little_mean * 1000,
        "fairness": p99 / little_mean if little_mean == little_mean and little_mean else None,
    }


def run_case(case: str, url: str, workers: int, ops: int, size: int = 20) -> dict[str, Any]:
    """Run one case; latencies are per GET, waiting for a connection included."""
    import redis

    admin = redis.Redis.from_url(url)
    admin.set("k", "v" * 64)
    accepted0 = int(admin.info("stats")["total_connections_received"])
    op, cleanup = _make_op(case, url, size)
    flat, errors, elapsed = drive(lambda i, j: op(), workers, ops)
    cleanup()
    accepted = int(admin.info("stats")["total_connections_received"]) - accepted0
    admin.close()
    return {**summarize(case, flat, errors, elapsed, workers), "accepted": accepted}


def table(results: list[dict[str, Any]], title: str) -> str:
    head = (
        f"{'case':<32} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8} {'max ms':>8} "
        f"{'errors':>7} {'conns':>6} {'fair':>6}"
    )
    lines = [title, head, "-" * len(head)]
    for r in results:
        fair = f"{r['fairness']:.2f}" if r["fairness"] is not None else "-"
        lines.append(
            f"{r['case']:<32} {r['throughput']:>8.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{r['p999_ms']:>8.1f} {r['max_ms']:>8.1f} {r['errors']:>7} {r['accepted']:>6} "
            f"{fair:>6}"
        )
    lines.append(
        "fair = p99 / (workers / throughput), the Little's-law mean; 1.0 is perfectly fair"
    )
    return "\n".join(lines)


def _child(argv: list[str]) -> int:
    """Run the cases in this process (gevent-patched when asked) and print JSON."""
    opts = _parser().parse_args(argv)
    if opts.gevent:
        from gevent import monkey

        monkey.patch_all()
    results = []
    for case in opts.cases:
        results.append(run_case(case, opts.url, opts.workers, opts.ops, opts.size))
    print("RESULTS " + json.dumps(results), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m redispool bench")
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--ops", type=int, default=20)
    p.add_argument("--size", type=int, default=20, help="pool size for the bounded pools")
    p.add_argument("--gevent", action="store_true", help="greenlets instead of threads")
    p.add_argument("--maxclients", type=int, default=10000, help="the server's maxclients")
    p.add_argument("--url", default=None, help="an existing server (loopback only)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument(
        "--rounds", type=int, default=3, help="runs of each case, interleaved; the median is shown"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(argv[1:])
    opts = _parser().parse_args(argv)
    if opts.workers < 1 or opts.ops < 1 or opts.workers * opts.ops > 1_000_000:
        raise SystemExit("--workers and --ops must be >= 1 and workers x ops <= 1,000,000")
    if not 1 <= opts.rounds <= 20:
        raise SystemExit(f"--rounds must be between 1 and 20, got {opts.rounds}")
    from .testing import RedisServer

    server = None
    url = opts.url
    if url is None:
        server = RedisServer(args=("--maxclients", str(opts.maxclients)))
        url = server.url
    elif not any(h in url for h in ("127.0.0.1", "localhost", "[::1]", "unix://")):
        raise SystemExit("--url must point at a loopback server")
    rounds: dict[str, list[dict[str, Any]]] = {case: [] for case in opts.cases}
    try:
        for _ in range(opts.rounds):
            for case in opts.cases:  # one process per case: no state shared between them
                rounds[case] += _run_child(opts, url, case)
    finally:
        if server is not None:
            server.close()
    results = [median_round(rounds[case]) for case in opts.cases]
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        kind = "greenlets" if opts.gevent else "threads"
        print(
            table(
                results,
                f"{opts.workers} {kind} x {opts.ops} GETs, pools of {opts.size}, "
                f"server maxclients {opts.maxclients}; the median of {opts.rounds} rounds",
            )
        )
        if opts.rounds > 1:
            print(round_lines(results))
    return 0


def _run_child(opts: argparse.Namespace, url: str, case: str) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "redispool", "bench", "--child", "--url", url]
    cmd += ["--workers", str(opts.workers), "--ops", str(opts.ops)]
    cmd += ["--size", str(opts.size), "--cases", case]
    if opts.gevent:
        cmd.append("--gevent")
    return run_child(cmd, case, timeout=600)


def run_child(cmd: list[str], case: str, *, timeout: float) -> list[dict[str, Any]]:
    """Run one case in a process of its own (nothing shared between cases) and
    return what it printed on its ``RESULTS <json>`` line."""
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, env=dict(os.environ)
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULTS ")]
    if out.returncode != 0 or not line:
        raise SystemExit(f"case {case!r} failed:\n{out.stderr[-3000:]}")
    results: list[dict[str, Any]] = json.loads(line[0][len("RESULTS ") :])
    return results


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (the lower middle one of an even
    count), with every run's throughput under ``round_throughputs``."""
    ordered = sorted(runs, key=lambda r: r["throughput"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "round_throughputs": [r["throughput"] for r in runs],
    }


def round_lines(results: list[dict[str, Any]]) -> str:
    """Every round's ops/s per case, and each round's ratio to the first case."""
    base = results[0]["round_throughputs"]
    lines = ["ops/s in each round (ratio to the first case's same round):"]
    for r in results:
        cells = [
            f"{t:,.0f}" + (f" ({t / b:.2f}x)" if r is not results[0] and b else "")
            for t, b in zip(r["round_throughputs"], base, strict=False)
        ]
        lines.append(f"  {r['case']:<32} " + ", ".join(cells))
    return "\n".join(lines)
