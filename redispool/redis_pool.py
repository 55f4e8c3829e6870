"""RedisPool: an ObjectPool of checked redis-py connections.

* ``with pool.connection() as conn`` a checked ``redis.Connection``;
* ``with pool.client() as r`` a ``redis.Redis`` pinned to one borrowed connection;
* ``pool.redis`` a ``redis.Redis`` whose every command borrows and returns;
* ``pool.as_redis_pool()`` for ``redis.Redis(connection_pool=...)``.

A connection is checked on every borrow without a round trip (``is_alive``) and
with a PING only when idle longer than ``health_check_interval``. On return it is
discarded unless it is connected, owes no reply and holds no session state.
"""

from __future__ import annotations

import codecs
import dataclasses
import inspect
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from types import TracebackType
from typing import Any

import redis
from redis.connection import Connection
from redis.exceptions import RedisError
from redis.retry import Retry

from ._closehooks import CloseHooks
from ._dropin import DropInRedis
from ._poolparts import _number, abandon, with_out
from .config import env_options, parse_redis_url, redact_url, sentinel_env
from .connection import TIMEOUT_SET, is_alive, pooled_class, set_io_timeout
from .dns import DNSCache
from .pool import ObjectPool
from .redis_adapter import ConnectionPool, PinnedPool, PinnedRedis
from .redis_errors import RedisPoolClosed, RedisPoolTimeout, RedisTooManyWaiters
from .stats import PoolStats

__all__ = ["RedisPool", "RedisPoolStats"]

# Our own names; everything else goes to the redis-py connection class.
_POOL_OPTIONS = {
    "min_size",
    "max_size",
    "timeout",
    "max_waiting",
    "max_idle_time",
    "max_lifetime",
    "fail_fast_after",
    "backoff_base",
    "backoff_cap",
    "leak_timeout",
    "background",
}
_REFUSED = {
    "max_connections": "use max_size",
    "connection_pool": "RedisPool is the pool",
    "single_connection_client": "use pool.client()",
}
# How long a connection may sit idle before a borrow PINGs it, unless given.
DEFAULT_HEALTH_CHECK_INTERVAL = 30.0
# min_size unless given (never above max_size).
DEFAULT_MIN_SIZE = 5


class _Default(float):
    """A timeout's default, told apart by identity: the URL's ``?socket_timeout=``
    or ``?socket_connect_timeout=`` applies unless the argument was given."""

    __slots__ = ()


_DEFAULT_TIMEOUT = _Default(2.0)

# socket.settimeout() overflows a little past 9.2e9 s; nobody needs more than this.
MAX_SOCKET_TIMEOUT = 1e7
# Options whose values an error message must never show.
_SECRET_OPTIONS = frozenset(["password", "ssl_password", "credential_provider"])


def _socket_timeout(name: str, value: Any, *, none_ok: bool = True) -> Any:
    """A socket timeout: 0 would make the socket non-blocking, inf overflows."""
    _number(name, value, minimum=0, none_ok=none_ok)
    if value is not None and not 0 < value <= MAX_SOCKET_TIMEOUT:
        raise ValueError(
            f"{name} must be > 0 and <= {MAX_SOCKET_TIMEOUT:g} seconds"
            f"{' (None: no timeout)' if none_ok else ''}, got {value!r}"
        )
    return value


def _check_connection_options(kwargs: dict[str, Any]) -> None:
    """Options redis-py accepts at construction but that fail every connect."""
    for key, low, high in (("port", 1, 65535), ("db", 0, 2**31 - 1)):
        value = kwargs.get(key)
        if value is None or (key == "port" and "path" in kwargs):
            continue
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an int, got {value!r} ({type(value).__name__})")
        if not low <= value <= high:
            raise ValueError(f"{key} must be between {low} and {high}, got {value!r}")
    name = kwargs.get("client_name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"client_name must be a str, got {name!r} ({type(name).__name__})")
    if name is not None and not all(33 <= ord(c) <= 126 for c in name):
        raise ValueError(
            f"client_name must be a str of printable ASCII without spaces, got {name!r}"
        )
    # Read at each TLS handshake: a missing file failed every connect, reported as
    # a network error ("network:ConnectionError"), not as the option.
    for key, exists in (
        ("ssl_ca_certs", os.path.isfile),
        ("ssl_certfile", os.path.isfile),
        ("ssl_keyfile", os.path.isfile),
        ("ssl_ca_path", os.path.isdir),
    ):
        path = kwargs.get(key)
        if isinstance(path, (str, os.PathLike)) and not exists(path):
            what = "directory" if exists is os.path.isdir else "file"
            raise ValueError(f"{key}: no such {what} {os.fspath(path)!r}")
    # Options that failed every connect (TypeError from getaddrinfo, LookupError,
    # AttributeError, "network:ConnectionError"), not naming themselves.
    host = kwargs.get("host")
    if host is not None and "path" not in kwargs and not isinstance(host, str):
        raise TypeError(f"host must be a str, got {host!r} ({type(host).__name__})")
    for key, lookup in (("encoding", codecs.lookup), ("encoding_errors", codecs.lookup_error)):
        value = kwargs.get(key)
        if value is None:
            continue
        try:
            lookup(value)
        except (LookupError, TypeError):
            raise ValueError(f"{key}: unknown {key.replace('_', ' ')} {value!r}") from None
    keepalive = kwargs.get("socket_keepalive_options")
    if keepalive is not None and not isinstance(keepalive, Mapping):
        raise TypeError(
            f"socket_keepalive_options must be a mapping (option: value), got {keepalive!r}"
        )
    read_size = kwargs.get("socket_read_size")
    if read_size is not None:
        _number("socket_read_size", read_size, minimum=1, integer=True)
    _check_tls_context_options(kwargs)
    decode = kwargs.get("decode_responses")
    if decode is not None and not isinstance(decode, int):  # a str such as "no" is truthy
        raise TypeError(
            f"decode_responses must be a bool, got {decode!r} ({type(decode).__name__})"
        )
    retry = kwargs.get("retry")
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"retry must be a redis.retry.Retry or None, got {retry!r}")


def _check_tls_context_options(kwargs: dict[str, Any]) -> None:
    """ssl_min_version / ssl_ciphers as the TLS context takes them at each handshake
    (a bad one failed every connect: ValueError, TypeError or network:ConnectionError)."""
    version, ciphers = kwargs.get("ssl_min_version"), kwargs.get("ssl_ciphers")
    if version is None and not ciphers:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if version is not None:
        try:
            context.minimum_version = version
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"ssl_min_version must be an ssl.TLSVersion (TLSVersion.TLSv1_2, ...), "
                f"got {version!r}"
            ) from None
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except (TypeError, ssl.SSLError):
            raise ValueError(
                f"ssl_ciphers selects no cipher (OpenSSL cipher list), got {ciphers!r}"
            ) from None


_HImportRegistry: Callable[[], Any] | None
try:  # redis-py >= 8.1: one registry per pool, shared by its connections
    from redis.himport import HImportRegistry as _HImportRegistry
except ImportError:  # pragma: no cover - older redis-py
    _HImportRegistry = None

_DriverInfo: Callable[..., Any] | None
try:  # redis-py >= 7.1
    from redis.driver_info import DriverInfo as _DriverInfo
except ImportError:  # pragma: no cover - older redis-py
    _DriverInfo = None

_DRIVER_ARGS = frozenset({"driver_info", "lib_name", "lib_version"})


@cache
def _lib_version() -> str:
    """redis-py's version, read from its package metadata once per process."""
    from redis.utils import get_lib_version

    return str(get_lib_version())


def _accepts(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes a keyword argument ``name``."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - a C-level constructor
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _trial_connection(cls: type[Connection], kwargs: dict[str, Any], options: Any) -> None:
    """Build one (unconnected) connection, so that a bad option fails here and
    names itself, not at the first borrow."""
    try:
        cls(**kwargs)
        return
    except (TypeError, ValueError, RedisError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        detail = str(exc)
    # Which of the caller's options is it? Try each alone on top of the rest.
    culprit = ""
    base = {k: v for k, v in kwargs.items() if k not in options}
    try:
        cls(**base)
    except Exception:
        options = ()  # the URL's own options are bad: redis-py's message names them
    for key in options:
        if key not in kwargs:  # connection_class: not a connection argument
            continue
        try:
            cls(**base, **{key: kwargs[key]})
        except Exception:
            shown = "***" if key in _SECRET_OPTIONS else repr(kwargs[key])
            culprit = f" {key}={shown}"
            break
    raise kind(f"RedisPool: bad connection option{culprit}: {detail}")


@dataclass(frozen=True)
class RedisPoolStats(PoolStats):
    """``PoolStats`` plus command counts (and the read pool's, if any)."""

    commands: int = 0
    command_errors: int = 0
    read: RedisPoolStats | None = None


_POOLS: weakref.WeakSet[RedisPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):  # a lock held by a thread of the parent would never open
        pool._stats_lock = threading.RLock()
        pool._reset_command_counts()  # counted since the fork, as the pool's own numbers


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ConnectionPool(ObjectPool[Connection]):
    """Connections made by ``connect(deadline)``, vetted by ``is_alive`` on every borrow."""

    timeout_error = RedisPoolTimeout
    too_many_waiters_error = RedisTooManyWaiters
    closed_error = RedisPoolClosed
    noun = "connection"

    def __init__(self, connect: Callable[[float | None], Connection], **options: Any) -> None:
        super().__init__(partial(connect, None), **options)
        self._connect = connect
        self._validate = is_alive  # no round trip; a waiter handed a dead one keeps its place

    def _make(self, deadline: float | None) -> Connection:
        return self._connect(deadline)


class RedisPool:
    """A fair, bounded pool of checked redis-py connections.

    Options: ``min_size`` (5, or ``max_size`` if smaller), ``max_size`` (20),
    ``timeout`` (4 s: how long a borrow waits), ``connect_timeout`` (2 s),
    ``socket_timeout`` (2 s per read or write), ``max_idle_time`` (300 s),
    ``max_lifetime`` (1800 s), ``health_check_interval`` (30 s: PING a connection
    idle that long before lending it; when given, also redis-py's own check on the
    connection, so a long-held one PINGs too), ``max_waiting`` (0: unbounded),
    ``dns_ttl`` (30 s),
    ``read_url`` (a replica for ``reader()``), ``name``; any other keyword is a
    redis-py connection option (``password``, ``username``, ``db``, ``ssl_*``,
    ``client_name``, ``decode_responses``, ``protocol``, ``retry``, ...) and
    overrides the URL.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        min_size: int | None = None,
        max_size: int = 20,
        timeout: float | None = 4.0,
        connect_timeout: float | None = _DEFAULT_TIMEOUT,
        socket_timeout: float | None = _DEFAULT_TIMEOUT,
        max_idle_time: float = 300.0,
        max_lifetime: float = 1800.0,
        health_check_interval: float | None = None,
        max_waiting: int = 0,
        dns_ttl: float = 30.0,
        read_url: str | None = None,
        name: str | None = None,
        **options: Any,
    ) -> None:
        pool_opts = {k: options.pop(k) for k in list(options) if k in _POOL_OPTIONS}
        # Reconnect probes: quick at first (a restart takes well under a second),
        # capped at 1 s so recovery is noticed within about a second.
        pool_opts.setdefault("backoff_base", 0.05)
        pool_opts.setdefault("backoff_cap", 1.0)
        for key, hint in _REFUSED.items():
            if key in options:
                raise TypeError(f"RedisPool got an unsupported option {key!r}: {hint}")
        connect_name = "connect_timeout"
        if "socket_connect_timeout" in options:
            connect_timeout = options.pop("socket_connect_timeout")
            connect_name = "socket_connect_timeout"
        given_timeouts = connect_timeout, socket_timeout  # (the read pool's URL may differ)
        _number("dns_ttl", dns_ttl, minimum=0)
        if min_size is None:  # follows a small max_size down
            min_size = DEFAULT_MIN_SIZE
            if isinstance(max_size, int) and not isinstance(max_size, bool):
                min_size = max(0, min(min_size, max_size))
        if read_url is not None:
            try:
                parse_redis_url(read_url)
            except (TypeError, ValueError) as exc:  # its messages are redacted
                raise type(exc)(f"read_url: {exc}") from None
        kwargs = parse_redis_url(url)
        # A timeout not given as an argument: the URL's, if it has one.
        timeout_name = "socket_timeout"
        if connect_timeout is _DEFAULT_TIMEOUT and "socket_connect_timeout" in kwargs:
            connect_timeout = kwargs["socket_connect_timeout"]
            connect_name = "the url's socket_connect_timeout"
        if socket_timeout is _DEFAULT_TIMEOUT and "socket_timeout" in kwargs:
            socket_timeout = kwargs["socket_timeout"]
            timeout_name = "the url's socket_timeout"
        _socket_timeout(connect_name, connect_timeout)
        _socket_timeout(timeout_name, socket_timeout)
        if isinstance(connect_timeout, _Default):
            connect_timeout = float(connect_timeout)
        if isinstance(socket_timeout, _Default):
            socket_timeout = float(socket_timeout)
        kwargs.update(options)
        if health_check_interval is None:  # maybe ?health_check_interval= in the URL
            health_check_interval = kwargs.get("health_check_interval")
        _number("health_check_interval", health_check_interval, minimum=0, none_ok=True)
        _check_connection_options(kwargs)
        cls = kwargs.pop("connection_class", None) or Connection
        self._given_class: type[Connection] = cls  # what ConnectionPool reports
        self._conn_class: type[Connection] = pooled_class(cls)
        kwargs["socket_timeout"] = socket_timeout
        kwargs["socket_connect_timeout"] = connect_timeout
        # Checked on borrow (a PING only after that long idle); given by the user,
        # also on the connection, as redis-py does: a long-held connection (pubsub,
        # pipeline, lock) PINGs before a command after that long without a reply.
        kwargs["health_check_interval"] = health_check_interval or 0
        given_interval = health_check_interval
        if health_check_interval is None:
            health_check_interval = DEFAULT_HEALTH_CHECK_INTERVAL
        if (
            _HImportRegistry is not None  # redis-py >= 8.1
            and kwargs.get("himport_registry") is None
            and _accepts(self._conn_class, "himport_registry")
        ):
            kwargs["himport_registry"] = _HImportRegistry()
        self._driver_info: Any = None
        if (
            _DriverInfo is not None  # redis-py >= 7.1 reads its package metadata again
            and not _DRIVER_ARGS & kwargs.keys()  # for each connection (0.3 ms) unless
            and _accepts(self._conn_class, "driver_info")  # given the version: give it
        ):
            kwargs["driver_info"] = self._driver_info = _DriverInfo(lib_version=_lib_version())
        self.url = redact_url(url)
        self.name = name or self.url
        self._socket_timeout = socket_timeout
        self._ping_timeout = connect_timeout or socket_timeout or 2.0
        self._health_check_interval = float(health_check_interval)
        _trial_connection(self._conn_class, kwargs, options)
        self.connection_kwargs: dict[str, Any] = kwargs
        self._dns = DNSCache(ttl=dns_ttl) if issubclass(cls, Connection) else None
        self._stats_lock = threading.RLock()
        self._close_hooks = CloseHooks()
        _POOLS.add(self)  # its lock is remade in a forked child
        self._reset_command_counts()
        self._pool = _ConnectionPool(
            self._new_connection,
            destroy=self._destroy_connection,
            check=self._ping,
            check_interval=self._health_check_interval,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_idle_time=max_idle_time,
            max_lifetime=max_lifetime,
            name=self.name,
            **pool_opts,
        )
        # The hot path: a borrow checks the connection without a round trip
        # (_ConnectionPool._validate); _get(wait) bounds the wait.
        self._get: Callable[..., Connection] = self._pool.borrow
        self._release = self._pool.release
        self._adapter = ConnectionPool._of(self)
        self._redis: redis.Redis | None = None
        self._proto: dict[str, Any] | None = None
        self.read_pool: RedisPool | None = None
        if read_url is not None:
            self.read_pool = RedisPool(
                read_url,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                connect_timeout=given_timeouts[0],
                socket_timeout=given_timeouts[1],
                max_idle_time=max_idle_time,
                max_lifetime=max_lifetime,
                health_check_interval=given_interval,
                max_waiting=max_waiting,
                dns_ttl=dns_ttl,
                name=f"{self.name} (read)",
                **pool_opts,
                **options,
            )

    @classmethod
    def from_env(
        cls, prefix: str = "REDIS_", environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> RedisPool:
        """A pool configured from ``{prefix}URL`` and friends (see ``env_options``)."""
        opts = env_options(prefix, environ)
        opts.update(overrides)
        sentinel = sentinel_env(prefix, environ)
        if sentinel is not None:
            return cls.sentinel(**sentinel, **opts)
        return cls(**opts)

    @classmethod
    def sentinel(
        cls,
        sentinels: Any,
        service_name: str,
        *,
        role: str = "primary",
        sentinel_kwargs: dict[str, Any] | None = None,
        read_from_replicas: bool = False,
        **options: Any,
    ) -> RedisPool:
        """A pool on the primary (``role="replica"``: a replica) of a Sentinel service.

        ``sentinels``: ``[(host, port), ...]`` or ``"host:port,host:port"``;
        ``sentinel_kwargs``: the sentinels' own connection options (``password``,
        ``username``, ``ssl``, timeouts: 1 s by default); ``read_from_replicas``:
        ``reader()`` uses a pool of replicas. Other options are as for
        ``RedisPool`` and apply to the data nodes (``url`` may give their
        credentials, db and scheme; its host is ignored). It follows failovers
        (see ``redispool.sentinel``); with ``background=False`` there is no
        ``+switch-master`` listener thread, and a switch is noticed only through
        READONLY, the ROLE check and discovery.
        """
        from .sentinel import sentinel_pool

        return sentinel_pool(
            cls,
            sentinels,
            service_name,
            role=role,
            sentinel_kwargs=sentinel_kwargs,
            read_from_replicas=read_from_replicas,
            **options,
        )

    # -- connections -------------------------------------------------------

    def _new_connection(self, deadline: float | None = None) -> Connection:
        """Connect; ``deadline``: that of a borrower who gave its own wait, which
        bounds the connect and handshake instead of the configured timeouts."""
        kwargs = self.connection_kwargs
        if deadline is not None:
            # A borrower with a short wait (a helper's deadline) must not sit out
            # the full connect + handshake timeouts against a stalled server.
            left = max(0.001, deadline - time.monotonic())
            kwargs = dict(kwargs)
            for key in ("socket_timeout", "socket_connect_timeout"):
                if kwargs.get(key) is None or kwargs[key] > left:
                    kwargs[key] = left
        conn: Any = self._conn_class(**kwargs)
        conn._rp_dns = self._dns
        conn._rp_deadline = deadline  # for a connection class that asks others first (Sentinel)
        conn.connect()
        if kwargs is not self.connection_kwargs:  # back to the normal timeouts
            conn.socket_timeout = self.connection_kwargs.get("socket_timeout")
            conn.socket_connect_timeout = self.connection_kwargs.get("socket_connect_timeout")
            set_io_timeout(conn, conn.socket_timeout)
        conn._rp_commands = conn._rp_errors = 0  # the handshake is not the user's
        with self._stats_lock:
            self._counted.add(conn)
        return conn  # type: ignore[no-any-return]

    def _reset_command_counts(self) -> None:
        """``commands``/``command_errors`` from zero: the retired connections'
        sums plus ``_counted``, the connections not yet retired (changed together
        under ``_stats_lock``, so a connection leaving is never counted in neither)."""
        self._retired_commands = 0
        self._retired_errors = 0
        # The most stats() showed: a reconnect's handshake counts while it runs
        # (see connection._rp_connect), and a counter shown never goes down.
        self._commands_shown = self._errors_shown = 0
        self._counted: weakref.WeakSet[Connection] = weakref.WeakSet()
        # (an RLock: a signal handler or finalizer may call stats() in the
        # middle of the bookkeeping, in the thread that holds it)

    def _destroy_connection(self, conn: Connection) -> None:
        with self._stats_lock:
            if conn in self._counted:
                self._counted.discard(conn)
                self._retired_commands += conn._rp_commands  # type: ignore[attr-defined]
                self._retired_errors += conn._rp_errors  # type: ignore[attr-defined]
        conn.disconnect()

    def _ping(self, conn: Connection) -> bool:
        """The idle check: alive, then a PING with a short timeout."""
        if not is_alive(conn):
            return False
        conn.send_command("PING", check_health=False)
        reply = conn.read_response(timeout=self._ping_timeout)
        return reply in (b"PONG", "PONG")

    def _put(self, conn: Any) -> None:
        """Return a connection; anything short of clean is discarded."""
        if not conn._rp_state and not conn._rp_pending and conn._sock is not None:
            self._release(conn)
            return
        clean = False
        try:
            if conn._rp_state & TIMEOUT_SET:
                conn._rp_state &= ~TIMEOUT_SET
                try:
                    set_io_timeout(conn, self._socket_timeout)
                except OSError:
                    conn.disconnect()
            clean = conn.is_clean()
        finally:  # (an async exception here still gives it back: discarded)
            if clean:
                self._pool.release(conn)
            else:
                self._pool.release(conn, discard=True, reason="dirty")

    def _set_op_timeout(self, conn: Any, timeout: float) -> None:
        conn._rp_timeout = timeout  # re-applied if redis-py reconnects in the block
        conn._rp_state |= TIMEOUT_SET
        set_io_timeout(conn, timeout, temporary=True)

    # -- borrowing ---------------------------------------------------------

    def connection(
        self, timeout: float | None = None, *, wait: float | None = None
    ) -> _ConnectionLease:
        """``with pool.connection() as conn:`` a checked ``redis.Connection``.

        ``timeout`` bounds each read and write in the block (default:
        ``socket_timeout``); ``wait`` bounds the wait for a connection.
        """
        _check_lease(timeout, wait)
        return _ConnectionLease(self, timeout, wait)

    def client(self, timeout: float | None = None, *, wait: float | None = None) -> _ClientLease:
        """``with pool.client() as r:`` a ``redis.Redis`` on one borrowed connection.

        Pipelines, transactions and WATCH work on it; ``r.pubsub()`` borrows a
        connection of its own (close it when done). ``timeout`` bounds
        each command (a command that times out raises ``redis.TimeoutError`` and
        its connection is discarded); ``wait`` bounds the wait for a connection.
        Using ``r`` after the block raises instead of touching another caller's
        connection.
        """
        _check_lease(timeout, wait)
        return _ClientLease(self, timeout, wait)

    def writer(self, timeout: float | None = None, *, wait: float | None = None) -> _ClientLease:
        """A client on the primary (the same as ``client()``)."""
        return self.client(timeout, wait=wait)

    def reader(self, timeout: float | None = None, *, wait: float | None = None) -> _ClientLease:
        """A client on the read pool (``read_url``), or on the primary without one."""
        return (self.read_pool or self).client(timeout, wait=wait)

    def _prototype(self) -> dict[str, Any]:
        proto = self._proto
        if proto is None:
            template = PinnedRedis(connection_pool=self._adapter)  # type: ignore[arg-type]
            proto = dict(vars(template))
            proto["connection"] = None
            self._proto = proto
        return proto

    @property
    def redis(self) -> redis.Redis:
        """A ``redis.Redis`` whose every command borrows from the pool and returns
        (with no window where an exception keeps the connection: ``_dropin``)."""
        if self._redis is None:
            self._redis = DropInRedis(connection_pool=self._adapter)
        return self._redis

    def as_redis_pool(self) -> ConnectionPool:
        """This pool as a redis-py connection pool: ``redis.Redis(connection_pool=...)``."""
        return self._adapter

    # -- lifecycle and numbers ----------------------------------------------

    def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Start filling to ``min_size`` (with ``wait``: block until done)."""
        self._pool.open(wait=wait, timeout=timeout)
        if self.read_pool is not None:
            self.read_pool.open(wait=wait, timeout=timeout)

    def on_close(self, hook: Callable[[], object]) -> None:
        """Run ``hook()`` at the start of ``close()``, while the pool still works: a
        helper that buffers writes flushes there, whatever order exit hooks run in.
        Hooks run once, in order; a bound method is held weakly (it does not keep
        its object alive); an exception is logged, not raised."""
        self._close_hooks.add(hook)

    def close(self, timeout: float = 5.0) -> None:
        """Run the ``on_close`` hooks, then close the pool(s): idle connections now,
        borrowed ones when returned."""
        self._close_hooks.run(self.name)
        self._pool.close(timeout)
        if self.read_pool is not None:
            self.read_pool.close(timeout)

    @property
    def closed(self) -> bool:
        return self._pool.closed

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        self._pool.resize(min_size, max_size)

    def drain(self) -> None:
        """Replace every connection (idle now, borrowed on return)."""
        self._pool.drain()

    def stats(self) -> RedisPoolStats:
        """The pool's numbers plus ``commands`` and ``command_errors``."""
        base = self._pool.stats()
        with self._stats_lock:
            commands, errors = self._retired_commands, self._retired_errors
            for conn in list(self._counted):
                commands += conn._rp_commands  # type: ignore[attr-defined]
                errors += conn._rp_errors  # type: ignore[attr-defined]
            commands = self._commands_shown = max(commands, self._commands_shown)
            errors = self._errors_shown = max(errors, self._errors_shown)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(PoolStats)}
        return RedisPoolStats(
            **fields,
            commands=commands,
            command_errors=errors,
            read=self.read_pool.stats() if self.read_pool is not None else None,
        )

    def __enter__(self) -> RedisPool:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self._pool
        return (
            f"<RedisPool {self.url!r} size={s._size} in_use={len(s._in_use)} "
            f"max_size={s._max_size}{' closed' if s.closed else ''}>"
        )


def _check_lease(timeout: float | None, wait: float | None) -> None:
    """Validate ``connection()``/``client()`` arguments before anything is borrowed."""
    if timeout is not None:
        _socket_timeout("timeout", timeout)
    if wait is not None:
        _number("wait", wait, minimum=0)


@with_out
class _ConnectionLease:
    __slots__ = ("_conn", "_pool", "_timeout", "_wait")
    _out: type[_ConnectionLease]  # (see _poolparts.with_out)
    _gone: type[_ConnectionLease]

    def __init__(self, pool: RedisPool, timeout: float | None, wait: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._wait = wait

    def __enter__(self) -> Connection:
        conn: Connection | None = None
        try:
            self._conn = conn = self._pool._get(self._wait)
            if self._timeout is not None:
                self._pool._set_op_timeout(conn, self._timeout)
            self.__class__ = self._out  # entered (see _poolparts._Out)
            return conn
        except BaseException:  # (Ctrl-C too) never keep a connection nobody will return
            self.__class__ = _ConnectionLease  # not entered after all (see _poolparts._Out)
            if conn is not None:
                self._pool._put(conn)
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        # (as _ClientLease.__exit__)
        if self.__class__ is self._gone:  # its finalizer queued the connection (see _Out)
            return
        self.__class__ = _ConnectionLease  # exited (before any call: see _poolparts._Out)
        pool, conn = self._pool, self._conn
        objects = pool._pool
        lent: Any = None
        uses = 0
        try:
            lent = objects._in_use.get(id(conn))
            if lent is not None:
                uses = lent.uses
            pool._put(conn)
        except BaseException:
            if objects._lent_still(conn, lent, uses):
                objects.release(conn, discard=True, reason="dirty")
            raise

    def _abandon(self) -> None:  # (see _poolparts._Out)
        abandon(self._pool._pool, self._conn)


@with_out
class _ClientLease:
    __slots__ = ("_client", "_conn", "_pinned", "_pool", "_timeout", "_wait")
    _out: type[_ClientLease]  # (see _poolparts.with_out)
    _gone: type[_ClientLease]

    def __init__(self, pool: RedisPool, timeout: float | None, wait: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._wait = wait

    def __enter__(self) -> redis.Redis:
        pool = self._pool
        proto = pool._proto or pool._prototype()
        conn = None
        try:
            conn = self._conn = pool._get(self._wait)
            if self._timeout is not None:
                pool._set_op_timeout(conn, self._timeout)
            pinned = self._pinned = PinnedPool(pool._adapter, conn)
            client = object.__new__(PinnedRedis)
            client.__dict__.update(proto)
            client.connection = conn
            client.connection_pool = pinned  # type: ignore[assignment]
            self._client = client
            self.__class__ = self._out  # entered (see _poolparts._Out)
            return client
        except BaseException:  # (Ctrl-C too) never keep a connection nobody will return
            self.__class__ = _ClientLease  # not entered after all (see _poolparts._Out)
            if conn is not None:
                pool._put(conn)
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.__class__ is self._gone:  # its finalizer queued the connection (see _Out)
            return
        self.__class__ = _ClientLease  # exited (before any call: see _poolparts._Out)
        self._pinned._conn = None  # a stale client or pipeline now raises
        self._client.connection = None
        # pool._put(conn), and if an exception (a signal handler raising at a call,
        # a function's first line included) cuts it short before the connection is
        # back, it goes back all the same, discarded. (Inline: a helper's own first
        # line would be a window again.)
        pool, conn = self._pool, self._conn
        objects = pool._pool
        lent: Any = None
        uses = 0
        try:
            lent = objects._in_use.get(id(conn))
            if lent is not None:
                uses = lent.uses
            pool._put(conn)
        except BaseException:
            if objects._lent_still(conn, lent, uses):
                objects.release(conn, discard=True, reason="dirty")
            raise

    def _abandon(self) -> None:  # (see _poolparts._Out)
        self._pinned._conn = None  # a client kept past the block refuses, as after __exit__
        self._client.connection = None
        abandon(self._pool._pool, self._conn)
