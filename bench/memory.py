"""Memory: the pool's own footprint per idle connection (tracemalloc), and a
bounded soak that shows it stays flat.

    python bench/memory.py                 # footprint per idle connection
    python bench/memory.py --soak 300      # 5-minute soak: traced memory over time
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc

import redis

from redispool import RedisPool
from redispool.testing import RedisServer


def footprint(url: str, n: int = 50) -> dict[str, float]:
    """Bytes per idle connection: all of it, and redis-py's bare connection."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    pool = RedisPool(url, min_size=n, max_size=n)
    pool.open(wait=True, timeout=30)
    gc.collect()
    pooled = tracemalloc.take_snapshot()
    total = sum(s.size_diff for s in pooled.compare_to(base, "filename"))
    conns = [redis.Connection(host="127.0.0.1", port=int(url.rsplit(":", 1)[1].split("/")[0]))]
    for _ in range(n - 1):
        conns.append(redis.Connection(host=conns[0].host, port=conns[0].port))
    for c in conns:
        c.connect()
    gc.collect()
    bare = tracemalloc.take_snapshot()
    bare_total = sum(s.size_diff for s in bare.compare_to(pooled, "filename"))
    tracemalloc.stop()
    for c in conns:
        c.disconnect()
    pool.close()
    return {
        "per_connection_total": total / n,
        "per_connection_bare_redis_py": bare_total / n,
        "pool_overhead_per_connection": (total - bare_total) / n,
    }


def soak(url: str, seconds: float) -> list[tuple[float, float]]:
    """Borrow, GET, release in a loop for ``seconds``; traced memory every 10%."""
    pool = RedisPool(url, min_size=4, max_size=4)
    pool.redis.set("k", "v")
    tracemalloc.start()
    samples = []
    end = time.monotonic() + seconds
    step = seconds / 10
    next_sample = time.monotonic()
    while time.monotonic() < end:
        for _ in range(1000):
            with pool.client() as r:
                r.get("k")
        if time.monotonic() >= next_sample:
            gc.collect()
            snap = tracemalloc.take_snapshot().filter_traces(
                [
                    tracemalloc.Filter(False, __file__),
                    tracemalloc.Filter(False, tracemalloc.__file__),
                ]
            )
            traced = sum(stat.size for stat in snap.statistics("filename"))
            samples.append((seconds - (end - time.monotonic()), traced))
            next_sample += step
    tracemalloc.stop()
    pool.close()
    return samples


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--soak", type=float, default=0.0, help="seconds of soak (0: none)")
    opts = p.parse_args()
    with RedisServer() as server:
        fp = footprint(server.url, opts.connections)
        print(f"{opts.connections} idle connections:")
        for key, value in fp.items():
            print(f"  {key:<32} {value / 1024:8.1f} KiB")
        if opts.soak:
            samples = soak(server.url, opts.soak)
            print("soak: seconds, traced bytes")
            for t, b in samples:
                print(f"  {t:8.1f} {b:12,d}")
            first, last = samples[1][1], samples[-1][1]
            print(f"  growth after warm-up: {last - first:+,d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
