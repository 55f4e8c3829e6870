"""Real Django (built-in ``RedisCache`` and django-redis) on ``redispool.ConnectionPool``
with no shim, and the ``/api/health/redis`` view, against a real redis-server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="redispool-tests",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
    )
    django.setup()

from django.core.cache import caches  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

from redispool import ConnectionPool, RedisPool  # noqa: E402
from redispool.web.django import cache_pool, health_view  # noqa: E402

pytestmark = pytest.mark.timeout(60)

_DEAD = RedisPool("redis://127.0.0.1:1/0", min_size=0, timeout=0.2, connect_timeout=0.2)

urlpatterns = [
    path("api/health/redis", health_view()),
    path("health/status", health_view(detail="status")),
    path("health/by-caller", health_view(detail=lambda r: r.GET.get("detail", "status"))),
    path("health/dead", health_view(_DEAD, ping_timeout=0.5)),
    path("health/details", health_view(show_details="always")),
    path("health/staff", health_view(show_details=lambda r: r.GET.get("staff") == "1")),
]


def _builtin(url: str, **options: Any) -> dict[str, Any]:
    opts = {"pool_class": "redispool.ConnectionPool", "min_size": 0, **options}
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "OPTIONS": opts,
        }
    }


def _django_redis(url: str, **kwargs: Any) -> dict[str, Any]:
    pytest.importorskip("django_redis")
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "OPTIONS": {
                "CONNECTION_POOL_CLASS": "redispool.ConnectionPool",
                "CONNECTION_POOL_KWARGS": {"min_size": 0, **kwargs},
                "CLOSE_CONNECTION": True,
            },
        }
    }


@pytest.fixture(autouse=True)
def _close_pools() -> Iterator[None]:
    """Each test gets fresh pools: Django's (per cache object) and django-redis's
    (process-global, by URL) are closed and forgotten afterwards."""
    yield
    try:
        from django_redis.pool import ConnectionFactory
    except ImportError:
        pools: list[Any] = []
    else:
        pools = list(ConnectionFactory._pools.values())
        ConnectionFactory._pools.clear()
    for pool in pools:
        if isinstance(pool, ConnectionPool):
            pool.redis_pool.close(timeout=1)


def _exercise(cache: Any) -> None:
    cache.set("a", {"x": 1}, 60)
    assert cache.get("a") == {"x": 1}
    assert cache.add("a", 2) is False
    cache.set("n", 1)
    assert cache.incr("n", 4) == 5
    cache.set_many({"b": 1, "c": 2})
    assert cache.get_many(["a", "b", "c", "zz"]) == {"a": {"x": 1}, "b": 1, "c": 2}
    assert cache.touch("b", 30)
    cache.delete_many(["b", "c"])
    assert cache.get("b") is None
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                cache.incr("n")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert cache.get("n") == 155


def test_builtin_redis_cache_with_pool_class(redis_url: str) -> None:
    with override_settings(CACHES=_builtin(redis_url, max_connections=3)):
        cache = caches["default"]
        _exercise(cache)
        pool = cache_pool()
        stats = pool.stats()
        assert stats.max_size == 3 and stats.size <= 3 and stats.in_use == 0
        assert stats.commands >= 150 and stats.borrows >= 150
        cache.close()  # what Django does at the end of each request
        cache.clear()
        assert cache.get("a") is None
        pool.close(timeout=1)


def test_django_redis_connection_pool_class(redis_url: str) -> None:
    with override_settings(CACHES=_django_redis(redis_url, max_connections=3, timeout=5)):
        cache = caches["default"]
        _exercise(cache)
        client = cache.client.get_client(write=True)
        assert isinstance(client.connection_pool, ConnectionPool)
        assert cache_pool().stats().max_size == 3
        with cache.lock("job", timeout=5):
            assert cache.ttl("a") > 0
        assert sorted(cache.keys("*")) == ["a", "n"]
        cache.delete_pattern("a*")
        cache.close()  # CLOSE_CONNECTION: disconnect() replaces the connections
        assert cache.get("n") == 155
        stats = cache_pool().stats()
        assert stats.in_use == 0 and stats.destroyed_by_reason.get("drain", 0) >= 1


def test_health_view_for_the_cache_pool(redis_url: str) -> None:
    with override_settings(CACHES=_builtin(redis_url)):
        caches["default"].set("k", 1)
        response = Client().get("/api/health/redis")
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        assert response["Cache-Control"] == "no-store"
        body = json.loads(response.content)
        assert body["status"] == "up"
        assert Client().post("/api/health/redis").status_code == 405
        assert json.loads(Client().get("/health/status").content) == {"status": "up"}
        per_caller = json.loads(Client().get("/health/by-caller?detail=basic").content)
        assert per_caller["status"] == "up" and "active" in per_caller
        cache_pool().close(timeout=1)


def test_health_view_shows_address_and_server_only_when_configured(redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    with override_settings(CACHES=_builtin(redis_url)):
        caches["default"].set("k", 1)
        default = Client().get("/api/health/redis").content.decode()
        assert port not in default and "server" not in json.loads(default), default
        anonymous = Client().get("/health/staff").content.decode()
        assert port not in anonymous and "server" not in json.loads(anonymous)
        for url in ("/health/details", "/health/staff?staff=1"):
            body = json.loads(Client().get(url).content)
            assert port in json.dumps(body) and body["server"]["version"], body
        cache_pool().close(timeout=1)
    with pytest.raises(ValueError, match="show_details must be"):
        health_view(show_details="sometimes")


def test_health_view_reports_down() -> None:
    response = Client().get("/health/dead")
    assert response.status_code == 503
    assert json.loads(response.content)["status"] == "down"
    _DEAD.close(timeout=1)  # no reconnect probes for the rest of the session


def test_health_view_bad_arguments() -> None:
    with pytest.raises(TypeError, match="pool must be"):
        health_view(redis.ConnectionPool())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="detail must be"):
        health_view(_DEAD, detail="everything")
    with pytest.raises(TypeError, match="cache must be"):
        health_view(cache=3)  # type: ignore[arg-type]
    for bad in (0, -1, "1", float("inf")):  # named when the URLconf loads, not per request
        with pytest.raises((TypeError, ValueError), match="ping_timeout"):
            health_view(_DEAD, ping_timeout=bad)  # type: ignore[arg-type]


def test_cache_pool_names_what_is_missing(redis_url: str) -> None:
    with pytest.raises(TypeError, match="not a Redis cache"):
        cache_pool()  # the locmem default
    plain = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}
    }
    with override_settings(CACHES=plain), pytest.raises(TypeError, match="pool_class"):
        cache_pool()
    with override_settings(CACHES=plain):
        response = Client(raise_request_exception=False).get("/api/health/redis")
        assert response.status_code == 500
