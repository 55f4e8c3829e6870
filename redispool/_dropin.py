"""``RedisPool.redis``: a ``redis.Redis`` whose every command borrows a connection
and gives it back, with no moment where an exception loses it.

redis-py's command path (``Redis._execute_command``) borrows from its pool before
the ``try`` whose ``finally`` gives the connection back, and gives it back with a
call whose first line is again a window. A signal handler raising in between
(Ctrl-C, a Celery soft time limit, gunicorn's graceful stop) kept the connection
borrowed for good: one slot fewer until the process ends. Here the borrow is
inside the ``try`` and the return is inline, as in ``pool.client()``'s lease;
redis-py's path runs on a one-command copy of the client pinned to the
connection (as ``pool.client()``'s), so it neither borrows nor returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from redis.client import Monitor, Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from .redis_adapter import ConnectionPool

if TYPE_CHECKING:
    from .redis_pool import RedisPool

__all__ = ["DropInRedis"]

_new = object.__new__


class _OneCommand(redis.Redis):
    """The client one command runs on (its connection pinned)."""

    def __del__(self) -> None:  # redis-py's would give the connection back again
        pass


class _Monitor(Monitor):
    """``pool.redis.monitor()``: redis-py's borrows when made and gives back in
    ``__exit__``, which does not run when MONITOR fails in ``__enter__`` (no
    permission, a timeout), nor for a monitor never entered: the connection
    goes back then too (once)."""

    _rp_done = False

    def __enter__(self) -> _Monitor:
        try:
            super().__enter__()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *args: Any) -> None:
        if not self._rp_done:  # (a second release of it would be ignored anyway)
            super().__exit__(*args)
            self._rp_done = True

    def __del__(self) -> None:
        try:
            if not self._rp_done and getattr(self, "connection", None) is not None:
                self.__exit__()
        except Exception:  # (as redis-py's PubSub.__del__)
            pass


class _DropInPipeline(Pipeline):
    """A pipeline of ``pool.redis``. redis-py's ``reset()`` gives the connection
    back after its UNWATCH, and not at all if that fails other than with a
    ``ConnectionError`` (a ``TimeoutError`` against a stalled server, a signal):
    the slot was lost for good. Here it goes back whatever happens (discarded
    unless clean)."""

    def reset(self) -> None:  # type: ignore[override]
        conn = self.connection
        if not (self.watching and conn is not None):
            super().reset()
            return
        self.watching = False  # (redis-py's reset below sends no second UNWATCH)
        try:
            conn.send_command("UNWATCH")
            conn.read_response()
        except RedisConnectionError:
            conn.disconnect()  # (as redis-py: the WATCH goes with the session)
        finally:
            super().reset()


class DropInRedis(redis.Redis):
    """The client ``RedisPool.redis`` returns (one per pool, shared by threads).

    Made with ``redis.Redis``'s arguments, as libraries copy a client
    (``type(client)(connection_pool=...)``, ``from_url``; RQ's scheduler), it
    is one: on a ``RedisPool``'s ``ConnectionPool`` its commands borrow as
    here; on another pool, or holding one connection, they are redis-py's."""

    _rp_pool: RedisPool | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        adapter: Any = self.connection_pool
        if type(adapter) is ConnectionPool and self.connection is None:
            self._rp_pool = adapter.redis_pool

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        if self._rp_pool is None:  # (not on a RedisPool: see the class)
            return super().pipeline(transaction, shard_hint)
        return _DropInPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )

    def client(self) -> redis.Redis:
        """As redis-py's: a client holding one connection until ``close()``."""
        return redis.Redis(connection_pool=self.connection_pool, single_connection_client=True)

    def monitor(self) -> Monitor:
        """As redis-py's, giving its connection back however ``__enter__`` ends."""
        return _Monitor(self.connection_pool)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        pool = self._rp_pool
        if pool is None:  # (not on a RedisPool: see the class)
            return super().execute_command(*args, **options)
        objects = pool._pool
        conn = None
        try:
            conn = pool._get()
            one = _new(_OneCommand)
            one.__dict__.update(self.__dict__)
            one.connection = conn
            return one._execute_command(*args, **options)
        finally:
            # (as _ConnectionLease.__exit__: a helper's own first line would be a
            # window again) What it was lent as is read before anything can
            # raise; an exception that cuts the return short gives it back discarded.
            if conn is not None:
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
