"""The demo API (``redispool.demo.app``) through Flask's test client, on a real redis-server."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from redispool.demo.app import DB_LATENCY, POSTS, create_app
from redispool.helpers.lockout import Lockout
from redispool.testing import RedisServer

ALICE = {"username": "alice", "password": "wonderland"}
INVALID = {"error": "invalid_credentials", "message": "wrong username or password"}

MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeApp]:
    """``make_app(url, **kw)``: ``create_app`` with the demo's env unset; pools closed after."""
    for name in (
        "DEMO_LOGIN_LIMIT",
        "DEMO_PER_REQUEST",
        "DEMO_LOAD_USERS",
        "REDISPOOL_KEY_SECRET",
        "REDIS_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    apps: list[Flask] = []

    def make(url: str, **kwargs: Any) -> Flask:
        app = create_app(url, **kwargs)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["redispool"].pool.close(timeout=1.0)


def login(client: FlaskClient, username: str, password: str) -> TestResponse:
    return client.post("/api/auth/login", json={"username": username, "password": password})


def body(resp: TestResponse) -> dict[str, Any]:
    """The JSON object of a response."""
    data = resp.get_json()
    assert isinstance(data, dict), resp.get_data(as_text=True)
    return data


def admin_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, single_connection_client=True)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)


# -- login: validation, credentials, lockout, rate limit --------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"data": "not json", "content_type": "application/json"}, id="not-json"),
        pytest.param({"data": '{"username": "a', "content_type": "application/json"}, id="cut"),
        pytest.param({"data": "username=alice&password=wonderland"}, id="form-encoded"),
        pytest.param({}, id="no-body"),
        pytest.param({"json": ["alice", "wonderland"]}, id="list"),
        pytest.param({"json": {}}, id="empty-object"),
        pytest.param({"json": {"username": "alice"}}, id="no-password"),
        pytest.param({"json": {"password": "wonderland"}}, id="no-username"),
        pytest.param({"json": {"username": 1, "password": "wonderland"}}, id="int-username"),
        pytest.param({"json": {"username": "alice", "password": None}}, id="null-password"),
        pytest.param({"json": {"username": ["alice"], "password": "x"}}, id="list-username"),
        pytest.param({"json": {"username": "", "password": "wonderland"}}, id="empty-username"),
        pytest.param({"json": {"username": "a" * 257, "password": "x"}}, id="long-username"),
        pytest.param({"json": {"username": "a" * 10_000, "password": "x"}}, id="huge-username"),
        pytest.param({"json": {"username": "alice", "password": "\ud800"}}, id="lone-surrogate"),
        pytest.param({"json": {"username": "\udfff", "password": "x"}}, id="surrogate-user"),
        pytest.param(
            {
                "data": '{"username": "alice", "password": "wonderland", "x": '
                + "[" * 5000
                + "]" * 5000
                + "}",
                "content_type": "application/json",
            },
            id="nested-5000",
        ),
        pytest.param(
            {"data": "[" * 8000 + "]" * 8000, "content_type": "application/json"},
            id="nested-8000",
        ),
        pytest.param(  # under every Python's parser limit: refused by the demo's own
            {
                "data": '{"username": "alice", "password": "wonderland", "x": '
                + "[" * 40
                + "]" * 40
                + "}",
                "content_type": "application/json",
            },
            id="nested-40",
        ),
        pytest.param({"json": {"username": "alice", "password": "x" * 1025}}, id="long-password"),
    ],
)
def test_login_malformed_body_is_400_and_counts_no_attempt(
    make_app: MakeApp, redis_url: str, kwargs: dict[str, Any]
) -> None:
    client = make_app(redis_url).test_client()
    for i in range(6):  # more than the lockout's 5 attempts
        resp = client.post("/api/auth/login", **kwargs)
        assert resp.status_code == 400, resp.get_data(as_text=True)
        assert resp.json == {
            "error": "bad_request",
            "message": 'send JSON {"username": "...", "password": "..."}',
        }
        # rate limited before the body is read, so counted by the limit
        assert int(resp.headers["RateLimit-Remaining"]) <= 599 - i + 1
    resp = client.post("/api/auth/login", json=ALICE)  # not locked
    assert resp.status_code == 200


def test_login_body_over_16_kb_is_413_unread(make_app: MakeApp, redis_url: str) -> None:
    client = make_app(redis_url).test_client()
    padded = {**ALICE, "pad": "x" * 20_000}
    resp = client.post("/api/auth/login", json=padded)
    assert resp.status_code == 413
    assert body(resp)["error"] == "too_large" and "16384 bytes" in body(resp)["message"]
    # no Content-Length (chunked): cut off at the limit while reading
    stream = io.BytesIO(json.dumps({**ALICE, "pad": "x" * 1_000_000}).encode())
    resp = client.post(
        "/api/auth/login",
        input_stream=stream,
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
    )
    assert resp.status_code == 413
    assert stream.tell() <= 16384  # of the 1 MB sent, no more than the limit was read
    assert client.post("/api/auth/login", json=ALICE).status_code == 200


def test_login_is_rate_limited_before_the_body_is_read(
    make_app: MakeApp, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redispool.demo.app as demo_app

    monkeypatch.setenv("DEMO_LOGIN_LIMIT", "2/hour")
    parsed: list[int] = []
    real = demo_app.login_body

    def counting() -> dict[str, str] | None:
        parsed.append(1)
        return real()

    monkeypatch.setattr(demo_app, "login_body", counting)
    client = make_app(redis_url).test_client()
    statuses = [login(client, "bob", "wrong").status_code for _ in range(5)]
    assert statuses == [401, 401, 429, 429, 429]
    assert len(parsed) == 2  # the three refused requests were not parsed


def test_login_rate_limit_keys_an_ipv6_client_by_its_64(
    make_app: MakeApp, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host sends from any address of its /64: one bucket, not one per address."""
    monkeypatch.setenv("DEMO_LOGIN_LIMIT", "2/hour")
    client = make_app(redis_url).test_client()
    statuses = [
        client.post(
            "/api/auth/login",
            json={"username": "bob", "password": "wrong"},
            environ_base={"REMOTE_ADDR": f"2001:db8:7:7::{i + 1:x}"},
        ).status_code
        for i in range(4)
    ]
    assert statuses == [401, 401, 429, 429]


def test_wrong_password_is_401_with_exact_ratelimit_headers(
    make_app: MakeApp, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_LOGIN_LIMIT", "10/hour")  # no refill during the test
    client = make_app(redis_url).test_client()
    for i in range(4):
        resp = login(client, "bob", "not-the-password")
        assert resp.status_code == 401
        assert resp.json == INVALID
        h = resp.headers
        assert h["RateLimit-Limit"] == h["X-RateLimit-Limit"] == "10"
        assert h["RateLimit-Remaining"] == h["X-RateLimit-Remaining"] == str(9 - i)
        assert h["RateLimit-Policy"] == "10;w=3600"
        assert h["RateLimit-Reset"] == h["X-RateLimit-Reset"]
        assert 0 < int(h["RateLimit-Reset"]) <= 3600
        assert h["X-Remaining-Attempts"] == str(4 - i)
        assert "Retry-After" not in h


def test_default_login_limit_headers(make_app: MakeApp, redis_url: str) -> None:
    client = make_app(redis_url).test_client()
    first = login(client, "bob", "wrong")
    second = login(client, "alice", "wonderland")  # the limit is per client IP, not per user
    assert first.headers["RateLimit-Limit"] == "600"
    assert first.headers["RateLimit-Policy"] == "600;w=60"
    assert first.headers["RateLimit-Remaining"] == "599"
    assert int(second.headers["RateLimit-Remaining"]) in (598, 599)  # 1 token / 100 ms refill


def test_lockout_after_5_failures_then_refused_until_cleared(
    make_app: MakeApp, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_LOGIN_LIMIT", "100/hour")
    app = make_app(redis_url)
    client = app.test_client()
    for i in range(4):
        resp = login(client, "alice", f"guess-{i}")
        assert resp.status_code == 401 and resp.headers["X-Remaining-Attempts"] == str(4 - i)
    for password in ("guess-4", "wonderland", "guess-5"):  # 5th failure locks; then all refused
        resp = login(client, "alice", password)
        assert resp.status_code == 423, resp.json
        assert 55 <= int(resp.headers["Retry-After"]) <= 60  # the demo locks for 60 s
        assert resp.json == {
            "error": "locked",
            "message": f"too many failed logins; try again in {resp.headers['Retry-After']} s",
        }
        assert "RateLimit-Remaining" in resp.headers and "X-Remaining-Attempts" not in resp.headers
    assert login(client, "bob", "builder").status_code == 200  # other users are not affected
    assert login(client, "ALICE", "wonderland").status_code == 401  # no such user

    pool = app.extensions["redispool"].pool
    Lockout(pool, max_attempts=5, window=900, lockout=60, secret=b"demo-secret").clear_lockout(
        "alice"
    )
    resp = login(client, "alice", "wonderland")
    assert resp.status_code == 200, resp.json
    assert body(resp)["ok"] is True and body(resp)["user"] == "alice"
    assert len(bytes.fromhex(body(resp)["token"])) == 16
    # A successful login starts the count afresh.
    assert login(client, "alice", "again-wrong").headers["X-Remaining-Attempts"] == "4"


def test_unknown_user_gets_the_same_401_as_a_known_one(
    make_app: MakeApp, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_LOGIN_LIMIT", "10/hour")
    client = make_app(redis_url).test_client()
    known = login(client, "carol", "wrong")
    unknown = login(client, "mallory", "wrong")
    assert known.status_code == unknown.status_code == 401
    assert known.json == unknown.json == INVALID
    assert set(known.headers.keys()) == set(unknown.headers.keys())
    for name in ("X-Remaining-Attempts", "RateLimit-Limit", "RateLimit-Policy", "Content-Type"):
        assert known.headers[name] == unknown.headers[name]
    remaining = [int(r.headers["RateLimit-Remaining"]) for r in (known, unknown)]
    assert remaining[0] == remaining[1] + 1


def test_load_test_accounts_only_when_asked(
    make_app: MakeApp, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DEMO_LOAD_USERS=N``: accounts load-0 .. load-(N-1) for load tests, so that
    they log in as many users; none unless set, and a bad value names the variable."""
    client = make_app(redis_url).test_client()
    assert login(client, "load-3", "load-3").status_code == 401
    monkeypatch.setenv("DEMO_LOAD_USERS", "5")
    client = make_app(redis_url).test_client()
    ok = login(client, "load-4", "load-4")
    assert ok.status_code == 200 and ok.json["user"] == "load-4"
    assert login(client, "load-5", "load-5").status_code == 401  # only 0..4
    assert login(client, "load-2", "load-3").status_code == 401  # its own password only
    assert login(client, "alice", "wonderland").status_code == 200  # the demo users remain
    for bad in ("many", "-1", "100001"):
        monkeypatch.setenv("DEMO_LOAD_USERS", bad)
        with pytest.raises(ValueError, match=f"DEMO_LOAD_USERS .*{bad!r}"):
            make_app(redis_url)


def test_login_rate_limit_is_429_with_retry_after(
    make_app: MakeApp, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_LOGIN_LIMIT", "3/minute")
    client = make_app(redis_url).test_client()
    for remaining in (2, 1, 0):
        resp = login(client, "alice", "wonderland")
        assert resp.status_code == 200 and resp.headers["RateLimit-Remaining"] == str(remaining)
        assert "Retry-After" not in resp.headers
    for username, password in (("alice", "wonderland"), ("bob", "wrong")):
        resp = login(client, username, password)
        assert resp.status_code == 429
        assert resp.json == {"error": "rate_limited", "message": "too many login attempts"}
        assert 1 <= int(resp.headers["Retry-After"]) <= 20  # GCRA: one login per 20 s
        assert resp.headers["RateLimit-Limit"] == "3"
        assert resp.headers["RateLimit-Remaining"] == "0"
        assert resp.headers["RateLimit-Policy"] == "3;w=60"
    # A refused login counted no failed attempt for bob.
    monkeypatch.setenv("DEMO_LOGIN_LIMIT", "100/hour")
    other = make_app(redis_url).test_client()
    assert login(other, "bob", "wrong").headers["X-Remaining-Attempts"] == "4"


# -- posts: cache ------------------------------------------------------------------


def test_post_is_cached_and_unknown_post_is_404(make_app: MakeApp, redis_url: str) -> None:
    client = make_app(redis_url).test_client()

    def cache_stats() -> dict[str, Any]:
        stats: dict[str, Any] = body(client.get("/api/stats"))["cache"]
        return stats

    t0 = time.perf_counter()
    first = client.get("/api/posts/1")
    miss_time = time.perf_counter() - t0
    assert first.status_code == 200 and first.json == POSTS[1]
    assert miss_time >= DB_LATENCY
    wait_until(lambda: cache_stats()["pending_writes"] == 0, 5, "cache write-back")
    t0 = time.perf_counter()
    second = client.get("/api/posts/1")
    hit_time = time.perf_counter() - t0
    assert second.status_code == 200 and second.json == POSTS[1]
    stats = cache_stats()
    assert (stats["misses"], stats["hits"], stats["loader_calls"]) == (1, 1, 1), stats
    assert hit_time < DB_LATENCY < miss_time, (hit_time, miss_time)

    for _ in range(2):  # "not found" is not cached, and not an error
        missing = client.get("/api/posts/9999")
        assert missing.status_code == 404
        assert missing.json == {"error": "not_found", "message": "no post 9999"}
    assert client.get("/api/posts/not-a-number").status_code == 404
    assert cache_stats()["errors"] == 0


# -- per-request mode vs pooled -------------------------------------------------------


def test_per_request_mode_opens_a_connection_per_request(
    make_app: MakeApp, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The anti-pattern as such apps write it: a new redis-py client (and
    connection) per request, at its first Redis call, closed when the request
    ends, even when it raises; a login's Redis calls share the request's one;
    background writes get their own."""
    from flask import g, has_request_context

    from redispool.demo import modes

    made = {"request": 0, "background": 0}
    closed: list[bool] = []
    plain = modes._plain_client

    def counted(url: str) -> tuple[redis.Redis, Callable[[], object]]:
        made["request" if has_request_context() else "background"] += 1
        client, close = plain(url)

        def close_counted() -> object:
            closed.append(True)
            return close()

        return client, close_counted

    monkeypatch.setattr(modes, "_plain_client", counted)
    n = 10
    with admin_client(redis_url) as admin:

        def connected() -> int:
            return int(admin.info("clients")["connected_clients"])

        def received() -> int:
            return int(admin.info("stats")["total_connections_received"])

        baseline = connected()
        app = make_app(redis_url, per_request=True)

        @app.get("/test/raises")
        def raises() -> Any:
            g.services.login_limit.hit("127.0.0.9")  # a Redis call, then an error
            raise RuntimeError("boom")

        client = app.test_client()

        def in_request() -> int:
            return made["request"]

        for i in range(n):
            before = in_request()
            assert client.get(f"/api/posts/{1 + i % 3}").json == POSTS[1 + i % 3]
            assert in_request() == before + 1  # one client for the request's calls
        before = in_request()
        resp = client.post("/api/auth/login", json=ALICE)  # rate limit + lockout x2
        assert resp.status_code == 200 and body(resp)["user"] == "alice"
        assert in_request() == before + 1
        assert body(client.get("/api/stats"))["per_request_connections"] is True
        before = in_request()
        with pytest.raises(RuntimeError, match="boom"):
            client.get("/test/raises")
        assert in_request() == before + 1
        # every client made in a request was closed when it ended (background
        # ones, cache write-backs and analytics flushes, when their call did)
        wait_until(lambda: len(closed) == sum(made.values()), 5, "every client closed")
        wait_until(lambda: connected() == baseline, 5, "their connections closed")
        assert made["background"] >= 3  # the 3 cache misses' write-backs

        app = make_app(redis_url)
        pooled = app.test_client()
        pool = app.extensions["redispool"].pool
        assert pooled.get("/api/posts/1").json == POSTS[1]  # opens the pool (min_size 2)
        wait_until(lambda: pool.stats().size >= 2 and not pool.stats().creating, 5, "min_size")
        before = received()
        for i in range(n):
            assert pooled.get(f"/api/posts/{1 + i % 3}").json == POSTS[1 + i % 3]
            assert pooled.post("/api/auth/login", json=ALICE).status_code == 200
        grew = received() - before
        assert grew <= 2, f"the pooled app opened {grew} connections for {2 * n} requests"
        assert body(pooled.get("/api/stats"))["per_request_connections"] is False


# -- health and metrics ----------------------------------------------------------------


def test_health_up_then_down_when_redis_dies(
    make_app: MakeApp, redis_server_factory: Callable[..., RedisServer]
) -> None:
    server = redis_server_factory()
    client = make_app(server.url).test_client()
    up = client.get("/api/health/redis")
    assert up.status_code == 200 and body(up)["status"] == "up" and body(up)["ping_ms"] > 0
    server.kill()
    t0 = time.monotonic()
    down = client.get("/api/health/redis")
    assert time.monotonic() - t0 < 3
    assert down.status_code == 503
    assert body(down)["status"] == "down" and body(down)["ping_ms"] is None and body(down)["error"]
    # Cached reads degrade to the database instead of failing.
    t0 = time.monotonic()
    assert client.get("/api/posts/7").json == POSTS[7]
    assert time.monotonic() - t0 < 3


def test_pool_metrics_move_as_requests_arrive(make_app: MakeApp, redis_url: str) -> None:
    client = make_app(redis_url).test_client()
    before = body(client.get("/api/health/redis"))
    for i in range(5):
        assert client.get(f"/api/posts/{i + 1}").status_code == 200
        assert client.post("/api/auth/login", json=ALICE).status_code == 200
    after = body(client.get("/api/health/redis"))
    assert after["status"] == "up"
    # each login: rate limit + lockout check + clear; each post: a cache read at least
    assert after["borrows"] >= before["borrows"] + 20, (before, after)
    assert after["total_commands"] >= before["total_commands"] + 20, (before, after)
    assert after["timeouts"] == 0 and after["create_errors"] == 0
    assert 1 <= after["size"] <= after["max_size"] == 20
    text = client.get("/metrics").get_data(as_text=True)
    assert "redispool" in text or "db_client_connection" in text


def test_depth_check_ignores_brackets_inside_strings() -> None:
    from redispool.demo.app import _too_deep

    shallow = b'{"username": "alice", "password": "' + b"[" * 100 + b'\\"[[[" }'
    assert not _too_deep(shallow, 32)
    assert _too_deep(b'{"x": ' + b"[" * 33 + b"]" * 33 + b"}", 32)
    assert not _too_deep(b'{"x": ' + b"[" * 31 + b"]" * 31 + b"}", 32)


def test_locked_retry_after_rounds_up() -> None:
    """A lock with 10.2 s left: ``Retry-After: 10`` would bring the retry back
    while still locked (another 423)."""
    from redispool.demo.app import _locked

    app = Flask(__name__)
    with app.app_context():
        for left, expected in ((10.2, "11"), (10.0, "10"), (59.999, "60"), (0.01, "1")):
            resp = _locked(left, {"Retry-After": "99"})
            assert resp.status_code == 423 and resp.headers["Retry-After"] == expected
            assert f"try again in {expected} s" in resp.get_json()["message"]
