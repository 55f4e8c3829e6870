"""The signal storm of ``_signal_storm.py`` on Sentinel-managed pools against real
sentinels, raising in redispool's code (the Sentinel service and connection
mixin, the listener's main-thread parts, the pools, the drop-in's adapter) and
in redis-py's: run in a subprocess by tests/sentinel/test_sentinel_signals.py.

``python -m tests._signal_storm_sentinel SENTINELS SERVICE SEED [failover]``
(``SENTINELS``: ``host:port,host:port,...``). A writer pool (``min_size=0``, so
connections keep being made through Sentinel discovery) and a replica pool; the
main thread runs random blocks (``client()`` with set/get and pipelines,
``connection()``, the drop-in ``pool.redis``, a reader's ECHO), each writing a
value of its own and reading it back, and now and then the failover-following
paths: a drain, a simulated demotion (``switch(None)``, ``demoted()``), a
``resync()``. A second thread does the same blocks with no storm, and meanwhile
kills the pools' connections (CLIENT KILL: they reconnect through discovery),
stops the listener (the next connect starts one, under the storm), or moves the
service itself. With ``failover``, it also asks Sentinel for a real failover.

Then, with the storm off: nothing borrowed, creating, closing or waiting; every
idle connection alive (or killed), of the current generation, at the current
primary (the writer's), on db 0 with no transaction and with the ROLE it should
have; no reply read by the wrong block; right after each move of the main
thread's, however cut short, no idle connection of an older generation; once
collected, no socket of the pools' left on the data nodes beyond their sizes;
each pool still lends its max_size; the locks free; the service's primary what
the sentinels say; exactly one listener thread per service; the services' own
sentinel connections clean and none left open beyond those kept; all gone once
the pools close. One JSON line. Left out, as in ``_signal_storm_redis.py``:
the first instruction of a function redis-py's client calls (``inside``).
"""

from __future__ import annotations

import gc
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from redispool import PoolError, RedisPool
from redispool.connection import is_alive
from redispool.sentinel import SentinelService

from ._signal_storm import _POOL_FILES, Interrupt, Storm, alongside

_FILES = (
    *_POOL_FILES,
    "redispool/redis_pool.py",
    "redispool/redis_adapter.py",
    "redispool/_dropin.py",
    "redispool/connection.py",
    "redispool/sentinel.py",
    "redispool/_sentinel_watch.py",
    "redis/client.py",
    "redis/connection.py",
)
SIZES = {"w": 3, "r": 2}
EXPECTED = (redis.RedisError, PoolError)


class _Storm(Storm):
    """The storm, also counting where it raised by file, and by function in the
    Sentinel code."""

    def __init__(self, seed: int) -> None:
        # As in _signal_storm_redis.py: redis-py's client calls the adapter's
        # release() in a finally (an exception at its first instruction is no
        # code of ours to catch). The drop-in pool.redis borrows around
        # redis-py's own window in _execute_command, so that is not left out.
        inside = tuple(f for f in _FILES if f != "redis/client.py")
        super().__init__(seed, files=_FILES, inside=inside)
        self.by_file: dict[str, int] = {}
        self.sentinel: dict[str, int] = {}

    def handler(self, signum: int, frame: Any) -> None:
        try:
            super().handler(signum, frame)
        except Interrupt:
            name = "/".join(frame.f_code.co_filename.replace("\\", "/").split("/")[-2:])
            self.by_file[name] = self.by_file.get(name, 0) + 1
            if "sentinel" in name:
                key = frame.f_code.co_name
                self.sentinel[key] = self.sentinel.get(key, 0) + 1
            raise


def _service(pool: RedisPool) -> SentinelService:
    service: SentinelService = pool._sentinel  # type: ignore[attr-defined]
    return service


# With a real failover, a write acknowledged by the old primary may be lost.
LOSSY = False


def _block(
    pools: dict[str, RedisPool], rnd: random.Random, tag: str, n: int, wrong: list[str]
) -> None:
    """One block writing a value of its own and reading it back."""
    writer, reader = pools["w"], pools["r"]
    key, value = f"{tag}:{n}", f"{tag}-{n}"
    kind = rnd.randrange(6)
    if kind == 0:
        with writer.client(timeout=rnd.choice((None, 1.0))) as r:
            r.set(key, value, ex=60)
            got = r.get(key)
    elif kind == 1:
        with writer.client() as r:
            pipe = r.pipeline(transaction=rnd.random() < 0.5)
            pipe.set(key, value, ex=60)
            pipe.get(key)
            got = pipe.execute()[1]
    elif kind == 2:
        with writer.connection() as conn:
            conn.send_command("SET", key, value, "EX", 60)
            conn.read_response()
            conn.send_command("GET", key)
            got = conn.read_response()
    elif kind == 3:  # the drop-in: each command borrows and returns
        writer.redis.set(key, value, ex=60)
        got = writer.redis.get(key)
        if got is None and LOSSY:  # (lost, on the old primary: not a misdelivery)
            return
    else:
        with reader.client() as r:
            got = r.echo(value)
    if got != value.encode():
        wrong.append(f"{tag}: {value!r} read {got!r}")


# Held around each move of the service by the main thread or the other one, so
# that right after one of the main thread's, no other is halfway through.
MOVES = threading.Lock()


def _move(pools: dict[str, RedisPool], demoted: bool, stale: list[str]) -> None:
    """A simulated demotion (as on READONLY, or a switch to an unknown primary):
    new generation, drain, rediscovery. However cut short, once the generation
    moved, no idle connection of an older one is left."""
    service = _service(pools["w"])
    with MOVES:
        before = service.generation
        try:
            if demoted:
                address = service.address
                if address is not None:
                    service.demoted(address)
            else:
                service.switch(None, why="storm: simulated")
        finally:
            if service.generation != before:
                idle = [e.obj for e in list(pools["w"]._pool._idle)]
                old = [c._rp_sgen for c in idle if c._rp_sgen is not None and c._rp_sgen <= before]
                if old:
                    stale.append(f"generation {service.generation}, idle of {old}")


def _failover_paths(pools: dict[str, RedisPool], rnd: random.Random, stale: list[str]) -> None:
    """The main thread's share of the failover-following paths."""
    service = _service(pools["w"])
    choice = rnd.randrange(6)
    if choice == 0:
        pools["w"].drain()  # every next block connects through discovery
    elif choice == 1:
        pools["r"].drain()
    elif choice in (2, 3):
        _move(pools, choice == 3, stale)
    elif choice == 4:
        service.resync()
    else:
        _service(pools["r"]).resync()


# (start, end, where it raised from) of each of the main thread's operations that
# raised: to name the one that left a connection borrowed, if any.
CUT: list[tuple[float, float, list[str]]] = []


def _main_op(
    pools: dict[str, RedisPool], rnd: random.Random, wrong: list[str], stale: list[str]
) -> Callable[[int], None]:
    def op(n: int) -> None:
        start = time.monotonic()
        try:
            if rnd.random() < 0.12:
                _failover_paths(pools, rnd, stale)
            else:
                _block(pools, rnd, "main", n, wrong)
        except BaseException as exc:
            where, tb = [repr(exc)], exc.__traceback__
            while tb is not None:
                code = tb.tb_frame.f_code
                where.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{tb.tb_lineno} {code.co_name}")
                tb = tb.tb_next
            CUT.append((start, time.monotonic(), where))
            raise

    return op


def _borrowed(pools: dict[str, RedisPool]) -> list[Any]:
    """For each connection still borrowed: the operations of the main thread's
    that were cut short while it was borrowed (none: the other thread's)."""
    found = []
    for k, pool in pools.items():
        for entry in list(pool._pool._in_use.values()):
            at = entry.borrowed_at
            found.append([k, [where for t0, t1, where in CUT if t0 <= at <= t1]])
    return found


def _sentinel_clients(sentinels: list[tuple[str, int]]) -> list[redis.Redis]:
    return [redis.Redis(h, p, protocol=2, socket_timeout=2.0) for h, p in sentinels]


def _primary(clients: list[redis.Redis], service: str) -> set[tuple[str, int]]:
    """The primary each sentinel names now."""
    found = set()
    for c in clients:
        host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)
        found.add((host.decode(), int(port)))
    return found


def _data_nodes(clients: list[redis.Redis], service: str) -> list[tuple[str, int]]:
    (primary,) = _primary(clients[:1], service)
    nodes = [primary]
    for item in clients[0].execute_command("SENTINEL", "REPLICAS", service):
        state = dict(zip(item[::2], item[1::2], strict=False))
        nodes.append((state[b"ip"].decode(), int(state[b"port"])))
    return nodes


class _Other:
    """The other thread's op: blocks with no storm, and now and then a fault."""

    def __init__(
        self,
        pools: dict[str, RedisPool],
        sentinels: list[tuple[str, int]],
        service: str,
        seed: int,
        failover: bool,
        wrong: list[str],
    ) -> None:
        self.pools, self.service, self.wrong = pools, service, wrong
        self.rnd = random.Random(seed + 1)
        self.sentinels = _sentinel_clients(sentinels)
        self.start = time.monotonic()
        self.failover_at = self.start + 0.3 if failover else None
        self.old = _primary(self.sentinels, service)
        self.followed: float | None = None  # when the writer's service took the new primary
        self.faults: dict[str, int] = {}
        self.killed: set[str] = set()  # the addresses (client side) of those killed

    def _fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1

    def _kill(self) -> None:
        """CLIENT KILL one of the pools' connections on its node."""
        for host, port in _data_nodes(self.sentinels, self.service):
            with redis.Redis(host, port, socket_timeout=2.0) as admin:
                ours = [c for c in admin.client_list() if c.get("name", "").startswith("storm-")]
                if ours:
                    victim = self.rnd.choice(ours)
                    self.killed.add(victim["addr"])
                    admin.execute_command("CLIENT", "KILL", "ID", victim["id"])
                    self._fault("kill")

    def __call__(self, n: int) -> None:
        if self.failover_at is not None and time.monotonic() > self.failover_at:
            self.failover_at = None
            self.sentinels[0].execute_command("SENTINEL", "FAILOVER", self.service)
            self._fault("failover")
        address = _service(self.pools["w"]).address
        if self.followed is None and address is not None and {address} != self.old:
            self.followed = round(time.monotonic() - self.start, 3)
        p = self.rnd.random()
        if p < 0.03:
            self._kill()
        elif p < 0.04:
            listener = _service(self.pools[self.rnd.choice("wr")])._listener
            if listener is not None:
                listener.stop()  # the next connect starts another, under the storm
                self._fault("listener_stopped")
        elif p < 0.045:
            with MOVES:
                _service(self.pools["w"]).switch(None, why="storm: the other thread")
            self._fault("switch")
        elif p < 0.05:
            with MOVES:
                _service(self.pools["w"]).resync()
            self._fault("resync")
        else:
            _block(self.pools, self.rnd, "other", n, self.wrong)


def _lock_free(lock: Any) -> bool:
    if not lock.acquire(timeout=2):
        return False
    lock.release()
    return True


def _idle_state(pool: RedisPool, primary: tuple[str, int], killed: set[str]) -> list[str]:
    """What is wrong with the pool's idle connections (nothing is borrowed now);
    one the other thread killed is for the next borrow's check to drop."""
    service = _service(pool)
    problems = []
    for conn in pool._pool.objects():
        where = (conn.host, int(conn.port))
        if conn._sock is None:
            problems.append(f"{where}: not connected")
            continue
        if not is_alive(conn):
            host, port = conn._sock.getsockname()[:2]
            if f"{host}:{port}" not in killed:
                problems.append(f"{where}: dead, and not killed")
            continue
        if conn._rp_sgen != service.generation:  # type: ignore[attr-defined]
            problems.append(f"{where}: generation {conn._rp_sgen} != {service.generation}")  # type: ignore[attr-defined]
            continue
        try:
            conn.send_command("CLIENT", "INFO")
            info = conn.read_response().decode()
            conn.send_command("ROLE")
            role = conn.read_response()[0].decode()
        except redis.RedisError as exc:
            problems.append(f"{where}: {exc!r}")
            continue
        if " db=0 " not in info or " multi=-1 " not in info:
            problems.append(f"{where}: not fresh: {info}")
        if service.role == "primary" and (role != "master" or where != primary):
            problems.append(f"{where}: ROLE {role}, the primary is {primary}")
        if service.role == "replica" and role == "master" and where != primary:
            problems.append(f"{where}: a master but not the primary {primary}")
    return problems


def _sentinel_side(services: dict[str, SentinelService], admin: list[redis.Redis]) -> list[str]:
    """What is wrong with the services' own sentinel connections: a kept one that
    owes a reply (or has bytes nobody asked for), or, once the garbage collector
    ran, more open on a sentinel than those kept plus the listener's."""
    problems = []
    for k, service in services.items():
        for index, spare in enumerate(service._spare):
            for conn in list(spare):
                if conn._sock is None or _stale_reply(conn):
                    problems.append(f"{k}: a kept connection to sentinel {index} is not clean")
    for _ in range(50):
        gc.collect()
        extra = []
        for index, c in enumerate(admin):
            names = [x.get("name") for x in c.client_list()]
            for k, service in services.items():
                kept = len(service._spare[index]) + 1  # (+ the listener's subscription)
                if names.count(f"storm-s{k}") > kept:
                    extra.append(f"{k}: {names.count(f'storm-s{k}')} open on sentinel {index}")
        if not extra:
            break
        time.sleep(0.02)
    return problems + extra


def _stale_reply(conn: Any) -> bool:
    try:
        return bool(conn.can_read(timeout=0))
    except (redis.RedisError, OSError):
        return True


def _listener_threads(service: SentinelService) -> int:
    name = f"redispool-sentinel-{service.service_name}-{service.role}"
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())


def _settle(cond: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _server_connections(
    admin: list[redis.Redis], service: str, sizes: dict[str, int]
) -> dict[str, int]:
    """The pools' connections the data nodes see, once the garbage collector has
    closed those dropped (see ``ObjectPool._make``)."""
    mine: dict[str, int] = {}
    for _ in range(50):
        gc.collect()
        mine = dict.fromkeys(sizes, 0)
        for host, port in _data_nodes(admin, service):
            with redis.Redis(host, port) as node:
                for c in node.client_list():
                    name = c.get("name", "")
                    if name.startswith("storm-") and name[6:] in mine:
                        mine[name[6:]] += 1
        if all(mine[k] <= size for k, size in sizes.items()):
            break
        time.sleep(0.02)
    return mine


def _lends(pools: dict[str, RedisPool], out: dict[str, Any]) -> dict[str, int]:
    """Each pool still lends its max_size, all of the current generation."""
    lends = {}
    for k, pool in pools.items():
        service, got = _service(pool), []
        try:
            for _ in range(SIZES[k]):
                got.append(pool._get(2.0))
        except EXPECTED as exc:
            out.setdefault("lend_errors", []).append(f"{k}: {exc!r} from {exc.__cause__!r}")
        lends[k] = len(got)
        stale = [c._rp_sgen for c in got if c._rp_sgen != service.generation]  # type: ignore[attr-defined]
        if stale:
            out.setdefault("lent_stale", []).append(f"{k}: {stale} != {service.generation}")
        for conn in got:
            pool._put(conn)
    return lends


def main(spec: str, service: str, seed: int, failover: bool = False) -> None:
    global LOSSY
    LOSSY = failover
    sentinels = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in spec.split(","))]
    rnd = random.Random(seed)
    admin = _sentinel_clients(sentinels)
    old_primary = _primary(admin, service)
    opts: dict[str, Any] = {"min_size": 0, "timeout": 2.0, "health_check_interval": 0}
    pools = {
        k: RedisPool.sentinel(
            sentinels,
            service,
            role="primary" if k == "w" else "replica",
            max_size=SIZES[k],
            client_name=f"storm-{k}",
            sentinel_kwargs={"client_name": f"storm-s{k}"},
            **opts,
        )
        for k in SIZES
    }
    services = {k: _service(p) for k, p in pools.items()}
    storm = _Storm(seed)
    wrong: list[str] = []
    stale: list[str] = []
    other = _Other(pools, sentinels, service, seed, failover, wrong)
    helper, stop = alongside(other, EXPECTED)
    locks = [p._pool._lock for p in pools.values()]
    t0 = time.monotonic()
    ops, errors = storm.run(
        _main_op(pools, rnd, wrong, stale),
        2.0 if failover else 0.8,
        EXPECTED,
        stuck=lambda: any(lock._is_owned() for lock in locks),
        cap=10.0,
        enough=lambda: sum(storm.sentinel.values()) >= 20,  # (on a slow machine)
    )
    took = time.monotonic() - t0
    stop.set()
    helper.join(10)
    out: dict[str, Any] = {
        "ops": ops, "errors": errors, "seconds": round(took, 3), "raised": storm.raised,
        "where": storm.where, "by_file": storm.by_file, "sentinel_where": storm.sentinel,
        "faults": other.faults, "followed_at": other.followed, "wrong": wrong[:5],
        "stale_after_move": stale[:5], "other_done": not helper.is_alive(),
        "lock_free": not any(lock._is_owned() for lock in locks)
        and all(_lock_free(lock) for lock in locks)
        and all(_lock_free(s._lock) for s in services.values()),
    }  # fmt: skip
    if failover:  # every sentinel names the new primary
        out["switched"] = _settle(
            lambda: len(now := _primary(admin, service)) == 1 and now != old_primary, 15
        )
    (primary,) = _primary(admin, service)
    keys = ("size", "idle", "in_use", "creating", "closing", "waiting")
    stats = {k: p.stats() for k, p in pools.items()}
    out["stats"] = {k: {f: getattr(s, f) for f in keys} for k, s in stats.items()}
    out["borrowed"] = _borrowed(pools)
    out["idle_problems"] = [
        x for k, p in pools.items() for x in _idle_state(p, primary, other.killed)
    ]
    out["server_connections"] = _server_connections(
        admin, service, {k: s.size for k, s in stats.items()}
    )
    out["sizes"] = {k: s.size for k, s in stats.items()}
    out["lends"] = _lends(pools, out)
    w = services["w"]
    out["service"] = {
        "address": list(w.address) if w.address else None,
        "primary": list(primary),
        "settled": all(s._settled.is_set() for s in services.values()),
    }
    for s in services.values():
        s.ensure_listener()  # (starts one if the other thread stopped the last)
    _settle(lambda: all(_listener_threads(s) == 1 for s in services.values()), 2)
    out["listeners"] = {k: _listener_threads(s) for k, s in services.items()}
    out["listener_alive"] = all(
        s._listener is not None and s._listener.alive() for s in services.values()
    )
    out["sentinel_side"] = _sentinel_side(services, admin)
    for p in pools.values():
        p.close()
    out["listeners_stopped"] = _settle(
        lambda: all(_listener_threads(s) == 0 for s in services.values()), 3
    )
    for c in admin:
        c.close()
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), failover="failover" in sys.argv[4:])
