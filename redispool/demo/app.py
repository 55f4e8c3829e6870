"""The demo public API, to try redispool and to measure it.

``create_app()`` reads ``REDIS_URL`` or, when set, ``REDIS_SENTINELS`` and
``REDIS_SENTINEL_SERVICE`` (and ``DEMO_PER_REQUEST=1`` to open a new
Redis connection for every request instead of using the pool, so the two can be
compared on the same app). Endpoints:

* ``POST /api/auth/login`` ``{"username": ..., "password": ...}``: rate limited
  per client IP, locked after 5 failures per username; 200, 400 (malformed),
  401 (wrong credentials), 423 (locked, with ``Retry-After``), 429 (rate limited);
* ``GET /api/posts/<id>``: cached, falling back to a slow "database" (50 ms);
* ``GET /api/stats``: the analytics counters; ``GET /api/health/redis``, ``/metrics``.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import os
import time
import weakref
from typing import Any

from flask import Flask, Response, g, jsonify, request

from ..config import sentinel_env
from ..helpers.analytics import Analytics
from ..helpers.cache import Cache
from ..helpers.lockout import Lockout
from ..helpers.ratelimit import RateLimiter
from ..redis_pool import RedisPool
from ..web.flask import RedisPoolExtension

__all__ = ["create_app"]

_SALT = b"redispool-demo"
# A fixed demo user table. (A real app stores argon2/bcrypt hashes; a fast hash
# keeps the demo's latency about Redis, not about password hashing.)
USERS = {
    name: hashlib.sha256(_SALT + pw.encode()).hexdigest()
    for name, pw in (("alice", "wonderland"), ("bob", "builder"), ("carol", "singer"))
}
POSTS = {i: {"id": i, "title": f"Post {i}", "body": "Lorem ipsum " * 8} for i in range(1, 101)}
DB_LATENCY = 0.05


def slow_database(post_id: int) -> dict[str, Any] | None:
    """The "database": 50 ms a query."""
    time.sleep(DB_LATENCY)
    return POSTS.get(post_id)


class _Services:
    """The helpers, bound to one pool."""

    def __init__(self, pool: RedisPool, *, background: bool = True) -> None:
        self.pool = pool
        secret = os.environ.get("REDISPOOL_KEY_SECRET", "demo-secret").encode()
        # Logins may wait a little for a connection under load (1 s); a cache
        # read never waits long (it falls back to the database instead).
        self.lockout = Lockout(
            pool, max_attempts=5, window=900, lockout=60, secret=secret, timeout=1.0
        )
        self.login_limit = RateLimiter(
            pool, os.environ.get("DEMO_LOGIN_LIMIT", "600/minute"), secret=secret, timeout=1.0
        )
        self.cache = Cache(pool, namespace="demo-posts", default_ttl=60, secret=secret)
        self.analytics = Analytics(pool, namespace="demo-stats", buffered=background)

    def close(self) -> None:
        self.cache.close(timeout=1.0)
        self.analytics.close(timeout=1.0)


def _close_at_exit(ref: weakref.ref[_Services]) -> None:
    svc = ref()
    if svc is not None and not svc.pool.closed:
        svc.close()


def create_app(redis_url: str | None = None, *, per_request: bool | None = None) -> Flask:
    """The demo app (a WSGI app: ``gunicorn 'redispool.demo.app:create_app()'``)."""
    app = Flask("redispool.demo")
    url = redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if per_request is None:
        per_request = os.environ.get("DEMO_PER_REQUEST", "").lower() in ("1", "true", "yes")
    app.config.update(REDIS_URL=url, REDIS_POOL_MIN_SIZE=2, REDIS_POOL_MAX_SIZE=20)
    sentinel = sentinel_env()
    if sentinel is not None:
        app.config.update(
            REDIS_SENTINELS=sentinel["sentinels"],
            REDIS_SENTINEL_SERVICE=sentinel["service_name"],
            REDIS_SENTINEL_OPTIONS=sentinel["sentinel_kwargs"],
        )
    ext = RedisPoolExtension(app)
    assert ext.pool is not None
    shared = _Services(ext.pool)
    # Registered after the pool's own atexit close, so it runs before it (LIFO): the
    # buffered analytics and queued cache writes are flushed while the pool is open.
    atexit.register(_close_at_exit, weakref.ref(shared))
    app.config["DEMO_PER_REQUEST"] = per_request

    @app.before_request
    def services() -> None:
        if per_request:  # the anti-pattern, for comparison: a new connection per request
            opts: dict[str, Any] = {"min_size": 0, "max_size": 1, "background": False}
            if sentinel is not None:
                pool = RedisPool.sentinel(**sentinel, url=url, **opts)
            else:
                pool = RedisPool(url, **opts)
            g.services = _Services(pool, background=False)
        else:
            g.services = shared

    @app.teardown_request
    def done(exc: BaseException | None) -> None:
        svc: _Services | None = g.pop("services", None)
        if svc is not None and svc is not shared:
            svc.close()
            svc.pool.close(timeout=0)

    @app.after_request
    def count(response: Response) -> Response:
        svc: _Services | None = g.get("services")
        if svc is not None:
            svc.analytics.incr("requests")
            svc.analytics.incr(f"status_{response.status_code}")
        return response

    @app.post("/api/auth/login")
    def login() -> Any:
        svc: _Services = g.services
        body = request.get_json(silent=True)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("username"), str)
            or not isinstance(body.get("password"), str)
            or not body["username"]
            or len(body["username"]) > 256
            or len(body["password"]) > 1024
        ):
            return _error(400, "bad_request", 'send JSON {"username": "...", "password": "..."}')
        ip = request.remote_addr or "unknown"
        limit = svc.login_limit.hit(ip)
        if not limit.allowed:
            return _error(429, "rate_limited", "too many login attempts", limit.headers())
        username = body["username"]
        state = svc.lockout.check_lockout(username)
        if state.degraded:  # fail closed, but say why: it is not the user's fault
            return _error(
                503, "unavailable", "login is unavailable; try again shortly", {"Retry-After": "5"}
            )
        if state.locked:
            return _locked(state.retry_after, limit.headers())
        expected = USERS.get(username, "0" * 64)  # same work for unknown users
        given = hashlib.sha256(_SALT + body["password"].encode()).hexdigest()
        if hmac.compare_digest(expected, given) and username in USERS:
            if state.attempts:  # only a round trip when there is something to clear
                svc.lockout.clear_lockout(username)
            svc.analytics.add_unique("logins", username)
            resp = jsonify({"ok": True, "user": username, "token": os.urandom(16).hex()})
            resp.headers.update(limit.headers())
            return resp
        failed = svc.lockout.record_failed_attempt(username)
        if failed.locked:
            return _locked(failed.retry_after, limit.headers())
        return _error(
            401,
            "invalid_credentials",
            "wrong username or password",
            {**limit.headers(), "X-Remaining-Attempts": str(failed.remaining_attempts)},
        )

    @app.get("/api/posts/<int:post_id>")
    def post(post_id: int) -> Any:
        svc: _Services = g.services
        found = svc.cache.get_with_fallback(f"post:{post_id}", lambda: slow_database(post_id))
        if found is None:
            return _error(404, "not_found", f"no post {post_id}")
        return jsonify(found)

    @app.get("/api/stats")
    def stats() -> Any:
        svc: _Services = g.services
        svc.analytics.flush()
        return jsonify(
            {
                "requests_this_minute": svc.analytics.get("requests"),
                "unique_logins_this_minute": svc.analytics.count_unique("logins"),
                "cache": svc.cache.stats(),
                "per_request_connections": per_request,
            }
        )

    @app.get("/")
    def index() -> Any:
        return jsonify(
            {
                "try": [
                    'POST /api/auth/login {"username": "alice", "password": "wonderland"}',
                    "GET /api/posts/1",
                    "GET /api/stats",
                    "GET /api/health/redis",
                    "GET /metrics",
                ]
            }
        )

    return app


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    resp = jsonify({"error": code, "message": message})
    resp.status_code = status
    if headers:
        resp.headers.update(headers)
    return resp


def _locked(retry_after: float, headers: dict[str, str]) -> Any:
    wait = max(1, round(retry_after))
    return _error(
        423,
        "locked",
        f"too many failed logins; try again in {wait} s",
        {**{k: v for k, v in headers.items() if k != "Retry-After"}, "Retry-After": str(wait)},
    )
