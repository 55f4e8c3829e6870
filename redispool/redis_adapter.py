"""redis-py ``ConnectionPool`` look-alikes backed by a ``RedisPool``.

``ConnectionPool`` is the class to give any library that takes a redis-py pool
class or instance (``redis.Redis(connection_pool=...)``, Django's ``RedisCache``
``pool_class``, django-redis's ``CONNECTION_POOL_CLASS``, redis-py's cluster
``connection_pool_class``); ``RedisPool.as_redis_pool()`` returns one.
``PinnedPool`` serves one borrowed connection to a ``PinnedRedis`` (the client
``pool.client()`` yields) and its pipelines, and refuses once the block is over.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import warnings
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.client import Pipeline, PubSub
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import RedisError

from ._poolparts import abandon
from .config import parse_redis_url, redact_url
from .errors import PoolError

if TYPE_CHECKING:
    from .redis_pool import RedisPool

__all__ = [
    "ConnectionPool",
    "PinnedPipeline",
    "PinnedPool",
    "PinnedRedis",
]

log = logging.getLogger("redispool.redis")

try:  # redis-py >= 5
    from redis._parsers.encoders import Encoder
except ImportError:  # pragma: no cover - older layouts
    from redis.connection import Encoder  # type: ignore[attr-defined]

_CP = TypeVar("_CP", bound="ConnectionPool")

# redis-py pool arguments that configure features redispool does not provide.
_UNSUPPORTED = {
    "cache": "client-side caching",
    "cache_config": "client-side caching",
    "cache_factory": "client-side caching",
}
# Shown as <REDACTED> in repr, as redis-py does.
_SENSITIVE = frozenset(["password", "username", "ssl_password", "credential_provider"])
# Handed to a pool by redis-py's cluster client with maintenance notifications
# on "auto": redispool runs without them, as redis-py does for connection
# classes that cannot handle them.
_DROPPED = ("oss_cluster_maint_notifications_handler", "maint_notifications_pool_handler")


class ConnectionPool:
    """A redis-py-compatible connection pool, backed by a fair ``RedisPool``.

    ``ConnectionPool(connection_class=Connection, max_connections=None,
    timeout=4.0, **connection_kwargs)`` takes redis-py's arguments:
    ``max_connections`` is ``max_size``, ``timeout`` how long a borrow waits,
    everything else (``host``, ``port``, ``db``, ``password``, ``ssl_*``,
    ``socket_timeout``, ``health_check_interval``, ...) goes to the connections,
    and any ``RedisPool`` option (``min_size``, ``max_idle_time``, ``name``, ...)
    to the pool. ``from_url(url, **options)`` as in redis-py (the URL's values win).

    ``disconnect()``, ``reset()`` and ``close()`` close the connections (idle ones
    now, borrowed ones when returned) and open none until the pool is used again,
    which it can be, as redis-py's; ``redis_pool.close()`` ends it. Client options such as
    ``decode_responses`` belong here: ``redis.Redis(connection_pool=...)``
    ignores its own.
    """

    redis_pool: RedisPool

    def __init__(
        self,
        connection_class: type[Connection] | None = None,
        max_connections: int | None = None,
        **options: Any,
    ) -> None:
        from .redis_pool import RedisPool  # the pool imports this module

        for key, feature in _UNSUPPORTED.items():
            if options.get(key) is not None:
                raise RedisError(f"ConnectionPool: {key}= ({feature}) is not supported")
            options.pop(key, None)
        for key in _DROPPED:
            options.pop(key, None)
        cls = connection_class or Connection
        maint = options.pop("maint_notifications_config", None)
        _check_maint_notifications(maint, cls)
        if max_connections:  # as redis-py: None or 0 is the default
            if (
                isinstance(max_connections, bool)
                or not isinstance(max_connections, int)
                or max_connections < 1
            ):
                raise ValueError(
                    f'"max_connections" must be a positive integer, got {max_connections!r}'
                )
            if "max_size" in options:
                raise TypeError("ConnectionPool: give max_connections or max_size, not both")
            options["max_size"] = max_connections
        if options.get("health_check_interval") == 0:
            # redis-py's "no health checks" (its default, which libraries pass
            # explicitly): keep the borrow-time check at its default, not a PING
            # on every borrow as RedisPool(health_check_interval=0) means.
            del options["health_check_interval"]
        if not issubclass(cls, UnixDomainSocketConnection):
            options.setdefault("host", "localhost")
            options.setdefault("port", 6379)
        url = name = _display_url(cls, options)
        try:
            parse_redis_url(url)
        except ValueError:  # an odd host (or a relative socket path): RedisPool
            url = "redis://"  # names it from the options
            if not issubclass(cls, UnixDomainSocketConnection):
                name = url
        options.setdefault("name", name)
        pool = RedisPool(url, connection_class=cls, **options)
        self._attach(pool)
        self.maint_notifications_config = maint

    @classmethod
    def from_url(cls: type[_CP], url: str, **options: Any) -> _CP:
        """A pool for ``redis://``, ``rediss://`` or ``unix://`` ``url``; as in
        redis-py, the URL's values win over ``options`` (``connection_class`` excepted)."""
        url_options = parse_redis_url(url)  # errors are redacted
        if "connection_class" in options:
            url_options["connection_class"] = options["connection_class"]
        options.update(url_options)
        options.setdefault("name", redact_url(url))
        return cls(**options)

    @classmethod
    def _of(cls, pool: RedisPool) -> ConnectionPool:
        """The view ``RedisPool.as_redis_pool()`` returns."""
        self = cls.__new__(cls)
        self._attach(pool)
        self.maint_notifications_config = None
        return self

    def _attach(self, pool: RedisPool) -> None:
        self.redis_pool = pool
        kwargs = pool.connection_kwargs
        self._encoder = Encoder(
            encoding=kwargs.get("encoding", "utf-8"),
            encoding_errors=kwargs.get("encoding_errors", "strict"),
            decode_responses=kwargs.get("decode_responses", False),
        )
        self.pid = os.getpid()
        self.cache = None
        self._pool_id = secrets.token_hex(4)  # redis-py's metrics name pools by it
        # redis-py's cluster client holds this around the reconnect calls below.
        self._lock = threading.RLock()

    # What redis.Redis, Pipeline and PubSub call.
    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Connection:
        conn: Connection = self.redis_pool._get()
        return conn

    def release(self, connection: Connection) -> None:
        # An exception (a signal handler raising) past the first line, before the
        # connection is back: it goes back all the same, discarded (as the
        # leases' __exit__; what it was lent as is read before anything can raise).
        objects = self.redis_pool._pool
        lent: Any = None
        uses = 0
        try:
            if getattr(connection, "_rp_state", None) is None:  # not a pooled connection
                log.debug("release of a foreign object %r ignored", type(connection).__name__)
                return
            if objects._lock._is_owned():
                # From inside the pool's own bookkeeping, in the thread that holds
                # its lock: a finalizer (redis-py's PubSub, Pipeline or Monitor
                # collected there) or a signal handler. Queued for the pool to
                # destroy once out of it, as a lease dropped unexited (see _Out).
                abandon(objects, connection)
                return
            lent = objects._in_use.get(id(connection))
            if lent is not None:
                uses = lent.uses
            self.redis_pool._put(connection)
        except ValueError:
            # Like redis-py: a connection this pool does not own is ignored.
            log.debug("release of a connection not borrowed from %r ignored", self.redis_pool)
        except BaseException:
            if objects._lent_still(connection, lent, uses):
                objects.release(connection, discard=True, reason="dirty")
            raise

    def get_encoder(self) -> Any:
        return self._encoder

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        return self.redis_pool.connection_kwargs

    @property
    def connection_class(self) -> type[Connection]:
        """The class configured (connections are its tracking subclass)."""
        return self.redis_pool._given_class

    @property
    def max_connections(self) -> int:
        return self.redis_pool.stats().max_size

    def get_protocol(self) -> Any:
        return self.connection_kwargs.get("protocol")

    @property
    def himport_registry(self) -> Any:
        """redis-py 8.1+'s HIMPORT registry, shared by every connection."""
        registry = self.connection_kwargs.get("himport_registry")
        if registry is None:
            from redis.himport import HImportRegistry

            registry = self.connection_kwargs["himport_registry"] = HImportRegistry()
        return registry

    @himport_registry.setter
    def himport_registry(self, registry: Any) -> None:
        self.connection_kwargs["himport_registry"] = registry  # for new connections

    # Lifecycle calls libraries make: close the connections, keep the pool usable.
    def reset(self) -> None:
        """As ``disconnect()``."""
        self.disconnect()

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the idle connections now and the borrowed ones when returned
        (never under their borrower); open none, and run no upkeep thread, until
        the pool is used again (then it fills as usual). ``inuse_connections=False``:
        borrowed connections are left alone and kept when returned clean, as
        redis-py leaves them connected (upkeep goes on for them)."""
        self.redis_pool._pool._disconnect(bool(inuse_connections))

    def close(self) -> None:
        self.disconnect()

    def __enter__(self: _CP) -> _CP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_retry(self, retry: Any) -> None:
        """The retry policy of new connections and of every live one, borrowed too."""
        self.connection_kwargs["retry"] = retry
        for conn in self.redis_pool._pool.objects():
            conn.retry = retry

    def re_auth_callback(self, token: Any) -> None:
        raise NotImplementedError("re-authentication is not supported by redispool")

    def get_connection_count(self) -> list[tuple[int, dict[str, Any]]]:
        """Idle and used counts with OpenTelemetry attributes (for redis-py's metrics)."""
        stats = self.redis_pool.stats()
        try:  # redis-py >= 8
            from redis.observability import attributes as otel
        except ImportError:  # pragma: no cover - older redis-py
            return [(stats.size, {"pool": self.redis_pool.name})]
        base = otel.AttributeBuilder.build_base_attributes()
        base[otel.DB_CLIENT_CONNECTION_POOL_NAME] = otel.get_pool_name(self)  # type: ignore[arg-type]
        state = otel.DB_CLIENT_CONNECTION_STATE
        return [
            (stats.idle, {**base, state: otel.ConnectionState.IDLE.value}),
            (stats.in_use, {**base, state: otel.ConnectionState.USED.value}),
        ]

    def make_connection(self) -> Connection:
        """A new connection outside the pool (the caller owns and closes it)."""
        return self.redis_pool._conn_class(**self.connection_kwargs)

    # What redis-py's cluster client calls on a node's pool.
    def update_active_connections_for_reconnect(self, moving_address_src: Any = None) -> None:
        """Borrowed connections are replaced when returned (in-flight commands finish)."""
        self.redis_pool.drain()

    def disconnect_free_connections(self, moving_address_src: Any = None) -> None:
        """Idle connections are closed now (and borrowed ones replaced on return)."""
        self.redis_pool.drain()

    def update_maint_notifications_config(
        self, maint_notifications_config: Any, oss_cluster_maint_notifications_handler: Any = None
    ) -> None:
        """Maintenance notifications stay off (``enabled="auto"`` is accepted)."""
        _check_maint_notifications(maint_notifications_config, self.connection_class)
        self.maint_notifications_config = maint_notifications_config

    def maint_notifications_enabled(self) -> bool:
        return False

    def __repr__(self) -> str:
        """redis-py's form (secrets redacted) plus the pool's occupancy."""
        shown = ",".join(
            f"{k}={'<REDACTED>' if k in _SENSITIVE else v}"
            for k, v in self.connection_kwargs.items()
            if k != "himport_registry"
            and not (k == "driver_info" and v is not None and v is self.redis_pool._driver_info)
        )
        cls = self.connection_class
        s = self.redis_pool.stats()
        return (
            f"<{type(self).__module__}.{type(self).__name__}"
            f"(<{cls.__module__}.{cls.__name__}({shown})>) "
            f"size={s.size} in_use={s.in_use} max_size={s.max_size}>"
        )


def __getattr__(name: str) -> Any:
    if name == "ConnectionPoolAdapter":  # the name before 0.1
        warnings.warn(
            "redispool.redis_adapter.ConnectionPoolAdapter is deprecated: use "
            "redispool.ConnectionPool",
            DeprecationWarning,
            stacklevel=2,
        )
        return ConnectionPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_maint_notifications(config: Any, cls: type) -> None:
    if config is not None and getattr(config, "enabled", None) is True:
        raise RedisError(
            f"Maintenance notifications are not supported with {cls} by "
            f"redispool.ConnectionPool (use MaintNotificationsConfig(enabled=False) or 'auto')"
        )


def _display_url(cls: type[Connection], options: dict[str, Any]) -> str:
    """A password-free URL naming the server, for the pool's name and repr."""
    if issubclass(cls, UnixDomainSocketConnection):
        return f"unix://{options.get('path', '')}"
    scheme = "rediss" if issubclass(cls, SSLConnection) else "redis"
    host = str(options.get("host"))
    if ":" in host:
        host = f"[{host}]"
    db = f"/{options['db']}" if "db" in options else ""
    return f"{scheme}://{host}:{options.get('port')}{db}"


class PinnedPool:
    """Serves one borrowed connection, until the ``with`` block ends."""

    __slots__ = ("_adapter", "_conn")

    def __init__(self, adapter: ConnectionPool, conn: Connection) -> None:
        self._adapter = adapter
        self._conn: Connection | None = conn

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Connection:
        conn = self._conn
        if conn is None:
            raise PoolError(
                "this client was borrowed with `with pool.client()` and its block has "
                "ended; borrow again instead of keeping the client"
            )
        return conn

    def release(self, connection: Connection) -> None:
        """The ``with`` block gives the connection back, not the client."""

    def get_encoder(self) -> Any:
        return self._adapter._encoder

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        return self._adapter.connection_kwargs

    def get_protocol(self) -> Any:
        return self._adapter.get_protocol()

    def reset(self) -> None:
        """Nothing to reset: the block owns the connection."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Ignored: closing is the pool's job."""

    def close(self) -> None:
        """Ignored: closing is the pool's job."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)


class PinnedPipeline(Pipeline):
    """A pinned client's pipeline. A pipeline keeps the connection it used for
    WATCH; once the block is over that connection belongs to the pool (maybe to
    another borrower), so the pipeline refuses to run and forgets it on reset."""

    def _ended(self) -> bool:
        pinned: PinnedPool = self.connection_pool  # type: ignore[assignment]
        return pinned._conn is None

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        self.connection_pool.get_connection()  # raises PoolError after the block
        return super().immediate_execute_command(*args, **options)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.command_stack or self.watching:
            self.connection_pool.get_connection()  # raises PoolError after the block
        return super().execute(raise_on_error)

    def reset(self) -> None:  # type: ignore[override]
        if self.connection is not None and self._ended():
            self.connection = None  # not ours any more: no UNWATCH, no release
            self.watching = False
        super().reset()


class PinnedRedis(redis.Redis):
    """The client ``pool.client()`` yields: cloned from a template, never built."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> PinnedPipeline:
        return PinnedPipeline(
            self.connection_pool,
            self.response_callbacks,
            transaction,
            shard_hint,
        )

    def pubsub(self, **kwargs: Any) -> PubSub:
        """A ``PubSub`` on a connection of its own, borrowed from the pool (as
        ``pool.redis.pubsub()`` does): subscribing on the block's connection would
        make its next commands read pushed messages instead of their replies."""
        pool = self.connection_pool
        pool.get_connection()  # raises PoolError once the block has ended
        return PubSub(
            getattr(pool, "_adapter", pool), event_dispatcher=self._event_dispatcher, **kwargs
        )

    def __del__(self) -> None:
        """Nothing to close: the connection goes back to the pool with the block."""

    def close(self) -> None:
        """Ignored: the connection goes back to the pool when the block ends."""
