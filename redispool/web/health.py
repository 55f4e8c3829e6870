"""``GET /api/health/redis``: is Redis up, and how is the pool doing?

``pool_health()`` builds the JSON body for any framework (Flask here, the
Django view next to it). As in Spring Boot Actuator's ``show-details``, the
default shows status and pool numbers only; where Redis is (address, pool
name) and what it is (version, ``connected_clients`` of ``maxclients``)
only with ``show_details=True``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import PoolTimeout

if TYPE_CHECKING:
    import redis

    from ..cluster import RedisClusterPool
    from ..redis_pool import RedisPool, RedisPoolStats

__all__ = ["DETAIL_LEVELS", "SHOW_DETAILS", "pool_health", "server_details"]

DETAIL_LEVELS = ("status", "basic", "full")
SHOW_DETAILS = ("never", "always")  # or, in the web glue, a function of the request


def _numbers(s: RedisPoolStats) -> dict[str, Any]:
    borrows = max(1, s.borrows)
    return {
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


def server_details(r: redis.Redis) -> dict[str, Any]:
    """Version, mode, ``connected_clients`` and ``maxclients`` in one round trip;
    whatever the server's ACL refuses (``INFO``, ``CONFIG``) is left out."""
    pipe = r.pipeline(transaction=False)
    pipe.info("server")
    pipe.info("clients")
    pipe.config_get("maxclients")
    server, clients, config = pipe.execute(raise_on_error=False)
    out: dict[str, Any] = {}
    if isinstance(server, dict):
        for key in ("redis_version", "redis_mode"):
            if key in server:
                out[key.removeprefix("redis_")] = str(server[key])
    if isinstance(clients, dict) and "connected_clients" in clients:
        out["connected_clients"] = int(clients["connected_clients"])
    if isinstance(config, dict):
        value = config.get("maxclients", config.get(b"maxclients"))
        if value is not None:
            out["maxclients"] = int(value)
    return out


def _probe(
    pool: RedisPool | RedisClusterPool, timeout: float, details: bool
) -> tuple[float | None, str | None, dict[str, Any], bool]:
    """(PING round trip in ms or None, error class name, server details, busy:
    no PING because every connection stayed busy, not because Redis failed)."""
    t0 = time.perf_counter()
    server: dict[str, Any] = {}
    try:
        with pool.client(timeout=timeout, wait=timeout) as r:
            r.ping()
            rtt = round((time.perf_counter() - t0) * 1000, 3)
            if details:
                server = server_details(r)
    except Exception as exc:  # any other failure means "down" here
        # A wait timeout without a cause: the pool is saturated (as the helpers
        # judge it), if Redis answers a connection of the probe's own; else
        # every connection waits on a Redis that answers nothing.
        busy = isinstance(exc, PoolTimeout) and exc.__cause__ is None
        return None, type(exc).__name__, server, busy and _answers(pool, timeout)
    return rtt, None, server, False


def _answers(pool: RedisPool | RedisClusterPool, timeout: float) -> bool:
    """Does Redis (a cluster: its default node) answer a PING within ``timeout``
    on a connection made for it (outside the pool, closed after)?"""
    from ..cluster import RedisClusterPool

    try:
        target = pool._node_for(None) if isinstance(pool, RedisClusterPool) else pool
        conn = target._new_connection(time.monotonic() + timeout)
    except Exception as exc:  # (at maxclients Redis answers, refusing one more)
        return "max number of clients reached" in str(exc)
    try:
        with target._stats_lock:  # its PING is not one of the pool's commands
            target._counted.discard(conn)
        conn.send_command("PING", check_health=False)
        return conn.read_response(timeout=timeout) in (b"PONG", "PONG")
    except Exception:
        return False
    finally:
        conn.disconnect()


def pool_health(
    pool: RedisPool | RedisClusterPool,
    *,
    detail: str = "full",
    show_details: bool = False,
    ping_timeout: float = 1.0,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body). ``status`` is ``up``, ``degraded`` (answers, but
    callers wait, time out or connections fail to open; also when no
    connection came free for the PING in ``ping_timeout`` but Redis answers
    one on a connection the probe makes for it) or ``down`` (no PING for
    another reason: 503). ``detail``: ``status`` (only that), ``basic`` (+ pool occupancy) or
    ``full`` (+ counters and wait times). ``show_details`` adds the pool's
    name and address and a ``server`` section (version, mode,
    ``connected_clients``, ``maxclients``: one more round trip). Connection
    URLs in it carry no password. For a ``RedisClusterPool``, ``full`` adds
    ``nodes``: each node's pool, keyed by ``host:port`` with ``show_details``
    and by ``node1``, ``node2``, ... (in address order) without."""
    from ..cluster import RedisClusterPool
    from ..redis_pool import RedisPool, _socket_timeout

    if not isinstance(pool, (RedisPool, RedisClusterPool)):
        raise TypeError(
            f"pool must be a redispool.RedisPool or RedisClusterPool, got {type(pool).__name__}"
        )
    if detail not in DETAIL_LEVELS:
        raise ValueError(f"detail must be one of {DETAIL_LEVELS}, got {detail!r}")
    if not isinstance(show_details, bool):
        raise TypeError(f"show_details must be True or False, got {show_details!r}")
    _socket_timeout("ping_timeout", ping_timeout, none_ok=False)
    rtt, error, server, busy = _probe(pool, ping_timeout, show_details and detail != "status")
    stats = pool.stats()
    if rtt is None and not busy:
        status = "down"
    elif busy or any(
        s.waiting or s.consecutive_create_errors or s.in_use >= s.max_size
        for s in [stats, *getattr(stats, "nodes", {}).values()]  # a cluster: any node
    ):
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
            body["nodes"] = {
                (node if show_details else f"node{i}"): _numbers(s)
                for i, (node, s) in enumerate(sorted(nodes.items()), 1)
            }
        if show_details:
            body["name"] = stats.name
            body["server"] = {"url": pool.url, **server}
            if "read" in body and stats.read is not None:
                body["read"]["name"] = stats.read.name
    return (503 if status == "down" else 200), body
