"""A throw-away Sentinel setup on loopback: a primary, a replica and three sentinels.

The sentinels' configs are written pre-seeded (``sentinel myid``,
``known-replica``, ``known-sentinel``), so the setup is usable in well under a
second instead of the 2-10 s Sentinel needs to discover its peers. Failover
settings are short: ``down-after-milliseconds 1000``, ``failover-timeout 5000``.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Sequence
from typing import Any

import redis

from .server import HOST, RedisServer, _free_port

__all__ = ["SentinelServer", "SentinelSetup"]

_READY_TIMEOUT = 10.0


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel`` in its own temp dir.

    The config is written once; a restart keeps what Sentinel rewrote into it
    (the current primary, its epoch), as a real restart would.
    """

    def __init__(
        self,
        directives: Sequence[str],
        *,
        port: int | None = None,
        password: str | None = None,
        binary: str | None = None,
        start: bool = True,
    ) -> None:
        self.directives = tuple(directives)
        super().__init__(port=port, password=password, binary=binary, start=False)
        if start:
            self.start()

    @property
    def conf_file(self) -> str:
        return str(self.dir / "sentinel.conf")

    def _command(self) -> list[str]:
        conf = self.dir / "sentinel.conf"
        if not conf.exists():
            lines = [
                f"port {self.port}",
                f"bind {self.host}",
                f"dir {self.dir}",
                f"logfile {self.log_file}",
                "daemonize no",
                *self.directives,
            ]
            if self.password is not None:
                lines.append(f"requirepass {self.password}")
            conf.write_text("\n".join(lines) + "\n")
        return [self.binary, str(conf), "--sentinel"]

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<SentinelServer {self.host}:{self.port} pid={self.pid} {state}>"


class SentinelSetup:
    """A primary, a replica and three sentinels monitoring them as ``service``.

    ``password``: the data nodes' ``requirepass`` (and the replica's
    ``masterauth``, the sentinels' ``auth-pass``). ``sentinel_password``: the
    sentinels' own ``requirepass``; ``sentinel_user``: an extra ACL user
    ``(name, password)`` on every sentinel, also used between sentinels.
    """

    def __init__(
        self,
        *,
        service: str = "mymaster",
        password: str | None = None,
        sentinel_password: str | None = None,
        sentinel_user: tuple[str, str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        self.sentinel_user = sentinel_user
        self.sentinels: list[SentinelServer] = []
        self.servers: list[RedisServer] = []
        data_args = ["--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"]
        if password is not None:
            data_args += ["--masterauth", password]
        try:
            self.primary = RedisServer(password=password, args=data_args, binary=binary)
            self.servers.append(self.primary)
            self.replica = RedisServer(
                password=password,
                args=[*data_args, "--replicaof", HOST, str(self.primary.port)],
                binary=binary,
            )
            self.servers.append(self.replica)
            ports = [_free_port() for _ in range(3)]
            ids = [secrets.token_hex(20) for _ in ports]
            for i, port in enumerate(ports):
                directives = self._directives(
                    ids[i], [(p, d) for p, d in zip(ports, ids, strict=True) if p != port]
                )
                self.sentinels.append(
                    SentinelServer(directives, port=port, password=sentinel_password, binary=binary)
                )
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    def _directives(self, myid: str, others: list[tuple[int, str]]) -> list[str]:
        svc, primary = self.service, self.primary
        lines = [
            f"sentinel myid {myid}",
            f"sentinel monitor {svc} {HOST} {primary.port} 2",
            f"sentinel down-after-milliseconds {svc} 1000",
            f"sentinel failover-timeout {svc} 5000",
            f"sentinel parallel-syncs {svc} 1",
            f"sentinel known-replica {svc} {HOST} {self.replica.port}",
        ]
        lines += [f"sentinel known-sentinel {svc} {HOST} {port} {rid}" for port, rid in others]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {svc} {self.password}")
        if self.sentinel_user is not None:
            user, pw = self.sentinel_user
            lines.append(f"user {user} on >{pw} ~* &* +@all")
            lines += [f"sentinel sentinel-user {user}", f"sentinel sentinel-pass {pw}"]
        elif self.sentinel_password is not None:
            lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
        return lines

    # -- addresses and clients ----------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels' ``(host, port)``, for ``RedisPool.sentinel``."""
        return [(s.host, s.port) for s in self.sentinels]

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection options for the sentinels (their own credentials)."""
        if self.sentinel_user is not None:
            return {"username": self.sentinel_user[0], "password": self.sentinel_user[1]}
        if self.sentinel_password is not None:
            return {"password": self.sentinel_password}
        return {}

    def sentinel_client(self, index: int = 0, **kwargs: Any) -> redis.Redis:
        s = self.sentinels[index]
        opts = {"socket_timeout": 2.0, "protocol": 2, **self.sentinel_kwargs, **kwargs}
        return redis.Redis(s.host, s.port, **opts)

    def data_client(self, server: RedisServer, **kwargs: Any) -> redis.Redis:
        return redis.Redis(server.host, server.port, password=self.password, **kwargs)

    def server_at(self, address: tuple[str, int]) -> RedisServer:
        for server in self.servers:
            if (server.host, server.port) == (address[0], int(address[1])):
                return server
        raise LookupError(f"no data node at {address}")

    def primary_address(self, index: int = 0) -> tuple[str, int]:
        """The primary as sentinel ``index`` names it now."""
        with self.sentinel_client(index) as c:
            host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return (host.decode() if isinstance(host, bytes) else host), int(port)

    def current_primary(self) -> RedisServer:
        return self.server_at(self.primary_address())

    # -- readiness and failover ----------------------------------------------

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Until the replica (whichever node is not the primary now) is in sync and
        every sentinel sees it and the others."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._not_ready()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel setup not ready after {timeout}s: {problem}")
            time.sleep(0.02)

    def _not_ready(self) -> str | None:
        try:
            primary = self.primary_address()
            replica = next(s for s in self.servers if (s.host, s.port) != primary)
            with self.data_client(replica) as c:
                if c.info("replication").get("master_link_status") != "up":
                    return "replica not in sync"
            for i in range(len(self.sentinels)):
                with self.sentinel_client(i) as c:
                    replicas = c.execute_command("SENTINEL", "REPLICAS", self.service)
                    flags = [_pairs(r).get("flags", "") for r in replicas]
                    if flags != ["slave"]:
                        return f"sentinel {i} sees replicas {flags}"
                    if len(c.execute_command("SENTINEL", "SENTINELS", self.service)) < 2:
                        return f"sentinel {i} does not see the others yet"
        except (redis.RedisError, OSError) as exc:
            return repr(exc)
        return None

    def failover(self, index: int = 0) -> None:
        """``SENTINEL FAILOVER`` through sentinel ``index``."""
        with self.sentinel_client(index) as c:
            c.execute_command("SENTINEL", "FAILOVER", self.service)

    def wait_for_primary(
        self, not_address: tuple[str, int], timeout: float = 30.0, *, every: bool = False
    ) -> tuple[str, int]:
        """Until the sentinel (``every``: each one) names a primary other than ``not_address``."""
        deadline = time.monotonic() + timeout
        indexes = range(len(self.sentinels)) if every else range(1)
        while True:
            try:
                found = {self.primary_address(i) for i in indexes}
            except (redis.RedisError, OSError):
                found = set()
            if len(found) == 1 and not_address not in found:
                return found.pop()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the primary is still {not_address} after {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            with contextlib.suppress(Exception):
                server.close(kill=True)

    def __enter__(self) -> SentinelSetup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<SentinelSetup {self.service!r} primary={self.primary.port} "
            f"replica={self.replica.port} sentinels={[s.port for s in self.sentinels]}>"
        )


def _pairs(reply: Any) -> dict[str, str]:
    """A flat RESP2 ``[key, value, ...]`` reply as a dict of str."""
    items = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
    return dict(zip(items[::2], items[1::2], strict=False))
