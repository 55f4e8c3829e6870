"""Every public constructor and helper, fed wrong types, empty and huge values,
malformed URLs and limit strings, and unknown options.

Each case must raise a ``TypeError`` or ``ValueError`` whose message names the
argument (or the setting: environment variable, ``app.config`` key), and must
leave everything as it was: the pool's numbers (``stats()``), the keys on the
real redis-server (``DBSIZE``) and the connections it sees.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from redispool import ObjectPool, RedisPool
from redispool.helpers import Analytics, Cache, CircuitBreaker, Lockout, RateLimiter, parse_limit
from redispool.web import pool_health
from redispool.web.flask import RedisPoolExtension
from redispool.web.wsgi import RateLimitMiddleware, Rule

INF, NAN = math.inf, math.nan
HUGE = 1e300
SECRET = b"bad-input-test-secret"


@dataclass
class Ctx:
    """What a case may use: a live pool, helpers on it, a generic pool."""

    url: str
    pool: RedisPool
    admin: redis.Redis
    op: ObjectPool[object]
    lo: Lockout
    rl: RateLimiter
    cache: Cache
    an: Analytics


@pytest.fixture
def ctx(redis_url: str) -> Iterator[Ctx]:
    admin = redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0))
    pool = RedisPool(redis_url, min_size=1, max_size=2, name="bad-input")
    pool.open(wait=True, timeout=5)
    op: ObjectPool[object] = ObjectPool(object, min_size=1, max_size=2, background=False)
    op.open(wait=True, timeout=5)
    cache = Cache(pool, namespace="bi-cache", secret=SECRET)
    c = Ctx(
        url=redis_url,
        pool=pool,
        admin=admin,
        op=op,
        lo=Lockout(pool, namespace="bi-lockout", secret=SECRET),
        rl=RateLimiter(pool, "5/second", namespace="bi-rl", secret=SECRET),
        cache=cache,
        an=Analytics(pool, namespace="bi-stats"),
    )
    try:
        yield c
    finally:
        cache.close(timeout=1)
        pool.close(timeout=1)
        op.close(timeout=0)
        admin.close()


def _snapshot(c: Ctx) -> dict[str, Any]:
    return {
        "pool": c.pool.stats().as_dict(),
        "object_pool": c.op.stats().as_dict(),
        "dbsize": c.admin.dbsize(),
        "clients": c.admin.info("clients")["connected_clients"],
    }


@contextlib.contextmanager
def _unchanged(c: Ctx) -> Iterator[None]:
    """Nothing may change: pool numbers (borrows, size, in_use, ...), keys, connections."""
    before = _snapshot(c)
    yield
    after = _snapshot(c)
    assert after == before


def _check(c: Ctx, fn: Callable[[Ctx], Any], exc: type[Exception], names: tuple[str, ...]) -> None:
    with _unchanged(c):
        with pytest.raises(exc) as info:
            fn(c)
    assert type(info.value) in (TypeError, ValueError) or isinstance(info.value, exc)
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} not named in {message!r}"


def _enter(cm: Any) -> None:
    with cm:
        pass


Case = tuple[Callable[[Ctx], Any], type[Exception], tuple[str, ...]]


def _cases(table: dict[str, Case]) -> list[Any]:
    return [pytest.param(fn, exc, names, id=case_id) for case_id, (fn, exc, names) in table.items()]


# -- ObjectPool -----------------------------------------------------------------------

OBJECT_POOL: dict[str, Case] = {
    "factory-None": (lambda c: ObjectPool(None), TypeError, ("factory",)),  # type: ignore[arg-type]
    "factory-str": (lambda c: ObjectPool("object"), TypeError, ("factory",)),  # type: ignore[arg-type]
    "destroy-int": (lambda c: ObjectPool(object, destroy=5), TypeError, ("destroy",)),  # type: ignore[arg-type]
    "check-str": (lambda c: ObjectPool(object, check="x"), TypeError, ("check",)),  # type: ignore[arg-type]
    "reset-int": (lambda c: ObjectPool(object, reset=1), TypeError, ("reset",)),  # type: ignore[arg-type]
    "keep_on-str": (lambda c: ObjectPool(object, keep_on="x"), TypeError, ("keep_on",)),  # type: ignore[arg-type]
    "keep_on-mixed": (
        lambda c: ObjectPool(object, keep_on=(ValueError, "x")),  # type: ignore[arg-type]
        TypeError,
        ("keep_on",),
    ),
    "name-int": (lambda c: ObjectPool(object, name=5), TypeError, ("name",)),  # type: ignore[arg-type]
    "clock-str": (lambda c: ObjectPool(object, clock="x"), TypeError, ("clock",)),  # type: ignore[arg-type]
    "min_size-neg": (lambda c: ObjectPool(object, min_size=-1), ValueError, ("min_size",)),
    "min_size-str": (lambda c: ObjectPool(object, min_size="1"), TypeError, ("min_size",)),  # type: ignore[arg-type]
    "max_size-0": (lambda c: ObjectPool(object, max_size=0), ValueError, ("max_size",)),
    "max_size-inf": (lambda c: ObjectPool(object, max_size=INF), TypeError, ("max_size",)),  # type: ignore[arg-type]
    "max_size-bool": (lambda c: ObjectPool(object, max_size=True), TypeError, ("max_size",)),
    "min>max": (
        lambda c: ObjectPool(object, min_size=3, max_size=2),
        ValueError,
        ("min_size", "max_size"),
    ),
    "timeout-neg": (lambda c: ObjectPool(object, timeout=-1), ValueError, ("timeout",)),
    "timeout-str": (lambda c: ObjectPool(object, timeout="1"), TypeError, ("timeout",)),  # type: ignore[arg-type]
    "timeout-nan": (lambda c: ObjectPool(object, timeout=NAN), ValueError, ("timeout",)),
    "max_waiting-float": (
        lambda c: ObjectPool(object, max_waiting=1.5),
        TypeError,
        ("max_waiting",),
    ),  # type: ignore[arg-type]
    "max_idle_time-nan": (
        lambda c: ObjectPool(object, max_idle_time=NAN),
        ValueError,
        ("max_idle_time",),
    ),
    "max_lifetime-neg": (
        lambda c: ObjectPool(object, max_lifetime=-1),
        ValueError,
        ("max_lifetime",),
    ),
    "lifetime_jitter-2": (
        lambda c: ObjectPool(object, lifetime_jitter=2),
        ValueError,
        ("lifetime_jitter",),
    ),
    "check_interval-str": (
        lambda c: ObjectPool(object, check_interval="x"),  # type: ignore[arg-type]
        TypeError,
        ("check_interval",),
    ),
    "max_uses-neg": (lambda c: ObjectPool(object, max_uses=-1), ValueError, ("max_uses",)),
    "leak_timeout-neg": (
        lambda c: ObjectPool(object, leak_timeout=-1),
        ValueError,
        ("leak_timeout",),
    ),
    "fail_fast_after-bool": (
        lambda c: ObjectPool(object, fail_fast_after=True),
        TypeError,
        ("fail_fast_after",),
    ),
    "backoff_base-neg": (
        lambda c: ObjectPool(object, backoff_base=-1),
        ValueError,
        ("backoff_base",),
    ),
    "backoff_cap-str": (
        lambda c: ObjectPool(object, backoff_cap="x"),  # type: ignore[arg-type]
        TypeError,
        ("backoff_cap",),
    ),
    "unknown-option": (lambda c: ObjectPool(object, bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    # methods
    "borrow-str": (lambda c: c.op.borrow("1"), TypeError, ("timeout",)),  # type: ignore[arg-type]
    "borrow-neg": (lambda c: c.op.borrow(-1), ValueError, ("timeout",)),
    "borrow-nan": (lambda c: c.op.borrow(NAN), ValueError, ("timeout",)),
    "acquire-timeout-str": (lambda c: c.op.acquire("x"), TypeError, ("timeout",)),  # type: ignore[arg-type]
    "acquire-keep_on-str": (
        lambda c: c.op.acquire(keep_on="x"),  # type: ignore[arg-type]
        TypeError,
        ("keep_on",),
    ),
    "acquire-keep_on-ints": (
        lambda c: c.op.acquire(keep_on=(int,)),  # type: ignore[arg-type]
        TypeError,
        ("keep_on",),
    ),
    "acquire-unknown": (lambda c: c.op.acquire(bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    "resize-str": (lambda c: c.op.resize("1"), TypeError, ("min_size",)),  # type: ignore[arg-type]
    "resize-inverted": (lambda c: c.op.resize(3, 2), ValueError, ("min_size", "max_size")),
    "resize-max-0": (lambda c: c.op.resize(max_size=0), ValueError, ("max_size",)),
    "resize-min-neg": (lambda c: c.op.resize(min_size=-1), ValueError, ("min_size",)),
    "resize-huge-min": (lambda c: c.op.resize(min_size=10**9), ValueError, ("min_size",)),
    "open-timeout-str": (
        lambda c: c.op.open(wait=True, timeout="x"),  # type: ignore[arg-type]
        TypeError,
        ("timeout",),
    ),
    "open-timeout-neg": (lambda c: c.op.open(wait=True, timeout=-1), ValueError, ("timeout",)),
    "close-timeout-str": (lambda c: c.op.close(timeout="x"), TypeError, ("timeout",)),  # type: ignore[arg-type]
    "close-timeout-nan": (lambda c: c.op.close(timeout=NAN), ValueError, ("timeout",)),
}


@pytest.mark.parametrize(("fn", "exc", "names"), _cases(OBJECT_POOL))
def test_object_pool(
    ctx: Ctx, fn: Callable[[Ctx], Any], exc: type[Exception], names: tuple[str, ...]
) -> None:
    _check(ctx, fn, exc, names)
    assert not ctx.op.closed


def test_object_pool_release_bad_input(ctx: Ctx) -> None:
    stranger = object()
    _check(ctx, lambda c: c.op.release(stranger), ValueError, (repr(stranger), "not borrowed"))
    obj = ctx.op.borrow()
    _check(
        ctx,
        lambda c: c.op.release(obj, discard=True, reason=5),  # type: ignore[arg-type]
        TypeError,
        ("reason",),
    )
    _check(ctx, lambda c: c.op.release(obj, bogus=1), TypeError, ("bogus",))  # type: ignore[call-arg]
    ctx.op.release(obj)  # still borrowed after the bad calls: released once, cleanly
    assert ctx.op.stats().in_use == 0 and ctx.op.stats().destroyed == 0


def test_huge_wait_means_forever_not_an_overflow() -> None:
    """A finite but huge wait (past threading.TIMEOUT_MAX) used to raise OverflowError
    from the lock; it waits like ``None`` instead."""
    op: ObjectPool[object] = ObjectPool(object, max_size=1, background=False)
    held = op.borrow()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(op.borrow(timeout=HUGE)), daemon=True)
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive() and op.stats().waiting == 1
    op.release(held)
    waiter.join(5)
    assert got == [held]
    op.release(held)
    op.close(timeout=0)


# -- RedisPool ----------------------------------------------------------------------------


def _url(c: Ctx, suffix: str) -> str:
    return c.url.rsplit("/", 1)[0] + suffix


REDIS_POOL: dict[str, Case] = {
    # URLs
    "url-int": (lambda c: RedisPool(6379), TypeError, ("url",)),  # type: ignore[arg-type]
    "url-bytes": (lambda c: RedisPool(c.url.encode()), TypeError, ("url",)),  # type: ignore[arg-type]
    "url-None": (lambda c: RedisPool(None), TypeError, ("url",)),  # type: ignore[arg-type]
    "url-empty": (lambda c: RedisPool(""), ValueError, ("url",)),
    "url-blank": (lambda c: RedisPool("   "), ValueError, ("url",)),
    "url-http": (lambda c: RedisPool("http://127.0.0.1:6379/0"), ValueError, ("url",)),
    "url-no-scheme": (lambda c: RedisPool("127.0.0.1:6379"), ValueError, ("url",)),
    "url-port-abc": (lambda c: RedisPool("redis://127.0.0.1:abc/0"), ValueError, ("url",)),
    "url-port-range": (lambda c: RedisPool("redis://127.0.0.1:99999/0"), ValueError, ("url",)),
    "url-port-zero": (  # redis-py silently took 6379
        lambda c: RedisPool("redis://:hunter2@127.0.0.1:0/0"),
        ValueError,
        ("url", "port", "65535"),
    ),
    "url-unix-no-path": (lambda c: RedisPool("unix://?db=1"), ValueError, ("url", "path")),
    "url-ipv6-open": (lambda c: RedisPool("redis://[::1/0"), ValueError, ("url",)),
    "url-db-abc": (lambda c: RedisPool(_url(c, "/abc")), ValueError, ("url", "path")),
    "url-db-nested": (lambda c: RedisPool(_url(c, "/1/2")), ValueError, ("url", "path")),
    "url-db-neg": (lambda c: RedisPool(_url(c, "/-1")), ValueError, ("url", "path")),
    "url-query-db": (lambda c: RedisPool(_url(c, "/0?db=abc")), ValueError, ("url", "db")),
    "url-query-timeout": (
        lambda c: RedisPool(_url(c, "/0?socket_timeout=abc")),
        ValueError,
        ("url", "socket_timeout"),
    ),
    "url-query-decode": (
        lambda c: RedisPool(_url(c, "/0?decode_responses=maybe")),
        ValueError,
        ("url", "decode_responses"),
    ),
    "decode-str": (
        lambda c: RedisPool(c.url, decode_responses="no"),
        TypeError,
        ("decode_responses",),
    ),
    "url-ssl-ca-missing": (  # every TLS handshake failed, reported as a network error
        lambda c: RedisPool("rediss://127.0.0.1:6379/0?ssl_ca_certs=/nonexistent/ca.pem"),
        ValueError,
        ("ssl_ca_certs", "/nonexistent/ca.pem"),
    ),
    "ssl-certfile-missing": (
        lambda c: RedisPool(
            "rediss://127.0.0.1:6379/0", ssl_certfile="/nonexistent/c.pem", ssl_keyfile="/k"
        ),
        ValueError,
        ("ssl_certfile", "/nonexistent/c.pem"),
    ),
    # accepted, then every connect failed (TypeError, LookupError, AttributeError)
    "host-int": (lambda c: RedisPool(c.url, host=5), TypeError, ("host",)),
    "encoding-unknown": (lambda c: RedisPool(c.url, encoding="nope"), ValueError, ("encoding",)),
    "encoding-errors-unknown": (
        lambda c: RedisPool(c.url, encoding_errors="nope"),
        ValueError,
        ("encoding_errors",),
    ),
    "keepalive-options-str": (
        lambda c: RedisPool(c.url, socket_keepalive=True, socket_keepalive_options="x"),
        TypeError,
        ("socket_keepalive_options",),
    ),
    "read-size-0": (
        lambda c: RedisPool(c.url, socket_read_size=0),
        ValueError,
        ("socket_read_size",),
    ),
    "url-ssl-min-version": (  # every TLS handshake failed (ValueError, TypeError)
        lambda c: RedisPool("rediss://127.0.0.1:6379/0?ssl_min_version=99"),
        ValueError,
        ("ssl_min_version",),
    ),
    "ssl-min-version-str": (
        lambda c: RedisPool("rediss://127.0.0.1:6379/0", ssl_min_version="TLSv1_2"),
        ValueError,
        ("ssl_min_version",),
    ),
    "ssl-ciphers-none": (  # ... reported as network:ConnectionError
        lambda c: RedisPool("rediss://127.0.0.1:6379/0", ssl_ciphers="NOPE"),
        ValueError,
        ("ssl_ciphers",),
    ),
    "url-query-unknown": (lambda c: RedisPool(_url(c, "/0?bogus=1")), TypeError, ("bogus",)),
    "url-huge-host": (
        lambda c: RedisPool("redis://" + "h" * 100_000 + ":6379/0"),
        ValueError,
        ("url", "host"),
    ),
    "read_url-int": (lambda c: RedisPool(c.url, read_url=5), TypeError, ("read_url",)),  # type: ignore[arg-type]
    "read_url-http": (lambda c: RedisPool(c.url, read_url="http://x"), ValueError, ("read_url",)),
    "read_url-db-abc": (
        lambda c: RedisPool(c.url, read_url=_url(c, "/abc")),
        ValueError,
        ("read_url",),
    ),
    # pool options
    "min_size-neg": (lambda c: RedisPool(c.url, min_size=-1), ValueError, ("min_size",)),
    "max_size-0": (lambda c: RedisPool(c.url, max_size=0), ValueError, ("max_size",)),
    "max_size-str": (lambda c: RedisPool(c.url, max_size="20"), TypeError, ("max_size",)),  # type: ignore[arg-type]
    "min>max": (
        lambda c: RedisPool(c.url, min_size=30, max_size=20),
        ValueError,
        ("min_size", "max_size"),
    ),
    "timeout-neg": (lambda c: RedisPool(c.url, timeout=-1), ValueError, ("timeout",)),
    "max_waiting-neg": (lambda c: RedisPool(c.url, max_waiting=-1), ValueError, ("max_waiting",)),
    "max_idle_time-str": (
        lambda c: RedisPool(c.url, max_idle_time="5m"),  # type: ignore[arg-type]
        TypeError,
        ("max_idle_time",),
    ),
    "max_lifetime-nan": (
        lambda c: RedisPool(c.url, max_lifetime=NAN),
        ValueError,
        ("max_lifetime",),
    ),
    "health_check_interval-bool": (
        lambda c: RedisPool(c.url, health_check_interval=True),
        TypeError,
        ("health_check_interval",),
    ),
    "dns_ttl-neg": (lambda c: RedisPool(c.url, dns_ttl=-1), ValueError, ("dns_ttl",)),
    "name-int": (lambda c: RedisPool(c.url, name=5), TypeError, ("name",)),  # type: ignore[arg-type]
    "leak_timeout-neg": (
        lambda c: RedisPool(c.url, leak_timeout=-1),
        ValueError,
        ("leak_timeout",),
    ),
    # socket timeouts: 0 would make the socket non-blocking, inf overflows
    "socket_timeout-0": (
        lambda c: RedisPool(c.url, socket_timeout=0),
        ValueError,
        ("socket_timeout",),
    ),
    "socket_timeout-neg": (
        lambda c: RedisPool(c.url, socket_timeout=-1),
        ValueError,
        ("socket_timeout",),
    ),
    "socket_timeout-inf": (
        lambda c: RedisPool(c.url, socket_timeout=INF),
        ValueError,
        ("socket_timeout",),
    ),
    "socket_timeout-huge": (
        lambda c: RedisPool(c.url, socket_timeout=HUGE),
        ValueError,
        ("socket_timeout",),
    ),
    "socket_timeout-str": (
        lambda c: RedisPool(c.url, socket_timeout="2"),  # type: ignore[arg-type]
        TypeError,
        ("socket_timeout",),
    ),
    "connect_timeout-0": (
        lambda c: RedisPool(c.url, connect_timeout=0),
        ValueError,
        ("connect_timeout",),
    ),
    "socket_connect_timeout-str": (
        lambda c: RedisPool(c.url, socket_connect_timeout="x"),
        TypeError,
        ("socket_connect_timeout",),
    ),
    # redis-py connection options
    "unknown-option": (lambda c: RedisPool(c.url, sockt_timeout=1), TypeError, ("sockt_timeout",)),
    "max_connections": (
        lambda c: RedisPool(c.url, max_connections=5),
        TypeError,
        ("max_connections",),
    ),
    "connection_pool": (
        lambda c: RedisPool(c.url, connection_pool=object()),
        TypeError,
        ("connection_pool",),
    ),
    "connection_class-int": (
        lambda c: RedisPool(c.url, connection_class=int),
        TypeError,
        ("connection_class",),
    ),
    "port-str": (lambda c: RedisPool(c.url, port="x"), TypeError, ("port",)),
    "port-0": (lambda c: RedisPool(c.url, port=0), ValueError, ("port",)),
    "port-huge": (lambda c: RedisPool(c.url, port=70000), ValueError, ("port",)),
    "db-str": (lambda c: RedisPool(c.url, db="abc"), TypeError, ("db",)),
    "db-neg": (lambda c: RedisPool(c.url, db=-1), ValueError, ("db",)),
    "db-huge": (lambda c: RedisPool(c.url, db=2**40), ValueError, ("db",)),
    "protocol-5": (lambda c: RedisPool(c.url, protocol=5), ValueError, ("protocol",)),
    "client_name-space": (
        lambda c: RedisPool(c.url, client_name="my app"),
        ValueError,
        ("client_name",),
    ),
    "client_name-newline": (
        lambda c: RedisPool(c.url, client_name="app\r\nFLUSHALL"),
        ValueError,
        ("client_name",),
    ),
    "retry-str": (lambda c: RedisPool(c.url, retry="3"), TypeError, ("retry",)),
    "ssl_cert_reqs-bogus": (
        lambda c: RedisPool(c.url.replace("redis://", "rediss://"), ssl_cert_reqs="bogus"),
        ValueError,
        ("ssl_cert_reqs",),
    ),
}


@pytest.mark.parametrize(("fn", "exc", "names"), _cases(REDIS_POOL))
def test_redis_pool_constructor(
    ctx: Ctx, fn: Callable[[Ctx], Any], exc: type[Exception], names: tuple[str, ...]
) -> None:
    _check(ctx, fn, exc, names)


FROM_ENV: dict[str, tuple[dict[str, Any], dict[str, Any], type[Exception], tuple[str, ...]]] = {
    "url-http": ({"REDIS_URL": "http://h:6379"}, {}, ValueError, ("REDIS_URL",)),
    "url-db-abc": ({"REDIS_URL": "redis://h:6379/abc"}, {}, ValueError, ("REDIS_URL",)),
    "write-url-bad": ({"WRITE_REDIS_URL": "nope"}, {}, ValueError, ("WRITE_REDIS_URL",)),
    "read-url-bad": ({"READ_REDIS_URL": "redis://h:x"}, {}, ValueError, ("READ_REDIS_URL",)),
    "min-abc": ({"REDIS_POOL_MIN_SIZE": "abc"}, {}, ValueError, ("REDIS_POOL_MIN_SIZE",)),
    "min-float": ({"REDIS_POOL_MIN_SIZE": "1.5"}, {}, ValueError, ("REDIS_POOL_MIN_SIZE",)),
    "min-neg": ({"REDIS_POOL_MIN_SIZE": "-1"}, {}, ValueError, ("REDIS_POOL_MIN_SIZE",)),
    "max-0": ({"REDIS_POOL_MAX_SIZE": "0"}, {}, ValueError, ("REDIS_POOL_MAX_SIZE",)),
    "max-not-str": ({"REDIS_POOL_MAX_SIZE": 5}, {}, TypeError, ("REDIS_POOL_MAX_SIZE",)),
    "timeout-nan": ({"REDIS_POOL_TIMEOUT": "nan"}, {}, ValueError, ("REDIS_POOL_TIMEOUT",)),
    "timeout-inf": ({"REDIS_POOL_TIMEOUT": "inf"}, {}, ValueError, ("REDIS_POOL_TIMEOUT",)),
    "socket-timeout-0": ({"REDIS_SOCKET_TIMEOUT": "0"}, {}, ValueError, ("REDIS_SOCKET_TIMEOUT",)),
    "connect-timeout-huge": (
        {"REDIS_CONNECT_TIMEOUT": "1e400"},
        {},
        ValueError,
        ("REDIS_CONNECT_TIMEOUT",),
    ),
    "max-waiting-neg": (
        {"REDIS_POOL_MAX_WAITING": "-3"},
        {},
        ValueError,
        ("REDIS_POOL_MAX_WAITING",),
    ),
    "dns-ttl-abc": ({"REDIS_DNS_TTL": "30s"}, {}, ValueError, ("REDIS_DNS_TTL",)),
    "tls-maybe": ({"ENABLE_REDIS_TLS_MODE": "maybe"}, {}, ValueError, ("ENABLE_REDIS_TLS_MODE",)),
    "client-name-space": (
        {"REDIS_CLIENT_NAME": "my app"},
        {},
        ValueError,
        ("REDIS_CLIENT_NAME", "client_name"),
    ),
    "min>max": (
        {"REDIS_POOL_MIN_SIZE": "9", "REDIS_POOL_MAX_SIZE": "3"},
        {},
        ValueError,
        ("min_size", "max_size"),
    ),
    # refused by RedisPool after env_options accepted them: named as the option only
    "socket-timeout-huge": (
        {"REDIS_SOCKET_TIMEOUT": "1e8"},
        {},
        ValueError,
        ("REDIS_SOCKET_TIMEOUT",),
    ),
    "sentinels-not-str": (
        {"REDIS_SENTINELS": 26379, "REDIS_SENTINEL_SERVICE": "m"},
        {},
        TypeError,
        ("REDIS_SENTINELS",),
    ),
    "override-unknown": ({}, {"bogus": 1}, TypeError, ("bogus",)),
    "override-bad": ({}, {"max_size": -1}, ValueError, ("max_size",)),
}


@pytest.mark.parametrize(
    ("environ", "overrides", "exc", "names"),
    [pytest.param(*v, id=k) for k, v in FROM_ENV.items()],
)
def test_from_env(
    ctx: Ctx,
    environ: dict[str, Any],
    overrides: dict[str, Any],
    exc: type[Exception],
    names: tuple[str, ...],
) -> None:
    environ = {"REDIS_URL": ctx.url, **environ}
    _check(ctx, lambda c: RedisPool.from_env(environ=environ, **overrides), exc, names)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        pytest.param({"prefix": 5, "environ": {}}, TypeError, "prefix", id="prefix-int"),
        pytest.param({"environ": "REDIS_URL=x"}, TypeError, "environ", id="environ-str"),
        pytest.param({"environ": ["REDIS_URL"]}, TypeError, "environ", id="environ-list"),
    ],
)
def test_from_env_bad_arguments(
    ctx: Ctx, kwargs: dict[str, Any], exc: type[Exception], name: str
) -> None:
    _check(ctx, lambda c: RedisPool.from_env(**kwargs), exc, (name,))


POOL_METHODS: dict[str, Case] = {
    "client-timeout-str": (lambda c: _enter(c.pool.client(timeout="x")), TypeError, ("timeout",)),  # type: ignore[arg-type]
    "client-timeout-0": (lambda c: _enter(c.pool.client(timeout=0)), ValueError, ("timeout",)),
    "client-timeout-neg": (lambda c: _enter(c.pool.client(timeout=-1)), ValueError, ("timeout",)),
    "client-timeout-nan": (lambda c: _enter(c.pool.client(timeout=NAN)), ValueError, ("timeout",)),
    "client-timeout-inf": (lambda c: _enter(c.pool.client(timeout=INF)), ValueError, ("timeout",)),
    "client-timeout-huge": (
        lambda c: _enter(c.pool.client(timeout=HUGE)),
        ValueError,
        ("timeout",),
    ),
    "client-wait-str": (lambda c: _enter(c.pool.client(wait="x")), TypeError, ("wait",)),  # type: ignore[arg-type]
    "client-wait-neg": (lambda c: _enter(c.pool.client(wait=-1)), ValueError, ("wait",)),
    "client-wait-nan": (lambda c: _enter(c.pool.client(wait=NAN)), ValueError, ("wait",)),
    "client-unknown": (lambda c: c.pool.client(bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    "connection-timeout-0": (
        lambda c: _enter(c.pool.connection(timeout=0)),
        ValueError,
        ("timeout",),
    ),
    "connection-timeout-inf": (
        lambda c: _enter(c.pool.connection(timeout=INF)),
        ValueError,
        ("timeout",),
    ),
    "connection-wait-str": (
        lambda c: _enter(c.pool.connection(wait="1")),  # type: ignore[arg-type]
        TypeError,
        ("wait",),
    ),
    "connection-unknown": (lambda c: c.pool.connection(bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    "reader-wait-str": (lambda c: _enter(c.pool.reader(wait="x")), TypeError, ("wait",)),  # type: ignore[arg-type]
    "writer-timeout-0": (lambda c: _enter(c.pool.writer(timeout=0)), ValueError, ("timeout",)),
    "resize-str": (lambda c: c.pool.resize("3"), TypeError, ("min_size",)),  # type: ignore[arg-type]
    "resize-inverted": (lambda c: c.pool.resize(5, 2), ValueError, ("min_size", "max_size")),
    "resize-max-0": (lambda c: c.pool.resize(max_size=0), ValueError, ("max_size",)),
    "resize-max-float": (lambda c: c.pool.resize(max_size=2.5), TypeError, ("max_size",)),  # type: ignore[arg-type]
    "resize-min-huge": (lambda c: c.pool.resize(min_size=10**12), ValueError, ("min_size",)),
    "open-timeout-str": (
        lambda c: c.pool.open(wait=True, timeout="x"),  # type: ignore[arg-type]
        TypeError,
        ("timeout",),
    ),
    "close-timeout-str": (lambda c: c.pool.close(timeout="x"), TypeError, ("timeout",)),  # type: ignore[arg-type]
    "close-timeout-neg": (lambda c: c.pool.close(timeout=-1), ValueError, ("timeout",)),
}


@pytest.mark.parametrize(("fn", "exc", "names"), _cases(POOL_METHODS))
def test_redis_pool_methods(
    ctx: Ctx, fn: Callable[[Ctx], Any], exc: type[Exception], names: tuple[str, ...]
) -> None:
    _check(ctx, fn, exc, names)
    assert not ctx.pool.closed
    with ctx.pool.client() as r:  # and the pool still works
        assert r.ping()


def test_adapter_ignores_foreign_objects(ctx: Ctx) -> None:
    """redis-py's pools ignore a release of a connection they do not own; so
    does the adapter, even for something that is not a connection at all."""
    adapter = ctx.pool.as_redis_pool()
    with _unchanged(ctx):
        adapter.release(object())  # type: ignore[arg-type]
        adapter.release(redis.Connection())


# -- helpers ----------------------------------------------------------------------------


def _decode_pool(c: Ctx) -> RedisPool:
    return RedisPool(c.url, min_size=0, decode_responses=True)


HELPER_CONSTRUCTORS: dict[str, Case] = {
    # Lockout
    "lockout-pool-None": (lambda c: Lockout(None), TypeError, ("pool",)),  # type: ignore[arg-type]
    "lockout-pool-url": (lambda c: Lockout(c.url), TypeError, ("pool",)),  # type: ignore[arg-type]
    "lockout-max_attempts-0": (
        lambda c: Lockout(c.pool, max_attempts=0),
        ValueError,
        ("max_attempts",),
    ),
    "lockout-max_attempts-str": (
        lambda c: Lockout(c.pool, max_attempts="5"),  # type: ignore[arg-type]
        TypeError,
        ("max_attempts",),
    ),
    "lockout-window-0": (lambda c: Lockout(c.pool, window=0), ValueError, ("window",)),
    "lockout-window-str": (lambda c: Lockout(c.pool, window="15m"), TypeError, ("window",)),  # type: ignore[arg-type]
    "lockout-window-huge": (lambda c: Lockout(c.pool, window=HUGE), ValueError, ("window",)),
    "lockout-window-inf": (lambda c: Lockout(c.pool, window=INF), ValueError, ("window",)),
    "lockout-lockout-neg": (lambda c: Lockout(c.pool, lockout=-1), ValueError, ("lockout",)),
    "lockout-lockout-huge": (
        lambda c: Lockout(c.pool, lockout=HUGE, max_lockout=HUGE),
        ValueError,
        ("lockout",),
    ),
    "lockout-progressive-0.5": (
        lambda c: Lockout(c.pool, progressive=0.5),
        ValueError,
        ("progressive",),
    ),
    "lockout-max_lockout-short": (
        lambda c: Lockout(c.pool, lockout=900, max_lockout=60),
        ValueError,
        ("max_lockout",),
    ),
    "lockout-max_lockout-huge": (
        lambda c: Lockout(c.pool, max_lockout=HUGE),
        ValueError,
        ("max_lockout",),
    ),
    "lockout-namespace-empty": (
        lambda c: Lockout(c.pool, namespace=""),
        ValueError,
        ("namespace",),
    ),
    "lockout-namespace-space": (
        lambda c: Lockout(c.pool, namespace="a b"),
        ValueError,
        ("namespace",),
    ),
    "lockout-namespace-glob": (
        lambda c: Lockout(c.pool, namespace="lockout*"),
        ValueError,
        ("namespace",),
    ),
    "lockout-namespace-long": (
        lambda c: Lockout(c.pool, namespace="n" * 65),
        ValueError,
        ("namespace",),
    ),
    "lockout-namespace-int": (lambda c: Lockout(c.pool, namespace=5), ValueError, ("namespace",)),  # type: ignore[arg-type]
    "lockout-on_error": (
        lambda c: Lockout(c.pool, on_error="sometimes"),
        ValueError,
        ("on_error",),
    ),
    "lockout-timeout-0": (lambda c: Lockout(c.pool, timeout=0), ValueError, ("timeout",)),
    "lockout-breaker-str": (lambda c: Lockout(c.pool, breaker="x"), TypeError, ("breaker",)),  # type: ignore[arg-type]
    "lockout-secret-int": (lambda c: Lockout(c.pool, secret=5), TypeError, ("secret",)),  # type: ignore[arg-type]
    "lockout-secret-empty": (lambda c: Lockout(c.pool, secret=b""), ValueError, ("secret",)),
    "lockout-unknown": (lambda c: Lockout(c.pool, bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    # RateLimiter
    "rl-pool-str": (lambda c: RateLimiter("redis://", "1/s"), TypeError, ("pool",)),  # type: ignore[arg-type]
    "rl-limit-empty": (lambda c: RateLimiter(c.pool, ""), ValueError, ("limit",)),
    "rl-limit-words": (lambda c: RateLimiter(c.pool, "a hundred a minute"), ValueError, ("limit",)),
    "rl-limit-0": (lambda c: RateLimiter(c.pool, "0/s"), ValueError, ("limit",)),
    "rl-limit-unit": (lambda c: RateLimiter(c.pool, "5/fortnight"), ValueError, ("limit",)),
    "rl-limit-neg": (lambda c: RateLimiter(c.pool, "-5/s"), ValueError, ("limit",)),
    "rl-limit-sci": (lambda c: RateLimiter(c.pool, "1e3/s"), ValueError, ("limit",)),
    "rl-limit-digits": (lambda c: RateLimiter(c.pool, "9" * 5000 + "/s"), ValueError, ("limit",)),
    "rl-limit-period-huge": (
        lambda c: RateLimiter(c.pool, "5/99999999999 days"),
        ValueError,
        ("limit",),
    ),
    "rl-limit-count-huge": (
        lambda c: RateLimiter(c.pool, "9999999999999999/s"),
        ValueError,
        ("limit",),
    ),
    "rl-limit-int-0": (lambda c: RateLimiter(c.pool, 0, period=1), ValueError, ("limit",)),
    "rl-limit-int-huge": (lambda c: RateLimiter(c.pool, 10**30, period=1), ValueError, ("limit",)),
    "rl-limit-float": (lambda c: RateLimiter(c.pool, 5.0, period=1), TypeError, ("limit",)),  # type: ignore[arg-type]
    "rl-limit-bool": (lambda c: RateLimiter(c.pool, True, period=1), TypeError, ("limit",)),
    "rl-limit-None": (lambda c: RateLimiter(c.pool, None), TypeError, ("limit",)),  # type: ignore[arg-type]
    "rl-period-missing": (lambda c: RateLimiter(c.pool, 5), TypeError, ("period",)),
    "rl-period-both": (lambda c: RateLimiter(c.pool, "5/s", period=1), TypeError, ("period",)),
    "rl-period-0": (lambda c: RateLimiter(c.pool, 5, period=0), ValueError, ("period",)),
    "rl-period-str": (lambda c: RateLimiter(c.pool, 5, period="1m"), ValueError, ("period",)),  # type: ignore[arg-type]
    "rl-period-nan": (lambda c: RateLimiter(c.pool, 5, period=NAN), ValueError, ("period",)),
    "rl-period-inf": (lambda c: RateLimiter(c.pool, 5, period=INF), ValueError, ("period",)),
    "rl-period-huge": (lambda c: RateLimiter(c.pool, 5, period=HUGE), ValueError, ("period",)),
    "rl-algorithm": (lambda c: RateLimiter(c.pool, algorithm="leaky"), ValueError, ("algorithm",)),
    "rl-on_error": (lambda c: RateLimiter(c.pool, on_error="maybe"), ValueError, ("on_error",)),
    "rl-namespace": (lambda c: RateLimiter(c.pool, namespace="rl\n"), ValueError, ("namespace",)),
    "rl-timeout-str": (lambda c: RateLimiter(c.pool, timeout="x"), TypeError, ("timeout",)),  # type: ignore[arg-type]
    "rl-breaker-int": (lambda c: RateLimiter(c.pool, breaker=5), TypeError, ("breaker",)),  # type: ignore[arg-type]
    "rl-secret-int": (lambda c: RateLimiter(c.pool, secret=5), TypeError, ("secret",)),  # type: ignore[arg-type]
    "rl-secret-empty": (lambda c: RateLimiter(c.pool, secret=b""), ValueError, ("secret",)),
    "rl-unknown": (lambda c: RateLimiter(c.pool, bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    # Cache
    "cache-pool-None": (lambda c: Cache(None), TypeError, ("pool",)),  # type: ignore[arg-type]
    "cache-namespace": (lambda c: Cache(c.pool, namespace=""), ValueError, ("namespace",)),
    "cache-default_ttl-0": (lambda c: Cache(c.pool, default_ttl=0), ValueError, ("default_ttl",)),
    "cache-default_ttl-huge": (
        lambda c: Cache(c.pool, default_ttl=HUGE),
        ValueError,
        ("default_ttl",),
    ),
    "cache-default_ttl-str": (
        lambda c: Cache(c.pool, default_ttl="5m"),  # type: ignore[arg-type]
        TypeError,
        ("default_ttl",),
    ),
    "cache-get_timeout-0": (lambda c: Cache(c.pool, get_timeout=0), ValueError, ("get_timeout",)),
    "cache-set_timeout-str": (
        lambda c: Cache(c.pool, set_timeout="x"),  # type: ignore[arg-type]
        TypeError,
        ("set_timeout",),
    ),
    "cache-serializer-name": (
        lambda c: Cache(c.pool, serializer="yaml"),
        ValueError,
        ("serializer",),
    ),
    "cache-serializer-pair": (
        lambda c: Cache(c.pool, serializer=(1, 2)),
        TypeError,
        ("serializer",),
    ),
    "cache-serializer-obj": (
        lambda c: Cache(c.pool, serializer=object()),
        TypeError,
        ("serializer",),
    ),
    "cache-negative_ttl-neg": (
        lambda c: Cache(c.pool, negative_ttl=-1),
        ValueError,
        ("negative_ttl",),
    ),
    "cache-lease_ttl-0": (lambda c: Cache(c.pool, lease_ttl=0), ValueError, ("lease_ttl",)),
    "cache-lease_wait-neg": (lambda c: Cache(c.pool, lease_wait=-1), ValueError, ("lease_wait",)),
    "cache-writer_queue-0": (
        lambda c: Cache(c.pool, writer_queue=0),
        ValueError,
        ("writer_queue",),
    ),
    "cache-slow_threshold-str": (
        lambda c: Cache(c.pool, slow_threshold="x"),  # type: ignore[arg-type]
        TypeError,
        ("slow_threshold",),
    ),
    "cache-beta-neg": (
        lambda c: Cache(c.pool, early_recompute_beta=-1),
        ValueError,
        ("early_recompute_beta",),
    ),
    "cache-secret-int": (lambda c: Cache(c.pool, secret=5), TypeError, ("secret",)),  # type: ignore[arg-type]
    "cache-secret-empty": (lambda c: Cache(c.pool, secret=b""), TypeError, ("secret",)),
    "cache-breaker-str": (lambda c: Cache(c.pool, breaker="x"), TypeError, ("breaker",)),  # type: ignore[arg-type]
    "cache-rand-str": (lambda c: Cache(c.pool, rand="x"), TypeError, ("rand",)),  # type: ignore[arg-type]
    "cache-decode_responses": (lambda c: Cache(_decode_pool(c)), ValueError, ("decode_responses",)),
    "cache-unknown": (lambda c: Cache(c.pool, bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    # Analytics
    "an-pool-int": (lambda c: Analytics(5), TypeError, ("pool",)),  # type: ignore[arg-type]
    "an-namespace": (lambda c: Analytics(c.pool, namespace="a b"), ValueError, ("namespace",)),
    "an-bucket-word": (lambda c: Analytics(c.pool, bucket="week"), ValueError, ("bucket",)),
    "an-bucket-0": (lambda c: Analytics(c.pool, bucket=0), ValueError, ("bucket",)),
    "an-bucket-float": (lambda c: Analytics(c.pool, bucket=1.5), TypeError, ("bucket",)),  # type: ignore[arg-type]
    "an-bucket-huge": (lambda c: Analytics(c.pool, bucket=10**30), ValueError, ("bucket",)),
    "an-retention-0": (lambda c: Analytics(c.pool, retention=0), ValueError, ("retention",)),
    "an-retention-huge": (
        lambda c: Analytics(c.pool, retention=10**30),
        ValueError,
        ("retention",),
    ),
    "an-timeout-neg": (lambda c: Analytics(c.pool, timeout=-1), ValueError, ("timeout",)),
    "an-flush_interval-0": (
        lambda c: Analytics(c.pool, flush_interval=0),
        ValueError,
        ("flush_interval",),
    ),
    "an-flush_interval-inf": (
        lambda c: Analytics(c.pool, flush_interval=INF),
        ValueError,
        ("flush_interval",),
    ),
    "an-flush_items-0": (lambda c: Analytics(c.pool, flush_items=0), ValueError, ("flush_items",)),
    "an-max_buffer-str": (
        lambda c: Analytics(c.pool, max_buffer="1k"),  # type: ignore[arg-type]
        TypeError,
        ("max_buffer",),
    ),
    "an-on_error": (lambda c: Analytics(c.pool, on_error="crash"), ValueError, ("on_error",)),  # type: ignore[arg-type]
    "an-secret-int": (lambda c: Analytics(c.pool, secret=5), TypeError, ("secret",)),  # type: ignore[arg-type]
    "an-clock-str": (lambda c: Analytics(c.pool, clock="x"), TypeError, ("clock",)),  # type: ignore[arg-type]
    "an-buffered-str": (lambda c: Analytics(c.pool, buffered="no"), TypeError, ("buffered",)),  # type: ignore[arg-type]
    "an-breaker-int": (lambda c: Analytics(c.pool, breaker=1), TypeError, ("breaker",)),  # type: ignore[arg-type]
    "an-unknown": (lambda c: Analytics(c.pool, bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    # CircuitBreaker
    "cb-threshold-0": (lambda c: CircuitBreaker(threshold=0), ValueError, ("threshold",)),
    "cb-threshold-str": (lambda c: CircuitBreaker(threshold="5"), TypeError, ("threshold",)),  # type: ignore[arg-type]
    "cb-threshold-float": (lambda c: CircuitBreaker(threshold=1.5), TypeError, ("threshold",)),  # type: ignore[arg-type]
    "cb-cooldown-neg": (lambda c: CircuitBreaker(cooldown=-1), ValueError, ("cooldown",)),
    "cb-cooldown-nan": (lambda c: CircuitBreaker(cooldown=NAN), ValueError, ("cooldown",)),
    "cb-clock-str": (lambda c: CircuitBreaker(clock="x"), TypeError, ("clock",)),  # type: ignore[arg-type]
    "cb-unknown": (lambda c: CircuitBreaker(bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    # parse_limit
    "parse_limit-bytes": (lambda c: parse_limit(b"5/s"), TypeError, ("limit",)),
    "parse_limit-None": (lambda c: parse_limit(None), TypeError, ("limit",)),
    "parse_limit-empty": (lambda c: parse_limit(""), ValueError, ("limit",)),
    "parse_limit-no-unit": (lambda c: parse_limit("5/"), ValueError, ("limit",)),
    "parse_limit-zero-period": (lambda c: parse_limit("5/0 s"), ValueError, ("limit",)),
    "parse_limit-newline": (lambda c: parse_limit("5/s\n5/s"), ValueError, ("limit",)),
    "parse_limit-huge": (lambda c: parse_limit("5/" + "9" * 5000 + " s"), ValueError, ("limit",)),
}


@pytest.mark.parametrize(("fn", "exc", "names"), _cases(HELPER_CONSTRUCTORS))
def test_helper_constructors(
    ctx: Ctx, fn: Callable[[Ctx], Any], exc: type[Exception], names: tuple[str, ...]
) -> None:
    _check(ctx, fn, exc, names)


def _not_json(c: Ctx) -> Any:
    @c.cache.cached()
    def fn(x: Any) -> Any:
        return x

    return fn(object())


HELPER_CALLS: dict[str, Case] = {
    # Lockout
    "lockout-identity-None": (lambda c: c.lo.check_lockout(None), TypeError, ("identity",)),
    "lockout-identity-int": (lambda c: c.lo.record_failed_attempt(5), TypeError, ("identity",)),
    "lockout-identity-empty": (lambda c: c.lo.check_lockout(""), ValueError, ("identity",)),
    "lockout-identity-empty-bytes": (lambda c: c.lo.clear_lockout(b""), ValueError, ("identity",)),
    "lockout-identity-empty-tuple": (lambda c: c.lo.check_lockout(()), ValueError, ("identity",)),
    "lockout-identity-tuple-int": (
        lambda c: c.lo.check_lockout(("user", 5)),
        TypeError,
        ("identity",),
    ),
    "lockout-identity-huge": (
        lambda c: c.lo.record_failed_attempt("u" * 4097),
        ValueError,
        ("identity",),
    ),
    "lockout-identity-huge-tuple": (
        lambda c: c.lo.record_failed_attempt(("u" * 3000, "1.2.3.4" * 200)),
        ValueError,
        ("identity",),
    ),
    # RateLimiter
    "rl-key-None": (lambda c: c.rl.hit(None), TypeError, ("key",)),
    "rl-key-empty": (lambda c: c.rl.hit(""), ValueError, ("key",)),
    "rl-key-huge": (lambda c: c.rl.hit("k" * 10_000), ValueError, ("key",)),
    "rl-key-tuple-None": (lambda c: c.rl.peek(("route", None)), TypeError, ("key",)),
    "rl-cost-0": (lambda c: c.rl.hit("k", cost=0), ValueError, ("cost",)),
    "rl-cost-neg": (lambda c: c.rl.hit("k", cost=-1), ValueError, ("cost",)),
    "rl-cost-str": (lambda c: c.rl.hit("k", cost="1"), ValueError, ("cost",)),  # type: ignore[arg-type]
    "rl-cost-float": (lambda c: c.rl.peek("k", cost=1.5), ValueError, ("cost",)),  # type: ignore[arg-type]
    "rl-cost-bool": (lambda c: c.rl.hit("k", cost=True), ValueError, ("cost",)),
    "rl-reset-None": (lambda c: c.rl.reset(None), TypeError, ("key",)),
    # Cache
    "cache-get-key-None": (lambda c: c.cache.get(None), TypeError, ("key",)),
    "cache-get-key-huge": (lambda c: c.cache.get("k" * 5000), ValueError, ("key",)),
    "cache-get-tags-str": (lambda c: c.cache.get("k", tags="abc"), TypeError, ("tags",)),
    "cache-get-tags-int": (lambda c: c.cache.get("k", tags=5), TypeError, ("tags",)),  # type: ignore[arg-type]
    "cache-get-tags-mixed": (lambda c: c.cache.get("k", tags=[1, "a"]), TypeError, ("tags",)),  # type: ignore[list-item]
    "cache-get-tags-unhashable": (lambda c: c.cache.get("k", tags=[[1]]), TypeError, ("tags",)),  # type: ignore[list-item]
    "cache-get-tags-empty-tag": (lambda c: c.cache.get("k", tags=[""]), ValueError, ("tags",)),
    "cache-get-tags-too-many": (
        lambda c: c.cache.get("k", tags=[f"t{i}" for i in range(9)]),
        ValueError,
        ("tags",),
    ),
    "cache-get-tags-huge": (lambda c: c.cache.get("k", tags=["t" * 5000]), ValueError, ("tags",)),
    "cache-set-ttl-0": (lambda c: c.cache.set("k", 1, ttl=0), ValueError, ("ttl",)),
    "cache-set-ttl-neg": (lambda c: c.cache.set("k", 1, ttl=-1), ValueError, ("ttl",)),
    "cache-set-ttl-huge": (lambda c: c.cache.set("k", 1, ttl=HUGE), ValueError, ("ttl",)),
    "cache-set-ttl-nan": (lambda c: c.cache.set("k", 1, ttl=NAN), ValueError, ("ttl",)),
    "cache-set-ttl-str": (lambda c: c.cache.set("k", 1, ttl="60"), TypeError, ("ttl",)),  # type: ignore[arg-type]
    "cache-set-value": (lambda c: c.cache.set("k", object()), TypeError, ("value",)),
    "cache-set-key-None": (lambda c: c.cache.set(None, 1), TypeError, ("key",)),
    "cache-set-tags": (lambda c: c.cache.set("k", 1, tags=b"ab"), TypeError, ("tags",)),  # type: ignore[arg-type]
    "cache-gwf-loader-None": (
        lambda c: c.cache.get_with_fallback("k", None),  # type: ignore[arg-type]
        TypeError,
        ("loader",),
    ),
    "cache-gwf-ttl-0": (
        lambda c: c.cache.get_with_fallback("k", lambda: 1, ttl=0),
        ValueError,
        ("ttl",),
    ),
    "cache-gwf-key-int": (
        lambda c: c.cache.get_with_fallback(5, lambda: 1),
        TypeError,
        ("key",),
    ),
    "cache-gwf-tags-int": (
        lambda c: c.cache.get_with_fallback("k", lambda: 1, tags=5),  # type: ignore[arg-type]
        TypeError,
        ("tags",),
    ),
    "cache-cached-ttl-0": (lambda c: c.cache.cached(ttl=0), ValueError, ("ttl",)),
    "cache-cached-key-str": (lambda c: c.cache.cached(key="k"), TypeError, ("key",)),  # type: ignore[arg-type]
    "cache-cached-tags-str": (lambda c: c.cache.cached(tags="abc"), TypeError, ("tags",)),
    "cache-cached-tags-int": (lambda c: c.cache.cached(tags=5), TypeError, ("tags",)),  # type: ignore[arg-type]
    "cache-cached-tags-item": (lambda c: c.cache.cached(tags=[1]), TypeError, ("tags",)),  # type: ignore[list-item]
    "cache-cached-args": (_not_json, TypeError, ("arguments", "key=")),
    "cache-invalidate-key": (lambda c: c.cache.invalidate(None), TypeError, ("key",)),
    "cache-invalidate_tag-int": (lambda c: c.cache.invalidate_tag(5), TypeError, ("tag",)),  # type: ignore[arg-type]
    "cache-invalidate_tag-empty": (lambda c: c.cache.invalidate_tag(""), ValueError, ("tag",)),
    # Analytics
    "an-name-empty": (lambda c: c.an.incr(""), ValueError, ("name",)),
    "an-name-space": (lambda c: c.an.incr("a b"), ValueError, ("name",)),
    "an-name-newline": (lambda c: c.an.incr("a\nb"), ValueError, ("name",)),
    "an-name-huge": (lambda c: c.an.incr("x" * 4096), ValueError, ("name",)),
    "an-name-int": (lambda c: c.an.incr(5), TypeError, ("name",)),  # type: ignore[arg-type]
    "an-amount-str": (lambda c: c.an.incr("n", amount="1"), TypeError, ("amount",)),  # type: ignore[arg-type]
    "an-amount-float": (lambda c: c.an.incr("n", amount=1.5), TypeError, ("amount",)),  # type: ignore[arg-type]
    "an-amount-huge": (lambda c: c.an.incr("n", amount=2**64), ValueError, ("amount",)),
    "an-at-str": (lambda c: c.an.incr("n", at="yesterday"), TypeError, ("at",)),  # type: ignore[arg-type]
    "an-at-neg": (lambda c: c.an.incr("n", at=-1), ValueError, ("at",)),
    "an-at-nan": (lambda c: c.an.get("n", at=NAN), ValueError, ("at",)),
    "an-at-huge": (lambda c: c.an.incr("n", at=HUGE), ValueError, ("at",)),
    "an-series-reversed": (lambda c: c.an.series("n", 600, 0), ValueError, ("start", "end")),
    "an-series-too-long": (lambda c: c.an.series("n", 0, 10**9), ValueError, ("start..end",)),
    "an-series-end-str": (lambda c: c.an.series("n", 0, "now"), TypeError, ("end",)),  # type: ignore[arg-type]
    "an-unique-None": (lambda c: c.an.add_unique("n", None), TypeError, ("members",)),
    "an-unique-float": (lambda c: c.an.add_unique("n", "a", 1.5), TypeError, ("members",)),
    "an-unique-list": (lambda c: c.an.add_unique("n", ["a"]), TypeError, ("members",)),
    "an-unique-name": (lambda c: c.an.add_unique("", "a"), ValueError, ("name",)),
    "an-count-start": (lambda c: c.an.count_unique("n", start="x"), TypeError, ("start",)),  # type: ignore[arg-type]
    "an-count-end": (lambda c: c.an.count_unique("n", end=-1), ValueError, ("end",)),
}


@pytest.mark.parametrize(("fn", "exc", "names"), _cases(HELPER_CALLS))
def test_helper_calls(
    ctx: Ctx, fn: Callable[[Ctx], Any], exc: type[Exception], names: tuple[str, ...]
) -> None:
    _check(ctx, fn, exc, names)


# -- web glue ---------------------------------------------------------------------------


def _app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


WEB: dict[str, Case] = {
    "mw-app-str": (lambda c: RateLimitMiddleware("app"), TypeError, ("app",)),  # type: ignore[arg-type]
    "mw-rules-None": (lambda c: RateLimitMiddleware(_app, rules=None), TypeError, ("rules",)),  # type: ignore[arg-type]
    "mw-rules-str": (lambda c: RateLimitMiddleware(_app, rules="/login"), TypeError, ("rules",)),  # type: ignore[arg-type]
    "mw-rules-item": (
        lambda c: RateLimitMiddleware(_app, rules=[("/login", c.rl)]),  # type: ignore[list-item]
        TypeError,
        ("rules",),
    ),
    "mw-default-str": (
        lambda c: RateLimitMiddleware(_app, default="100/minute"),  # type: ignore[arg-type]
        TypeError,
        ("default",),
    ),
    "mw-key-str": (
        lambda c: RateLimitMiddleware(_app, key="REMOTE_ADDR"),  # type: ignore[arg-type]
        TypeError,
        ("key",),
    ),
    "mw-unknown": (lambda c: RateLimitMiddleware(_app, bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
    "rule-path-regex": (lambda c: Rule("[", c.rl), ValueError, ("path",)),
    "rule-path-int": (lambda c: Rule(5, c.rl), TypeError, ("path",)),  # type: ignore[arg-type]
    "rule-limiter-str": (lambda c: Rule("/x", "5/s"), TypeError, ("limiter",)),  # type: ignore[arg-type]
    "rule-methods-str": (lambda c: Rule("/x", c.rl, methods="GET"), TypeError, ("methods",)),
    "rule-methods-int": (lambda c: Rule("/x", c.rl, methods=[1]), TypeError, ("methods",)),  # type: ignore[list-item]
    "rule-key-str": (lambda c: Rule("/x", c.rl, key="ip"), TypeError, ("key",)),  # type: ignore[arg-type]
    "rule-name-int": (lambda c: Rule("/x", c.rl, name=5), TypeError, ("name",)),  # type: ignore[arg-type]
    "health-detail-word": (lambda c: pool_health(c.pool, detail="all"), ValueError, ("detail",)),
    "health-detail-None": (lambda c: pool_health(c.pool, detail=None), ValueError, ("detail",)),  # type: ignore[arg-type]
    "health-detail-list": (lambda c: pool_health(c.pool, detail=[]), ValueError, ("detail",)),  # type: ignore[arg-type]
    "health-ping_timeout-str": (
        lambda c: pool_health(c.pool, ping_timeout="1"),  # type: ignore[arg-type]
        TypeError,
        ("ping_timeout",),
    ),
    "health-ping_timeout-0": (
        lambda c: pool_health(c.pool, ping_timeout=0),
        ValueError,
        ("ping_timeout",),
    ),
    "health-ping_timeout-inf": (
        lambda c: pool_health(c.pool, ping_timeout=INF),
        ValueError,
        ("ping_timeout",),
    ),
    "health-pool-str": (lambda c: pool_health(c.url), TypeError, ("pool",)),  # type: ignore[arg-type]
    "health-unknown": (lambda c: pool_health(c.pool, bogus=1), TypeError, ("bogus",)),  # type: ignore[call-arg]
}


@pytest.mark.parametrize(("fn", "exc", "names"), _cases(WEB))
def test_web(
    ctx: Ctx, fn: Callable[[Ctx], Any], exc: type[Exception], names: tuple[str, ...]
) -> None:
    _check(ctx, fn, exc, names)


FLASK: dict[str, tuple[dict[str, Any], dict[str, Any], type[Exception], tuple[str, ...]]] = {
    "min-str": ({"REDIS_POOL_MIN_SIZE": "few"}, {}, ValueError, ("REDIS_POOL_MIN_SIZE",)),
    "min-neg": ({"REDIS_POOL_MIN_SIZE": -1}, {}, ValueError, ("REDIS_POOL_MIN_SIZE",)),
    "max-float": ({"REDIS_POOL_MAX_SIZE": 2.7}, {}, ValueError, ("REDIS_POOL_MAX_SIZE",)),
    "max-bool": ({"REDIS_POOL_MAX_SIZE": True}, {}, ValueError, ("REDIS_POOL_MAX_SIZE",)),
    "max-0": ({"REDIS_POOL_MAX_SIZE": "0"}, {}, ValueError, ("REDIS_POOL_MAX_SIZE",)),
    "max-list": ({"REDIS_POOL_MAX_SIZE": [3]}, {}, ValueError, ("REDIS_POOL_MAX_SIZE",)),
    "timeout-nan": ({"REDIS_POOL_TIMEOUT": "nan"}, {}, ValueError, ("REDIS_POOL_TIMEOUT",)),
    "socket-timeout-0": ({"REDIS_SOCKET_TIMEOUT": 0}, {}, ValueError, ("REDIS_SOCKET_TIMEOUT",)),
    "connect-timeout-inf": (
        {"REDIS_CONNECT_TIMEOUT": INF},
        {},
        ValueError,
        ("REDIS_CONNECT_TIMEOUT",),
    ),
    "health-interval-neg": (
        {"REDIS_HEALTH_CHECK_INTERVAL": -5},
        {},
        ValueError,
        ("REDIS_HEALTH_CHECK_INTERVAL",),
    ),
    "url-int": ({"REDIS_URL": 6379}, {}, TypeError, ("REDIS_URL",)),
    "url-http": ({"REDIS_URL": "http://h:6379"}, {}, ValueError, ("REDIS_URL",)),
    "url-db-abc": ({"REDIS_URL": "redis://h:6379/abc"}, {}, ValueError, ("REDIS_URL",)),
    "read-url-bad": ({"READ_REDIS_URL": "replica:6379"}, {}, ValueError, ("READ_REDIS_URL",)),
    "options-str": ({"REDIS_POOL_OPTIONS": "max_size=3"}, {}, TypeError, ("REDIS_POOL_OPTIONS",)),
    "options-keys": ({"REDIS_POOL_OPTIONS": {1: 2}}, {}, TypeError, ("REDIS_POOL_OPTIONS",)),
    "options-unknown": ({"REDIS_POOL_OPTIONS": {"bogus": 1}}, {}, TypeError, ("bogus",)),
    "options-bad": ({"REDIS_POOL_OPTIONS": {"max_size": 0}}, {}, ValueError, ("max_size",)),
    "min>max": (
        {"REDIS_POOL_MIN_SIZE": 5, "REDIS_POOL_MAX_SIZE": 2},
        {},
        ValueError,
        ("min_size", "max_size"),
    ),
    "detail-word": (
        {"REDISPOOL_HEALTH_DETAIL": "everything"},
        {},
        ValueError,
        ("REDISPOOL_HEALTH_DETAIL",),
    ),
    "health-url-no-slash": (
        {"REDISPOOL_HEALTH_URL": "health"},
        {},
        ValueError,
        ("REDISPOOL_HEALTH_URL",),
    ),
    "health-url-int": ({"REDISPOOL_HEALTH_URL": 42}, {}, ValueError, ("REDISPOOL_HEALTH_URL",)),
    "metrics-url-int": ({"REDISPOOL_METRICS_URL": 42}, {}, ValueError, ("REDISPOOL_METRICS_URL",)),
    "extension-unknown-option": ({}, {"bogus": 1}, TypeError, ("bogus",)),
    "extension-bad-option": ({}, {"timeout": -1}, ValueError, ("timeout",)),
}


@pytest.mark.parametrize(
    ("config", "options", "exc", "names"),
    [pytest.param(*v, id=k) for k, v in FLASK.items()],
)
def test_flask_extension_bad_config(
    ctx: Ctx,
    config: dict[str, Any],
    options: dict[str, Any],
    exc: type[Exception],
    names: tuple[str, ...],
) -> None:
    app = Flask(__name__)
    app.config.update(REDIS_URL=ctx.url, REDIS_POOL_MIN_SIZE=0, REDIS_POOL_MAX_SIZE=3)
    app.config.update(config)
    ext = RedisPoolExtension(**options)
    _check(ctx, lambda c: ext.init_app(app), exc, names)
    # Nothing half-made: no pool, no routes, nothing registered on the app.
    assert ext.pool is None
    assert "redispool" not in app.extensions
    assert not any(rule.endpoint.startswith("redispool") for rule in app.url_map.iter_rules())
