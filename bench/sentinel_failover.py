"""Sentinel failover: RedisPool.sentinel against redis-py's ``Sentinel.master_for``,
side by side through the same ``SENTINEL FAILOVER`` (a fresh primary + replica +
3 sentinels per round).

For each client, one thread writes unique keys as fast as it can and records
every acknowledged write. After the round: the time from ``SENTINEL FAILOVER``
to the first write that reached the new primary, and the acknowledged writes
the new primary does not have (lost), in all and after ``+switch-master``.

    python bench/sentinel_failover.py            # 3 rounds, 14 s of writes each
    python bench/sentinel_failover.py --rounds 1 --seconds 14
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.sentinel import Sentinel

from redispool import RedisPool
from redispool.testing.sentinel import SentinelSetup


class Writer(threading.Thread):
    def __init__(self, name: str, write: Callable[[str], object]) -> None:
        super().__init__(daemon=True)
        self.label, self.write = name, write
        self.acked: list[tuple[float, str]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            key = f"{self.label}:{seq}"
            try:
                self.write(key)
            except redis.RedisError:
                self.errors += 1
                time.sleep(0.005)  # what a caller with a retry loop would do
                continue
            self.acked.append((time.monotonic(), key))


def _switch_clock(setup: SentinelSetup) -> tuple[list[float], Any]:
    seen: list[float] = []
    sub = setup.sentinel_client(0).pubsub()
    sub.subscribe("+switch-master")
    sub.get_message(timeout=2)

    def listen() -> None:
        while not seen:
            msg = sub.get_message(timeout=0.1)
            if msg is not None and msg["type"] == "message":
                seen.append(time.monotonic())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    return seen, sub


def one_round(seconds: float) -> dict[str, dict[str, float]]:
    setup = SentinelSetup()
    pool = RedisPool.sentinel(setup.addresses, setup.service, min_size=1, max_size=4)
    sentinel = Sentinel(setup.addresses, socket_timeout=1.0)
    master = sentinel.master_for(setup.service, socket_timeout=1.0)
    writers = [
        Writer("redispool", lambda k: pool.redis.set(k, 1)),
        Writer("master_for", lambda k: master.set(k, 1)),
    ]
    seen, sub = _switch_clock(setup)
    try:
        for w in writers:
            w.start()
        time.sleep(1.0)
        old = setup.primary_address()
        started = time.monotonic()
        setup.failover()
        time.sleep(seconds)
        for w in writers:
            w.stop.set()
            w.join()
        new = setup.primary_address()
        assert new != old, "no failover happened"
        nan = float("nan")
        switched = seen[0] if seen else nan
        out = {}
        with setup.data_client(setup.server_at(new)) as c:
            for w in writers:
                later = [(t, k) for t, k in w.acked if t > started]
                present = []
                for i in range(0, len(later), 1000):
                    chunk = later[i : i + 1000]
                    found = c.execute_command("MGET", *[k for _, k in chunk])
                    present += [v is not None for v in found]
                landed = [t for (t, _), ok in zip(later, present, strict=True) if ok]
                lost = [t for (t, _), ok in zip(later, present, strict=True) if not ok]
                out[w.label] = {
                    "switch_s": switched - started,
                    "resume_ms": 1000
                    * (min((t for t in landed if t > switched), default=nan) - switched),
                    "acked": len(later),
                    "lost": len(lost),
                    "lost_after_switch": sum(1 for t in lost if t > switched),
                    "last_lost_s": (max(lost) - switched) if lost else 0.0,
                    "errors": w.errors,
                }
        return out
    finally:
        for w in writers:
            w.stop.set()
        sub.close()
        pool.close()
        master.close()
        sentinel.close()
        setup.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=14.0, help="writes after FAILOVER")
    opts = parser.parse_args(argv)
    rounds = [one_round(opts.seconds) for _ in range(opts.rounds)]
    print(
        f"\n{opts.rounds} rounds; median [min-max]\n\n"
        "| client | +switch-master (s) | first write on the new primary (ms after switch) "
        "| acked writes | lost | lost after switch | last lost write (s after switch) "
        "| errors |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for label in ("redispool", "master_for"):
        cells = []
        for key, fmt in (
            ("switch_s", "{:.2f}"),
            ("resume_ms", "{:.1f}"),
            ("acked", "{:,.0f}"),
            ("lost", "{:,.0f}"),
            ("lost_after_switch", "{:,.0f}"),
            ("last_lost_s", "{:.2f}"),
            ("errors", "{:,.0f}"),
        ):
            values = [r[label][key] for r in rounds]
            med = fmt.format(statistics.median(values))
            cells.append(f"{med} [{fmt.format(min(values))}-{fmt.format(max(values))}]")
        name = "**`RedisPool.sentinel`**" if label == "redispool" else "redis-py `master_for`"
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
