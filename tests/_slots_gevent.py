"""Slot-accounting cases under real gevent, run in a subprocess by test_slots.py.

``python -c LAUNCH CASE REDIS_URL SEED`` patches gevent (after a fork, for
``fork_deadline``), runs CASE and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import redis


class Injected(BaseException):
    """What the cases throw into a borrowing greenlet: not an ``Exception``."""


def _settled(pool: Any) -> dict[str, Any]:
    """The pool's numbers once nothing is in flight (an upkeep refill may be:
    up to 2 s), and whether a borrow then works."""
    import gevent

    for _ in range(200):
        s = pool.stats()
        if not (s.in_use or s.creating or s.closing or s.waiting):
            break
        gevent.sleep(0.01)
    try:
        with pool.connection(wait=5) as conn:
            conn.send_command("PING")
            works = conn.read_response() in (b"PONG", "PONG")
    except Exception as exc:  # reported: the test asserts on it
        works = repr(exc)
    return {"stats": {k: getattr(s, k) for k in _COUNTS}, "borrow_works": works}


_COUNTS = ("size", "idle", "in_use", "creating", "closing", "waiting", "max_size")


def _conn_id(conn: Any) -> int:
    conn.send_command("CLIENT", "ID")
    return int(conn.read_response())


def _kill_and_wait(admin: redis.Redis, conn: Any) -> None:
    """CLIENT KILL ``conn`` and wait until its socket shows the EOF."""
    import gevent

    from redispool.connection import is_alive

    victim = _conn_id(conn)
    admin.client_kill_filter(_id=victim)
    for _ in range(400):
        if not is_alive(conn):
            return
        gevent.sleep(0.005)
    raise AssertionError("the killed connection never showed EOF")


def first_borrow_kill(url: str, seed: int) -> dict[str, Any]:
    """Item 3: kill a greenlet at its first yield in its first borrow, 50 pools."""
    import gevent

    from redispool import RedisPool

    gevent.get_hub().NOT_ERROR += (Injected,)
    results = []
    for i in range(50):
        pool = RedisPool(url, min_size=0, max_size=2, timeout=5, name=f"p{i}")
        g = gevent.spawn(pool._get)
        gevent.sleep(0)  # g runs up to its first yield
        g.kill(Injected if i % 2 else gevent.GreenletExit, block=True)
        before = {k: getattr(pool.stats(), k) for k in _COUNTS}
        results.append({"after_kill": before, **_settled(pool)})
        pool.close()
    return {"pools": results}


def timeout_in_destroy(url: str, seed: int) -> dict[str, Any]:
    """Item 4: a gevent.Timeout lands in a yielding destroy while the waiter
    (handed a connection that fails its check) keeps the slot."""
    import gevent

    from redispool import RedisPool

    class SlowClose(redis.Connection):
        slow = False

        def disconnect(self, *args: Any, **kwargs: Any) -> None:
            if self.slow:
                self.slow = False
                gevent.sleep(0.5)  # e.g. a TLS close_notify on a congested link
            super().disconnect(*args, **kwargs)

    pool = RedisPool(
        url,
        min_size=0,
        max_size=1,
        timeout=5,
        health_check_interval=0,
        connection_class=SlowClose,
    )
    admin = redis.Redis.from_url(url)
    outcome: dict[str, Any] = {}

    def waiter() -> None:
        try:
            with gevent.Timeout(0.3), pool.connection():
                outcome["waiter"] = "served"
        except gevent.Timeout:
            outcome["waiter"] = "timeout"

    lease = pool.connection()
    conn: Any = lease.__enter__()
    g = gevent.spawn(waiter)
    gevent.sleep(0.05)  # queued
    _kill_and_wait(admin, conn)
    conn.slow = True
    lease.__exit__(None, None, None)  # handed to the waiter, whose check fails
    g.join()
    result = {"outcome": outcome, **_settled(pool)}
    pool.close()
    admin.close()
    return result


def kill_at_each_yield(url: str, seed: int) -> dict[str, Any]:
    """Item 5: hundreds of trials; in each, the borrowing greenlet is killed at
    its n-th switch (a yield: lock, wait, connect, PING, close, thread start),
    n drawn at random, in random situations (first borrow, queued for a
    release, a discard, a dead connection, PING checks)."""
    import gevent
    import greenlet

    from redispool import RedisPool

    gevent.get_hub().NOT_ERROR += (Injected,)
    rnd = random.Random(seed)
    admin = redis.Redis.from_url(url)
    trials = []
    for trial in range(200):
        pool = RedisPool(
            url,
            min_size=rnd.choice((0, 0, 1)),
            max_size=rnd.choice((1, 2)),
            timeout=5,
            health_check_interval=rnd.choice((0, 30)),
            connection_class=_YieldingClose,
        )
        situation = rnd.choice(("fresh", "handed", "discarded", "dead_handed", "dead_idle"))
        held: list[Any] = []
        if situation != "fresh":
            while len(held) < pool._pool._max_size:
                lease = pool.connection(wait=5)
                held.append((lease, lease.__enter__()))
        if situation == "dead_handed":
            _kill_and_wait(admin, held[0][1])
        if situation == "dead_idle":
            _kill_and_wait(admin, held[0][1])
            for lease, _ in held:
                lease.__exit__(None, None, None)
            held = []
        victim = gevent.spawn(_borrow_and_keep, pool, rnd.choice((None, 2.0)))
        n = rnd.randint(1, 8)
        old = greenlet.settrace(_killer_at_switch(victim, n))
        try:
            gevent.sleep(0.005)
            for lease, conn in held:
                if situation == "discarded":
                    pool._pool.release(conn, discard=True)  # a slot is handed over
                else:
                    lease.__exit__(None, None, None)
            victim.join(5)
        finally:
            greenlet.settrace(old)
        got = victim.value if victim.successful() else None
        if got is not None:
            pool._put(got)
        trials.append(
            {
                "trial": trial,
                "situation": situation,
                "n": n,
                "killed": not victim.successful(),
                **_settled(pool),
            }
        )
        pool.close()
    admin.close()
    return {"trials": trials}


def _borrow_and_keep(pool: Any, wait: float | None) -> Any:
    return pool.connection(wait=wait).__enter__()


def _killer_at_switch(victim: Any, n: int) -> Any:
    """A greenlet trace function that kills ``victim`` at its ``n``-th switch out."""
    switches = [0]

    def tracer(event: str, args: Any) -> None:
        if event in ("switch", "throw") and args[0] is victim:
            switches[0] += 1
            if switches[0] == n:
                victim.kill(Injected, block=False)

    return tracer


def random_ops(url: str, seed: int) -> dict[str, Any]:
    """Item 5's oracle: 12 greenlets for 2 s do random borrows, holds, discards,
    waits that time out, PING checks and CLIENT KILLs under random
    gevent.Timeouts and kills (each at a random yield), on a new pool every
    0.1 s (first borrows, upkeep starts, yielding closes). Afterwards, in every
    pool, nothing is borrowed, creating or closing, and a borrow works."""
    import gevent
    import greenlet

    from redispool import RedisPool

    gevent.get_hub().NOT_ERROR += (Injected,)
    rnd = random.Random(seed)
    admin = redis.Redis.from_url(url)

    def new_pool() -> Any:
        return RedisPool(
            url,
            min_size=rnd.choice((0, 1)),
            max_size=rnd.choice((1, 3)),
            timeout=5,
            health_check_interval=rnd.choice((0, 0.01, 30)),
            connection_class=_YieldingClose,
        )

    pools = [new_pool()]
    stop = [False]
    counts = {"ok": 0, "redis_error": 0, "gevent_timeout": 0, "killed": 0, "kills": 0}

    def worker(i: int) -> None:
        r = random.Random(seed * 100 + i)
        while not stop[0]:
            pool = pools[-1]
            try:
                with gevent.Timeout(r.choice((None, 0.001, 0.005, 0.02))):
                    with pool.connection(wait=r.choice((None, 0.0, 0.01, 0.1))) as conn:
                        conn.send_command("PING")
                        conn.read_response()
                        gevent.sleep(r.random() * 0.004)
                        if r.random() < 0.05:
                            _kill_and_wait(admin, conn)
                        if r.random() < 0.05:
                            conn.disconnect()  # discarded on return
                counts["ok"] += 1
            except gevent.Timeout:
                counts["gevent_timeout"] += 1
            except redis.exceptions.RedisError:
                counts["redis_error"] += 1
            except Injected:
                counts["killed"] += 1

    armed: dict[Any, tuple[int, type[BaseException]]] = {}
    unbalanced: list[dict[str, Any]] = []

    def tracer(event: str, args: Any) -> None:  # kill an armed greenlet at its n-th yield
        origin = args[0]
        if event in ("switch", "throw") and origin in armed:
            n, exc = armed.pop(origin)
            if n > 1:
                armed[origin] = (n - 1, exc)
            else:
                origin.kill(exc, block=False)
                counts["kills"] += 1

    workers = [gevent.spawn(worker, i) for i in range(12)]
    old = greenlet.settrace(tracer)
    t0 = last = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        gevent.sleep(rnd.random() * 0.005)
        victim = rnd.choice(workers)
        armed[victim] = (rnd.randint(1, 6), rnd.choice((Injected, gevent.GreenletExit)))
        workers = [g if not g.dead else gevent.spawn(worker, rnd.randrange(10**6)) for g in workers]
        if time.monotonic() - last > 0.1:
            pools.append(new_pool())
            last = time.monotonic()
        for pool in pools:  # the books balance at every moment
            st = pool.stats()
            if st.size != st.idle + st.in_use + st.creating + st.closing:
                unbalanced.append({k: getattr(st, k) for k in _COUNTS})
    greenlet.settrace(old)
    stop[0] = True
    gevent.joinall(workers, timeout=10)
    settled = [_settled(pool) for pool in pools]
    for pool in pools:
        pool.close()
    admin.close()
    return {"counts": counts, "pools": settled, "unbalanced": unbalanced}


class _YieldingClose(redis.Connection):
    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        import gevent

        gevent.sleep(0.001)  # destroy yields too (as a TLS close may)
        super().disconnect(*args, **kwargs)


def fork_deadline(url: str, seed: int) -> dict[str, Any]:
    """Item 6: the pool is made before a fork; the child patches gevent. One
    greenlet's short wait must not become another's connect timeout."""
    from redispool import RedisPool

    seen: list[tuple[str, float, float]] = []

    class Recorder(redis.Connection):
        def connect(self) -> None:
            import gevent

            name = getattr(gevent.getcurrent(), "name", "?")
            seen.append((name, self.socket_connect_timeout, self.socket_timeout))
            gevent.sleep(0.1)  # a slow connect: the other greenlet runs meanwhile
            super().connect()

    pool = RedisPool(
        url,
        min_size=0,
        max_size=4,
        connect_timeout=2.0,
        socket_timeout=2.0,
        connection_class=Recorder,
    )
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a gevent worker, as gunicorn's would be
        code = 1
        try:
            from gevent import monkey

            monkey.patch_all()
            import gevent

            def borrow(wait: float | None) -> None:
                with pool.connection(wait=wait):
                    pass

            a = gevent.spawn(borrow, 0.5)
            a.name = "short_wait"
            gevent.sleep(0.01)  # a is connecting
            b = gevent.spawn(borrow, None)
            b.name = "no_wait"
            gevent.joinall([a, b], raise_error=True)
            os.write(wfd, json.dumps({"seen": seen}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    pool.close()
    return {"child_status": status, **(json.loads(data) if data else {})}


def yield_under_lock(url: str, seed: int) -> dict[str, Any]:
    """Something run inside the pool's bookkeeping yields (a finalizer the
    garbage collector runs there, whose close yields; here the pool's clock):
    no other greenlet may enter the bookkeeping meanwhile. Greenlets borrow and
    return one object in turns; the lock itself is also asked directly."""
    import gevent

    from redispool import ObjectPool, PoolTimeout

    yields = [0]

    def clock() -> float:
        yields[0] += 1
        gevent.sleep(0)  # (inside the lock: borrow and release read the clock there)
        return time.monotonic()

    made: list[object] = []
    pool: Any = ObjectPool(lambda: made.append(object()) or made[-1], max_size=1,
                           timeout=0.5, clock=clock, background=False)  # fmt: skip
    holders: dict[int, int] = {}  # id(obj) -> greenlets holding it now
    errors: list[str] = []
    double = [0]

    def worker(i: int) -> None:
        for _ in range(20):
            try:
                obj = pool.borrow()
            except PoolTimeout:
                continue
            except Exception as exc:  # an error from inside the pool's bookkeeping
                errors.append(repr(exc))
                continue
            holders[id(obj)] = holders.get(id(obj), 0) + 1
            double[0] += holders[id(obj)] > 1
            gevent.sleep(0)
            holders[id(obj)] -= 1
            try:
                pool.release(obj)
            except Exception as exc:
                errors.append(repr(exc))

    gevent.joinall([gevent.spawn(worker, i) for i in range(4)], timeout=20)
    lock = pool._lock
    inside: list[str] = []

    def hold() -> None:
        lock.acquire()
        inside.append("a in")
        gevent.sleep(0.01)  # yields holding it
        inside.append("a out")
        lock.release()

    def other() -> None:
        lock.acquire()
        inside.append("b in")
        lock.release()

    gevent.joinall([gevent.spawn(hold), gevent.spawn(other)], timeout=5)
    s = pool.stats()
    try:
        pool.release(pool.borrow(1.0))
        works: Any = True
    except Exception as exc:
        works = repr(exc)
    return {"yields": yields[0], "errors": errors[:5], "double": double[0], "made": len(made),
            "stats": {k: getattr(s, k) for k in _COUNTS}, "borrow_works": works,
            "inside": inside, "lock": type(lock).__name__}  # fmt: skip


CASES = {
    f.__name__: f
    for f in (
        first_borrow_kill,
        timeout_in_destroy,
        kill_at_each_yield,
        random_ops,
        fork_deadline,
        yield_under_lock,
    )
}


def main(case: str, url: str, seed: int) -> None:
    import logging

    logging.getLogger("redispool").setLevel(logging.CRITICAL)
    print(json.dumps(CASES[case](url, seed)))


# Run as ``python -c LAUNCH CASE URL SEED``: gevent patches before anything is imported.
LAUNCH = (
    "import sys\n"
    "if sys.argv[1] != 'fork_deadline':\n"
    "    from gevent import monkey; monkey.patch_all()\n"
    "from tests._slots_gevent import main\n"
    "main(sys.argv[1], sys.argv[2], int(sys.argv[3]))\n"
)
