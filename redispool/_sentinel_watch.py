"""The ``+switch-master`` listener of a Sentinel-managed pool: one daemon thread.

It subscribes on every sentinel it can reach (the first to announce a switch
wins), reconnects with capped, jittered backoff, PINGs to notice a sentinel
that stopped answering, and after each (re)subscription asks the sentinels
for the current primary, to catch a switch it missed while not listening.
It holds the service only weakly and ends when the pool is closed or gone.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from .backoff import full_jitter
from .sentinel import _text

if TYPE_CHECKING:
    from .sentinel import SentinelService

log = logging.getLogger("redispool.sentinel")

CHANNEL = "+switch-master"
_TICK = 0.2  # how often the thread looks at the pool (closed?) when nothing happens
_PING_EVERY = 2.0  # a subscribed sentinel is PINGed this often...
_PONG_WITHIN = 3.0  # ...and dropped when it does not answer within this


class _Link:
    """One subscribed sentinel connection and its liveness."""

    __slots__ = ("conn", "fails", "next_try", "ping_sent", "pinged_at")

    def __init__(self) -> None:
        self.conn: Any = None
        self.fails = 0
        self.next_try = 0.0
        self.pinged_at = 0.0
        self.ping_sent: float | None = None  # a PING still unanswered since then


class SwitchListener:
    """Follows ``+switch-master`` for ``service`` in a daemon thread."""

    def __init__(self, service: SentinelService) -> None:
        self._ref = weakref.ref(service)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            name=f"redispool-sentinel-{service.service_name}-{service.role}",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        service = self._ref()
        if service is None:
            return
        links = [_Link() for _ in service.sentinels]
        del service
        try:
            while not self._stop.is_set():
                service = self._ref()
                if service is None or service.closed:
                    return
                try:
                    self._round(service, links)
                except Exception:  # never let the thread die on a surprise
                    log.exception("sentinel listener for %r failed a round", service)
                    time.sleep(_TICK)
                del service
        finally:
            for link in links:
                _drop(link)
            service = self._ref()
            if service is not None and service.closed:
                service.close()

    def _round(self, service: SentinelService, links: list[_Link]) -> None:
        now = time.monotonic()
        subscribed = False
        for index, link in enumerate(links):
            if link.conn is None and now >= link.next_try:
                subscribed |= _subscribe(service, index, link, now)
            elif link.conn is not None:
                _keep_alive(service, index, link, now)
        if subscribed:
            service.resync()
        service.recheck_fallback(_PING_EVERY)
        socks = {link.conn._sock: i for i, link in enumerate(links) if link.conn is not None}
        socks.pop(None, None)
        if not socks:
            self._stop.wait(_TICK)
            return
        for sock in _readable(list(socks), _TICK):
            index = socks[sock]
            link = links[index]
            try:
                while True:
                    _handle(service, index, link, link.conn.read_response())
                    if not link.conn.can_read(timeout=0):
                        break
            except (RedisError, OSError) as exc:
                name = service.sentinel_name(index)
                log.info("sentinel listener: lost %s (%s); reconnecting", name, exc)
                _drop(link)
                link.next_try = time.monotonic()


def _readable(socks: list[Any], timeout: float) -> list[Any]:
    """Those of ``socks`` with something to read (or closed) within ``timeout``.
    With poll: select() refuses descriptors from 1024 on, which a process with
    many open files gives its new sockets. Looked up at each call: gevent's
    monkey-patching (also after import) makes it cooperative."""
    poll_class = getattr(select, "poll", None)
    if poll_class is None:  # pragma: no cover - no poll (Windows)
        return select.select(socks, [], [], timeout)[0]
    poller = poll_class()
    by_fd = {}
    for sock in socks:
        by_fd[sock.fileno()] = sock
        poller.register(sock, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000) if fd in by_fd]


def _subscribe(service: SentinelService, index: int, link: _Link, now: float) -> bool:
    conn = None
    try:
        conn = service.listener_connection(index)
        conn.connect()
        conn.send_command("SUBSCRIBE", CHANNEL)
        conn.read_response()
    except (RedisError, OSError) as exc:
        if conn is not None:
            conn.disconnect()
        link.fails += 1
        link.next_try = now + full_jitter(link.fails, 0.05, 1.0)
        if link.fails == 1:
            log.info("sentinel listener: %s unreachable: %r", service.sentinel_name(index), exc)
        return False
    link.conn, link.fails = conn, 0
    link.pinged_at, link.ping_sent = now, None
    return True


def _keep_alive(service: SentinelService, index: int, link: _Link, now: float) -> None:
    if link.ping_sent is not None and now - link.ping_sent > _PONG_WITHIN:
        log.info("sentinel listener: %s stopped answering", service.sentinel_name(index))
        _drop(link)
        link.next_try = now
    elif link.ping_sent is None and now - link.pinged_at >= _PING_EVERY:
        try:
            link.conn.send_command("PING")
        except (RedisError, OSError):
            _drop(link)
            link.next_try = now
            return
        link.pinged_at = link.ping_sent = now


def _handle(service: SentinelService, index: int, link: _Link, message: Any) -> None:
    if not isinstance(message, list) or not message:
        return
    kind = _text(message[0]).lower()
    if kind == "pong":
        link.ping_sent = None
    elif kind == "message" and len(message) >= 3 and _text(message[1]) == CHANNEL:
        parts = _text(message[2]).split()
        # "<service> <old ip> <old port> <new ip> <new port>"
        if len(parts) == 5 and parts[0] == service.service_name and parts[4].isdigit():
            service.announced((parts[3], int(parts[4])), service.sentinel_name(index))


def _drop(link: _Link) -> None:
    conn, link.conn = link.conn, None
    if conn is not None:
        try:
            conn.disconnect()
        except Exception:  # pragma: no cover - closing is best effort
            pass
