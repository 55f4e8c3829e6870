"""Flask extension: one RedisPool per app, health and metrics endpoints.

``ext = RedisPoolExtension(app)`` or ``ext.init_app(app)``; configuration from
``app.config``: ``REDIS_URL``, ``READ_REDIS_URL``, ``REDIS_POOL_MIN_SIZE``,
``REDIS_POOL_MAX_SIZE``, ``REDIS_POOL_TIMEOUT``, ``REDIS_SOCKET_TIMEOUT``,
``REDIS_CONNECT_TIMEOUT``, ``REDIS_HEALTH_CHECK_INTERVAL``, ``REDIS_POOL_OPTIONS``
(a dict of any other ``RedisPool`` option); ``REDISPOOL_HEALTH_URL`` (default
``/api/health/redis``, None to disable), ``REDISPOOL_HEALTH_DETAIL`` (``full``,
``basic`` or ``status``; or a callable ``(request) -> level`` to decide per
caller), ``REDISPOOL_METRICS_URL`` (default ``/metrics``, None to disable).
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.local import LocalProxy

from ..redis_pool import RedisPool
from .health import pool_health
from .metrics import CONTENT_TYPE, PoolMetrics, render_metrics

__all__ = ["RedisPoolExtension", "current_pool"]

_CONFIG = {
    "REDIS_POOL_MIN_SIZE": ("min_size", int),
    "REDIS_POOL_MAX_SIZE": ("max_size", int),
    "REDIS_POOL_TIMEOUT": ("timeout", float),
    "REDIS_SOCKET_TIMEOUT": ("socket_timeout", float),
    "REDIS_CONNECT_TIMEOUT": ("connect_timeout", float),
    "REDIS_HEALTH_CHECK_INTERVAL": ("health_check_interval", float),
}


def _close_at_exit(ref: weakref.ref[RedisPool]) -> None:
    pool = ref()
    if pool is not None and not pool.closed:
        pool.close(timeout=1.0)


class RedisPoolExtension:
    """The pool is made in ``init_app`` (not connected until first used, so
    gunicorn's ``preload_app`` is safe), kept in ``app.extensions["redispool"]``,
    and closed when the process exits."""

    def __init__(self, app: Flask | None = None, **pool_options: Any) -> None:
        self.pool_options = pool_options
        self.pool: RedisPool | None = None
        self.metrics: PoolMetrics | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        cfg = app.config
        options: dict[str, Any] = dict(self.pool_options)
        for key, (option, kind) in _CONFIG.items():
            if cfg.get(key) is not None:
                try:
                    options[option] = kind(cfg[key])
                except (TypeError, ValueError):
                    raise ValueError(
                        f"app.config[{key!r}] must be a number, got {cfg[key]!r}"
                    ) from None
        options.update(cfg.get("REDIS_POOL_OPTIONS") or {})
        if cfg.get("READ_REDIS_URL"):
            options.setdefault("read_url", cfg["READ_REDIS_URL"])
        url = cfg.get("REDIS_URL", "redis://localhost:6379/0")
        pool = RedisPool(url, **options)
        self.pool = pool
        app.extensions["redispool"] = self
        atexit.register(_close_at_exit, weakref.ref(pool))
        try:
            import prometheus_client  # noqa: F401

            self.metrics = PoolMetrics([pool])
        except ImportError:  # plain text, this process only
            self.metrics = None

        health_url = cfg.get("REDISPOOL_HEALTH_URL", "/api/health/redis")
        if health_url:
            app.add_url_rule(health_url, "redispool_health", self._health, methods=["GET"])
        metrics_url = cfg.get("REDISPOOL_METRICS_URL", "/metrics")
        if metrics_url:
            app.add_url_rule(metrics_url, "redispool_metrics", self._metrics, methods=["GET"])
        if self.metrics is not None:
            app.after_request(self._publish)

    def _publish(self, response: Response) -> Response:
        if self.metrics is not None:
            self.metrics.update()
        return response

    def _health(self) -> Any:
        detail = current_app.config.get("REDISPOOL_HEALTH_DETAIL", "full")
        if callable(detail):
            detail = detail(request)
        assert self.pool is not None
        status, body = pool_health(self.pool, detail=detail)
        return jsonify(body), status

    def _metrics(self) -> Response:
        assert self.pool is not None
        return Response(render_metrics([self.pool], self.metrics), content_type=CONTENT_TYPE)


def _current() -> RedisPool:
    ext = current_app.extensions.get("redispool")
    if ext is None or ext.pool is None:
        raise RuntimeError("RedisPoolExtension is not initialised on this app")
    pool: RedisPool = ext.pool
    return pool


current_pool: RedisPool = LocalProxy(_current)  # type: ignore[assignment]
