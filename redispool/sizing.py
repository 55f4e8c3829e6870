"""Connection budget: a ``max_size`` that keeps every pool within Redis ``maxclients``.

``budget(maxclients=10000, workers_per_host=8, hosts=3)`` or, from a shell,
``python -m redispool budget --url redis://... --workers-per-host 8 --hosts 3``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["budget", "default_reserve", "server_maxclients"]


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def default_reserve(maxclients: int) -> int:
    """10% of ``maxclients``, at least 2: for redis-cli, monitoring, replicas, Sentinel."""
    return max(2, maxclients // 10)


def budget(
    maxclients: int,
    *,
    workers_per_host: int,
    hosts: int = 1,
    pools_per_worker: int = 1,
    reserve: int | None = None,
) -> int:
    """The largest ``max_size`` with which ``hosts x workers_per_host x
    pools_per_worker`` full pools still leave ``reserve`` of the server's
    ``maxclients`` free (default: ``default_reserve``).

    Count the workers that can be alive at once: during a rolling deploy, old and
    new. A read replica has its own ``maxclients``: size ``read_url`` pools
    separately. Raises ``ValueError`` when not even 1 connection per pool fits.
    """
    _count("maxclients", maxclients, 1)
    _count("workers_per_host", workers_per_host, 1)
    _count("hosts", hosts, 1)
    _count("pools_per_worker", pools_per_worker, 1)
    if reserve is None:
        reserve = default_reserve(maxclients)
    _count("reserve", reserve, 0)
    pools = hosts * workers_per_host * pools_per_worker
    size = (maxclients - reserve) // pools
    if size < 1:
        raise ValueError(
            f"maxclients ({maxclients}) minus reserve ({reserve}) leaves "
            f"{maxclients - reserve} connections for {pools} pools (hosts {hosts} x "
            f"workers_per_host {workers_per_host} x pools_per_worker {pools_per_worker}): "
            f"not 1 each; raise maxclients or run fewer workers"
        )
    return size


def server_maxclients(url: str, **options: Any) -> int:
    """The server's ``maxclients``: from ``INFO clients`` (Redis 7+, also where
    ``CONFIG`` is disabled), else ``CONFIG GET maxclients``."""
    import redis

    from .config import parse_redis_url

    kwargs = parse_redis_url(url)
    kwargs.setdefault("socket_timeout", 5)
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.update(options)
    # A pool takes what the URL gives (connection_class for rediss://, path for
    # unix://); redis.Redis(**kwargs) refuses both.
    pool = redis.ConnectionPool(**kwargs)
    client = redis.Redis(connection_pool=pool)
    try:
        value = client.info("clients").get("maxclients")
        if value is None:
            value = client.config_get("maxclients").get("maxclients")
    finally:
        client.close()
        pool.disconnect()
    if value is None:
        raise RuntimeError("the server reports no maxclients (INFO clients, CONFIG GET)")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """``python -m redispool budget``: print the ``max_size`` for a deployment."""
    parser = argparse.ArgumentParser(
        prog="python -m redispool budget",
        description="The pool max_size that keeps all workers within Redis maxclients.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--maxclients", type=int, help="the server's maxclients")
    source.add_argument("--url", help="ask this server for maxclients (default: $REDIS_URL)")
    parser.add_argument("--workers-per-host", type=int, required=True)
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--pools-per-worker", type=int, default=1)
    parser.add_argument("--reserve", type=int, help="connections left free (default: 10%%)")
    args = parser.parse_args(argv)
    maxclients = args.maxclients
    try:
        if maxclients is None:
            url = args.url or os.environ.get("REDIS_URL")
            if not url:
                parser.error("give --maxclients, --url or set REDIS_URL")
            maxclients = server_maxclients(url)
        reserve = default_reserve(maxclients) if args.reserve is None else args.reserve
        size = budget(
            maxclients,
            workers_per_host=args.workers_per_host,
            hosts=args.hosts,
            pools_per_worker=args.pools_per_worker,
            reserve=reserve,
        )
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        print(f"budget: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a Redis error asking for maxclients
        print(f"budget: could not read maxclients: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    pools = args.hosts * args.workers_per_host * args.pools_per_worker
    print(f"REDIS_POOL_MAX_SIZE={size}")
    print(
        f"# maxclients {maxclients} - reserve {reserve} = {maxclients - reserve} "
        f"for {pools} pools; at most {size * pools} connections in use",
        file=sys.stderr,
    )
    return 0
