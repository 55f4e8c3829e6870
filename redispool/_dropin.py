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

from .redis_adapter import ConnectionPool

if TYPE_CHECKING:
    from .redis_pool import RedisPool

__all__ = ["DropInRedis"]

_new = object.__new__


class _OneCommand(redis.Redis):
    """The client one command runs on (its connection pinned)."""

    def __del__(self) -> None:  # redis-py's would give the connection back again
        pass


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

    def client(self) -> redis.Redis:
        """As redis-py's: a client holding one connection until ``close()``."""
        return redis.Redis(connection_pool=self.connection_pool, single_connection_client=True)

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
