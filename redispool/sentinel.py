"""Sentinel: a ``RedisPool`` whose connections go where Sentinel says.

``RedisPool.sentinel(...)`` builds a normal ``RedisPool`` with a connection
class bound to a ``SentinelService``:

* every new connection asks the sentinels for the primary (or a replica),
  skipping answers older than the newest configuration epoch seen (a sentinel
  that has not heard of a failover yet), and checks ``ROLE`` before use;
* a listener thread (``_sentinel_watch``) follows ``+switch-master`` on every
  reachable sentinel. On a change the service moves to a new *generation* and
  drains the pool: idle connections go now, borrowed ones on return, and a
  borrowed one of an older generation refuses its next command (it closes and
  raises ``ConnectionError``) so nothing more is written to the old primary;
* ``READONLY`` on a primary connection means the node was demoted: the
  connection closes, the generation moves on and the pool drains.

With every sentinel down, open connections keep working; new ones fail with
``PrimaryNotFound`` (a ``redis.ConnectionError``) naming each sentinel
tried. Sentinel and data-node credentials are separate and never shown.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, SlaveNotFoundError

from .config import parse_redis_url, parse_sentinels

if TYPE_CHECKING:
    from .redis_pool import RedisPool

__all__ = ["PrimaryNotFound", "ReplicaNotFound", "SentinelService", "sentinel_pool"]

log = logging.getLogger("redispool.sentinel")

Address = tuple[str, int]
ROLES = ("primary", "replica")
# Sentinels answer from memory: a second is plenty, and a stalled one must not
# hold every new connection for long.
_SENTINEL_DEFAULTS: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
_SETTLE_WAIT = 1.0  # at most this long a new connection waits for a switch to be taken in
_REFUSED = {
    "read_url": "use read_from_replicas=True",
    "host": "Sentinel gives the address",
    "port": "Sentinel gives the address",
    "unix_socket_path": "Sentinel gives a TCP address",
}


class PrimaryNotFound(MasterNotFoundError):
    """No usable primary: the message names every sentinel and address tried,
    and why (a ``redis.ConnectionError``, as redis-py's ``MasterNotFoundError``)."""

    def __repr__(self) -> str:  # shown in the pool's "last create error"
        return f"{type(self).__name__}({str(self)!r})"


class ReplicaNotFound(SlaveNotFoundError):
    """No usable replica (nor primary to fall back on); see ``PrimaryNotFound``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> dict[str, str]:
    """A flat ``[key, value, ...]`` (RESP2) reply as a dict of str."""
    items = [_text(x) for x in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


def _show(address: Address | None) -> str:
    return "?" if address is None else f"{address[0]}:{address[1]}"


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class SentinelService:
    """One service as Sentinel sees it, for one pool: where to connect, the
    generation of the current address, and the switch that moves it on."""

    def __init__(
        self,
        sentinels: Sequence[Address],
        service_name: str,
        role: str,
        sentinel_kwargs: dict[str, Any],
    ) -> None:
        self.sentinels = list(sentinels)
        self.service_name = service_name
        self.role = role
        kwargs = {**_SENTINEL_DEFAULTS, "retry": Retry(NoBackoff(), 0), **sentinel_kwargs}
        kwargs["protocol"] = 2  # flat replies, and plain pub/sub for the listener
        self._sentinel_kwargs = kwargs
        self._clients = [redis.Redis(host=h, port=p, **kwargs) for h, p in self.sentinels]
        self._spare: list[list[Connection]] = [[] for _ in self.sentinels]  # see _command
        self._lock = threading.Lock()
        self.generation = 0
        self.address: Address | None = None  # the primary last found or announced
        self.switches = 0  # address changes seen (switch, READONLY, discovery)
        self._epoch = -1  # the newest config epoch seen: older answers are stale
        self._first = 0  # the sentinel that answered last is asked first
        self._rotation = random.randrange(1 << 16)
        self._pool_ref: weakref.ref[RedisPool] | None = None
        self._listener: Any = None
        self._pid = os.getpid()
        self._settled = threading.Event()  # cleared while a switch is being taken in
        self._settled.set()
        # A replica pool that fell back to the primary: when (monotonic) it last
        # did, or last looked for replicas since; None when it has not.
        self.fallback_at: float | None = None
        # Doubled by each drain for a replica, reset when one is reached: a
        # replica Sentinel calls healthy that this host cannot reach must not
        # drain the pool every few seconds.
        self._fallback_wait = 0.0

    # -- the pool ---------------------------------------------------------

    def attach(self, pool: RedisPool, *, listen: bool = True) -> None:
        """Serve ``pool``; with ``listen``, follow ``+switch-master`` in a thread."""
        self._pool_ref = weakref.ref(pool)
        self._listen = listen
        self.ensure_listener()

    @property
    def pool(self) -> RedisPool | None:
        return self._pool_ref() if self._pool_ref is not None else None

    @property
    def closed(self) -> bool:
        pool = self.pool
        return pool is None or pool.closed

    def ensure_listener(self) -> None:
        """Start (or, after a fork or a crash, restart) the listener thread."""
        if self._pid != os.getpid():
            self._after_fork()
        if not getattr(self, "_listen", False) or self.closed:
            return
        listener = self._listener
        if listener is not None and listener.alive():
            return
        from ._sentinel_watch import SwitchListener

        with self._lock:
            if self._listener is not listener:
                return
            if listener is not None:
                # Not alive may be not started yet (another thread is between
                # this lock and its start()): stopped, it ends as soon as it
                # starts, and only the new one runs.
                listener.stop()
            listener = self._listener = SwitchListener(self)
        # Started outside the lock: under gevent, start() yields to other greenlets.
        listener.start()

    def _after_fork(self) -> None:
        """In a child process: the parent's thread is gone, and its locks are
        remade so that gevent's monkey-patching (often applied after the fork,
        as in gunicorn's gevent worker) makes them cooperative."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._settled = threading.Event()
        self._settled.set()
        self._listener = None
        self._spare = [[] for _ in self.sentinels]  # the parent's sockets

    def sentinel_name(self, index: int) -> str:
        host, port = self.sentinels[index]
        return f"{host}:{port}"

    def listener_connection(self, index: int) -> Connection:
        """A new connection to sentinel ``index`` (the caller connects it). Not
        the client pool's ``make_connection()``: that counts every connection
        it ever made against its ``max_connections`` (100 in redis-py 8) and
        uncounts only those returned to it, which these never are."""
        pool = self._clients[index].connection_pool
        conn: Connection = pool.connection_class(**pool.connection_kwargs)
        return conn

    def _command(self, index: int, *args: Any) -> Any:
        """Send ``args`` to sentinel ``index``; its reply.

        Not through redis-py's client and pool: an exception landing between
        their steps (a signal handler raising at a call) can leave a connection
        borrowed from that pool for good, or back in it with its reply still
        owed, for the next query to read. Here a connection is off the spare
        list while in use and back on it only after a whole exchange; one
        dropped on the way is unreferenced, closed by the garbage collector."""
        spare = self._spare[index]
        try:
            conn = spare.pop()
        except IndexError:
            conn = self.listener_connection(index)
        try:
            if conn._sock is not None and _stale(conn):
                conn.disconnect()  # closed by the sentinel (a restart): connect anew
            conn.send_command(*args)
            reply = conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        spare.append(conn)
        return reply

    # -- discovery --------------------------------------------------------

    def _order(self) -> list[int]:
        n = len(self._clients)
        return [(self._first + i) % n for i in range(n)]

    def _ask_primary(self, index: int) -> tuple[Address, int, bool]:
        """Sentinel ``index``'s view: (address, config epoch, usable)."""
        state = _pairs(self._command(index, "SENTINEL", "MASTER", self.service_name))
        flags = set(state.get("flags", "").split(","))
        usable = "master" in flags and not flags & {"s_down", "o_down"}
        return (state["ip"], int(state["port"])), int(state.get("config-epoch", 0)), usable

    def primaries(
        self, errors: list[str], deadline: float | None = None
    ) -> Iterator[tuple[Address, str]]:
        """Primary addresses the sentinels name, best first, with the sentinel
        that named each; what went wrong goes to ``errors``. No sentinel is asked
        after ``deadline``."""
        if self._epoch < 0:  # the first time, learn the newest epoch from every sentinel
            self.newest_primary(deadline)
        for index in self._order():
            if _past(deadline, errors):
                return
            name = self.sentinel_name(index)
            try:
                address, epoch, usable = self._ask_primary(index)
            except (RedisError, OSError, KeyError, ValueError) as exc:
                errors.append(f"sentinel {name}: {_why(exc)}")
                continue
            if epoch < self._epoch:
                errors.append(f"sentinel {name}: stale (config epoch {epoch} < {self._epoch})")
                continue
            if not usable:
                errors.append(f"sentinel {name}: primary {address[0]}:{address[1]} is down")
                continue
            self._epoch = max(self._epoch, epoch)
            self._first = index
            yield address, name

    def replicas(
        self, errors: list[str], deadline: float | None = None
    ) -> Iterator[tuple[Address, str]]:
        """Healthy replicas from the first sentinel that lists any, rotated so
        that new connections spread over them."""
        for index in self._order():
            if _past(deadline, errors):
                return
            name = self.sentinel_name(index)
            try:
                reply = self._command(index, "SENTINEL", "REPLICAS", self.service_name)
                found = []
                for item in reply:
                    state = _pairs(item)
                    flags = set(state.get("flags", "").split(","))
                    if not flags & {"s_down", "o_down", "disconnected"}:
                        found.append((state["ip"], int(state["port"])))
            except (RedisError, OSError, KeyError, ValueError) as exc:
                errors.append(f"sentinel {name}: {_why(exc)}")
                continue
            if not found:
                errors.append(f"sentinel {name}: no healthy replica")
                continue
            self._first = index
            self._rotation += 1
            start = self._rotation % len(found)
            for address in found[start:] + found[:start]:
                yield address, name
            return

    def candidates(
        self, errors: list[str], deadline: float | None = None
    ) -> Iterator[tuple[Address, str, str]]:
        """(address, expected ROLE reply, the sentinel that named it)."""
        if self.role == "replica":
            for address, name in self.replicas(errors, deadline):
                yield address, "slave", name
        # A replica pool falls back to the primary when no replica is usable.
        for address, name in self.primaries(errors, deadline):
            yield address, "master", name

    def newest_primary(self, deadline: float | None = None) -> Address | None:
        """Ask every sentinel (until ``deadline``): the address most of them name
        under the newest config epoch (on a tie, the one in use)."""
        answers: list[tuple[int, Address]] = []
        for index in range(len(self._clients)):
            if _past(deadline, []):
                break
            try:
                address, epoch, usable = self._ask_primary(index)
            except (RedisError, OSError, KeyError, ValueError):
                continue
            if usable:
                answers.append((epoch, address))
        if not answers:
            return None
        newest = max(epoch for epoch, _ in answers)
        self._epoch = max(self._epoch, newest)
        named = [address for epoch, address in answers if epoch == newest]
        return max(named, key=lambda a: (named.count(a), a == self.address))

    # -- connecting -------------------------------------------------------

    def connect(self, conn: Any, connect: Any) -> None:
        """Point ``conn`` at an address Sentinel gives and connect it (with the
        ``connect`` callable), checking ROLE; try the next candidate on failure.
        Raises ``PrimaryNotFound``/``ReplicaNotFound`` naming what was tried."""
        self.ensure_listener()
        # A borrower's own deadline (a helper's short wait) bounds all of it.
        deadline: float | None = getattr(conn, "_rp_deadline", None)
        settle = _SETTLE_WAIT
        if deadline is not None:
            settle = max(0.0, min(settle, deadline - time.monotonic()))
        self._settled.wait(settle)
        errors: list[str] = []
        for _ in range(3):  # a switch while connecting: start over
            generation = self.generation
            tried: set[Address] = set()
            for address, expected, source in self.candidates(errors, deadline):
                if address in tried:
                    continue
                tried.add(address)
                problem = self._try(conn, connect, address, expected)
                if problem is not None:
                    errors.append(f"{address[0]}:{address[1]} (from sentinel {source}): {problem}")
                    continue
                # Tagged with the generation it was found in, checked in one step
                # with taking it: a switch after that (the listener's) makes it
                # old; a switch before, and this connection asks again.
                if expected == "master":
                    found = self.found_primary(address, since=generation)
                else:
                    found = generation if generation == self.generation else None
                if found is None:  # a switch while connecting: ask again
                    conn.disconnect()
                    errors.append(f"{address[0]}:{address[1]}: the primary changed meanwhile")
                    break
                conn._rp_sgen = found
                if expected == "master" and self.role == "replica":
                    self.fallback_at = time.monotonic()
                elif expected == "slave":
                    self._fallback_wait = 0.0
                return
            else:
                break
        what = "primary" if self.role == "primary" else "replica or primary"
        error = PrimaryNotFound if self.role == "primary" else ReplicaNotFound
        raise error(
            f"no {what} for Sentinel service {self.service_name!r} "
            f"(sentinels {', '.join(map(self.sentinel_name, range(len(self.sentinels))))}): "
            + "; ".join(errors)
        )

    def _try(self, conn: Any, connect: Any, address: Address, expected: str) -> str | None:
        conn.host, conn.port = address
        try:
            connect()
            conn.send_command("ROLE", check_health=False)
            role = _text(conn.read_response()[0])
        except (RedisError, OSError, IndexError, TypeError) as exc:
            conn.disconnect()
            return _why(exc)
        if role != expected:
            conn.disconnect()
            return f"ROLE is {role!r}, not {expected!r}"
        return None

    # -- changes ----------------------------------------------------------

    def found_primary(self, address: Address, since: int | None = None) -> int | None:
        """A new connection reached the primary at ``address``: the first one
        sets the address; another address means a switch the listener missed.
        The generation it belongs to, or None if one switch or more came after
        generation ``since`` (the connection is then stale: ask again)."""
        with self._lock:
            if since is not None and since != self.generation:
                return None
            if self.address is None:
                self.address = address
            if self.address == address:
                return self.generation
        return self._move(address, "a new connection found it there", since=since)

    def switch(self, address: Address | None, *, why: str) -> None:
        """The primary is (or may be) elsewhere now: new generation, drain."""
        self._move(address, why)

    def announced(self, address: Address, source: str) -> None:
        """``+switch-master`` from sentinel ``source`` named ``address``: switch,
        then learn the new epoch (new connections wait for that, so that a
        sentinel that has not heard of the switch yet cannot send them back)."""
        if address == self.address:
            return
        try:
            self._settled.clear()  # (inside: cut short after it, it is set again)
            if self._move(address, f"+switch-master from {source}") is not None:
                self.newest_primary()
        finally:
            self._settled.set()

    def _move(self, address: Address | None, why: str, since: int | None = None) -> int | None:
        """A new generation for ``address`` (None: unknown), and drain the pool of
        connections to the old one; that generation, or None if ``address`` is
        the current one (or the generation is no longer ``since``)."""
        old: Address | None = None
        moved = False
        try:
            with self._lock:
                if address is not None and address == self.address:
                    return None
                if since is not None and since != self.generation:
                    return None
                old, self.address = self.address, address
                self.generation += 1
                self.switches += 1
                generation = self.generation
                moved = True  # (no call since the bump: both or neither)
            log.warning(
                "sentinel service %r: primary %s -> %s (%s); draining %s pool",
                self.service_name,
                _show(old),
                _show(address),
                why,
                self.role,
            )
        finally:
            # Once the generation moved, the pool is drained even if an exception
            # (a signal handler raising at a call) cuts this short: else its idle
            # connections of the old generation would each fail a borrower. (Also
            # from no known address: a replica pool's first switch, or after
            # READONLY: its connections are of the old generation all the same.)
            if moved:
                try:
                    self._drain()
                except BaseException:
                    self._drain()  # once more if that cut the first short, then raise
                    raise
        return generation

    def _drain(self) -> None:
        pool = self.pool
        if pool is not None and not pool.closed:
            pool.drain()

    def resync(self) -> None:
        """After (re)subscribing: catch a switch missed while not listening."""
        address = self.newest_primary()
        if address is not None and self.address is not None and address != self.address:
            self.switch(address, why="found after reconnecting to Sentinel")

    def recheck_fallback(self, every: float) -> None:
        """A replica pool that fell back to the primary (at least ``every``
        seconds ago): once Sentinel lists a healthy replica again, drain, so
        that new connections go to replicas (else the primary served reads until
        each connection reached ``max_lifetime``). If no replica is reached after
        all, the next drain waits twice as long (up to a minute)."""
        since = self.fallback_at
        if since is None or time.monotonic() - since < max(every, self._fallback_wait):
            return
        self.fallback_at = time.monotonic()
        if next(self.replicas([]), None) is None:
            return
        self.fallback_at = None
        self._fallback_wait = min(max(2 * self._fallback_wait, every), 60.0)
        log.info(
            "sentinel service %r: a replica is healthy again; draining the replica "
            "pool's connections to the primary",
            self.service_name,
        )
        self._drain()

    def demoted(self, address: Address) -> None:
        """A primary connection to ``address`` answered READONLY."""
        with self._lock:
            if self.address not in (None, address):
                return  # already moved on
        self.switch(None, why=f"{_show(address)} answered READONLY")

    def close(self) -> None:
        listener = self._listener
        if listener is not None:
            listener.stop()
        for spare in self._spare:
            while spare:
                try:
                    spare.pop().disconnect()
                except Exception:  # pragma: no cover - closing is best effort
                    pass
        for client in self._clients:
            try:
                client.close()
            except Exception:  # pragma: no cover - closing is best effort
                pass

    def __repr__(self) -> str:
        names = ",".join(map(self.sentinel_name, range(len(self.sentinels))))
        return (
            f"<SentinelService {self.service_name!r} {self.role} sentinels={names} "
            f"address={self.address} generation={self.generation}>"
        )


class _SentinelManaged:
    """Connection methods for a Sentinel-managed pool (mixed into the pool's
    connection class; ``_rp_service`` is set on the per-pool subclass)."""

    _rp_service: SentinelService
    _rp_sgen: int | None = None  # the service generation this connection belongs to
    _sock: Any
    host: Any
    port: Any

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if self._sock:
            return
        self._rp_sgen = None  # connecting: no generation check on the handshake
        parent = super()

        def connect() -> None:
            parent.connect_check_health(*args, **kwargs)  # type: ignore[attr-defined]

        self._rp_service.connect(self, connect)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        sgen = self._rp_sgen
        service = self._rp_service
        if sgen is not None and sgen != service.generation and self._sock is not None:
            address = f"{self.host}:{self.port}"
            self.disconnect()  # type: ignore[attr-defined]
            raise RedisConnectionError(
                f"Sentinel service {service.service_name!r} moved away from {address}: "
                "connection closed, nothing sent"
            )
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ReadOnlyError:
            service = self._rp_service
            if service.role != "primary" or self._rp_sgen is None:
                raise
            address = (self.host, self.port)
            self.disconnect()  # type: ignore[attr-defined]
            service.demoted(address)
            raise RedisConnectionError(
                f"{address[0]}:{address[1]} answered READONLY: it is no longer the primary "
                f"of {service.service_name!r}; connection closed, asking Sentinel again"
            ) from None


def _stale(conn: Connection) -> bool:
    """Has a kept sentinel connection been closed (or sent bytes nobody asked for)?"""
    try:
        return bool(conn.can_read(timeout=0))
    except (RedisError, OSError):
        return True


def _past(deadline: float | None, errors: list[str]) -> bool:
    """Has the borrower's deadline passed? (Then say so, once, in ``errors``.)"""
    if deadline is None or time.monotonic() < deadline:
        return False
    if "the borrower's deadline passed" not in errors:
        errors.append("the borrower's deadline passed")
    return True


def _connection_class(base: type[Connection], service: SentinelService) -> type[Connection]:
    return type(
        f"Sentinel{base.__name__}",
        (_SentinelManaged, base),
        {"_rp_service": service, "__module__": __name__},
    )


def sentinel_pool(
    cls: type[RedisPool],
    sentinels: Any,
    service_name: str,
    *,
    role: str = "primary",
    sentinel_kwargs: dict[str, Any] | None = None,
    read_from_replicas: bool = False,
    **options: Any,
) -> RedisPool:
    """The body of ``RedisPool.sentinel`` (see there)."""
    addresses = parse_sentinels(sentinels, "sentinels")
    if not isinstance(service_name, str) or not service_name.strip():
        raise ValueError(f"service_name must be a non-empty str, got {service_name!r}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if sentinel_kwargs is None:
        sentinel_kwargs = {}
    if not isinstance(sentinel_kwargs, dict):
        raise TypeError(
            f"sentinel_kwargs must be a dict or None, got {type(sentinel_kwargs).__name__}"
        )
    for key in ("host", "port"):
        if key in sentinel_kwargs:
            raise TypeError(f"sentinel_kwargs got {key!r}: give the sentinels' addresses instead")
    for key, hint in _REFUSED.items():
        if key in options:
            raise TypeError(f"RedisPool.sentinel got an unsupported option {key!r}: {hint}")
    url = options.pop("url", None) or "redis://sentinel-managed/0"
    base = options.pop("connection_class", None) or parse_redis_url(url).get("connection_class")
    if options.pop("ssl", False):
        base = SSLConnection
    base = base or Connection
    if not (isinstance(base, type) and issubclass(base, Connection)):
        raise TypeError(f"connection_class must be a redis-py TCP Connection class, got {base!r}")
    try:
        service = SentinelService(addresses, service_name, role, dict(sentinel_kwargs))
    except TypeError as exc:  # an unknown option: redis-py's message names it
        raise TypeError(f"sentinel_kwargs: {exc}") from None
    shown = ",".join(f"{h}:{p}" for h, p in addresses)
    name = options.pop("name", None) or f"sentinel:{service_name}/{role}@{shown}"
    pool = cls(url, connection_class=_connection_class(base, service), name=name, **options)
    pool.url = f"redis+sentinel://{shown}/{service_name}"
    service.attach(pool, listen=pool._pool._background)
    pool._sentinel = service  # type: ignore[attr-defined]
    pool.on_close(service.close)  # the listener and the sentinel clients' sockets
    if read_from_replicas and role == "primary":
        read = sentinel_pool(
            cls,
            addresses,
            service_name,
            role="replica",
            sentinel_kwargs=sentinel_kwargs,
            url=url,
            name=f"{name} (read)",
            connection_class=base,
            **options,
        )
        pool.read_pool = read
    return pool
