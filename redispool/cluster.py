"""RedisClusterPool: redis-py's own ``RedisCluster`` on fair per-node ``RedisPool``s.

redis-py keeps routing, MOVED/ASK, pipelines, replica reads and topology
refresh; each node's connections come from a ``RedisPool`` (``max_size`` per
node, FIFO waiters, checked connections). What this module adds around it:

* the node pools, with the errors redis-py's recovery needs and ordered
  waiting across nodes (``cluster_nodes``);
* the READONLY handshake of replica connections and one-shot ASKING are not
  session state (the connection stays reusable);
* a node that leaves the topology has its pool closed (no orphaned sockets);
* ``client(key)`` / ``client()``: one pinned connection (``cluster_client``);
* totals and per-node numbers in ``stats()``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis
from redis.cluster import REDIS_ALLOWED_KEYS, ClusterNode, RedisCluster
from redis.connection import Connection
from redis.event import AfterSlotsCacheRefreshEvent, EventDispatcher, EventListenerInterface
from redis.exceptions import AskError, ClusterDownError, MovedError
from redis.maint_notifications import MaintNotificationsConfig

from ._closehooks import CloseHooks
from .cluster_client import SlotLease, slot_of
from .cluster_nodes import (
    ClusterPoolTimeout,
    ClusterTooManyWaiters,
    NodePool,
    cluster_connection_class,
    guarded_pipelines,
    one_return_per_borrow,
    owner_that_lent,
    skip_when_busy,
)
from .config import env_options, parse_redis_url, redact_url
from .redis_errors import RedisPoolClosed
from .redis_pool import _POOL_OPTIONS, RedisPool, RedisPoolStats, _check_lease, _ClientLease

log = logging.getLogger("redispool.cluster")

__all__ = [
    "ClusterPoolTimeout",
    "ClusterTooManyWaiters",
    "RedisClusterPool",
    "RedisClusterPoolStats",
]

# RedisCluster's own options (everything else is a node pool or connection option).
_CLUSTER_OPTIONS = frozenset(
    [
        "require_full_coverage",
        "reinitialize_steps",
        "read_from_replicas",
        "load_balancing_strategy",
        "dynamic_startup_nodes",
        "address_remap",
        "retry",
        "cluster_error_retry_attempts",
        "policy_resolver",
    ]
)
# RedisPool options that are not connection options.
_NODE_POOL_OPTIONS = frozenset(
    [
        *_POOL_OPTIONS,
        "connect_timeout",
        "socket_connect_timeout",
        "socket_timeout",
        "health_check_interval",
        "dns_ttl",
    ]
)
_REFUSED = {
    "read_url": "use read_from_replicas=True or load_balancing_strategy",
    "db": "Redis Cluster has only database 0",
    "connection_pool": "RedisClusterPool makes the node pools",
    "connection_pool_class": "RedisClusterPool makes the node pools",
    "max_connections": "use max_size (per node)",
    "cache": "client-side caching is not supported",
    "cache_config": "client-side caching is not supported",
    "event_dispatcher": "RedisClusterPool needs its own",
}


# -- stats ---------------------------------------------------------------------

_SUMMED = [
    f.name
    for f in dataclasses.fields(RedisPoolStats)
    if f.type in ("int", "float") and f.name not in ("wait_time_max", "consecutive_create_errors")
]
_COUNTERS = [
    "borrows",
    "timeouts",
    "created",
    "create_errors",
    "destroyed",
    "wait_time_total",
    "create_time_total",
    "use_time_total",
    "commands",
    "command_errors",
]


@dataclass(frozen=True)
class RedisClusterPoolStats(RedisPoolStats):
    """Totals over the node pools, plus each node's own numbers in ``nodes``
    (``host:port`` -> ``RedisPoolStats``). Counters include the nodes that left.
    ``topology_refreshes``: slot-table updates (full refreshes and MOVED patches)."""

    nodes: dict[str, RedisPoolStats] = field(default_factory=dict)
    topology_refreshes: int = 0


# -- the pool ------------------------------------------------------------------

_fork_gen = 0  # bumped in every forked child; a pool starts over on its next use


def _after_fork_in_child() -> None:
    global _fork_gen
    _fork_gen += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class _RefreshListener(EventListenerInterface):
    def __init__(self, pool: RedisClusterPool) -> None:
        self._pool = pool

    def listen(self, event: object) -> None:
        self._pool._after_refresh()


StartupNodes = str | Sequence[str | tuple[str, int] | ClusterNode]
_RELOAD_INTERVAL = 1.0  # seconds between full slot-table refreshes after MOVED


class _FollowsMoves:
    """``RedisClusterPool.client()``'s lease: a node pool's lease (or a lease
    pinning at its first command) that updates the slot table when its block
    ends with MOVED or CLUSTERDOWN."""

    __slots__ = ("_lease", "_pins", "_pool")

    def __init__(self, pool: RedisClusterPool, lease: _ClientLease | SlotLease) -> None:
        self._pool = pool
        self._lease = lease
        self._pins = isinstance(lease, SlotLease)

    def __enter__(self) -> redis.Redis:
        return self._lease.__enter__()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        # An exception (a signal handler raising) at the first instruction of the
        # lease's __exit__ (or of the node pool lease's, called from SlotLease's)
        # is no code of theirs to catch, and nothing went back: the connection goes
        # back here, discarded. (Which one, and what it was lent as, are read first.)
        lease: Any = self._lease
        inner: Any = None
        objects: Any = None
        lent: Any = None
        uses = 0
        try:
            inner = lease._inner if self._pins else lease  # (None: never pinned)
            if inner is not None:
                conn = inner._conn
                objects = inner._pool._pool
                lent = objects._in_use.get(id(conn))
                if lent is not None:
                    uses = lent.uses
            lease.__exit__(et, ev, tb)
        except BaseException:
            if self._pins:
                lease._client = None  # (as its __exit__: the client cannot pin again)
            if objects is not None and objects._lent_still(conn, lent, uses):
                inner._pinned._conn = None  # (as its __exit__: a stale client raises)
                inner._client.connection = None
                objects.release(conn, discard=True, reason="dirty")
            raise
        finally:
            if isinstance(ev, (MovedError, ClusterDownError)):
                self._pool._slot_moved(ev)


class RedisClusterPool:
    """Redis Cluster through redis-py's ``RedisCluster``, with a fair, bounded
    ``RedisPool`` per node (``max_size`` connections per node, as go-redis).

    ``url_or_startup_nodes``: a ``redis://`` / ``rediss://`` URL of any node, or
    a list of ``"host:port"``, ``(host, port)`` or ``ClusterNode``. Node pool
    options are ``RedisPool``'s (``min_size``, ``max_size``, ``timeout``,
    ``socket_timeout``, ...); ``RedisCluster`` options (``read_from_replicas``,
    ``load_balancing_strategy``, ``require_full_coverage``, ``retry``, ...) go to
    it; anything else is a connection option (``password``, ``ssl_*``, ...).
    Nothing connects until first use (``.redis``, ``client()`` or ``open()``).
    """

    def __init__(
        self,
        url_or_startup_nodes: StartupNodes = "redis://localhost:6379",
        *,
        min_size: int = 0,
        max_size: int = 20,
        timeout: float | None = 4.0,
        name: str | None = None,
        **options: Any,
    ) -> None:
        for key, hint in _REFUSED.items():
            if key in options:
                raise TypeError(f"RedisClusterPool got an unsupported option {key!r}: {hint}")
        if timeout is None:
            # A pipeline holds one node's connection while it waits for the next.
            raise ValueError("timeout must be a number of seconds for a cluster (None: never)")
        maint = options.pop("maint_notifications_config", None)
        if maint is not None and getattr(maint, "enabled", False):
            raise ValueError("RedisClusterPool does not support maintenance notifications")
        self._url, self._startup = _startup(url_or_startup_nodes)
        self.url = redact_url(self._url)
        self.name = name or self.url
        self._cluster_opts = {k: options.pop(k) for k in list(options) if k in _CLUSTER_OPTIONS}
        pool_opts = {k: options.pop(k) for k in list(options) if k in _NODE_POOL_OPTIONS}
        pool_opts.update(min_size=min_size, max_size=max_size, timeout=timeout)
        self._pool_opts = pool_opts
        self._conn_opts = options  # connection options: every node pool gets them
        self._lock = threading.RLock()
        self._connect_lock = threading.Lock()
        self._pools: dict[int, NodePool] = {}  # id -> every node pool not yet closed
        self._retired: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self._refreshes = 0
        self._redis: RedisCluster | None = None
        self._closed = self._closing = False
        self._close_hooks = CloseHooks()
        self._last_reload = 0.0
        self._gen = _fork_gen
        # Bad options fail here, naming themselves, rather than at first use.
        host, port = self._startup[0]
        trial = {**parse_redis_url(self._url), "host": host, "port": port}
        self._new_node_pool(**trial).redis_pool.close(0)
        self._pools.clear()

    @classmethod
    def from_env(
        cls,
        prefix: str = "REDIS_CLUSTER_",
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> RedisClusterPool:
        """A pool configured from ``{prefix}URL`` (``REDIS_CLUSTER_URL``) and the
        same ``{prefix}POOL_MAX_SIZE``, ... variables as ``RedisPool.from_env``."""
        opts = env_options(prefix, environ)
        if "read_url" in opts:
            raise ValueError(
                f"READ_{prefix}URL is not used with a cluster: set read_from_replicas=True"
            )
        url = opts.pop("url", None)
        env = os.environ if environ is None else environ
        if url is None or not (env.get(f"{prefix}URL") or env.get(f"WRITE_{prefix}URL")):
            raise ValueError(f"{prefix}URL is not set")  # (TLS mode alone gives localhost)
        opts.update(overrides)
        return cls(url, **opts)

    # -- node pools ------------------------------------------------------------

    def _new_node_pool(self, **kwargs: Any) -> NodePool:
        """What ``NodesManager`` calls for each node (``connection_pool_class``)."""
        kwargs.pop("db", None)
        base = kwargs.pop("connection_class", None) or Connection
        # (RedisCluster.on_connect's READONLY runs inside connect(): the session
        # tracking of connection.py does not count it as the user's state)
        kwargs["connection_class"] = cluster_connection_class(base)
        opts = {**self._conn_opts, **kwargs}
        for key in _NODE_POOL_OPTIONS:  # a URL's ?socket_timeout= wins, as in redis-py
            if key in opts:
                self._pool_opts[key] = opts.pop(key)
        node = f"{opts['host']}:{opts['port']}"
        pool = NodePool(name=f"{self.name} {node}", **self._pool_opts, **opts)
        pool.node = node
        with self._lock:
            closed = self._closed
            if not closed:
                self._pools[id(pool)] = pool
        if closed:  # a refresh still running when this pool closed (nothing would close it)
            pool.redis_pool.close(0)
            raise RedisPoolClosed(f"pool {self.name!r} is closed")
        return pool

    def _after_refresh(self) -> None:
        with self._lock:
            self._refreshes += 1
        self._close_departed()

    def _close_departed(self) -> None:
        """Close the pools of nodes no longer in the topology (nor startup nodes)."""
        with self._lock:
            cluster = self._redis
        if cluster is None:  # the first refresh, inside the RedisCluster constructor
            return
        manager = cluster.nodes_manager
        # Not in the middle of a refresh (from another thread: a MOVED patch
        # dispatches outside it): its new pools are not in nodes_cache yet. Nor
        # while a node gets its first pool outside one (get_redis_connection, under
        # the client's lock; a node learnt of from a MOVED): made, not yet the node's.
        with manager._initialization_lock, cluster._lock, manager._lock:
            nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
            live = {id(n.redis_connection.connection_pool) for n in nodes if n.redis_connection}
            with self._lock:
                gone = [p for key, p in self._pools.items() if key not in live]
        for pool in gone:
            self._retire(pool)

    def _retire(self, pool: NodePool) -> None:
        """Close a departed node's pool, then take it off the list and add its
        numbers to the retired ones, in that order: cut short (a signal handler
        raising), it stays listed, so the next refresh or ``close()`` finishes."""
        pool.redis_pool.close(timeout=0)  # idle connections now, borrowed ones on return
        stats = pool.redis_pool.stats()
        key = id(pool)
        with self._lock:
            if self._pools.get(key) is pool:  # (once: another thread may retire it too)
                retired = {k: self._retired[k] + getattr(stats, k) for k in _COUNTERS}
                del self._pools[key]  # (no call from here on: both or neither)
                self._retired = retired

    # -- the client ------------------------------------------------------------

    @property
    def redis(self) -> RedisCluster:
        """A ``redis.cluster.RedisCluster`` on this pool (made on first use)."""
        if self._gen != _fork_gen:
            self._after_fork()
        cluster = self._redis
        if cluster is None:
            cluster = self._connect()
        return cluster

    def _after_fork(self) -> None:
        """In a forked child (gunicorn --preload), at first use, so after gevent
        patched: new locks (the parent's are OS locks, maybe held) and a new
        ``RedisCluster`` (redis-py's own locks and node pools are the parent's)."""
        self._gen = _fork_gen
        self._lock = threading.RLock()
        self._connect_lock = threading.Lock()
        self._redis = None
        self._pools = {}

    def _connect(self) -> RedisCluster:
        with self._connect_lock:  # one discovery at a time: callers wait for it
            if self._closed:
                raise RedisPoolClosed(f"pool {self.name!r} is closed")
            if self._redis is not None:
                return self._redis
            dispatcher = EventDispatcher()
            dispatcher.register_listeners({AfterSlotsCacheRefreshEvent: [_RefreshListener(self)]})
            allowed = {k: v for k, v in self._conn_opts.items() if k in REDIS_ALLOWED_KEYS}
            cluster = RedisCluster(
                url=self._url,
                startup_nodes=[ClusterNode(h, p) for h, p in self._startup[1:]],
                connection_pool_class=self._new_node_pool,
                event_dispatcher=dispatcher,
                maint_notifications_config=MaintNotificationsConfig(enabled=False),
                **self._cluster_opts,
                **allowed,
            )
            manager = cluster.nodes_manager
            manager.initialize = skip_when_busy(manager.initialize)  # type: ignore[method-assign]
            manager.find_connection_owner = owner_that_lent(manager.find_connection_owner)  # type: ignore[method-assign]
            cluster._execute_command = one_return_per_borrow(cluster._execute_command)  # type: ignore[method-assign]
            cluster.pipeline = guarded_pipelines(cluster.pipeline)  # type: ignore[method-assign]
            with self._lock:
                closed = self._closed
                if not closed:
                    self._redis = cluster
        if closed:  # closed while discovering
            self._close_cluster(cluster)
            raise RedisPoolClosed(f"pool {self.name!r} is closed")
        self._close_departed()  # the startup node's first pool is no node's now
        return cluster

    def client(
        self,
        key: str | bytes | None = None,
        timeout: float | None = None,
        *,
        wait: float | None = None,
    ) -> _FollowsMoves:
        """``with pool.client(key) as r:`` a ``redis.Redis`` pinned to one checked
        connection of the primary serving ``key``'s slot (for WATCH/MULTI and
        multi-command work on one slot: give related keys one ``{hash tag}``).
        Without ``key``, the client pins itself at its first command, by that
        command's keys. ``timeout`` bounds each read and write, ``wait`` the
        borrow, as ``RedisPool.client()``. Keys of other slots get MOVED or
        CROSSSLOT errors, as on a single node. A block that ends with MOVED (the
        slot's primary changed: a failover, a reshard) updates the slot table, so
        the next block goes to the new primary. Without ``key``, a command (or a
        pipeline's command, outside MULTI) answered ASK (its slot is migrating) is
        sent once more, after ASKING, on a connection of the importing node,
        given back at once; the pinned connection stays pinned."""
        _check_lease(timeout, wait)
        lease: _ClientLease | SlotLease
        if key is None:
            lease = SlotLease(
                lambda slot: self._node_for(slot).client(timeout, wait=wait),
                functools.partial(slot_of, self.redis),
                lambda asked: self._node_asked(asked).client(timeout, wait=wait),
            )
        else:
            lease = self._node_for(self.redis.keyslot(key)).client(timeout, wait=wait)
        return _FollowsMoves(self, lease)

    def _slot_moved(self, exc: BaseException) -> None:
        """A pinned block got MOVED (or CLUSTERDOWN, or an ASK to a node it does not
        know): patch that slot at once (MOVED), and refresh the whole table at
        most once a second (a failed-over primary moved thousands of slots;
        redis-py's own commands do the same)."""
        cluster = self._redis
        if cluster is None:
            return
        manager = cluster.nodes_manager
        try:
            if isinstance(exc, MovedError):
                manager.move_slot(exc)
            now = time.monotonic()
            if now - self._last_reload >= _RELOAD_INTERVAL:
                self._last_reload = now
                manager.initialize()  # skipped if another thread is refreshing
        except Exception as err:  # the next command's own error will say more
            log.debug("%s: slot table update after %r failed: %r", self.name, exc, err)

    def _node_asked(self, exc: AskError) -> RedisPool:
        """The pool of the node an ASK redirection names (the slot table refreshed
        once if it does not know that node; ``exc`` raised if still unknown)."""
        cluster = self.redis
        host, port = cluster.nodes_manager.remap_host_port(exc.host, exc.port)
        node = cluster.get_node(host, port)
        if node is None:  # (a node just added: the table has not seen it yet)
            self._slot_moved(exc)
            node = cluster.get_node(host, port)
            if node is None:
                raise exc
        pool: NodePool = cluster.get_redis_connection(node).connection_pool  # type: ignore[assignment]
        return pool.redis_pool

    def _node_for(self, slot: int | None) -> RedisPool:
        """The pool of the primary serving ``slot`` (None: the default node)."""
        cluster = self.redis
        if slot is None:
            node = cluster.get_default_node()
        else:
            node = cluster.nodes_manager.get_node_from_slot(slot)
        pool: NodePool = cluster.get_redis_connection(node).connection_pool  # type: ignore[assignment]
        return pool.redis_pool

    def node_of(self, key: str | bytes) -> str:
        """``host:port`` of the primary serving ``key``'s slot now."""
        node = self.redis.nodes_manager.get_node_from_slot(self.redis.keyslot(key))
        return f"{node.host}:{node.port}"

    def node_pools(self) -> dict[str, RedisPool]:
        """``host:port`` -> the ``RedisPool`` of each node in use now."""
        with self._lock:
            pools = list(self._pools.values())
        return {p.node: p.redis_pool for p in pools}

    # -- lifecycle and numbers ------------------------------------------------------

    def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Discover the cluster and fill each node pool to ``min_size``."""
        self.redis  # noqa: B018 - connects
        for pool in self.node_pools().values():
            pool.open(wait=wait, timeout=timeout)

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        """The connection options every node gets (the URL's, then the caller's)."""
        return {**parse_redis_url(self._url), **self._conn_opts}

    def on_close(self, hook: Callable[[], object]) -> None:
        """Run ``hook()`` at the start of ``close()``, while the pool still works
        (see ``RedisPool.on_close``)."""
        self._close_hooks.add(hook)

    def close(self, timeout: float = 5.0) -> None:
        """Run the ``on_close`` hooks, then close every node pool: idle connections
        now, borrowed ones when returned."""
        with self._lock:
            if self._closing:
                return
            self._closing = True  # this thread closes; hooks first, while it works
        self._close_hooks.run(self.name)
        with self._lock:
            self._closed = True
            cluster, self._redis = self._redis, None
        if cluster is not None:
            self._close_cluster(cluster)
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.redis_pool.close(timeout)

    @staticmethod
    def _close_cluster(cluster: RedisCluster) -> None:
        try:
            cluster.close()  # its node clients; our pools are closed by their owner
        except Exception:  # pragma: no cover - redis-py's close is best effort
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> RedisClusterPoolStats:
        """Totals over the nodes (sums; ``wait_time_max`` and
        ``consecutive_create_errors`` the worst node's), plus ``nodes``."""
        with self._lock:  # (together: a pool retiring moves its numbers to _retired)
            pools, retired = self.node_pools(), self._retired
        nodes = {node: pool.stats() for node, pool in sorted(pools.items())}
        totals: dict[str, Any] = dict.fromkeys(_SUMMED, 0)
        for key, value in retired.items():
            totals[key] += value
        reasons: dict[str, int] = {}
        worst_wait, streak, last_error = 0.0, 0, None
        for s in nodes.values():
            for key in _SUMMED:
                totals[key] += getattr(s, key)
            for reason, n in s.destroyed_by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + n
            worst_wait = max(worst_wait, s.wait_time_max)
            if s.consecutive_create_errors > streak:
                streak, last_error = s.consecutive_create_errors, s.last_create_error
        return RedisClusterPoolStats(
            name=self.name,
            **totals,
            destroyed_by_reason=reasons,
            wait_time_max=worst_wait,
            consecutive_create_errors=streak,
            last_create_error=last_error,
            closed=self._closed,
            nodes=nodes,
            topology_refreshes=self._refreshes,
        )

    def __enter__(self) -> RedisClusterPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<RedisClusterPool {self.url!r} nodes={len(self._pools)}{state}>"


def _startup(spec: StartupNodes) -> tuple[str, list[tuple[str, int]]]:
    """(URL of the first startup node, every startup node as (host, port))."""
    if isinstance(spec, str):
        kwargs = parse_redis_url(spec)
        if "path" in kwargs:
            raise ValueError(f"a cluster has no unix sockets: {redact_url(spec)!r}")
        return spec, [(kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)))]
    if not isinstance(spec, Iterable) or isinstance(spec, bytes):
        raise TypeError(f"url_or_startup_nodes must be a URL or a list of nodes, got {spec!r}")
    nodes = [_node(item) for item in spec]
    if not nodes:
        raise ValueError("url_or_startup_nodes: the list of startup nodes is empty")
    host, port = nodes[0]
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"redis://{netloc}", nodes


def _node(item: object) -> tuple[str, int]:
    if isinstance(item, ClusterNode):
        return str(item.host), int(item.port)
    if isinstance(item, str) and ":" in item:
        host, _, port = item.rpartition(":")
        host = host.strip("[]")
    elif isinstance(item, tuple) and len(item) == 2:
        host, port = item
    else:
        raise TypeError(
            f"a startup node is 'host:port', (host, port) or a ClusterNode, got {item!r}"
        )
    if not isinstance(host, str) or not host:
        raise ValueError(f"startup node {item!r}: bad host")
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"startup node {item!r}: port must be an int") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"startup node {item!r}: port must be between 1 and 65535")
    return host, number
