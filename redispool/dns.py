"""A small DNS cache for new connections: resolve once per TTL, not per connect."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable

__all__ = ["DNSCache"]

log = logging.getLogger("redispool.dns")

Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Addresses of ``host`` in the order ``getaddrinfo`` gives (IPv6 and IPv4)."""
    seen: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


class DNSCache:
    """Caches a host's addresses for ``ttl`` seconds (0: no caching).

    When a lookup fails and an answer younger than ``stale_ttl`` is known, that
    answer is used (and the failure logged) so that a resolver outage does not
    take the pool down with it; a changed address is picked up after ``ttl``.
    """

    def __init__(
        self,
        ttl: float = 30.0,
        stale_ttl: float = 300.0,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or stale_ttl < 0:
            raise ValueError(f"dns ttl must be >= 0, got ttl={ttl!r} stale_ttl={stale_ttl!r}")
        self.ttl = ttl
        self.stale_ttl = stale_ttl
        self._resolver = resolver or system_resolver
        self._clock = clock
        self._entries: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.lookups = 0

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to try for ``host`` (an IP literal is returned as is)."""
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        key = (host, port)
        now = self._clock()
        cached = self._entries.get(key)  # dict get/set are atomic: no lock to
        # inherit held across a fork
        if cached is not None and self.ttl and now - cached[0] < self.ttl:
            return cached[1]
        try:
            self.lookups += 1
            addresses = self._resolver(host, port)
            if not addresses:
                raise OSError(f"no addresses for {host!r}")
        except OSError as exc:
            if cached is not None and now - cached[0] < self.ttl + self.stale_ttl:
                log.warning("DNS lookup of %r failed (%s); using the last answer", host, exc)
                return cached[1]
            raise
        self._entries[key] = (now, addresses)
        return addresses
