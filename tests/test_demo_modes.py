"""The demo's three connection modes (``DEMO_POOL``), used by the load comparisons."""

from __future__ import annotations

import threading

import pytest
import redis

from redispool.demo.app import create_app
from redispool.demo.modes import RedisPyBlockingPool
from redispool.redis_errors import RedisPoolTimeout

LOGIN = {"username": "alice", "password": "wonderland"}


@pytest.mark.parametrize("mode", ["pooled", "redis-py", "per-request"])
def test_each_mode_serves_login_and_reads(
    mode: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_POOL", mode)
    monkeypatch.delenv("DEMO_PER_REQUEST", raising=False)
    app = create_app(redis_url)
    client = app.test_client()
    assert client.post("/api/auth/login", json=LOGIN).status_code == 200
    assert client.get("/api/posts/3").get_json()["id"] == 3
    stats = client.get("/api/stats").get_json()
    assert stats["pool_mode"] == mode
    assert stats["per_request_connections"] is (mode == "per-request")
    # the helpers really used Redis in this mode: the rate limiter counted the login
    keys = redis.Redis.from_url(redis_url).keys("*")
    assert keys


def test_unknown_mode_is_named(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_POOL", "bogus")
    monkeypatch.delenv("DEMO_PER_REQUEST", raising=False)
    with pytest.raises(ValueError, match=r"DEMO_POOL.*'bogus'"):
        create_app(redis_url)


def test_redis_py_mode_saturation_is_a_pool_timeout(redis_url: str) -> None:
    pool = RedisPyBlockingPool(redis_url, max_size=1, timeout=0.2)
    try:
        held = pool._blocking.get_connection()
        try:
            errors: list[BaseException] = []

            def borrow() -> None:
                try:
                    with pool.client() as r:
                        r.ping()
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=borrow)
            t.start()
            t.join(5)
            assert len(errors) == 1 and isinstance(errors[0], RedisPoolTimeout), errors
        finally:
            pool._blocking.release(held)
        with pool.client() as r:
            assert r.ping()
    finally:
        pool.close()
