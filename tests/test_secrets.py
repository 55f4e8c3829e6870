"""Secrets never show, ACL users work, keys built from user input stay in their
namespace and bounded, and TLS verifies certificates by default.

A known password (for the default user and for an ACL user ``app``) is used
everywhere, failures are provoked (wrong password, server down, wait timeout,
closed pool, malformed URLs that carry the password), and every text a user or
an operator could see is searched for it: ``repr``/``str`` of the pools, adapter,
stats and pinned clients, each exception with its whole ``__cause__`` /
``__context__`` chain, DEBUG log records, the health JSON, ``/metrics`` and the
Flask demo app's responses.
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.test import TestResponse

from redispool import RedisPool
from redispool.demo.app import create_app
from redispool.helpers import Analytics, Cache, Lockout, RateLimiter
from redispool.testing import RedisServer, find_redis_server, tls_supported
from redispool.web import pool_health, render_metrics
from redispool.web.flask import RedisPoolExtension
from redispool.web.health import DETAIL_LEVELS
from redispool.web.wsgi import RateLimitMiddleware, Rule, api_key

Factory = Callable[..., RedisServer]

SECRET = "S3cr3t-Pw-1234"
WRONG = "Wr0ng-Pw-5678"  # a wrong password is a secret too (often a typo of the real one)
USER = "app"
HOST = "127.0.0.1"
KEY_SECRET = b"key-secret-for-tests"


# -- helpers ------------------------------------------------------------------------------


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and every exception in its ``__cause__`` / ``__context__`` chain."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__]
    return out


def _exception_texts(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    for e in _chain(exc):
        texts += [repr(e), str(e), repr(e.args)]
    return texts


class Seen:
    """Everything shown to someone; ``check()`` asserts no secret is in it."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *texts: Any) -> None:
        self.texts += [t if isinstance(t, str) else repr(t) for t in texts]

    def add_exception(self, exc: BaseException) -> None:
        self.texts += _exception_texts(exc)

    def raises(self, fn: Callable[[], Any], exc: type[BaseException] = Exception) -> BaseException:
        with pytest.raises(exc) as info:
            fn()
        self.add_exception(info.value)
        return info.value

    def add_logs(self, caplog: pytest.LogCaptureFixture) -> None:
        for rec in caplog.records:
            self.texts.append(rec.getMessage())
            if rec.exc_info and rec.exc_info[1] is not None:
                self.add_exception(rec.exc_info[1])
        self.texts.append(caplog.text)

    def add_response(self, resp: TestResponse) -> None:
        self.texts.append(resp.get_data(as_text=True))
        self.texts.append(repr(list(resp.headers.items())))

    def check(self, *secrets: str) -> None:
        assert self.texts
        for text in self.texts:
            for secret in secrets:
                assert secret not in text, f"{secret!r} shown in: {text[:2000]}"


def _side(server: RedisServer, **kwargs: Any) -> redis.Redis:
    """A fail-fast client outside the pool (the default user)."""
    opts: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_timeout": 5}
    opts.update(kwargs)
    return server.client(**opts)


def _url(server: RedisServer, user: str = USER, password: str = SECRET, db: int = 0) -> str:
    return f"redis://{user}:{password}@{HOST}:{server.port}/{db}"


@pytest.fixture
def server(redis_server_factory: Factory) -> RedisServer:
    """A private server: the default user's password is SECRET, and an ACL user
    ``app`` has the same password."""
    srv = redis_server_factory(password=SECRET)
    with _side(srv) as admin:
        admin.execute_command("ACL", "SETUSER", USER, "on", f">{SECRET}", "~*", "+@all")
    return srv


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("redispool", "redis"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


# -- ACL users ------------------------------------------------------------------------


def test_acl_user_sets_and_gets(server: RedisServer) -> None:
    pool = RedisPool(_url(server), min_size=1, max_size=2)
    with pool:
        with pool.client() as r:
            assert r.execute_command("ACL", "WHOAMI") == USER.encode()
            assert r.set("acl:k", "v") is True
            assert r.get("acl:k") == b"v"
        assert pool.redis.incr("acl:n") == 1
    # username and password as options, on a URL without credentials
    plain = f"redis://{HOST}:{server.port}/0"
    pool = RedisPool(plain, min_size=0, max_size=1, username=USER, password=SECRET)
    with pool, pool.client() as r:
        assert r.execute_command("ACL", "WHOAMI") == USER.encode()
        assert r.get("acl:k") == b"v"
    # the user is really restricted: a user without +@all cannot SET
    with _side(server) as admin:
        admin.execute_command("ACL", "SETUSER", "reader", "on", f">{SECRET}", "~*", "+get", "+ping")
    pool = RedisPool(_url(server, user="reader"), min_size=0, max_size=1)
    with pool, pool.client() as r:
        assert r.get("acl:k") == b"v"
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.set("acl:k", "w")


def test_acl_wrong_password_and_unknown_user_fail_cleanly(server: RedisServer) -> None:
    seen = Seen()
    for url in (_url(server, password=WRONG), _url(server, user="nobody")):
        pool = RedisPool(url, min_size=0, max_size=1, timeout=0.5)
        with pool:
            exc = seen.raises(lambda p=pool: p.redis.ping(), redis.exceptions.RedisError)
            assert any(isinstance(e, redis.exceptions.AuthenticationError) for e in _chain(exc))
            seen.add(pool, pool.stats(), pool.stats().as_dict())
    seen.check(SECRET, WRONG)


# -- no secret anywhere -----------------------------------------------------------------


def test_secret_never_shown(
    server: RedisServer, redis_server_factory: Factory, debug_logs: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    replica = redis_server_factory(password=SECRET)  # a "replica": same password
    url, read_url = _url(server), _url(replica, user="default")
    pool = RedisPool(url, read_url=read_url, min_size=1, max_size=2, timeout=1.0, name=None)
    assert pool.connection_kwargs["password"] == SECRET  # the secret is really in play
    with pool:
        pool.open(wait=True, timeout=5)
        with pool.client() as r:
            assert r.set("k", "v") is True
            seen.add(r, str(r), r.connection, r.connection_pool, r.pipeline())
        with pool.reader() as r:
            assert r.ping()
            seen.add(r, r.connection)
        with pool.connection() as conn:
            seen.add(conn, str(conn))
        assert pool.read_pool is not None
        adapter = pool.as_redis_pool()
        stats = pool.stats()
        seen.add(pool, str(pool), pool.url, pool.name, pool.read_pool, pool.read_pool.url)
        seen.add(pool.read_pool.name, pool.redis, adapter, str(adapter))
        seen.add(adapter.get_connection_count(), stats, str(stats), stats.as_dict())
        seen.add(json.dumps(stats.as_dict()), pool.read_pool.stats().as_dict())
        for detail in DETAIL_LEVELS:
            seen.add(json.dumps(pool_health(pool, detail=detail)))
        seen.add(render_metrics([pool]))

        # wait timeout: the only connection is held
        pool.resize(min_size=0, max_size=1)
        with pool.client() as held:
            held.ping()
            exc = seen.raises(lambda: pool.redis.ping(), redis.exceptions.ConnectionError)
            assert "no connection available" in str(exc)
            seen.raises(lambda: pool.client(wait=0.05).__enter__(), redis.ConnectionError)
        pool.resize(max_size=2)

        # server down: every connect fails
        pool.drain()
        server.stop()
        replica.stop()
        for _ in range(3):
            seen.raises(lambda: pool.redis.ping(), redis.exceptions.ConnectionError)
            with pytest.raises(redis.exceptions.ConnectionError) as info:
                with pool.reader(wait=0.3) as r:
                    r.ping()
            seen.add_exception(info.value)
        stats = pool.stats()
        assert stats.create_errors > 0 and stats.last_create_error
        seen.add(stats, stats.as_dict(), pool, str(pool.read_pool))
        for detail in DETAIL_LEVELS:
            status, body = pool_health(pool, detail=detail, ping_timeout=0.2)
            assert status == 503
            seen.add(json.dumps(body))
        seen.add(render_metrics([pool]))

        # helpers on a dead server: their errors and degraded results
        lockout = Lockout(pool, on_error="raise", timeout=0.2, secret=KEY_SECRET)
        seen.raises(lambda: lockout.check_lockout("alice"), redis.exceptions.RedisError)
        degraded = Lockout(pool, timeout=0.2, secret=KEY_SECRET).check_lockout("alice")
        assert degraded.degraded
        seen.add(degraded, degraded.error)
        seen.add(RateLimiter(pool, "5/s", timeout=0.2, secret=KEY_SECRET).hit("alice"))
        with Cache(pool, get_timeout=0.2, secret=KEY_SECRET) as cache:
            assert cache.get_with_fallback("post", lambda: "db") == "db"
            seen.add(cache.stats())
        analytics = Analytics(pool, timeout=0.2, on_error="raise")
        seen.raises(lambda: analytics.incr("logins"), redis.exceptions.RedisError)

        # wrong password, for the ACL user and for the default user
        server.start()
        for bad_url in (_url(server, password=WRONG), _url(server, user="default", password=WRONG)):
            bad = RedisPool(bad_url, min_size=0, max_size=1, timeout=0.5)
            with bad:
                exc = seen.raises(lambda b=bad: b.redis.ping(), redis.exceptions.RedisError)
                assert any(isinstance(e, redis.exceptions.AuthenticationError) for e in _chain(exc))
                seen.add(bad, bad.stats().as_dict(), pool_health(bad, ping_timeout=0.3))

    # closed pool
    exc = seen.raises(lambda: pool.redis.ping(), redis.exceptions.ConnectionError)
    assert "closed" in str(exc)
    seen.raises(lambda: pool.client().__enter__(), redis.exceptions.ConnectionError)
    seen.add(pool, pool.stats().as_dict())

    assert debug_logs.records, "expected log records about the failures"
    seen.add_logs(debug_logs)
    seen.check(SECRET, WRONG)


def _with_password(password: str) -> list[Any]:
    """Malformed URLs and settings that carry ``password``."""
    p = password
    return [
        pytest.param(lambda: RedisPool(f"redis://{USER}:{p}@{HOST}:notaport/0"), id="port"),
        pytest.param(lambda: RedisPool(f"redis://{USER}:{p}@{HOST}:99999/0"), id="port-range"),
        pytest.param(lambda: RedisPool(f"redis://{USER}:{p}@{HOST}:6379/abc"), id="db"),
        pytest.param(lambda: RedisPool(f"redis://{USER}:{p}@[::1/0"), id="ipv6"),
        pytest.param(lambda: RedisPool(f"http://{USER}:{p}@{HOST}:6379/0"), id="scheme"),
        pytest.param(lambda: RedisPool(f"{USER}:{p}@{HOST}:6379"), id="no-scheme"),
        pytest.param(lambda: RedisPool(f"redis://:{p}@{HOST}:6379/0?db=x"), id="query"),
        pytest.param(lambda: RedisPool(f"redis://{HOST}/0?password={p}&bogus=1"), id="query-pw"),
        pytest.param(  # the name percent-encoded: redis-py's parser decodes it
            lambda: RedisPool(f"redis://{HOST}/0?passwor%64={p}&db=x"), id="query-pw-encoded"
        ),
        # a password with an unencoded '#', '/' or '?': the URL parser splits it apart
        pytest.param(lambda: RedisPool(f"redis://{USER}:{p}#x@{HOST}:6379/0"), id="hash"),
        pytest.param(lambda: RedisPool(f"redis://{USER}:{p}/x@{HOST}:6379/0"), id="slash"),
        pytest.param(lambda: RedisPool(f"redis://{USER}:x?{p}@{HOST}:6379/0"), id="question"),
        pytest.param(
            lambda: RedisPool(f"redis://{HOST}:6379/0", read_url=f"http://{USER}:{p}@r/0"),
            id="read_url",
        ),
        pytest.param(
            lambda: RedisPool(f"redis://{USER}:{p}@{HOST}:6379/0", sockt_timeout=1),
            id="bad-option",
        ),
        pytest.param(
            lambda: RedisPool(f"redis://{HOST}:6379/0", password=p, protocol=5),
            id="bad-option-with-password",
        ),
        pytest.param(
            lambda: RedisPool.from_env(environ={"REDIS_URL": f"redis://{USER}:{p}@{HOST}:x/0"}),
            id="env",
        ),
        pytest.param(
            lambda: RedisPool.from_env(
                environ={"REDIS_URL": f"redis://{HOST}/0", "READ_REDIS_URL": f"tcp://:{p}@r"}
            ),
            id="env-read",
        ),
        pytest.param(lambda: _flask_with_url(f"redis://{USER}:{p}@{HOST}:x/0"), id="flask"),
    ]


def test_a_query_password_under_an_encoded_name_is_not_shown() -> None:
    for url in (
        f"redis://{HOST}/0?passwor%64={SECRET}",
        f"rediss://{HOST}/0?ssl_%70assword={SECRET}",
    ):
        pool = RedisPool(url, min_size=0)
        assert SECRET in str(pool.connection_kwargs)  # the secret is really in play
        seen = Seen()
        seen.add(pool, pool.url, pool.name, pool.as_redis_pool(), pool.stats().as_dict())
        seen.check(SECRET)
        pool.close()


def _flask_with_url(url: str) -> None:
    app = Flask(__name__)
    app.config["REDIS_URL"] = url
    RedisPoolExtension(app)


@pytest.mark.parametrize("make", _with_password(SECRET))
def test_malformed_urls_do_not_show_the_password(
    make: Callable[[], Any], debug_logs: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    exc = seen.raises(make, (TypeError, ValueError))  # type: ignore[arg-type]
    assert str(exc)
    seen.add_logs(debug_logs)
    seen.check(SECRET)


def _get(client: Any, path: str, seen: Seen, **kwargs: Any) -> TestResponse:
    resp: TestResponse = client.get(path, **kwargs)
    seen.add_response(resp)
    return resp


def test_flask_health_metrics_and_demo_do_not_show_the_password(
    server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    for name in ("DEMO_LOGIN_LIMIT", "DEMO_PER_REQUEST", "REDISPOOL_KEY_SECRET", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    seen = Seen()
    url = _url(server)

    # The extension on a plain app: every health detail level, and /metrics.
    app = Flask(__name__)
    app.config.update(
        REDIS_URL=url,
        READ_REDIS_URL=_url(server, user="default"),
        REDIS_POOL_MIN_SIZE=0,
        REDIS_POOL_TIMEOUT=0.3,
        REDISPOOL_HEALTH_DETAIL=lambda req: req.args.get("detail", "full"),
    )
    ext = RedisPoolExtension(app)
    client = app.test_client()

    # The demo app, pooled and per request.
    demo = create_app(url)
    demo_per_request = create_app(url, per_request=True)
    demos = [d.test_client() for d in (demo, demo_per_request)]
    pools = [ext.pool, *(d.extensions["redispool"].pool for d in (demo, demo_per_request))]
    try:

        def visit(up: bool) -> None:
            for detail in DETAIL_LEVELS:
                resp = _get(client, "/api/health/redis", seen, query_string={"detail": detail})
                assert resp.status_code == (200 if up else 503)
            assert _get(client, "/metrics", seen).status_code == 200
            for c in demos:
                for path in ("/", "/api/posts/1", "/api/posts/999", "/api/stats"):
                    _get(c, path, seen)
                for path in ("/api/health/redis", "/metrics"):
                    _get(c, path, seen)
                for creds in (
                    {"username": "alice", "password": "wonderland"},
                    {"username": "alice", "password": SECRET},
                    {"username": USER, "password": SECRET},
                    {"username": "x"},
                ):
                    seen.add_response(c.post("/api/auth/login", json=creds))

        visit(up=True)
        metrics = _get(client, "/metrics", seen).get_data(as_text=True)
        assert f"{USER}:***@" in metrics  # the pool is named by its redacted URL
        server.stop()
        visit(up=False)
        server.start()
    finally:
        for pool in pools:
            assert pool is not None
            pool.close(timeout=1)
    seen.add_logs(debug_logs)
    seen.check(SECRET)


# -- keys built from user input -----------------------------------------------------------

NASTY: list[Any] = [
    "alice",
    "Alice",
    "a:b",
    ":",
    "*",
    "a*",
    "?[x]",
    "x\ny",
    "\r\n*1\r\n$8\r\nFLUSHALL\r\n",
    "{tag}",
    " ",
    "é" * 2048,  # 4096 bytes of UTF-8
    "A" * 4096,  # 4 KB: the most accepted
    "lockout:a:0123456789abcdef0123456789abcdef",  # looks like another namespace's key
    "rl:g:0123456789abcdef0123456789abcdef",
    b"\x00\xff",
    ("alice", "10.0.0.1"),
    ("alice:10.0.0.1",),
]
MAX_KEY = 128  # the namespace (<= 64) plus a kind and a 32-hex digest
# After "<ns>:": "{<digest>}:<kind>" (the identity's hash slot), or, for the cache,
# "{<ns>}:<kind>:<digest>" (the namespace's hash slot).
HASHED_KEY = re.compile(
    r"^\{(?:[0-9a-f]{32}\}:(?:a|l|n|c|f|s|g|t)"
    r"|[A-Za-z0-9_.:-]{1,64}\}:(?:(?:tag|v):[0-9a-f]{32}(?::lease)?|version))$"
)


def _keys(admin: redis.Redis) -> set[bytes]:
    return set(admin.scan_iter(count=1000))


def _new_keys(admin: redis.Redis, fn: Callable[[], Any]) -> set[str]:
    before = _keys(admin)
    fn()
    return {k.decode() for k in _keys(admin) - before}


def _written(
    admin: redis.Redis,
    namespaces: Iterable[str],
    make: Callable[[str], Any],
    use: Callable[[Any, Any], Any],
    inputs: list[Any],
) -> dict[tuple[str, int], set[str]]:
    """{(namespace, input index): keys that call wrote}."""
    out: dict[tuple[str, int], set[str]] = {}
    for ns in namespaces:
        helper = make(ns)
        for i, value in enumerate(inputs):
            keys = _new_keys(admin, lambda h=helper, v=value: use(h, v))
            assert keys, f"{ns}: nothing written for input {i}"
            out[(ns, i)] = keys
        if isinstance(helper, Cache):
            helper.close()
    return out


def _assert_separate(written: dict[tuple[str, int], set[str]], pattern: re.Pattern[str]) -> None:
    owner: dict[str, tuple[str, int]] = {}
    for (ns, i), keys in written.items():
        for key in keys:
            assert len(key) <= MAX_KEY, key
            assert key.startswith(ns + ":"), (ns, key)
            rest = key[len(ns) + 1 :]
            assert pattern.fullmatch(rest), (ns, i, key)  # no user input in the key
            assert owner.setdefault(key, (ns, i)) == (ns, i), (key, owner[key], (ns, i))


# "app" and "app:x" share a prefix: the keys of one must never be the other's.
NAMESPACES = ("app", "app:x", "other")


@pytest.fixture
def key_pool(redis_url: str) -> Iterator[tuple[RedisPool, redis.Redis]]:
    pool = RedisPool(redis_url, min_size=0, max_size=4)
    admin = redis.Redis.from_url(redis_url)
    with pool, admin:
        yield pool, admin


def test_lockout_keys(key_pool: tuple[RedisPool, redis.Redis]) -> None:
    pool, admin = key_pool
    written = _written(
        admin,
        NAMESPACES,
        lambda ns: Lockout(pool, max_attempts=1, progressive=2, namespace=ns, secret=KEY_SECRET),
        lambda lo, v: lo.record_failed_attempt(v),
        NASTY,
    )
    for keys in written.values():
        assert len(keys) == 2  # the lock and its level (the attempts counter is gone)
    _assert_separate(written, HASHED_KEY)


@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "gcra"])
def test_rate_limiter_keys(key_pool: tuple[RedisPool, redis.Redis], algorithm: str) -> None:
    pool, admin = key_pool
    written = _written(
        admin,
        NAMESPACES,
        lambda ns: RateLimiter(pool, "5/minute", algorithm=algorithm, namespace=ns),
        lambda rl, v: rl.hit(v),
        NASTY,
    )
    _assert_separate(written, HASHED_KEY)


def test_cache_keys(key_pool: tuple[RedisPool, redis.Redis]) -> None:
    pool, admin = key_pool

    def use(cache: Cache, value: Any) -> None:
        assert cache.set(value, "v")
        assert cache.set(value, "t", tags=["t:1", "*", "x\ny"])
        cache.invalidate_tag("t:1")
        assert cache.get_with_fallback(value, lambda: "db", tags=["t:1"]) == "db"
        assert cache.flush(5)

    written = _written(admin, NAMESPACES, lambda ns: Cache(pool, ns, secret=KEY_SECRET), use, NASTY)
    _assert_separate(written, HASHED_KEY)
    for ns in NAMESPACES:  # and each namespace's own version key (as if evicted)
        with Cache(pool, ns, secret=KEY_SECRET) as cache:
            admin.delete(f"{ns}:{{{ns}}}:version")
            assert _new_keys(admin, cache.invalidate_all) == {f"{ns}:{{{ns}}}:version"}


def test_analytics_keys(key_pool: tuple[RedisPool, redis.Redis]) -> None:
    pool, admin = key_pool
    names = ["logins", "a:b", "*", "%3A", ":", "x:c:logins", "n" * 200]
    members = [v for v in NASTY if not isinstance(v, tuple)]

    def use(an: Analytics, i: int) -> None:
        assert an.incr(names[i], at=0) == 1
        assert an.add_unique(names[i], *members, at=0) is True

    written = _written(
        admin, NAMESPACES, lambda ns: Analytics(pool, namespace=ns), use, list(range(len(names)))
    )
    owner: dict[str, tuple[str, int]] = {}
    for (ns, i), keys in written.items():
        assert len(keys) == 2
        for key in keys:
            assert key.startswith(ns + ":") and len(key) <= 64 + 3 + 3 * 200 + 21, key
            assert re.fullmatch(r"[cu]:\{[^:\s{}]{1,600}\}:0", key[len(ns) + 1 :]), key
            assert owner.setdefault(key, (ns, i)) == (ns, i), key
            for member in members:  # members are hashed: none reaches Redis
                if isinstance(member, str) and len(member) > 3:
                    assert member not in key
    # The collision that escaping prevents: namespace "app" with the name
    # "x:c:logins" would write namespace "app:x"'s key for "logins".
    a = Analytics(pool, namespace="app")
    b = Analytics(pool, namespace="app:x")
    assert a.incr("x:c:logins", at=600) == 1
    assert b.incr("logins", at=600) == 1
    assert a.get("x:c:logins", at=600) == 1 and b.get("logins", at=600) == 1
    assert admin.get("app:x:c:{logins}:600") == b"1"


def test_rate_limit_middleware_bounds_client_keys(
    key_pool: tuple[RedisPool, redis.Redis],
) -> None:
    """A client-chosen API key of any size is limited (not a 500), under a
    bounded Redis key, and distinct huge keys keep distinct counters."""
    pool, admin = key_pool
    limiter = RateLimiter(pool, "1/minute", namespace="mw", secret=KEY_SECRET)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    trusted = api_key(verify=lambda k: True)  # each key its own bucket (not also per IP)
    mw = RateLimitMiddleware(app, rules=[Rule("/api", limiter, key=trusted, name="api")])

    def call(key: str) -> str:
        status: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api", "REMOTE_ADDR": "10.0.0.1"}
        environ["HTTP_X_API_KEY"] = key
        b"".join(mw(environ, lambda s, h, *exc: status.append(s)))
        return status[0]

    first, second = "k" * 8000, "k" * 7999 + "j"
    for key in (first, second, "short"):
        new = _new_keys(admin, lambda k=key: call(k).startswith("200") or pytest.fail(k))
        assert len(new) == 1 and all(len(k) <= MAX_KEY for k in new), new
    assert call(first).startswith("429") and call(second).startswith("429")


# -- TLS -----------------------------------------------------------------------------------


def _tls_server(factory: Factory, **kwargs: Any) -> RedisServer:
    try:
        binary = find_redis_server(tls=True)
    except RuntimeError as exc:
        pytest.skip(f"no TLS-capable redis-server: {exc}")
    if not tls_supported(binary):
        pytest.skip(f"{binary} was built without TLS support")
    return factory(tls=True, binary=binary, **kwargs)


def test_tls_verifies_certificates_by_default(
    redis_server_factory: Factory, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = _tls_server(redis_server_factory, password=SECRET)
    url = f"rediss://{USER}:{SECRET}@{HOST}:{server.port}/0"
    with _side(server, ssl_ca_certs=server.ca_file) as admin:
        admin.execute_command("ACL", "SETUSER", USER, "on", f">{SECRET}", "~*", "+@all")
    seen = Seen()
    pool = RedisPool(url, min_size=0, max_size=1, timeout=1.0)
    with pool:
        t0 = time.monotonic()
        exc = seen.raises(lambda: pool.redis.ping(), redis.exceptions.ConnectionError)
        assert time.monotonic() - t0 < 3.0
        chain = " | ".join(f"{type(e).__name__}: {e}" for e in _chain(exc))
        assert "certificate verify failed" in chain.lower(), chain
        seen.add(pool, pool.stats().as_dict(), pool_health(pool, ping_timeout=0.5))
    # With the CA the same URL works, as the ACL user.
    pool = RedisPool(url, min_size=0, max_size=1, ssl_ca_certs=server.ca_file)
    with pool, pool.client() as r:
        assert r.execute_command("ACL", "WHOAMI") == USER.encode()
        assert r.set("tls", "1") is True and r.get("tls") == b"1"
        seen.add(r, r.connection, pool)
    seen.add_logs(debug_logs)
    seen.check(SECRET)
