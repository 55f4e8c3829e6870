"""A real, throw-away Redis Cluster on loopback: 3 primaries + 3 replicas (by
default), each a :class:`RedisServer` in its own temp dir, ready in about 2.5 s.

Ports are picked below the ephemeral range so that the cluster bus port
(``port + 10000``) is free too; every node's port is checked to be answered by
our own process (:meth:`RedisServer._ping`) before any command is sent to it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .server import HOST, RedisServer

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["RedisClusterServer"]

SLOTS = 16384
_BUS_OFFSET = 10000
# Below Linux's ephemeral range (32768+), so that no outgoing socket holds the
# port or its bus port, and port + 10000 stays a valid port.
_PORT_RANGE = (12000, 22700)
_PORT_ATTEMPTS = 50
_READY_TIMEOUT = 30.0
_NODE_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
    "--repl-ping-replica-period",
    "1",
    # a replica may always take over (tests kill primaries on purpose)
    "--cluster-replica-validity-factor",
    "0",
)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A port that, with its bus port, is free now (and not already ours)."""
    for _ in range(_PORT_ATTEMPTS * 20):
        port = random.randrange(*_PORT_RANGE)
        if port in taken or port + _BUS_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + _BUS_OFFSET):
            return port
    raise RuntimeError(f"no free port pair (port, port+{_BUS_OFFSET}) in {_PORT_RANGE}")


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """``primaries`` contiguous slot ranges covering all 16384 slots."""
    step = SLOTS // primaries
    bounds = [i * step for i in range(primaries)] + [SLOTS]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


class RedisClusterServer(contextlib.AbstractContextManager["RedisClusterServer"]):
    """``primaries`` primaries with ``replicas`` replicas each, on loopback.

    ``nodes[:primaries]`` start as the primaries (in slot order), the rest as
    their replicas; roles change with failovers, so ask :meth:`primaries` and
    :meth:`replicas`. Killed at interpreter exit if still running.
    """

    def __init__(self, *, primaries: int = 3, replicas: int = 1, binary: str | None = None) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError(f"need primaries >= 1 and replicas >= 0, got {primaries}/{replicas}")
        self.host = HOST
        self.n_primaries = primaries
        self.n_replicas = replicas
        self.nodes: list[RedisServer] = []
        try:
            self._start_nodes(primaries * (1 + replicas), binary)
            self._form()
        except BaseException:
            self.close()
            raise

    # -- start ------------------------------------------------------------

    def _start_nodes(self, count: int, binary: str | None) -> None:
        taken: set[int] = set()
        for _ in range(count):
            port = _cluster_port(taken)
            node = RedisServer(port=port, args=_NODE_ARGS, binary=binary, start=False)
            self.nodes.append(node)
            for attempt in range(_PORT_ATTEMPTS):
                try:
                    node.start()  # returns once our own process answers on the port
                    break
                except RuntimeError:
                    if attempt == _PORT_ATTEMPTS - 1:
                        raise
                    node.port = _cluster_port(taken)  # lost a race for the port (or bus port)
            taken.update((node.port, node.port + _BUS_OFFSET))

    def _form(self) -> None:
        n = self.n_primaries
        for i, node in enumerate(self.nodes):
            with node.client() as c:
                c.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
                if i < n:
                    lo, hi = slot_ranges(n)[i]
                    c.execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
        with self.nodes[0].client() as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER MEET", node.host, node.port)
        ids = [self.node_id(node) for node in self.nodes]
        for i, node in enumerate(self.nodes[n:]):
            primary_id = ids[i % n]
            self._replicate(node, primary_id, _READY_TIMEOUT)
        self.wait_ready()

    # -- state ------------------------------------------------------------

    def node_id(self, node: RedisServer) -> str:
        with node.client() as c:
            return _text(c.execute_command("CLUSTER MYID"))

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.is_running()]

    def _roles(self) -> dict[int, str]:
        """port -> "master" or "slave", each node asked about itself."""
        roles = {}
        for node in self.running():
            with node.client(socket_timeout=2) as c:
                role = c.execute_command("ROLE")[0]
            roles[node.port] = _text(role)
        return roles

    def primaries(self) -> list[RedisServer]:
        """The running nodes that say they are primaries (with slots), in slot order."""
        owners = self.slot_owners()
        order = sorted(owners, key=lambda port: min(owners[port]))
        by_port = {node.port: node for node in self.running()}
        return [by_port[port] for port in order if port in by_port]

    def replicas(self) -> list[RedisServer]:
        roles = self._roles()
        return [node for node in self.running() if roles.get(node.port) == "slave"]

    def _nodes_view(self) -> dict[str, Any]:
        """``CLUSTER NODES`` as a running member sees it (not a client's refresh
        command, so it does not count in :meth:`refresh_count`)."""
        best: dict[str, Any] = {}
        for node in self.running():  # a node just removed (reset) knows only itself
            with node.client(socket_timeout=2) as c:
                view: dict[str, Any] = c.execute_command("CLUSTER NODES")
            if len(view) > len(best):
                best = view
            if len(best) >= len(self.nodes):
                break
        return best

    def slot_owners(self) -> dict[int, list[tuple[int, int]]]:
        """primary port -> its slot ranges, as the first running node sees it."""
        owners: dict[int, list[tuple[int, int]]] = {}
        for address, node in self._nodes_view().items():
            if "fail" in node["flags"] or "master" not in node["flags"]:
                continue
            for lo, *hi in node["slots"]:
                if not lo.startswith("["):  # "[slot->-id]": a migration, not a range
                    port = int(address.rsplit(":", 1)[1].split("@")[0])
                    owners.setdefault(port, []).append((int(lo), int(hi[0] if hi else lo)))
        return owners

    def node_for_slot(self, slot: int) -> RedisServer:
        """The running primary serving ``slot`` (as the first running node sees it)."""
        for port, ranges in self.slot_owners().items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return self.node(port)
        raise LookupError(f"slot {slot} is not served")

    def node_for_key(self, key: str | bytes) -> RedisServer:
        from redis.crc import key_slot

        return self.node_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"no node on port {port}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """A running replica of ``primary``."""
        pid = self.node_id(primary)
        for node in self.replicas():
            with node.client() as c:
                info = c.info("replication")
            if info.get("master_port") == primary.port:
                return node
        raise LookupError(f"{primary.port} (id {pid}) has no running replica")

    def is_ready(self, *, replicas: int | None = None) -> bool:
        """Every running node: ``cluster_state:ok``, all slots served by
        ``n_primaries`` primaries, each with ``replicas`` replicas linked up
        (``replicas=-1``: any number; the cluster serves every slot)."""
        want = self.n_replicas if replicas is None else replicas
        try:
            for node in self.running():
                with node.client(socket_timeout=2) as c:
                    if c.cluster("INFO").get("cluster_state") != "ok":
                        return False
                    slots = c.execute_command("CLUSTER SLOTS")
                    if len({int(s[2][1]) for s in slots}) != self.n_primaries:
                        return False
                    if sum(int(s[1]) - int(s[0]) + 1 for s in slots) != SLOTS:
                        return False
                    if want != -1 and any(len(s) - 3 != want for s in slots):
                        return False
                    info = c.info("replication")
                    if info.get("role") == "slave" and info.get("master_link_status") != "up":
                        return False
        except Exception:  # a node still loading or restarting
            return False
        return True

    def wait_ready(self, timeout: float = _READY_TIMEOUT, *, replicas: int | None = None) -> None:
        self._wait(lambda: self.is_ready(replicas=replicas), "the cluster to be ready", timeout)

    def _wait(self, ok: Callable[[], bool], what: str, timeout: float = _READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.port}\n{n.log_tail(8)}" for n in self.nodes)
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{tails}")
            time.sleep(0.02)

    # -- faults -----------------------------------------------------------

    def failover(self, replica: RedisServer, timeout: float = _READY_TIMEOUT) -> None:
        """``CLUSTER FAILOVER`` on ``replica``; returns once it serves its slots."""
        with replica.client() as c:
            c.execute_command("CLUSTER FAILOVER")
        self._wait(lambda: replica.port in self.slot_owners(), "the failover", timeout)
        self.wait_ready(timeout)

    def forget(self, node: RedisServer) -> None:
        """Remove ``node`` from the cluster (as ``redis-cli --cluster del-node``):
        every other node forgets it, then it resets itself; it keeps running."""
        nid = self.node_id(node)
        for other in self.running():
            if other is not node:
                with other.client() as c:
                    c.execute_command("CLUSTER FORGET", nid)
        with node.client() as c:
            c.execute_command("CLUSTER RESET", "HARD")

    def restore(self, timeout: float = _READY_TIMEOUT) -> None:
        """Back to ``n_primaries`` x (1 + ``n_replicas``) healthy nodes after a test
        killed or removed some: stopped nodes restart (and rejoin from their
        config), removed ones meet the cluster again as replicas."""
        for node in self.nodes:
            if not node.is_running():
                node.restart()
        anchor = self.primaries()[0]
        for node in self.nodes:
            with node.client() as c:
                if len(c.execute_command("CLUSTER NODES")) > 1:
                    continue
                c.execute_command("CLUSTER MEET", anchor.host, anchor.port)
        for node in self.nodes:
            with node.client() as c:
                info = c.info("replication")
                if info.get("role") == "slave" or node.port in self.slot_owners():
                    continue
                # A replica just promoted (its primary killed) serves slots before
                # the others' views say so: not a removed node (CLUSTER REPLICATE
                # would refuse it for good: "must be empty").
                view = c.execute_command("CLUSTER NODES")
                if any("myself" in n["flags"] and n["slots"] for n in view.values()):
                    continue
            self._replicate(node, self.node_id(self._primary_short_of_replicas()), timeout)
        self.wait_ready(timeout)

    def _replicate(self, node: RedisServer, primary_id: str, timeout: float) -> None:
        """``CLUSTER REPLICATE`` once ``node`` has heard of the primary."""
        from redis.exceptions import ResponseError

        with node.client() as c:

            def knows() -> bool:
                view = c.execute_command("CLUSTER NODES")
                return any(n["node_id"] == primary_id for n in view.values())

            self._wait(knows, f"node {node.port} to learn of {primary_id}", timeout)

            def replicated() -> bool:
                try:
                    c.execute_command("CLUSTER REPLICATE", primary_id)
                    return True
                except ResponseError as exc:
                    if "must be empty" not in str(exc):
                        raise
                # Seen once (a removed replica): keys, or slots in its own view.
                # It serves none of the cluster's slots, and as a replica its
                # data is replaced by its primary's: drop keys, wait out slots.
                view = c.execute_command("CLUSTER NODES")
                if not any("myself" in n["flags"] and n["slots"] for n in view.values()):
                    c.flushall()
                return False

            self._wait(replicated, f"node {node.port} to replicate {primary_id}", timeout)

    def _primary_short_of_replicas(self) -> RedisServer:
        counts = {p.port: 0 for p in self.primaries()}
        for node in self.replicas():
            with node.client() as c:
                port = c.info("replication").get("master_port")
            if port in counts:
                counts[port] += 1
        return self.node(min(counts, key=counts.__getitem__))

    def refresh_count(self) -> int:
        """``CLUSTER SLOTS`` + ``CLUSTER SHARDS`` calls served by the running
        nodes since :meth:`reset_stats`: the clients' topology refreshes (this
        class's own helpers use ``CLUSTER NODES``, not counted)."""
        total = 0
        for node in self.running():
            with node.client() as c:
                stats = c.info("commandstats")
            for name in ("cmdstat_cluster|slots", "cmdstat_cluster|shards"):
                total += int(stats.get(name, {}).get("calls", 0))
        return total

    def reset_stats(self) -> None:
        for node in self.running():
            with node.client() as c:
                c.config_resetstat()

    def flushall(self) -> None:
        for node in self.primaries():
            with node.client() as c:
                c.flushall()

    # -- clients ----------------------------------------------------------

    @property
    def url(self) -> str:
        """A startup-node URL (the first running node)."""
        node = self.running()[0]
        return f"redis://{node.host}:{node.port}"

    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(node.host, node.port) for node in self.running()]

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A plain ``redis.cluster.RedisCluster`` (for test setup and checks)."""
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(self.url, **kwargs)

    def clients_named(self, name: str) -> dict[int, int]:
        """port -> connections named ``name`` (``CLIENT LIST``) on each running node."""
        out = {}
        for node in self.running():
            with node.client() as c:
                out[node.port] = sum(1 for x in c.client_list() if x.get("name") == name)
        return out

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Stop every node and delete their temp dirs."""
        for node in self.nodes:
            node.close(kill=True)

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[RedisServer]:
        return iter(self.nodes)

    def __repr__(self) -> str:
        ports = ",".join(str(n.port) for n in self.nodes)
        return f"<RedisClusterServer {self.n_primaries}x{1 + self.n_replicas} ports={ports}>"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
