"""Cluster load benchmark: N workers x M GETs (the same number of keys on each node) on a
3-primary Redis Cluster, for redis-py's ``RedisCluster`` with its default node
pools, with ``BlockingConnectionPool`` node pools, and ``RedisClusterPool``,
side by side. Pools are bounded to ``--size`` connections per node (the
default pools are unbounded: that is their default).

python bench/cluster_load.py                 # 1000 threads x 20 GETs
python bench/cluster_load.py --gevent        # 1000 greenlets

Loopback only; starts and stops its own cluster; one process per case.
``refreshes`` counts the CLUSTER SLOTS/SHARDS calls the nodes served during
the case (topology refreshes); ``conns`` the connections they accepted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

CASES = (
    "redis-py RedisCluster (default pools)",
    "redis-py RedisCluster + BlockingConnectionPool",
    "RedisClusterPool",
)


def _balanced_keys(per_node: int = 100, primaries: int = 3) -> list[str]:
    """``per_node`` keys for each primary of a fresh ``RedisClusterServer`` (its
    slot ranges are even), interleaved: every node gets the same share of the
    load, so latency differences are the pools', not the key mix's."""
    from redis.crc import key_slot

    from redispool.testing.cluster import slot_ranges

    ranges = slot_ranges(primaries)
    buckets: list[list[str]] = [[] for _ in ranges]
    i = 0
    while min(len(b) for b in buckets) < per_node:
        key = f"key:{i}"
        slot = key_slot(key.encode())
        node = next(n for n, (lo, hi) in enumerate(ranges) if lo <= slot <= hi)
        if len(buckets[node]) < per_node:
            buckets[node].append(key)
        i += 1
    return [key for group in zip(*buckets, strict=True) for key in group]


# Nothing from redis or redispool is imported at module level: the child
# process monkey-patches for gevent first.


def _make_op(case: str, url: str, size: int) -> tuple[Callable[[str], Any], Callable[[], None]]:
    import redis
    from redis.cluster import RedisCluster

    from redispool import RedisClusterPool

    if case == CASES[0]:
        rc = RedisCluster.from_url(url, socket_timeout=30)
        return rc.get, rc.close
    if case == CASES[1]:
        rc = RedisCluster.from_url(
            url,
            connection_pool_class=redis.BlockingConnectionPool,
            max_connections=size,
            timeout=30,
            socket_timeout=30,
        )
        return rc.get, rc.close
    if case == CASES[2]:
        pool = RedisClusterPool(url, min_size=size, max_size=size, timeout=30, socket_timeout=30)
        pool.open(wait=True, timeout=10)
        return pool.redis.get, pool.close
    raise ValueError(f"unknown case {case!r}")


def _server_counts(nodes: list[tuple[str, int]]) -> tuple[int, int]:
    """(topology refresh calls, connections accepted) summed over the nodes."""
    import redis

    refreshes = accepted = 0
    for host, port in nodes:
        with redis.Redis(host=host, port=port) as r:
            stats = r.info("commandstats")
            for name in ("cmdstat_cluster|slots", "cmdstat_cluster|shards"):
                refreshes += int(stats.get(name, {}).get("calls", 0))
            accepted += int(r.info("stats")["total_connections_received"])
    return refreshes, accepted


def run_case(
    case: str, url: str, nodes: list[tuple[str, int]], workers: int, ops: int, size: int
) -> dict[str, Any]:
    from redispool.loadtest import drive, summarize

    keys = _balanced_keys()
    refreshes0, accepted0 = _server_counts(nodes)
    get, cleanup = _make_op(case, url, size)
    flat, errors, elapsed = drive(lambda i, j: get(keys[(i * ops + j) % len(keys)]), workers, ops)
    cleanup()
    refreshes1, accepted1 = _server_counts(nodes)
    return {
        **summarize(case, flat, errors, elapsed, workers),
        "accepted": accepted1 - accepted0 - 2 * len(nodes),  # minus our own two counts
        "refreshes": refreshes1 - refreshes0,
    }


def table(results: list[dict[str, Any]], title: str) -> str:
    head = (
        f"{'case':<48} {'ops/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'max ms':>7} "
        f"{'errors':>6} {'conns':>6} {'fair':>5} {'refresh':>7}"
    )
    lines = [title, head, "-" * len(head)]
    for r in results:
        fair = f"{r['fairness']:.2f}" if r["fairness"] is not None else "-"
        lines.append(
            f"{r['case']:<48} {r['throughput']:>7.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
            f"{r['p999_ms']:>7.1f} {r['max_ms']:>7.1f} {r['errors']:>6} {r['accepted']:>6} "
            f"{fair:>5} {r['refreshes']:>7}"
        )
    lines.append("fair = p99 / (workers / throughput), the Little's-law mean; 1.0 is fair")
    for r in results:
        if r["error_kinds"]:
            lines.append(f"errors of {r['case']}: {r['error_kinds']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/cluster_load.py")
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--ops", type=int, default=20)
    p.add_argument("--size", type=int, default=20, help="connections per node (bounded pools)")
    p.add_argument("--gevent", action="store_true", help="greenlets instead of threads")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--nodes", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    if opts.child:
        if opts.gevent:
            from gevent import monkey

            monkey.patch_all()
        nodes = [(h, int(p)) for h, p in (x.split(":") for x in opts.nodes.split(","))]
        out = [run_case(c, opts.url, nodes, opts.workers, opts.ops, opts.size) for c in opts.cases]
        print("RESULTS " + json.dumps(out), flush=True)
        return 0
    if opts.workers < 1 or opts.ops < 1 or opts.workers * opts.ops > 1_000_000:
        raise SystemExit("--workers and --ops must be >= 1 and workers x ops <= 1,000,000")
    from redispool.loadtest import run_child
    from redispool.testing import RedisClusterServer

    results: list[dict[str, Any]] = []
    with RedisClusterServer(primaries=3, replicas=0) as cluster:
        for node in cluster.nodes:
            node.config_set("maxclients", 10000)
        with cluster.client() as rc:
            for key in _balanced_keys():
                rc.set(key, "v" * 64)
        nodes = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes())
        for case in opts.cases:  # one process per case: nothing shared between them
            cmd = [sys.executable, __file__, "--child", "--url", cluster.url, "--nodes", nodes]
            cmd += ["--workers", str(opts.workers), "--ops", str(opts.ops)]
            cmd += ["--size", str(opts.size), "--cases", case]
            if opts.gevent:
                cmd.append("--gevent")
            results += run_child(cmd, case, timeout=900)
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        kind = "greenlets" if opts.gevent else "threads"
        print(
            table(
                results,
                f"{opts.workers} {kind} x {opts.ops} GETs, 3-primary cluster, "
                f"{opts.size} connections per node (bounded pools)",
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
