"""Django: ``GET /api/health/redis`` for a pool given, or for a cache's pool.

::

    # settings.py: Django's own cache backend (or django-redis) on a fair pool
    CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/0",
        "OPTIONS": {"pool_class": "redispool.ConnectionPool", "max_connections": 20},
    }}

    # urls.py
    from redispool.web.django import health_view
    urlpatterns = [path("api/health/redis", health_view())]  # the "default" cache's pool

``health_view(pool)`` serves a ``RedisPool`` (or ``ConnectionPool``) of your own.
The body is ``redispool.web.health.pool_health``'s, as in the Flask extension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

from ..cluster import RedisClusterPool
from ..redis_adapter import ConnectionPool
from ..redis_pool import RedisPool, _socket_timeout
from .health import DETAIL_LEVELS, SHOW_DETAILS, pool_health

__all__ = ["cache_pool", "health_view"]

Detail = str | Callable[[HttpRequest], str] | None


def cache_pool(alias: str = "default") -> RedisPool:
    """The ``RedisPool`` under Django cache ``alias`` (built-in ``RedisCache`` or
    django-redis) configured with ``redispool.ConnectionPool``; its write pool."""
    cache: Any = caches[alias]
    client: Any = getattr(cache, "client", None)  # django-redis
    if not hasattr(client, "get_client"):
        client = getattr(cache, "_cache", None)  # Django's RedisCache
    if not hasattr(client, "get_client"):
        raise TypeError(f"cache {alias!r} ({type(cache).__name__}) is not a Redis cache")
    pool = client.get_client(write=True).connection_pool
    if not isinstance(pool, ConnectionPool):
        raise TypeError(
            f"cache {alias!r} uses {type(pool).__name__}, not redispool.ConnectionPool: set "
            f'OPTIONS "pool_class" (Django) or "CONNECTION_POOL_CLASS" (django-redis)'
        )
    return pool.redis_pool


def health_view(
    pool: RedisPool | RedisClusterPool | ConnectionPool | None = None,
    *,
    cache: str = "default",
    detail: Detail = None,
    ping_timeout: float | None = None,
    show_details: str | Callable[[HttpRequest], bool] = "never",
) -> Callable[[HttpRequest], HttpResponse]:
    """A view for ``pool``, or (without one) for Django cache ``cache``'s pool,
    looked up per request. ``detail``: a level of ``pool_health`` or a callable
    ``(request) -> level``; it and ``ping_timeout`` default to ``pool_health``'s.
    ``show_details``: ``"never"`` (default: no address or server facts),
    ``"always"``, or a callable ``(request) -> bool`` (say, staff only)."""
    if isinstance(pool, ConnectionPool):
        pool = pool.redis_pool
    if pool is not None and not isinstance(pool, (RedisPool, RedisClusterPool)):
        raise TypeError(
            "pool must be a RedisPool, a RedisClusterPool, a ConnectionPool or None, "
            f"got {type(pool).__name__}"
        )
    if not isinstance(cache, str):
        raise TypeError(f"cache must be a cache alias (str), got {cache!r}")
    if detail is not None and not callable(detail) and detail not in DETAIL_LEVELS:
        raise ValueError(
            f"detail must be one of {DETAIL_LEVELS}, a callable or None, got {detail!r}"
        )
    if ping_timeout is not None:  # refused now, not as a 500 on every health check
        _socket_timeout("ping_timeout", ping_timeout, none_ok=False)
    if not callable(show_details) and show_details not in SHOW_DETAILS:
        raise ValueError(
            f"show_details must be one of {SHOW_DETAILS} or a callable, got {show_details!r}"
        )
    fixed = pool

    def redis_health(request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        level = detail(request) if callable(detail) else detail
        options: dict[str, Any] = {}
        if ping_timeout is not None:
            options["ping_timeout"] = ping_timeout
        if level is not None:
            options["detail"] = level
        show = show_details(request) if callable(show_details) else show_details == "always"
        options["show_details"] = bool(show)
        status, body = pool_health(fixed or cache_pool(cache), **options)
        response = JsonResponse(body, status=status)
        response["Cache-Control"] = "no-store"
        return response

    return redis_health
