"""Random Sentinel faults under writes (slow): failovers, sentinels killed and
restarted (some, all), CLIENT KILL on the primary, drains. The oracle: every write
acknowledged between one second after a switch and the next fault is on the final
primary; the pool never exceeds max_size and ends with nothing borrowed."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import redis

from redispool import RedisPool

from ._harness import Writes, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SECONDS = float(os.environ.get("SENTINEL_CHAOS_SECONDS", "45"))


class Switches:
    """Every +switch-master, on any sentinel (the first of each burst)."""

    def __init__(self, setup) -> None:
        self.times: list[float] = []
        self._stop = threading.Event()
        self._setup = setup
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        subs: dict[int, object] = {}
        while not self._stop.is_set():
            for i in range(len(self._setup.sentinels)):
                if i not in subs:
                    try:
                        sub = self._setup.sentinel_client(i, socket_timeout=0.5).pubsub()
                        sub.subscribe("+switch-master")
                        subs[i] = sub
                    except (redis.RedisError, OSError):
                        continue
            for i, sub in list(subs.items()):
                try:
                    msg = sub.get_message(timeout=0.02)  # type: ignore[attr-defined]
                except (redis.RedisError, OSError, ValueError):
                    subs.pop(i)
                    continue
                if msg is not None and msg["type"] == "message":
                    now = time.monotonic()
                    if not self.times or now - self.times[-1] > 0.5:
                        self.times.append(now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_random_sentinel_faults_under_writes(sentinel_setup_factory):
    seed = int(os.environ.get("SENTINEL_CHAOS_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    setup = sentinel_setup_factory()
    switches = Switches(setup)
    pool = RedisPool.sentinel(
        setup.addresses, setup.service, min_size=2, max_size=4, timeout=3, max_lifetime=3
    )
    faults: list[tuple[float, str]] = []  # (time, what): writes just before may be lost
    sizes: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sizes.append(pool.stats().size)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with Writes(pool, threads=3) as writes:
            writes.wait_for(100)
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                kind = rnd.choice(["failover", "failover", "sentinels", "one", "kill", "drain"])
                if kind == "failover":
                    before = len(switches.times)
                    faults.append((time.monotonic(), kind))
                    _failover(setup)
                    wait_until(lambda n=before: len(switches.times) > n, 20, "the switch")
                elif kind in ("sentinels", "one"):
                    victims = (
                        setup.sentinels if kind == "sentinels" else [rnd.choice(setup.sentinels)]
                    )
                    for s in victims:
                        s.kill()
                    time.sleep(rnd.uniform(0.2, 1.5))
                    for s in victims:
                        s.start()
                elif kind == "kill":
                    with setup.data_client(setup.current_primary()) as c:
                        c.client_kill_filter(_type="normal", skipme=True)
                else:
                    pool.drain()
                time.sleep(rnd.uniform(0.3, 1.5))
            time.sleep(1.5)
        stop.set()
        sampler.join(5)
        final = setup.current_primary()
        lost = writes.missing_on(setup.data_client(final))
        bad = [
            (round(t, 3), k)
            for t, k in lost
            if any(s + 1.0 < t < _next_fault(faults, s) - 0.5 for s in switches.times)
        ]
        assert not bad, f"seed {seed}: {len(bad)} writes lost after a switch: {bad[:5]}"
        assert max(sizes) <= 4, f"seed {seed}"
        wait_until(lambda: pool.stats().in_use == 0, 10, "in_use back to 0")
        assert len(writes.acked) > 1000
        assert switches.times, f"seed {seed}: no failover happened"
    finally:
        stop.set()
        switches.close()
        pool.close()


def _next_fault(faults: list[tuple[float, str]], after: float) -> float:
    later = [t for t, what in faults if t > after and what == "failover"]
    return min(later) if later else float("inf")


def _failover(setup) -> None:
    """SENTINEL FAILOVER once a replica is good for it (in sync, seen by Sentinel)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            setup.wait_ready(timeout=20)
            setup.failover(random.randrange(len(setup.sentinels)))
            return
        except (redis.RedisError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
