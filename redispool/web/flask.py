"""Flask extension: one RedisPool per app, health and metrics endpoints.

``ext = RedisPoolExtension(app)`` or ``ext.init_app(app)``; configuration from
``app.config``: ``REDIS_URL``, ``READ_REDIS_URL``, ``REDIS_POOL_MIN_SIZE``,
``REDIS_POOL_MAX_SIZE``, ``REDIS_POOL_TIMEOUT``, ``REDIS_SOCKET_TIMEOUT``,
``REDIS_CONNECT_TIMEOUT``, ``REDIS_HEALTH_CHECK_INTERVAL``, ``REDIS_POOL_OPTIONS``
(a dict of any other ``RedisPool`` option); ``REDIS_SENTINELS`` (``host:port,...``),
``REDIS_SENTINEL_SERVICE`` and ``REDIS_SENTINEL_OPTIONS`` (the sentinels' own
``password``, ...) for ``RedisPool.sentinel`` (``REDIS_URL`` then only gives the
data nodes' credentials and db); ``REDISPOOL_HEALTH_URL`` (default
``/api/health/redis``, None to disable), ``REDISPOOL_HEALTH_DETAIL`` (``full``,
``basic`` or ``status``; or a callable ``(request) -> level`` to decide per
caller), ``REDISPOOL_METRICS_URL`` (default ``/metrics``, None to disable).
"""

from __future__ import annotations

import atexit
import math
import weakref
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.local import LocalProxy

from ..config import parse_redis_url
from ..redis_pool import RedisPool
from .health import DETAIL_LEVELS, pool_health
from .metrics import CONTENT_TYPE, PoolMetrics, render_metrics

__all__ = ["RedisPoolExtension", "current_pool"]

# app.config key -> (RedisPool option, type, minimum)
_CONFIG: dict[str, tuple[str, type, float]] = {
    "REDIS_POOL_MIN_SIZE": ("min_size", int, 0),
    "REDIS_POOL_MAX_SIZE": ("max_size", int, 1),
    "REDIS_POOL_TIMEOUT": ("timeout", float, 0),
    "REDIS_SOCKET_TIMEOUT": ("socket_timeout", float, 0.001),
    "REDIS_CONNECT_TIMEOUT": ("connect_timeout", float, 0.001),
    "REDIS_HEALTH_CHECK_INTERVAL": ("health_check_interval", float, 0),
}


def _config_number(key: str, value: Any, kind: type, minimum: float) -> Any:
    """A number from ``app.config`` (a str, as from the environment, is fine)."""
    what = "an integer" if kind is int else "a number"
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError(value)  # no silent True -> 1 or 2.7 -> 2
        number = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"app.config[{key!r}] must be {what}, got {value!r}") from None
    if not (math.isfinite(number) and number >= minimum):
        raise ValueError(f"app.config[{key!r}] must be {what} >= {minimum:g}, got {value!r}")
    return number


def _check_config(cfg: Mapping[str, Any]) -> None:
    """Settings that RedisPool does not see (or would name by its own option)."""
    for key in ("REDIS_URL", "READ_REDIS_URL"):
        if cfg.get(key):
            try:
                parse_redis_url(cfg[key])
            except (TypeError, ValueError) as exc:  # its messages are redacted
                raise type(exc)(f"app.config[{key!r}]: {exc}") from None
    extra = cfg.get("REDIS_POOL_OPTIONS")
    if extra is not None and (
        not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra)
    ):
        raise TypeError(
            f"app.config['REDIS_POOL_OPTIONS'] must be a dict of RedisPool options, "
            f"got {type(extra).__name__}"
        )
    detail = cfg.get("REDISPOOL_HEALTH_DETAIL", "full")
    if not callable(detail) and detail not in DETAIL_LEVELS:
        raise ValueError(
            f"app.config['REDISPOOL_HEALTH_DETAIL'] must be one of {DETAIL_LEVELS} "
            f"or a callable, got {detail!r}"
        )
    for key in ("REDISPOOL_HEALTH_URL", "REDISPOOL_METRICS_URL"):
        url = cfg.get(key)
        if url and (not isinstance(url, str) or not url.startswith("/")):
            raise ValueError(
                f"app.config[{key!r}] must be a path starting with '/' (None: off), got {url!r}"
            )


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
        for key, (option, kind, minimum) in _CONFIG.items():
            if cfg.get(key) is not None:
                options[option] = _config_number(key, cfg[key], kind, minimum)
        _check_config(cfg)
        options.update(cfg.get("REDIS_POOL_OPTIONS") or {})
        if cfg.get("READ_REDIS_URL"):
            options.setdefault("read_url", cfg["READ_REDIS_URL"])
        url = cfg.get("REDIS_URL", "redis://localhost:6379/0")
        if cfg.get("REDIS_SENTINELS"):
            pool = RedisPool.sentinel(
                cfg["REDIS_SENTINELS"],
                cfg.get("REDIS_SENTINEL_SERVICE", ""),
                sentinel_kwargs=cfg.get("REDIS_SENTINEL_OPTIONS"),
                url=url or None,
                **options,
            )
        else:
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
