"""The demo public API, to try redispool and to measure it.

``create_app()`` reads ``REDIS_URL`` or, when set, ``REDIS_SENTINELS`` and
``REDIS_SENTINEL_SERVICE``, and ``DEMO_POOL`` (``pooled``, the default;
``redis-py`` for redis-py's ``BlockingConnectionPool``; ``per-request`` for a new
Redis connection every request; ``DEMO_PER_REQUEST=1`` is the same as
``per-request``), so the three can be compared on the same app. Endpoints:

* ``POST /api/auth/login`` ``{"username": ..., "password": ...}``: rate limited
  per client IP (before the body is read), locked after 5 failures per
  username; 200, 400 (malformed), 401 (wrong credentials), 413 (a body over
  16 KB), 423 (locked, with ``Retry-After``), 429 (rate limited);
* ``GET /api/posts/<id>``: cached, falling back to a slow "database" (50 ms);
* ``GET /api/stats``: the analytics counters; ``GET /api/health/redis``, ``/metrics``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import json
import math
import os
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..config import parse_redis_url, sentinel_env
from ..helpers.analytics import Analytics
from ..helpers.cache import Cache
from ..helpers.lockout import Lockout
from ..helpers.ratelimit import RateLimiter
from ..redis_pool import RedisPool
from ..web.flask import RedisPoolExtension
from ..web.wsgi import client_ip
from .modes import MODES, PerRequestRedis, RedisPyBlockingPool

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
MAX_BODY = 16 * 1024  # a login is well under 1 KB; anything larger is refused (413)
BAD_LOGIN = 'send JSON {"username": "...", "password": "..."}'


MAX_LOAD_USERS = 100_000


def load_account(i: int) -> str:
    """The name, and the password, of load-test account ``i``."""
    return f"load-{i}"


def load_users() -> dict[str, str]:
    """``DEMO_LOAD_USERS=N``: N accounts ``load-<i>`` (password ``load-<i>``) for
    load tests, which log in as many users, as real traffic does: more logins of
    one user in flight at once than the lockout's 5 are refused (423)."""
    raw = os.environ.get("DEMO_LOAD_USERS", "").strip()
    if not raw:
        return {}
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_LOAD_USERS:
        raise ValueError(
            f"DEMO_LOAD_USERS must be a whole number from 0 to {MAX_LOAD_USERS}, got {raw!r}"
        )
    names = (load_account(i) for i in range(n))
    return {name: hashlib.sha256(_SALT + name.encode()).hexdigest() for name in names}


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


def _text(value: object, max_len: int) -> str | None:
    """``value`` if it is a non-empty str of at most ``max_len`` characters that
    can be encoded (no lone surrogate such as ``"\\ud800"``), else None."""
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


MAX_DEPTH = 32  # nesting a login body may have (it needs 1)


def _too_deep(data: bytes, limit: int) -> bool:
    """Is any array or object in JSON ``data`` nested deeper than ``limit``?
    (Brackets inside strings do not count.) Linear; skipped when there are not
    even ``limit`` brackets at all."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def login_body() -> dict[str, str] | None:
    """The login request's ``{"username", "password"}``, or None if malformed
    (not JSON, nested too deep, wrong types, too long, not encodable). A body
    over ``MAX_CONTENT_LENGTH`` raises ``RequestEntityTooLarge`` (413)."""
    if not request.is_json:
        return None
    data = request.get_data(cache=False)
    if request.content_length is None and len(data) >= MAX_BODY:
        raise RequestEntityTooLarge  # chunked: Werkzeug stops reading at the limit
    if _too_deep(data, MAX_DEPTH):  # "[[[[...": the parser's own limit differs by version
        return None
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    username = _text(body.get("username"), 256)
    password = _text(body.get("password"), 1024)
    if username is None or password is None:
        return None
    return {"username": username, "password": password}


def _sentinel_client(
    sentinel: dict[str, Any], url: str
) -> tuple[redis.Redis, Callable[[], object]]:
    """Per-request mode on Sentinel: a new one-connection pool that asks the
    sentinels for the primary, and its close."""
    pool = RedisPool.sentinel(**sentinel, url=url, min_size=0, max_size=1, background=False)
    with contextlib.ExitStack() as stack:  # on failure: the pool closed at once
        stack.callback(pool.close, timeout=0)
        client = stack.enter_context(pool.client())
        held = stack.pop_all()
    return client, held.close  # the lease returned, then the pool closed


def _close_at_exit(ref: weakref.ref[_Services]) -> None:
    svc = ref()
    if svc is not None and not svc.pool.closed:
        svc.close()


def _mode(per_request: bool | None) -> str:
    if per_request is not None:
        return "per-request" if per_request else "pooled"
    if os.environ.get("DEMO_PER_REQUEST", "").lower() in ("1", "true", "yes"):
        return "per-request"
    mode = os.environ.get("DEMO_POOL") or "pooled"
    if mode not in MODES:
        raise ValueError(f"DEMO_POOL must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def create_app(redis_url: str | None = None, *, per_request: bool | None = None) -> Flask:
    """The demo app (a WSGI app: ``gunicorn 'redispool.demo.app:create_app()'``)."""
    app = Flask("redispool.demo")
    # (the demo command sets REDIS_URL="" on Sentinel: the sentinels give the address)
    url = redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if not redis_url and os.environ.get("REDIS_URL"):  # name what the user set, not app.config
        try:
            parse_redis_url(url)
        except (TypeError, ValueError) as exc:  # its messages are redacted
            raise ValueError(f"the environment variable REDIS_URL is malformed: {exc}") from None
    mode = _mode(per_request)
    per_request = mode == "per-request"
    extra_users = load_users()
    app.config.update(
        REDIS_URL=url, REDIS_POOL_MIN_SIZE=2, REDIS_POOL_MAX_SIZE=20, MAX_CONTENT_LENGTH=MAX_BODY
    )
    sentinel = sentinel_env()
    if sentinel is not None:
        app.config.update(
            REDIS_SENTINELS=sentinel["sentinels"],
            REDIS_SENTINEL_SERVICE=sentinel["service_name"],
            REDIS_SENTINEL_OPTIONS=sentinel["sentinel_kwargs"],
        )
    ext = RedisPoolExtension(app)
    assert isinstance(ext.pool, RedisPool)  # REDIS_URL: a single server
    backend: RedisPool = ext.pool
    if mode == "redis-py":
        backend = RedisPyBlockingPool(url)
    elif per_request:  # the anti-pattern, for comparison: a new connection per request
        connect = None if sentinel is None else partial(_sentinel_client, sentinel, url)
        backend = PerRequestRedis(url, connect=connect)
    shared = _Services(backend)
    if backend is not ext.pool:  # closing the app's pool closes the helpers' backend too
        ext.pool.on_close(backend.close)
    # Registered after the pool's own atexit close, so it runs before it (LIFO): the
    # buffered analytics and queued cache writes are flushed while the pool is open.
    atexit.register(_close_at_exit, weakref.ref(shared))
    app.config["DEMO_PER_REQUEST"] = per_request

    @app.before_request
    def services() -> None:
        g.services = shared

    if isinstance(backend, PerRequestRedis):  # after every teardown_request function
        app.teardown_appcontext(lambda exc: backend.end_request())

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
        ip = client_ip(request.environ)  # an IPv6 client is its /64
        limit = svc.login_limit.hit(ip)  # before the body is read: a refusal costs nothing
        if not limit.allowed:
            return _error(429, "rate_limited", "too many login attempts", limit.headers())
        body = login_body()
        if body is None:
            return _error(400, "bad_request", BAD_LOGIN, limit.headers())
        username = body["username"]
        # Reserve the password check first (one round trip), report its outcome
        # after: however many guesses arrive at once, at most 5 are checked.
        with svc.lockout.attempt(username) as attempt:
            if attempt.result.degraded and not attempt.allowed:  # fail closed, but say why
                return _error(
                    503,
                    "unavailable",
                    "login is unavailable; try again shortly",
                    {"Retry-After": "5"},
                )
            if not attempt.allowed:
                return _locked(attempt.result.retry_after, limit.headers())
            # the same work for unknown users
            expected = extra_users.get(username) or USERS.get(username, "0" * 64)
            given = hashlib.sha256(_SALT + body["password"].encode()).hexdigest()
            known = username in USERS or username in extra_users
            if hmac.compare_digest(expected, given) and known:
                attempt.succeeded()
                svc.analytics.add_unique("logins", username)
                resp = jsonify({"ok": True, "user": username, "token": os.urandom(16).hex()})
                resp.headers.update(limit.headers())
                return resp
            failed = attempt.failed()
        if failed.locked:
            return _locked(failed.retry_after, limit.headers())
        return _error(
            401,
            "invalid_credentials",
            "wrong username or password",
            {**limit.headers(), "X-Remaining-Attempts": str(failed.remaining_attempts)},
        )

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Any:
        return _error(413, "too_large", f"the request body must be at most {MAX_BODY} bytes")

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
                "pool_mode": mode,
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
    wait = max(1, math.ceil(retry_after))  # rounded down, a retry would come too early
    return _error(
        423,
        "locked",
        f"too many failed logins; try again in {wait} s",
        {**{k: v for k, v in headers.items() if k != "Retry-After"}, "Retry-After": str(wait)},
    )
