"""How the demo gets its Redis connections, so the same app can be measured three
ways (``DEMO_POOL``):

* ``pooled``: one ``RedisPool`` per worker (the library's way);
* ``redis-py``: redis-py's own ``BlockingConnectionPool`` per worker, same size;
* ``per-request``: a new connection for every request (the anti-pattern).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ..redis_errors import RedisPoolTimeout
from ..redis_pool import RedisPool

__all__ = ["MODES", "RedisPyBlockingPool"]

MODES = ("pooled", "redis-py", "per-request")


class RedisPyBlockingPool(RedisPool):
    """A ``RedisPool`` look-alike whose clients run on redis-py's
    ``BlockingConnectionPool``: for comparisons only (no liveness check, no
    fair hand-off, no dirty-connection tracking; that is the point)."""

    def __init__(self, url: str, *, max_size: int = 20, timeout: float = 4.0) -> None:
        super().__init__(url, min_size=0, max_size=1, background=False)
        self._blocking = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_size, timeout=timeout, socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )  # fmt: skip
        self._client = redis.Redis(connection_pool=self._blocking)

    @contextlib.contextmanager
    def client(  # type: ignore[override]
        self, timeout: float | None = None, *, wait: float | None = None
    ) -> Iterator[redis.Redis]:
        """A ``redis.Redis`` on the blocking pool; its "no connection available"
        becomes a ``RedisPoolTimeout`` so helpers treat saturation alike."""
        try:
            yield self._client
        except RedisConnectionError as exc:
            if "No connection available" in str(exc):
                raise RedisPoolTimeout(str(exc)) from None
            raise

    def close(self, timeout: float = 5.0) -> None:
        self._blocking.disconnect()
        super().close(timeout)
