"""The chaos run: many workers doing tagged reads and writes through every API
while a seeded random fault schedule runs.

Importable on its own (no pytest fixtures) so that test_chaos.py can run the same
code in threads, or in a subprocess under ``gevent.monkey.patch_all()``:

    python -c "from gevent import monkey; monkey.patch_all(); \
               from tests.faults.chaos import main; main(15, 1)"
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from redispool import PoolError, RedisPool
from redispool.testing import FaultProxy, RedisServer

from ._harness import ServerView, Tally, kind, probe, side_client

NAME = "rp-chaos"
MAX_SIZE = 8
SOCKET_TIMEOUT = 0.3
RECOVERY_BOUND = 3.0  # seconds from the end of a fault to a successful borrow + command

# fault kind -> weight
FAULTS = {
    "latency": 2,
    "stall": 2,
    "cut": 2,
    "drop_after": 2,
    "refuse": 1,
    "kill9": 1,
    "client_kill": 2,
    "debug_sleep": 2,
}


class _Chaos:
    def __init__(self, seconds: float, seed: int, workers: int, log: Callable[[str], None]):
        self.seconds = seconds
        self.seed = seed
        self.n_workers = workers
        self.log = log
        self.server = RedisServer()
        self.proxy = FaultProxy(self.server.host, self.server.port)
        self.pool = RedisPool(
            self.proxy.url,
            min_size=2,
            max_size=MAX_SIZE,
            timeout=1.0,
            connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            client_name=NAME,
            name=NAME,
        )
        self.view = ServerView(self.server, NAME, MAX_SIZE, interval=0.01)
        self.stop = threading.Event()
        self.epoch = 0  # bumped before each server crash: data may be gone after it
        self.tallies: list[Tally] = []
        self.ops = 0
        self.schedule: list[str] = []
        self.recoveries: dict[str, list[float]] = {}
        self.unrecovered: list[str] = []
        self.fault_errors: list[str] = []
        self._lock = threading.Lock()

    # -- the workers ------------------------------------------------------------

    def _worker(self, tid: int) -> None:
        rnd = random.Random(self.seed * 1000 + tid)
        tally = Tally()
        pool = self.pool
        seq = 0
        ops = 0
        while not self.stop.is_set():
            seq += 1
            tag = f"{tid}:{seq}"
            key, val = f"c:{tag}", f"v:{tag}".encode()
            roll = rnd.random()
            try:
                if roll < 0.25:
                    with pool.client() as r:
                        tally.check(r.set(key, val), True, "client SET")
                        tally.check(r.get(key), val, "client GET")
                        tally.check(r.echo(tag), tag.encode(), "client ECHO")
                elif roll < 0.35:
                    with pool.client(timeout=0.05) as r:  # short per-op timeout
                        tally.check(r.echo(tag), tag.encode(), "client(timeout) ECHO")
                        tally.check(r.incrby(key, 7), 7, "client(timeout) INCRBY")
                elif roll < 0.55:
                    r = pool.redis  # every command borrows and returns
                    epoch = self.epoch
                    tally.check(r.set(key, val), True, "pool.redis SET")
                    got = r.get(key)
                    if not (got is None and self.epoch != epoch):  # lost in a crash
                        tally.check(got, val, "pool.redis GET")
                    tally.check(r.echo(tag), tag.encode(), "pool.redis ECHO")
                elif roll < 0.75:
                    with pool.client() as r:
                        p = r.pipeline(transaction=rnd.random() < 0.5)
                        p.set(key, val).get(key).echo(tag).incrby(f"{key}:n", 3)
                        p.mget(key, f"{key}:n")
                        want = [True, val, tag.encode(), 3, [val, b"3"]]
                        tally.check(p.execute(), want, "client pipeline")
                elif roll < 0.9:
                    with pool.redis.pipeline(transaction=rnd.random() < 0.5) as p:
                        p.set(key, val).get(key).echo(tag)
                        tally.check(p.execute(), [True, val, tag.encode()], "pool.redis pipeline")
                else:
                    with pool.connection() as conn:  # pipelined by hand
                        conn.send_command("SET", key, val)
                        conn.send_command("GET", key)
                        conn.send_command("ECHO", tag)
                        tally.check(conn.read_response(), b"OK", "conn SET")
                        tally.check(conn.read_response(), val, "conn GET")
                        tally.check(conn.read_response(), tag.encode(), "conn ECHO")
                ops += 1
                tally.ok += 1
            except (redis.RedisError, PoolError) as exc:
                tally.errors[kind(exc)] += 1
                self.stop.wait(0.005)  # back off a little while failing fast
            except Exception as exc:
                tally.unexpected.append(f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.tallies.append(tally)
            self.ops += ops

    # -- the fault schedule ---------------------------------------------------------

    def _recover(self, kind_: str, since: float) -> None:
        i = 0
        while True:
            i += 1
            if probe(self.pool, f"chaos:{kind_}:{i}", wait=0.5):
                took = time.monotonic() - since
                self.recoveries.setdefault(kind_, []).append(took)
                self.schedule[-1] += f" -> recovered in {took:.3f}s"
                self.log(self.schedule[-1])
                if took > RECOVERY_BOUND:
                    self.unrecovered.append(f"{kind_}: {took:.2f}s")
                return
            if time.monotonic() - since > RECOVERY_BOUND + 2:
                self.unrecovered.append(f"{kind_}: not after {RECOVERY_BOUND + 2}s")
                self.schedule[-1] += " -> NOT recovered"
                self.log(self.schedule[-1])
                return
            time.sleep(0.01)

    def _pool_client_ids(self) -> list[str]:
        clients = self.view.command("CLIENT", "LIST")
        text = clients.decode() if isinstance(clients, bytes) else str(clients)
        ids = []
        for line in text.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("name") == NAME:
                ids.append(fields["id"])
        return ids

    def _fault(self, rnd: random.Random, t0: float, kind_: str) -> None:
        proxy, server = self.proxy, self.server
        at = time.monotonic() - t0
        if kind_ == "latency":
            delay, d = rnd.uniform(0.005, 0.05), rnd.uniform(0.5, 1.5)
            what = f"latency {delay * 1000:.0f} ms for {d:.2f}s"
            proxy.latency(delay)
            time.sleep(d)
            proxy.clear()
        elif kind_ == "stall":
            d = rnd.uniform(0.2, 1.0)
            what = f"stall {d:.2f}s"
            proxy.stall()
            time.sleep(d)
            proxy.clear()
        elif kind_ == "cut":
            what = f"cut {proxy.cut()} connections"
        elif kind_ == "drop_after":
            n, d = rnd.randint(0, 3000), rnd.uniform(0.5, 1.5)
            what = f"drop_after {n} bytes for {d:.2f}s"
            proxy.drop_after(n)
            proxy.cut()
            time.sleep(d)
            proxy.clear()
        elif kind_ == "refuse":
            d = rnd.uniform(0.3, 1.0)
            what = f"refuse new connections for {d:.2f}s"
            proxy.refuse(True)
            proxy.cut()
            time.sleep(d)
            proxy.clear()
        elif kind_ == "kill9":
            d = rnd.uniform(0.2, 0.8)
            what = f"server kill -9, down {d:.2f}s"
            self.epoch += 1
            server.kill()
            time.sleep(d)
            server.restart()
        elif kind_ == "client_kill":
            ids = self._pool_client_ids()
            victims = rnd.sample(ids, rnd.randint(1, len(ids))) if ids else []
            for cid in victims:
                self.view.command("CLIENT", "KILL", "ID", cid)
            what = f"CLIENT KILL {len(victims)} of {len(ids)}"
        else:
            d = rnd.choice([0.1, 0.2, 0.5, 0.8])
            what = f"DEBUG SLEEP {d}s (socket_timeout {SOCKET_TIMEOUT}s)"
            with side_client(server, socket_timeout=d + 5) as side:
                side.execute_command("DEBUG", "SLEEP", str(d))
        self.schedule.append(f"t={at:6.2f}s {what}")
        self._recover(kind_, time.monotonic())

    def _faults(self, t0: float) -> None:
        rnd = random.Random(self.seed)
        # Every kind once (in a random order), then weighted random picks.
        first = list(FAULTS)
        rnd.shuffle(first)
        weighted = [k for k, w in FAULTS.items() for _ in range(w)]
        try:
            while time.monotonic() - t0 < self.seconds - 1.0 and not self.stop.is_set():
                self.stop.wait(rnd.uniform(0.2, 0.6))  # quiet: the pool works normally
                if time.monotonic() - t0 >= self.seconds - 1.0:
                    break
                self._fault(rnd, t0, first.pop(0) if first else rnd.choice(weighted))
        except BaseException as exc:
            self.fault_errors.append(repr(exc))
        finally:
            self.proxy.clear()

    # -- the run -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.log(f"chaos: seed={self.seed} seconds={self.seconds} workers={self.n_workers}")
        try:
            with self.proxy, self.pool, self.view:
                self.pool.open(wait=True, timeout=5)
                workers = [
                    threading.Thread(target=self._worker, args=(i,), daemon=True)
                    for i in range(self.n_workers)
                ]
                t0 = time.monotonic()
                faults = threading.Thread(target=self._faults, args=(t0,), daemon=True)
                for t in workers:
                    t.start()
                faults.start()
                faults.join(self.seconds + 30)
                time.sleep(max(0.0, t0 + self.seconds - time.monotonic()))
                self.stop.set()
                deadline = time.monotonic() + 10
                for t in [*workers, faults]:
                    t.join(max(0.0, deadline - time.monotonic()))
                stuck = [t.name for t in [*workers, faults] if t.is_alive()]
                elapsed = time.monotonic() - t0
                if not self.server.is_running():
                    self.server.start()
                final = time.monotonic()
                while not probe(self.pool, "final") and time.monotonic() - final < 5:
                    time.sleep(0.01)
                final_recovery = time.monotonic() - final
                stats = self.pool.stats()
                with self.view.lock:
                    clients = [c for c in self.view.side().client_list() if c.get("name") == NAME]
            return self._summary(elapsed, stuck, final_recovery, stats, clients)
        finally:
            self.server.close(kill=True)

    def _summary(
        self, elapsed: float, stuck: list[str], final: float, stats: Any, clients: list[Any]
    ) -> dict[str, Any]:
        errors: Counter[str] = Counter()
        for t in self.tallies:
            errors.update(t.errors)
        rec = {
            k: {
                "n": len(v),
                "median": round(statistics.median(v), 3),
                "max": round(max(v), 3),
            }
            for k, v in sorted(self.recoveries.items())
        }
        return {
            "seed": self.seed,
            "seconds": round(elapsed, 2),
            "workers": self.n_workers,
            "ops": self.ops,
            "checked": sum(t.checked for t in self.tallies),
            "errors": dict(errors.most_common()),
            "misdelivered": [m for t in self.tallies for m in t.misdelivered][:20],
            "unexpected": [u for t in self.tallies for u in t.unexpected][:20],
            "faults": len(self.schedule),
            "schedule": self.schedule,
            "recoveries": rec,
            "unrecovered": self.unrecovered,
            "fault_errors": self.fault_errors,
            "stuck": stuck,
            "final_recovery": round(final, 3),
            "in_use": stats.in_use,
            "waiting": stats.waiting,
            "size": stats.size,
            "max_size": stats.max_size,
            "destroyed": stats.destroyed_by_reason,
            "server_max_seen": self.view.max_seen,
            "server_samples": self.view.samples,
            "server_raw_over": self.view.raw_over,
            "server_clients_dirty": [c for c in clients if c["flags"] != "N" or c["multi"] != "-1"],
            "greenlets": _gevent_patched(),
        }


def _gevent_patched() -> bool:
    mod = sys.modules.get("gevent.monkey")
    return bool(mod is not None and mod.is_module_patched("threading"))


def run_chaos(
    seconds: float, seed: int, workers: int = 16, log: Callable[[str], None] = print
) -> dict[str, Any]:
    return _Chaos(seconds, seed, workers, log).run()


def check(summary: dict[str, Any], min_checked: int) -> None:
    """The assertions every chaos run must pass."""
    s = summary
    assert s["misdelivered"] == [], s["misdelivered"]
    assert s["unexpected"] == [], s["unexpected"]
    assert s["fault_errors"] == [], s["fault_errors"]
    assert s["stuck"] == [], f"stuck: {s['stuck']}"
    assert s["unrecovered"] == [], s["unrecovered"]
    assert s["faults"] >= 5, f"only {s['faults']} faults ran"
    assert s["checked"] >= min_checked, f"{s['checked']} checked replies < {min_checked}"
    assert s["errors"], "no errors at all: the faults did not bite"
    assert s["final_recovery"] < RECOVERY_BOUND, s["final_recovery"]
    assert s["in_use"] == 0 and s["waiting"] == 0, s
    assert s["size"] <= s["max_size"] == MAX_SIZE, s
    assert s["server_samples"] >= 20, s["server_samples"]
    assert s["server_max_seen"] <= MAX_SIZE, s["server_max_seen"]
    assert s["server_clients_dirty"] == [], s["server_clients_dirty"]


def report(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"chaos seed={s['seed']} {s['seconds']}s workers={s['workers']} "
        f"greenlets={s['greenlets']}: ops={s['ops']} checked={s['checked']} "
        f"misdelivered={len(s['misdelivered'])} faults={s['faults']}",
        f"  errors by kind: {s['errors']}",
        f"  destroyed by reason: {s['destroyed']}",
        f"  server saw at most {s['server_max_seen']} pool connections "
        f"({s['server_samples']} samples, {s['server_raw_over']} re-checked)",
        f"  final recovery {s['final_recovery']}s",
        "  recovery after each fault kind (s):",
    ]
    for k, v in s["recoveries"].items():
        lines.append(f"    {k:12} n={v['n']:3} median={v['median']:.3f} max={v['max']:.3f}")
    return "\n".join(lines)


def main(seconds: float, seed: int, workers: int = 16) -> None:
    """Run, print the schedule to stderr and the summary as JSON on stdout."""
    summary = run_chaos(seconds, seed, workers, log=lambda m: print(m, file=sys.stderr))
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
