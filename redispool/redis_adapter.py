"""redis-py ``ConnectionPool`` look-alikes backed by a ``RedisPool``.

``ConnectionPoolAdapter`` lets unmodified code (and libraries such as limits,
Flask-Caching or RQ) use the pool through ``redis.Redis(connection_pool=...)``.
``PinnedPool`` serves one borrowed connection to a ``PinnedRedis`` (the client
``pool.client()`` yields) and its pipelines, and refuses once the block is over.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import redis
from redis.client import Pipeline, PubSub
from redis.connection import Connection

from .errors import PoolError

if TYPE_CHECKING:
    from .redis_pool import RedisPool

__all__ = ["ConnectionPoolAdapter", "PinnedPipeline", "PinnedPool", "PinnedRedis"]

log = logging.getLogger("redispool.redis")

try:  # redis-py >= 5
    from redis._parsers.encoders import Encoder
except ImportError:  # pragma: no cover - older layouts
    from redis.connection import Encoder  # type: ignore[attr-defined]


class ConnectionPoolAdapter:
    """The parts of redis-py's ``ConnectionPool`` interface that clients and
    libraries use, served by a ``RedisPool``."""

    def __init__(self, owner: RedisPool) -> None:
        self._owner = owner
        kwargs = owner.connection_kwargs
        self._encoder = Encoder(
            encoding=kwargs.get("encoding", "utf-8"),
            encoding_errors=kwargs.get("encoding_errors", "strict"),
            decode_responses=kwargs.get("decode_responses", False),
        )
        self.pid = os.getpid()
        self.cache = None
        self._himport: Any = None

    # What redis.Redis, Pipeline and PubSub call.
    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Connection:
        conn: Connection = self._owner._get()
        return conn

    def release(self, connection: Connection) -> None:
        if getattr(connection, "_rp_state", None) is None:  # not a pooled connection at all
            log.debug("release of a foreign object %r ignored", type(connection).__name__)
            return
        try:
            self._owner._put(connection)
        except ValueError:
            # Like redis-py: a connection this pool does not own is ignored.
            log.debug("release of a connection not borrowed from %r ignored", self._owner)

    def get_encoder(self) -> Any:
        return self._encoder

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        return self._owner.connection_kwargs

    @property
    def connection_class(self) -> type[Connection]:
        return self._owner._conn_class

    @property
    def max_connections(self) -> int:
        return self._owner._pool._max_size

    def get_protocol(self) -> Any:
        return self._owner.connection_kwargs.get("protocol")

    @property
    def himport_registry(self) -> Any:
        if self._himport is None:
            from redis.client import HImportRegistry  # type: ignore[attr-defined]

            self._himport = HImportRegistry()
        return self._himport

    # Lifecycle calls libraries make: replace connections, never close the shared pool.
    def reset(self) -> None:
        self._owner.drain()

    def disconnect(self, inuse_connections: bool = True) -> None:
        self._owner.drain()

    def close(self) -> None:
        self._owner.drain()

    def set_retry(self, retry: Any) -> None:
        self._owner.connection_kwargs["retry"] = retry
        self._owner.drain()

    def re_auth_callback(self, token: Any) -> None:
        raise NotImplementedError("re-authentication is not supported by redispool")

    def get_connection_count(self) -> list[tuple[int, dict[str, Any]]]:
        return [(self._owner.stats().size, {"pool": self._owner.name})]

    def make_connection(self) -> Connection:
        """A new connection outside the pool (the caller owns and closes it)."""
        return self._owner._conn_class(**self._owner.connection_kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._owner!r}>"


class PinnedPool:
    """Serves one borrowed connection, until the ``with`` block ends."""

    __slots__ = ("_adapter", "_conn")

    def __init__(self, adapter: ConnectionPoolAdapter, conn: Connection) -> None:
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
