"""Flask extension: one RedisPool per app, health and metrics endpoints.

``ext = RedisPoolExtension(app)`` or ``ext.init_app(app)``; configuration from
``app.config``: ``REDIS_URL``, ``READ_REDIS_URL``, ``REDIS_CLUSTER_URL`` (a
``RedisClusterPool`` instead, the pool options per node), ``REDIS_POOL_MIN_SIZE``,
``REDIS_POOL_MAX_SIZE``, ``REDIS_POOL_TIMEOUT``, ``REDIS_SOCKET_TIMEOUT``,
``REDIS_CONNECT_TIMEOUT``, ``REDIS_HEALTH_CHECK_INTERVAL``, ``REDIS_POOL_OPTIONS``
(a dict of any other ``RedisPool`` option); ``REDIS_SENTINELS`` (``host:port,...``),
``REDIS_SENTINEL_SERVICE`` and ``REDIS_SENTINEL_OPTIONS`` (the sentinels' own
``password``, ...) for ``RedisPool.sentinel`` (``REDIS_URL`` then only gives the
data nodes' credentials and db); ``REDISPOOL_HEALTH_URL`` (default
``/api/health/redis``, None to disable), ``REDISPOOL_HEALTH_DETAIL`` (``full``,
``basic`` or ``status``; or a callable ``(request) -> level`` to decide per
caller), ``REDISPOOL_HEALTH_SHOW_DETAILS`` (``never``, the default: no address
or server facts; ``always``; or a callable ``(request) -> bool``, e.g. "is
this an operator"), ``REDISPOOL_METRICS_URL`` (default ``/metrics``, None to
disable).

One extension object may serve several apps: each app gets its own pool and
metrics, kept in ``app.extensions["redispool"]``.
"""

from __future__ import annotations

import atexit
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, has_app_context, jsonify, request
from werkzeug.local import LocalProxy

from ..cluster import RedisClusterPool
from ..config import parse_redis_url
from ..redis_pool import RedisPool
from .health import DETAIL_LEVELS, SHOW_DETAILS, pool_health
from .metrics import CONTENT_TYPE, PoolMetrics, render_metrics

__all__ = ["AppState", "RedisPoolExtension", "current_pool"]

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
    for key in ("REDIS_URL", "READ_REDIS_URL", "REDIS_CLUSTER_URL"):
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
    show = cfg.get("REDISPOOL_HEALTH_SHOW_DETAILS", "never")
    if not callable(show) and show not in SHOW_DETAILS:
        raise ValueError(
            f"app.config['REDISPOOL_HEALTH_SHOW_DETAILS'] must be one of {SHOW_DETAILS} "
            f"or a callable (request) -> bool, got {show!r}"
        )
    for key in ("REDISPOOL_HEALTH_URL", "REDISPOOL_METRICS_URL"):
        url = cfg.get(key)
        if url and (not isinstance(url, str) or not url.startswith("/")):
            raise ValueError(
                f"app.config[{key!r}] must be a path starting with '/' (None: off), got {url!r}"
            )


def _close_at_exit(ref: weakref.ref[RedisPool | RedisClusterPool]) -> None:
    pool = ref()
    if pool is not None and not pool.closed:
        pool.close(timeout=1.0)


@dataclass
class AppState:
    """What the extension keeps for one app, in ``app.extensions["redispool"]``."""

    extension: RedisPoolExtension
    pool: RedisPool | RedisClusterPool
    metrics: PoolMetrics | None


def _state(app: Flask) -> AppState:
    state = app.extensions.get("redispool")
    if not isinstance(state, AppState):
        raise RuntimeError(f"RedisPoolExtension is not initialised on app {app.name!r}")
    return state


class RedisPoolExtension:
    """The pool is made in ``init_app`` (not connected until first used, so
    gunicorn's ``preload_app`` is safe), kept in ``app.extensions["redispool"]``,
    and closed when the process exits. ``pool`` and ``metrics`` are those of
    the current app (or of the only app, outside an app context)."""

    def __init__(self, app: Flask | None = None, **pool_options: Any) -> None:
        self.pool_options = pool_options
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
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
        pool: RedisPool | RedisClusterPool
        if cfg.get("REDIS_CLUSTER_URL"):
            pool = RedisClusterPool(cfg["REDIS_CLUSTER_URL"], **options)
        elif cfg.get("REDIS_SENTINELS"):
            pool = RedisPool.sentinel(
                cfg["REDIS_SENTINELS"],
                cfg.get("REDIS_SENTINEL_SERVICE", ""),
                sentinel_kwargs=cfg.get("REDIS_SENTINEL_OPTIONS"),
                url=url or None,
                **options,
            )
        else:
            pool = RedisPool(url, **options)
        metrics: PoolMetrics | None = None
        try:
            import prometheus_client  # noqa: F401

            metrics = PoolMetrics([pool])
        except ImportError:  # plain text, this process only
            pass
        app.extensions["redispool"] = AppState(self, pool, metrics)
        self._apps.add(app)
        atexit.register(_close_at_exit, weakref.ref(pool))

        health_url = cfg.get("REDISPOOL_HEALTH_URL", "/api/health/redis")
        if health_url:
            app.add_url_rule(health_url, "redispool_health", _health, methods=["GET"])
        metrics_url = cfg.get("REDISPOOL_METRICS_URL", "/metrics")
        if metrics_url:
            app.add_url_rule(metrics_url, "redispool_metrics", _metrics, methods=["GET"])
        if metrics is not None:
            app.after_request(_publish)

    def state(self, app: Flask | None = None) -> AppState | None:
        """The state for ``app``, the current app, or the only app (None: no app)."""
        if app is None and has_app_context():
            current: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
            app = current if current in self._apps else None
        if app is None:
            apps = list(self._apps)
            if len(apps) > 1:
                raise RuntimeError(
                    "RedisPoolExtension serves several apps: use ext.state(app).pool "
                    "or use it inside an app context"
                )
            if not apps:
                return None
            app = apps[0]
        state = app.extensions.get("redispool")
        return state if isinstance(state, AppState) and state.extension is self else None

    @property
    def pool(self) -> RedisPool | RedisClusterPool | None:
        state = self.state()
        return None if state is None else state.pool

    @property
    def metrics(self) -> PoolMetrics | None:
        state = self.state()
        return None if state is None else state.metrics


def _publish(response: Response) -> Response:
    state = _state(current_app)
    if state.metrics is not None:
        state.metrics.update()
    return response


def _health() -> Any:
    state = _state(current_app)
    cfg = current_app.config
    detail = cfg.get("REDISPOOL_HEALTH_DETAIL", "full")
    if callable(detail):
        detail = detail(request)
    show = cfg.get("REDISPOOL_HEALTH_SHOW_DETAILS", "never")
    show_details = bool(show(request)) if callable(show) else show == "always"
    status, body = pool_health(state.pool, detail=detail, show_details=show_details)
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"  # a cache must not replay "up"
    return response


def _metrics() -> Response:
    state = _state(current_app)
    text = render_metrics([state.pool], state.metrics)
    return Response(text, content_type=CONTENT_TYPE)


def _current() -> RedisPool | RedisClusterPool:
    return _state(current_app).pool


current_pool: RedisPool = LocalProxy(_current)  # type: ignore[assignment]
