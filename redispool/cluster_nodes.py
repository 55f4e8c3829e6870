"""What ``RedisClusterPool`` puts under each node of redis-py's ``RedisCluster``:
the node pool (redispool's ``ConnectionPool`` with the errors redis-py's
recovery needs, and ordered waiting across nodes), the connection class
(ASKING is one-shot) and the errors.

* All connections of a node busy: ``ClusterPoolTimeout``, a
  ``MaxConnectionsError``, so redis-py does not refresh the topology; a node
  that cannot be reached, or whose pool was closed under a caller: the exact
  ``ConnectionError`` / ``TimeoutError`` redis-py refreshes and retries on.
* A multi-node pipeline never waits for a node while holding a connection of
  a node ordered after it, so two pipelines cannot wait for each other; a busy
  node pool does not make a pipeline refresh the topology.
* A connection given back twice within one cluster command (redis-py's retry
  loop keeps the last one: see ``one_return_per_borrow``) goes back once.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import pooled_class
from .redis_adapter import ConnectionPool
from .redis_errors import RedisPoolClosed, RedisPoolTimeout, RedisTooManyWaiters

log = logging.getLogger("redispool.cluster")

__all__ = [
    "ClusterPoolTimeout",
    "ClusterTooManyWaiters",
    "NodePool",
    "cluster_connection_class",
    "gives_back_on_failure",
    "guarded_pipelines",
    "one_return_per_borrow",
    "owner_that_lent",
    "skip_when_busy",
]


class ClusterPoolTimeout(RedisPoolTimeout, MaxConnectionsError):
    """No connection to a node could be borrowed in time. A
    ``MaxConnectionsError``, so redis-py does not refresh the topology for it
    (every connection was busy: nothing is wrong with the node)."""


class ClusterTooManyWaiters(RedisTooManyWaiters, ClusterPoolTimeout):
    """A node pool's wait queue is full (``max_waiting``)."""


# -- connections -----------------------------------------------------------

# A ``_rp_state`` bit (high, clear of connection.py's): ASKING sent, the command
# it allows not yet.
_ASKING_SENT = 1 << 12
_ASKING = frozenset(["ASKING", "asking", b"ASKING", b"asking"])


class _AskingMixin:
    """ASKING allows the next command only (then the server forgets it): not
    session state, unless the connection is returned before that command."""

    _rp_state: int

    def _rp_note(self, args: tuple[Any, ...]) -> None:
        if args and args[0] in _ASKING:
            self._rp_state |= _ASKING_SENT
            return
        self._rp_state &= ~_ASKING_SENT
        super()._rp_note(args)  # type: ignore[misc]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if self._rp_state & _ASKING_SENT and args and args[0] not in _ASKING:
            self._rp_state &= ~_ASKING_SENT  # the fast path skips _rp_note for GET, SET, ...
        super().send_command(*args, **kwargs)  # type: ignore[misc]

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        ident = threading.get_ident()
        returned = _RETURNED.get(ident)
        if returned and id(self) in returned:
            mark = getattr(self, "_rp_held", None)
            if mark is not None and mark[0] != ident:
                # redis-py's retry loop, on a connection it already gave back and
                # another thread now holds (see one_return_per_borrow): not its to
                # close. (An idle one is closed: the pool may be destroying it.)
                return
        super().disconnect(*args, **kwargs)  # type: ignore[misc]


@functools.cache
def cluster_connection_class(base: type[Connection]) -> type[Connection]:
    pooled = pooled_class(base)
    return type(f"Cluster{pooled.__name__}", (_AskingMixin, pooled), {})


def skip_when_busy(initialize: Callable[..., Any]) -> Callable[..., Any]:
    """``NodesManager.initialize`` that does nothing when called while handling
    a ``MaxConnectionsError``: a cluster pipeline refreshes the whole topology
    on any ``ConnectionError`` from a node pool, though a busy pool says
    nothing about the topology (and the refresh would wait for a connection
    of a busy pool, holding the lock every other refresh waits on)."""

    @functools.wraps(initialize)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if isinstance(sys.exc_info()[1], MaxConnectionsError):
            return None
        return initialize(*args, **kwargs)

    return guarded


def owner_that_lent(find: Callable[..., Any]) -> Callable[..., Any]:
    """``NodesManager.find_connection_owner``, which redis-py's cluster
    transactions ask where to give their connection back, finding the node pool
    that lent a connection of a node no longer in the slot table (redis-py finds
    none and gives it back nowhere: borrowed for good, and its thread marked as
    holding it). (No ``connection_pool`` of its own, as a real node: redis-py's
    switch of a transaction to a new node while watching fails as before.)"""

    @functools.wraps(find)
    def owner(connection: Any) -> Any:
        node = find(connection)
        lender = getattr(connection, "_rp_lender", None) if node is None else None
        if lender is None:
            return node
        return SimpleNamespace(
            name=lender.node, redis_connection=SimpleNamespace(connection_pool=lender)
        )

    return owner


# Per thread (greenlet), while a RedisCluster command runs in it: the ids of
# the connections it gave back and has not borrowed again. redis-py's
# ``RedisCluster._execute_command`` (8.1.0) keeps the last connection in a
# variable across its retries (MOVED, ASK, TRYAGAIN); when the next try fails
# before it gets one (a busy node pool's timeout, a node it cannot reach), its
# ``finally`` gives that connection back again, though another thread may hold
# it by then: back on the idle stack, it would be lent to a third while the
# second still uses it, and each could read the other's replies. (Also noted
# upstream, in review of redis/redis-py#4083.)
_RETURNED: dict[int, set[int]] = {}
os.register_at_fork(after_in_child=_RETURNED.clear)


def one_return_per_borrow(execute: Callable[..., Any]) -> Callable[..., Any]:
    """``RedisCluster._execute_command`` (a cluster's, or a cluster pipeline's
    for the commands it runs one by one) during which ``NodePool.release``
    ignores a second return of a connection not borrowed again since."""

    @functools.wraps(execute)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        ident = threading.get_ident()
        outer = _RETURNED.get(ident)
        try:
            _RETURNED[ident] = set()
            return execute(*args, **kwargs)
        finally:
            if outer is None:
                _RETURNED.pop(ident, None)
            else:  # (a command inside a command: a topology refresh's)
                _RETURNED[ident] = outer

    return guarded


def guarded_pipelines(pipeline: Callable[..., Any]) -> Callable[..., Any]:
    """``RedisCluster.pipeline`` whose pipelines' own ``_execute_command`` (their
    one-by-one fallback) is guarded too (``one_return_per_borrow``), and whose
    transactions give their connection back when their reset fails
    (``gives_back_on_failure``)."""

    @functools.wraps(pipeline)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        pipe._execute_command = one_return_per_borrow(pipe._execute_command)
        strategy = getattr(pipe, "_execution_strategy", None)
        if hasattr(strategy, "_transaction_connection"):  # pipeline(transaction=True)
            strategy.reset = gives_back_on_failure(strategy)  # type: ignore[union-attr]
        return pipe

    return guarded


def gives_back_on_failure(strategy: Any) -> Callable[[], None]:
    """A cluster transaction's ``reset`` that, when it fails (UNWATCH timing out
    on a hung node: redis-py gives the connection back only after UNWATCH, or on
    a ``ConnectionError``), closes the connection and gives it back to the node
    pool that lent it, then resets the rest and raises. (It stayed borrowed, its
    thread marked as holding it: for good if the pipeline's ``__del__`` failed too.)"""
    reset = strategy.reset

    def guarded() -> None:
        # Its borrow's mark: a give-back takes it off, a new borrow puts a new one.
        mark = getattr(strategy._transaction_connection, "_rp_held", None)
        try:
            reset()
        except BaseException:
            conn = strategy._transaction_connection
            if conn is not None:
                # redis-py gives it back, then forgets it: cut short in between
                # (a signal handler raising), it is given back already, maybe lent
                # again. Forgotten then too (a later reset would UNWATCH on it).
                ours = mark is not None and conn._rp_held is mark
                lender = getattr(conn, "_rp_lender", None)
                strategy._transaction_connection = None
                if ours:
                    try:
                        conn.disconnect()  # (a reply may still come: never reuse it)
                    finally:
                        if lender is not None:
                            lender.release(conn)
                reset()  # no connection now: only the transaction's state
            raise

    return guarded


# -- node pools --------------------------------------------------------------


# Per thread (greenlet): node -> connections held. A cluster pipeline takes one
# connection per node, in command order, holding the earlier ones while it
# waits: two pipelines could each hold what the other waits for. A borrower
# waits only for a node ordered after every node it holds a connection of;
# otherwise it does not wait (the pipeline gives its connections back and
# retries). A subscribed connection (a cluster pubsub) is not part of such a
# set and does not count. Keyed by ``threading.get_ident()``, looked up at each
# call: under gevent that is the greenlet's, even when this module was
# imported before monkey-patching (a ``threading.local`` made then would be
# shared by every greenlet).
_HELD: dict[int, dict[str, list[Any]]] = {}
os.register_at_fork(after_in_child=_HELD.clear)  # the parent's threads are not here


def _must_not_wait(held: dict[str, list[Any]], node: str) -> bool:
    """Does this thread hold a connection of ``node`` or of a node ordered
    after it (other than a pubsub's: redis-py gives those a connect callback)?"""
    return any(
        name >= node and any(not conn._connect_callbacks for conn in conns)
        for name, conns in held.items()
    )


class NodePool(ConnectionPool):
    """The ``connection_pool`` of one node's ``redis.Redis``: redispool's
    ``ConnectionPool`` with the errors redis-py's cluster client needs and
    ordered waiting across nodes."""

    node: str

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Connection:
        ident = threading.get_ident()
        held = _HELD.get(ident)
        wait = 0.0 if held and _must_not_wait(held, self.node) else None
        try:
            conn: Any = self.redis_pool._get(wait)
        except RedisPoolTimeout as exc:
            raise _wait_error(exc, self.node) from exc
        except RedisPoolClosed as exc:  # the node left the topology under us
            raise RedisConnectionError(f"{self.node}: {exc}") from exc
        try:  # (redis-py releases only what this returns: never keep one it cannot)
            if held is None:
                held = _HELD[ident] = {}
            held.setdefault(self.node, []).append(conn)
            conn._rp_held = (ident, held)
            conn._rp_lender = self
            returned = _RETURNED.get(ident)
            if returned:
                returned.discard(id(conn))  # borrowed again: its next return is real
            return conn  # type: ignore[no-any-return]
        except BaseException:
            if held is not None:
                conn._rp_held = (ident, held)  # release() takes it off the list if on it
            returned = _RETURNED.get(ident)
            if returned:
                returned.discard(id(conn))  # (borrowed again: this return is real)
            self.release(conn)
            raise

    def release(self, connection: Connection) -> None:
        # An exception (a signal handler raising) anywhere past the first line,
        # before the connection is back: it goes back all the same, discarded, and
        # off the held list. (What it was lent as is read before anything can raise.)
        objects = self.redis_pool._pool
        lent: Any = None
        uses = 0
        try:
            returned = _RETURNED.get(threading.get_ident())
            if returned is not None and id(connection) in returned:
                log.debug("%s: a second return of a connection ignored", self.node)
                return  # (redis-py's retry loop: see one_return_per_borrow)
            # redis-py's cluster transaction gives its connection back to the pool of
            # the node that owns it now (find_connection_owner): after a refresh that
            # replaced the node's pool (the node missing from CLUSTER SLOTS for a
            # moment, as after a failover), not the pool that lent it. It goes there.
            lender: NodePool = getattr(connection, "_rp_lender", self)
            objects = lender.redis_pool._pool
            lent = objects._in_use.get(id(connection))
            if lent is not None:
                uses = lent.uses
            _unhold(connection, self.node)
            ConnectionPool.release(lender, connection)
            if returned is not None:
                returned.add(id(connection))
        except BaseException:
            returned = _RETURNED.get(threading.get_ident())
            if returned is None or id(connection) not in returned:  # (not one ignored)
                objects = getattr(connection, "_rp_lender", self).redis_pool._pool  # (its lender's)
                if objects._lent_still(connection, lent, uses):  # not back: still the caller's
                    _unhold(connection, self.node)
                    objects.release(connection, discard=True, reason="dirty")
                if returned is not None:
                    returned.add(id(connection))  # back, either way
            raise

    def owns_connection(self, connection: Connection) -> bool:
        kwargs = self.connection_kwargs
        return bool(connection.host == kwargs["host"] and connection.port == kwargs["port"])


def _unhold(connection: Any, node: str) -> None:
    """Take ``connection`` off the held list of the thread that borrowed it (a
    second call finishes a first one cut short: the mark goes last)."""
    mark = getattr(connection, "_rp_held", None)
    if mark is None:
        return
    ident, held = mark
    conns = held.get(node, [])
    for i, conn in enumerate(conns):
        if conn is connection:
            del conns[i]
            break
    if not conns:
        held.pop(node, None)
        if not held and _HELD.get(ident) is held:
            del _HELD[ident]
    connection._rp_held = None


def _wait_error(exc: RedisPoolTimeout, node: str) -> Exception:
    """A node pool's wait timeout as redis-py needs it: the node's own connect
    error (exact type: refresh and retry) if connecting to it keeps failing,
    else a ``MaxConnectionsError`` (all busy: no refresh)."""
    cause = exc.__cause__
    if type(cause) is RedisConnectionError or type(cause) is RedisTimeoutError:
        return type(cause)(f"{node}: {cause}")
    kind = ClusterTooManyWaiters if isinstance(exc, RedisTooManyWaiters) else ClusterPoolTimeout
    err = kind(str(exc))
    err.__cause__ = cause
    return err
