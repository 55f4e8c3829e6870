"""Web glue against a real redis-server: Flask extension, health, metrics, WSGI limits."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from flask import Flask, current_app
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from redispool import RedisPool
from redispool.helpers.ratelimit import RateLimiter, RateLimitResult
from redispool.web.flask import RedisPoolExtension, current_pool
from redispool.web.health import pool_health
from redispool.web.metrics import render_metrics
from redispool.web.wsgi import RateLimitMiddleware, Rule, api_key, client_ip, routed_path


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
    assert resp.headers["Cache-Control"] == "no-store"  # as Django's view
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
    assert resp.headers["Cache-Control"] == "no-store"
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


def test_health_is_down_when_every_connection_waits_on_a_stalled_redis(
    redis_server_factory: Any,
) -> None:
    """A pool whose every connection waits on a Redis that answers nothing (a
    stalled or partitioned server) gives the probe no connection either: that
    wait timeout is no busy pool, and 'degraded' (200) kept a load balancer
    sending traffic to a worker whose Redis calls all hang."""
    import threading

    server = redis_server_factory()
    pool = RedisPool(server.url, min_size=0, max_size=1, socket_timeout=10)
    holding, paused = threading.Event(), threading.Event()

    def caller() -> None:
        with pool.client() as r:
            r.ping()
            holding.set()
            paused.wait(5)
            try:
                r.get("k")  # waits on the stalled server
            except redis.RedisError:
                pass

    t = threading.Thread(target=caller, daemon=True)
    t.start()
    assert holding.wait(5)
    server.pause()
    try:
        paused.set()
        time.sleep(0.05)
        status, body = pool_health(pool, ping_timeout=0.3)
        assert status == 503 and body["status"] == "down"
    finally:
        server.resume()
    t.join(15)
    status, body = pool_health(pool)
    assert status == 200 and body["status"] == "up"
    pool.close()


def test_health_degraded_when_callers_wait(redis_url: str) -> None:
    """A saturated pool is busy, not down: a 503 here makes a load balancer (or
    the compose healthcheck) pull every worker just when traffic peaks."""
    pool = RedisPool(redis_url, min_size=0, max_size=1)
    with pool.client() as r:
        r.ping()
        commands = pool.stats().commands
        status, body = pool_health(pool, ping_timeout=0.2)
        assert pool.stats().commands == commands  # the probe's own PING is not the pool's
    assert status == 200 and body["status"] == "degraded"  # could not borrow to PING
    assert body["ping_ms"] is None and body["error"] == "RedisPoolTimeout"
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

    env = {
        **EnvironBuilder().get_environ(),  # complete, for a real Flask app
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "REMOTE_ADDR": "203.0.113.9",
        **environ,
    }
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


def test_wsgi_middleware_keys_by_verified_api_key(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    rl = RateLimiter(pool, "1/minute")
    known = {"k1", "k2"}
    app = RateLimitMiddleware(_hello, [Rule("/api/", rl, key=api_key(verify=known.__contains__))])
    assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="k1")[0] == "200 OK"
    assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="k1")[0].startswith("429")
    assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="k2")[0] == "200 OK"  # same IP, own bucket
    # made-up keys are not verified: they share the client's IP bucket
    assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="made-up-1")[0] == "200 OK"
    assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="made-up-2")[0].startswith("429")
    pool.close()


def test_wsgi_rotating_unverified_api_keys_are_limited_by_client_ip(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    rl = RateLimiter(pool, "3/minute", algorithm="fixed")
    app = RateLimitMiddleware(_hello, [Rule("/api/", rl, key=api_key())])
    statuses = [_wsgi_call(app, "/api/x", HTTP_X_API_KEY=f"k{i}")[0][:3] for i in range(10)]
    assert statuses == ["200"] * 3 + ["429"] * 7
    # one key from several addresses: the key's own bucket still counts
    other = [
        _wsgi_call(app, "/api/x", HTTP_X_API_KEY="shared", REMOTE_ADDR=f"198.51.100.{i}")[0][:3]
        for i in range(5)
    ]
    assert other == ["200"] * 3 + ["429"] * 2
    pool.close()


def test_wsgi_ipv6_client_is_its_64(redis_url: str) -> None:
    """One IPv6 host sends from any address of its /64: a bucket per address
    would be a bucket per request."""
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    rl = RateLimiter(pool, "2/minute", algorithm="fixed")
    app = RateLimitMiddleware(_hello, [Rule("/login", rl)])
    rotating = [f"2001:db8:0:1::{i:x}" for i in range(1, 5)] + ["2001:db8:0:1:ffff::9"]
    statuses = [_wsgi_call(app, "/login", REMOTE_ADDR=a)[0][:3] for a in rotating]
    assert statuses == ["200", "200", "429", "429", "429"]
    assert _wsgi_call(app, "/login", REMOTE_ADDR="2001:db8:0:2::1")[0][:3] == "200"  # another
    # an IPv4-mapped address is that IPv4 client
    mapped = ["192.0.2.7", "::ffff:192.0.2.7", "192.0.2.7"]
    assert [_wsgi_call(app, "/login", REMOTE_ADDR=a)[0][:3] for a in mapped] == [
        "200",
        "200",
        "429",
    ]
    assert client_ip({"REMOTE_ADDR": "2001:db8::1"}) == "2001:db8::/64"
    assert client_ip({"REMOTE_ADDR": "fe80::1%eth0"}) == "fe80::/64"
    assert client_ip({"REMOTE_ADDR": "203.0.113.9"}) == "203.0.113.9"
    assert client_ip({}) == "unknown" and client_ip({"REMOTE_ADDR": "x:y"}) == "x:y"
    pool.close()


def test_wsgi_429_body_retry_after_agrees_with_the_header() -> None:
    class Refusing(RateLimiter):
        def hit(self, key: Any, cost: int = 1) -> RateLimitResult:
            return RateLimitResult(False, 5, 0, 10.2, 10.2, 60.0)

    app = RateLimitMiddleware(_hello, default=Refusing.__new__(Refusing))
    status, headers, body = _wsgi_call(app, "/x")
    assert status.startswith("429") and headers["Retry-After"] == "11"
    assert json.loads(body)["retry_after"] == 11  # not 10: that retry would be refused


LOGIN_PATHS = [
    "/api/auth/login",
    "//api/auth/login",
    "/api//auth/login",
    "///api/auth/login",
    "/./api/auth/login",
    "/api/x/../auth/login",
    "/api/auth/./login",
]


@pytest.mark.parametrize("path", LOGIN_PATHS)
def test_wsgi_rule_sees_the_path_the_router_sees(redis_url: str, path: str) -> None:
    """Each spelling a server passes through counts against the README's login
    rule: behind it a real Flask app, whose login view may run at most twice."""
    app = Flask(__name__)
    ran: list[str] = []

    @app.post("/api/auth/login")
    def view() -> str:
        ran.append("login")
        return "login"

    @app.post("/api/<path:rest>")
    def other(rest: str) -> str:
        return "other"

    pool = RedisPool(redis_url, min_size=0, max_size=2)
    rl = RateLimiter(pool, "2/minute", algorithm="fixed")
    wrapped = RateLimitMiddleware(app, [Rule(r"/api/auth/login$", rl, methods=["POST"])])
    seen = [_wsgi_call(wrapped, path, "POST")[0][:3] for _ in range(4)]
    assert seen[2:] == ["429", "429"], seen
    assert len(ran) <= 2
    assert _wsgi_call(wrapped, "/api/auth/login", "POST")[0][:3] == "429"  # one bucket
    pool.close()


def test_routed_path() -> None:
    assert routed_path("//a///b/") == "/a/b/"
    assert routed_path("/a/./b/../c") == "/a/c"
    assert routed_path("/../../a") == "/a"
    assert routed_path("/a/b/..") == "/a/"
    assert routed_path("/") == routed_path("") == routed_path("//") == "/"
    # the server percent-decoded once; a router does not decode again
    assert routed_path("/a%2Fb") == "/a%2Fb"
    # latin-1 text of UTF-8 bytes, as WSGI passes it: decoded as Werkzeug does
    assert routed_path("/caf\xc3\xa9") == "/caf\xe9"


@pytest.mark.parametrize(("method", "counted"), [("post", True), ("Post", True), ("GET", False)])
def test_wsgi_methods_match_in_any_case(redis_url: str, method: str, counted: bool) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    rl = RateLimiter(pool, "1/minute", algorithm="fixed")
    app = RateLimitMiddleware(_hello, [Rule("/login", rl, methods=["POST"])])
    statuses = [_wsgi_call(app, "/login", method)[0][:3] for _ in range(2)]
    assert statuses == (["200", "429"] if counted else ["200", "200"])
    pool.close()


def test_wsgi_head_counts_as_get(redis_url: str) -> None:
    app = Flask(__name__)

    @app.get("/api/report")
    def report() -> str:
        return "expensive"

    pool = RedisPool(redis_url, min_size=0, max_size=2)
    rl = RateLimiter(pool, "2/minute", algorithm="fixed")
    wrapped = RateLimitMiddleware(app, [Rule("/api/report", rl, methods=["get"])])
    seen = [_wsgi_call(wrapped, "/api/report", m)[0][:3] for m in ("HEAD", "head", "GET")]
    assert seen == ["200", "200", "429"]
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


def test_one_extension_on_two_apps_keeps_each_apps_pool(redis_url: str) -> None:
    ext = RedisPoolExtension()
    apps = []
    for db in (1, 2):
        app = Flask(f"app{db}")
        app.config.update(
            REDIS_URL=redis_url.rsplit("/", 1)[0] + f"/{db}",
            REDIS_POOL_MIN_SIZE=0,
            REDIS_POOL_MAX_SIZE=2 + db,
            REDIS_POOL_OPTIONS={"name": f"two-apps-db{db}"},
        )
        ext.init_app(app)

        @app.get("/write")
        def write() -> Any:
            current_pool.redis.set("who", current_app.name)
            return {"ok": True}

        apps.append(app)
    for app in apps:
        assert app.test_client().get("/write").status_code == 200
    admin = redis.Redis.from_url(redis_url, single_connection_client=True)
    for db in (1, 2):
        admin.select(db)
        assert admin.get("who") == f"app{db}".encode()
    admin.close()
    for db, app in enumerate(apps, 1):
        client = app.test_client()
        assert client.get("/api/health/redis").json["max_size"] == 2 + db
        text = client.get("/metrics").get_data(as_text=True)
        assert f'pool_name="two-apps-db{db}"' in text
        with app.app_context():
            assert ext.pool is app.extensions["redispool"].pool
            assert ext.pool.stats().max_size == 2 + db
    with pytest.raises(RuntimeError, match="several apps"):
        ext.pool  # noqa: B018  (outside an app context: which one?)
    for app in apps:
        app.extensions["redispool"].pool.close()


def test_health_hides_address_and_server_unless_configured(redis_url: str) -> None:
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    app = make_app(redis_url)
    default = app.test_client().get("/api/health/redis")
    assert default.json["status"] == "up"
    for key in ("active", "idle", "waiting", "total_commands", "timeouts", "errors"):
        assert key in default.json
    assert "wait_time_avg_ms" in default.json and "server" not in default.json
    assert host_port not in default.get_data(as_text=True)
    app.extensions["redispool"].pool.close()

    app = make_app(
        redis_url, REDISPOOL_HEALTH_SHOW_DETAILS=lambda req: req.headers.get("X-Ops") == "yes"
    )
    client = app.test_client()
    assert host_port not in client.get("/api/health/redis").get_data(as_text=True)
    shown = client.get("/api/health/redis", headers={"X-Ops": "yes"}).json
    assert host_port in shown["server"]["url"] and host_port in shown["name"]
    server = shown["server"]
    assert server["version"].count(".") == 2 and server["mode"] == "standalone"
    assert 1 <= server["connected_clients"] < server["maxclients"]
    app.extensions["redispool"].pool.close()
    with pytest.raises(ValueError, match="REDISPOOL_HEALTH_SHOW_DETAILS"):
        make_app(redis_url, REDISPOOL_HEALTH_SHOW_DETAILS="sometimes")


def test_health_details_leave_out_what_the_acl_refuses(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    admin = redis.Redis.from_url(server.url, single_connection_client=True)
    admin.acl_setuser(
        "probe", enabled=True, passwords=["+probe-pw"], commands=["+ping", "+info"], keys=[]
    )
    admin.close()
    pool = RedisPool(server.url, username="probe", password="probe-pw", min_size=0)
    status, body = pool_health(pool, show_details=True)
    assert status == 200 and body["status"] == "up"
    assert "maxclients" not in body["server"] and body["server"]["connected_clients"] >= 1
    assert "probe-pw" not in json.dumps(body)
    pool.close()


def test_metrics_counters_start_at_zero(redis_url: str) -> None:
    app = make_app(redis_url, REDIS_POOL_OPTIONS={"name": "zero-counters"})
    text = app.test_client().get("/metrics").get_data(as_text=True)
    for family in (
        "db_client_connection_timeouts_total",
        "redispool_command_errors_total",
        "redispool_create_errors_total",
        "redispool_commands_total",
    ):
        assert f'{family}{{pool_name="zero-counters"}} 0.0' in text, family
    app.extensions["redispool"].pool.close()


NOISE = ["", ".", "x/..", "..", "l\u00f6gin/..", "login;x", "%2F", "API", "x"]


def _routing_app() -> tuple[Flask, list[str]]:
    app = Flask(__name__)
    ran: list[str] = []

    def login() -> str:
        ran.append("login")
        return ""

    app.add_url_rule("/api/auth/login", "login", login, methods=["POST"])
    app.add_url_rule("/api/<path:rest>", "api", lambda rest: "", methods=["POST"])
    app.add_url_rule("/<path:rest>", "any", lambda rest: "", methods=["POST"])
    return app, ran


ROUTING_APP = _routing_app()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(NOISE), max_size=2), min_size=4, max_size=4))
def test_every_path_flask_routes_to_the_view_matches_the_rule(noise: list[list[str]]) -> None:
    """Oracle: Flask itself. ``/api/auth/login`` with noise segments around its
    parts; whatever ``PATH_INFO`` (as a server passes it: latin-1 text of UTF-8
    bytes) runs the login view must match the README's rule."""
    app, ran = ROUTING_APP
    parts = [*noise[0], "api", *noise[1], "auth", *noise[2], "login", *noise[3]]
    path = "/" + "/".join(parts)
    raw = path.encode("utf-8").decode("latin-1")
    ran.clear()
    _wsgi_call(app, raw, "POST")
    limiter = RateLimiter.__new__(RateLimiter)  # Rule only checks its type
    rule = Rule(r"/api/auth/login$", limiter, methods=["POST"])
    if ran:
        assert rule.matches("POST", raw), raw


def test_plain_metrics_values_are_written_in_full(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=2, name="full")
    pool.redis.ping()
    pool._retired_commands += 1234566  # as after a day's traffic
    text = render_metrics([pool])
    assert 'redispool_commands_total{pool_name="full"} 1234567\n' in text
    pool.redis.ping()
    assert 'redispool_commands_total{pool_name="full"} 1234568\n' in render_metrics([pool])
    pool.close()


def test_pool_metrics_counters_keep_counting_a_pool_made_again(redis_url: str) -> None:
    """A pool made again under a name (a cluster node back after a failover, a
    pool replaced) counts from zero: its counts were dropped until they passed
    the old pool's."""
    from prometheus_client import REGISTRY

    from redispool.web.metrics import PoolMetrics

    def commands() -> float | None:
        return REGISTRY.get_sample_value("redispool_commands_total", {"pool_name": "again"})

    pools = [RedisPool(redis_url, min_size=0, max_size=2, name="again")]
    metrics = PoolMetrics(pools)
    start = commands() or 0.0
    for _ in range(5):
        pools[0].redis.ping()
    metrics.update(force=True)
    assert commands() == start + 5
    pools[0].close()
    pools[0] = RedisPool(redis_url, min_size=0, max_size=2, name="again")
    for _ in range(2):
        pools[0].redis.ping()
    metrics.update(force=True)
    assert commands() == start + 7
    pools[0].redis.ping()
    metrics.update(force=True)
    assert commands() == start + 8
    pools[0].close()


def test_wsgi_a_request_refused_by_one_bucket_counts_in_none(redis_url: str) -> None:
    """An API key behind an address others used up (a shared NAT): its refused
    requests were counted against the key, which was then refused everywhere."""
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    rl = RateLimiter(pool, "2/minute", algorithm="fixed", namespace="both")
    app = RateLimitMiddleware(_hello, [Rule("/api/", rl, key=api_key())])
    for other in ("a", "b"):  # others behind the address use it up
        assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY=other)[0][:3] == "200"
    for _ in range(3):
        assert _wsgi_call(app, "/api/x", HTTP_X_API_KEY="mine")[0][:3] == "429"
    elsewhere = {"HTTP_X_API_KEY": "mine", "REMOTE_ADDR": "198.51.100.7"}
    statuses = [_wsgi_call(app, "/api/x", **elsewhere)[0][:3] for _ in range(3)]
    assert statuses == ["200", "200", "429"]
    pool.close()


def test_pool_metrics_pools_of_one_name_are_one_series(redis_url: str) -> None:
    """Two pools on one URL share a name: each update published one's counts
    over the other's (gauges: the last one's), as if a pool were made again."""
    from prometheus_client import REGISTRY

    from redispool.web.metrics import PoolMetrics

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"pool_name": "twice", **labels}) or 0.0

    pools = [RedisPool(redis_url, min_size=0, max_size=2, name="twice") for _ in range(2)]
    metrics = PoolMetrics(pools)
    start = sample("redispool_commands_total")
    for n, pool in zip((5, 2), pools, strict=True):
        for _ in range(n):
            pool.redis.ping()
    for _ in range(3):
        metrics.update(force=True)
    assert sample("redispool_commands_total") == start + 7
    assert sample("db_client_connection_max") == 4
    assert sample("db_client_connection_count", state="idle") == 2
    for pool in pools:
        pool.close()


def test_plain_metrics_pools_of_one_name_are_one_series(redis_url: str) -> None:
    """A series twice in one scrape: Prometheus refuses the whole scrape."""
    pools = [RedisPool(redis_url, min_size=0, max_size=2, name="same") for _ in range(2)]
    for n, pool in zip((3, 1), pools, strict=True):
        for _ in range(n):
            pool.redis.ping()
    lines = render_metrics(pools).splitlines()
    series = [line.rsplit(" ", 1)[0] for line in lines if not line.startswith("#")]
    assert len(series) == len(set(series))
    assert 'redispool_commands_total{pool_name="same"} 4' in lines
    assert 'db_client_connection_max{pool_name="same"} 4' in lines
    for pool in pools:
        pool.close()
