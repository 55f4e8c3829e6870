"""``GET /api/health/redis``: is Redis up, and how is the pool doing?"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cluster import RedisClusterPool
    from ..redis_pool import RedisPool, RedisPoolStats

__all__ = ["DETAIL_LEVELS", "pool_health"]

DETAIL_LEVELS = ("status", "basic", "full")


def _numbers(s: RedisPoolStats) -> dict[str, Any]:
    borrows = max(1, s.borrows)
    return {
        "name": s.name,
        "active": s.in_use,
        "idle": s.idle,
        "size": s.size,
        "min_size": s.min_size,
        "max_size": s.max_size,
        "waiting": s.waiting,
        "total_commands": s.commands,
        "command_errors": s.command_errors,
        "borrows": s.borrows,
        "timeouts": s.timeouts,
        "errors": s.create_errors + s.command_errors,
        "create_errors": s.create_errors,
        "consecutive_create_errors": s.consecutive_create_errors,
        "created": s.created,
        "destroyed": s.destroyed,
        "destroyed_by_reason": dict(s.destroyed_by_reason),
        "wait_time_avg_ms": round(s.wait_time_total / borrows * 1000, 3),
        "wait_time_max_ms": round(s.wait_time_max * 1000, 3),
        "use_time_avg_ms": round(s.use_time_total / borrows * 1000, 3),
    }


def _ping(pool: RedisPool | RedisClusterPool, timeout: float) -> tuple[float | None, str | None]:
    t0 = time.perf_counter()
    try:
        with pool.client(timeout=timeout, wait=timeout) as r:
            r.ping()
    except Exception as exc:  # any failure means "down" here
        return None, type(exc).__name__
    return round((time.perf_counter() - t0) * 1000, 3), None


def pool_health(
    pool: RedisPool | RedisClusterPool, *, detail: str = "full", ping_timeout: float = 1.0
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body). ``status`` is ``up``, ``degraded`` (answers, but
    callers wait, time out or connections fail to open) or ``down`` (no PING:
    503). ``detail``: ``status`` (only that), ``basic`` (+ pool occupancy) or
    ``full``. Connection URLs in it carry no password."""
    from ..cluster import RedisClusterPool
    from ..redis_pool import RedisPool, _socket_timeout

    if not isinstance(pool, (RedisPool, RedisClusterPool)):
        raise TypeError(
            f"pool must be a redispool.RedisPool or RedisClusterPool, got {type(pool).__name__}"
        )
    if detail not in DETAIL_LEVELS:
        raise ValueError(f"detail must be one of {DETAIL_LEVELS}, got {detail!r}")
    _socket_timeout("ping_timeout", ping_timeout, none_ok=False)
    rtt, error = _ping(pool, ping_timeout)
    stats = pool.stats()
    if rtt is None:
        status = "down"
    elif stats.waiting or stats.consecutive_create_errors or stats.in_use >= stats.max_size:
        status = "degraded"
    else:
        status = "up"
    body: dict[str, Any] = {"status": status}
    if detail != "status":
        numbers = _numbers(stats)
        if detail == "basic":
            keys = ("active", "idle", "size", "max_size", "waiting")
            numbers = {k: numbers[k] for k in keys}
        body.update(numbers)
        body["ping_ms"] = rtt
        if error is not None:
            body["error"] = error
        if detail == "full" and stats.read is not None:
            body["read"] = _numbers(stats.read)
        nodes: dict[str, RedisPoolStats] | None = getattr(stats, "nodes", None)
        if detail == "full" and nodes is not None:  # a cluster: each node's pool
            body["nodes"] = {node: _numbers(s) for node, s in nodes.items()}
    return (503 if status == "down" else 200), body
