"""How the demo gets its Redis connections, so the same app can be measured three
ways (``DEMO_POOL``):

* ``pooled``: one ``RedisPool`` per worker (the library's way);
* ``redis-py``: redis-py's own ``BlockingConnectionPool`` per worker, same size;
* ``per-request``: a new redis-py client and connection for every request (the
  anti-pattern, as such apps write it: ``redis.Redis.from_url(url)`` per request).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import redis
from flask import g, has_request_context
from redis.exceptions import ConnectionError as RedisConnectionError

from ..redis_errors import RedisPoolTimeout
from ..redis_pool import RedisPool

__all__ = ["MODES", "PerRequestRedis", "RedisPyBlockingPool"]

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
        super().close(timeout)  # the helpers' close hooks flush on the blocking pool first
        self._blocking.disconnect()


Connect = Callable[[], "tuple[redis.Redis, Callable[[], object]]"]


def _plain_client(url: str) -> tuple[redis.Redis, Callable[[], object]]:
    """A new redis-py client with its own connection pool, and its close."""
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    return client, client.close


class PerRequestRedis(RedisPool):
    """A ``RedisPool`` look-alike for the anti-pattern: each request gets a new
    redis-py client, and so a new connection, at its first Redis call, closed when
    the request ends (``end_request``); a call outside a request (a background
    flush, a cache write-back) gets one of its own. For comparisons only: a
    block's ``timeout`` and ``wait`` are not applied (each command has the
    client's 2 s socket timeout, as in the ``redis-py`` mode). ``connect`` makes a
    client and its close (default: ``redis.Redis.from_url``)."""

    def __init__(self, url: str, *, connect: Connect | None = None) -> None:
        super().__init__(url, min_size=0, max_size=1, background=False)
        self._connect: Connect = connect or partial(_plain_client, url)
        self._key = f"_redispool_per_request_{id(self)}"

    @contextlib.contextmanager
    def client(  # type: ignore[override]
        self, timeout: float | None = None, *, wait: float | None = None
    ) -> Iterator[redis.Redis]:
        """The request's client (made now if this is its first call)."""
        if has_request_context():
            held = g.get(self._key)
            if held is None:
                held = self._connect()
                setattr(g, self._key, held)
            yield held[0]
            return
        client, close = self._connect()
        try:
            yield client
        finally:
            close()

    def end_request(self) -> None:
        """Close the request's client, if it made one."""
        held = g.pop(self._key, None)
        if held is not None:
            held[1]()
