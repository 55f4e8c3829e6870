"""Web glue against a real redis-server: Flask extension, health, metrics, WSGI limits."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask import Flask

from redispool import RedisPool
from redispool.helpers.ratelimit import RateLimiter
from redispool.web.flask import RedisPoolExtension, current_pool
from redispool.web.health import pool_health
from redispool.web.metrics import render_metrics
from redispool.web.wsgi import RateLimitMiddleware, Rule, api_key


def make_app(url: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(REDIS_URL=url, REDIS_POOL_MIN_SIZE=0, REDIS_POOL_MAX_SIZE=3, **config)
    RedisPoolExtension(app)

    @app.get("/incr")
    def incr() -> Any:
        return {"n": current_pool.redis.incr("hits")}

    return app


def test_extension_pool_health_and_metrics_move_with_requests(redis_url: str) -> None:
    app = make_app(redis_url)
    client = app.test_client()
    ext = app.extensions["redispool"]
    assert ext.pool is not None and ext.pool.stats().max_size == 3
    for i in range(3):
        assert client.get("/incr").json == {"n": i + 1}
    resp = client.get("/api/health/redis")
    assert resp.status_code == 200
    body = resp.json
    assert body["status"] == "up" and body["ping_ms"] > 0
    for key in ("active", "idle", "size", "max_size", "waiting", "total_commands", "timeouts"):
        assert key in body
    assert body["total_commands"] >= 3 and body["max_size"] == 3
    text = client.get("/metrics").get_data(as_text=True)
    assert 'db_client_connection_count{pool_name="' in text and 'state="idle"' in text
    assert "db_client_connection_max" in text and "redispool_commands" in text
    ext.pool.close()


def test_health_is_503_when_redis_is_down_and_hides_passwords(redis_server_factory: Any) -> None:
    server = redis_server_factory(password="s3cret-pw")
    app = make_app(server.url, REDIS_POOL_TIMEOUT=0.3)
    client = app.test_client()
    assert client.get("/api/health/redis").json["status"] == "up"
    server.kill()
    t0 = time.monotonic()
    resp = client.get("/api/health/redis")
    assert resp.status_code == 503 and resp.json["status"] == "down"
    assert time.monotonic() - t0 < 3
    assert "s3cret-pw" not in resp.get_data(as_text=True)
    assert "s3cret-pw" not in client.get("/metrics").get_data(as_text=True)
    app.extensions["redispool"].pool.close()


def test_health_detail_levels(redis_url: str) -> None:
    app = make_app(redis_url, REDISPOOL_HEALTH_DETAIL=lambda req: req.args.get("d", "status"))
    client = app.test_client()
    assert client.get("/api/health/redis").json == {"status": "up"}
    basic = client.get("/api/health/redis?d=basic").json
    assert set(basic) == {"status", "active", "idle", "size", "max_size", "waiting", "ping_ms"}
    assert "total_commands" in client.get("/api/health/redis?d=full").json
    pool = app.extensions["redispool"].pool
    with pytest.raises(ValueError, match="detail must be one of"):
        pool_health(pool, detail="everything")
    pool.close()


def test_health_degraded_when_callers_wait(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=1)
    with pool.client():
        status, body = pool_health(pool, ping_timeout=0.2)
    assert status == 503 and body["status"] == "down"  # could not even borrow to PING
    status, body = pool_health(pool)
    assert status == 200 and body["status"] == "up"
    pool.close()


def test_plain_metrics_text_without_prometheus_client(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=2, name="main")
    pool.redis.ping()
    text = render_metrics([pool])
    assert "# TYPE db_client_connection_count gauge" in text
    assert 'db_client_connection_count{pool_name="main",state="idle"} 1' in text
    assert 'db_client_connection_max{pool_name="main"} 2' in text
    assert 'redispool_commands_total{pool_name="main"} 1' in text
    pool.close()


def _wsgi_call(
    app: Any, path: str, method: str = "GET", **environ: Any
) -> tuple[str, dict[str, str], bytes]:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> None:
        captured["status"] = status
        captured["headers"] = dict(headers)

    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": "203.0.113.9", **environ}
    body = b"".join(app(env, start_response))
    return captured["status"], captured["headers"], body


def _hello(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_wsgi_middleware_limits_per_route_and_client(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    login = RateLimiter(pool, "2/minute", algorithm="fixed")
    app = RateLimitMiddleware(_hello, [Rule(r"/api/auth/login$", login, methods=["POST"])])
    for remaining in ("1", "0"):
        status, headers, body = _wsgi_call(app, "/api/auth/login", "POST")
        assert status == "200 OK" and body == b"hello"
        assert headers["RateLimit-Limit"] == "2" and headers["RateLimit-Remaining"] == remaining
        assert "Retry-After" not in headers
    status, headers, body = _wsgi_call(app, "/api/auth/login", "POST")
    assert status.startswith("429")
    assert int(headers["Retry-After"]) >= 1 and headers["X-RateLimit-Remaining"] == "0"
    payload = json.loads(body)
    assert payload["error"] == "rate_limited" and payload["retry_after"] >= 1
    # another client, another method, another route: not limited
    assert _wsgi_call(app, "/api/auth/login", "POST", REMOTE_ADDR="198.51.100.1")[0] == "200 OK"
    assert _wsgi_call(app, "/api/auth/login", "GET")[0] == "200 OK"
    assert "RateLimit-Limit" not in _wsgi_call(app, "/other")[1]
    pool.close()


def test_wsgi_middleware_keys_by_api_key(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    rl = RateLimiter(pool, "1/minute")
    app = RateLimitMiddleware(_hello, [Rule("/api/", rl, key=api_key())])
    assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="k1")[0] == "200 OK"
    assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="k1")[0].startswith("429")
    assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="k2")[0] == "200 OK"
    pool.close()


def test_wsgi_middleware_passes_through_when_redis_is_down(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    pool = RedisPool(server.url, min_size=0, max_size=2, timeout=0.2)
    app = RateLimitMiddleware(_hello, default=RateLimiter(pool, "1/minute", timeout=0.1))
    server.kill()
    for _ in range(3):
        status, _, body = _wsgi_call(app, "/anything")
        assert status == "200 OK" and body == b"hello"
    pool.close()


def test_bad_config_is_named(redis_url: str) -> None:
    app = Flask(__name__)
    app.config.update(REDIS_URL=redis_url, REDIS_POOL_MAX_SIZE="many")
    with pytest.raises(ValueError, match="REDIS_POOL_MAX_SIZE"):
        RedisPoolExtension(app)
    with pytest.raises(TypeError, match="rules must be Rule objects"):
        RateLimitMiddleware(_hello, ["/api"])  # type: ignore[list-item]
