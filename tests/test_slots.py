"""No slot is ever lost, whatever interrupts a borrow, and a waiter keeps its place
(issue 11, items 3-7). Against a real redis-server; gevent cases under real gevent
in a subprocess (see ``_slots_gevent.py``)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from redispool import ObjectPool, PoolTimeout, RedisPool
from redispool.connection import is_alive
from redispool.testing import FaultProxy, RedisServer

from ._slots_gevent import LAUNCH
from .helpers import Factory, FakeClock, Resource

ROOT = Path(__file__).resolve().parent.parent
SETTLED = {"in_use": 0, "creating": 0, "closing": 0, "waiting": 0}


def _gevent_case(case: str, url: str, seed: int = 1) -> dict[str, Any]:
    pytest.importorskip("gevent")
    proc = subprocess.run(
        # (a hang prints every thread's stack, in the failure below)
        [
            sys.executable,
            "-c",
            "import faulthandler\nfaulthandler.dump_traceback_later(150, exit=True)\n" + LAUNCH,
            case,
            url,
            str(seed),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _settled(stats: dict[str, Any]) -> bool:
    return all(stats[k] == v for k, v in SETTLED.items()) and stats["size"] == stats["idle"]


# -- item 3: a kill at the first yield of the first borrow ----------------------


def test_kill_at_first_yield_of_first_borrow_loses_no_slot(redis_url: str) -> None:
    pools = _gevent_case("first_borrow_kill", redis_url)["pools"]
    assert len(pools) == 50
    lost = [p for p in pools if p["after_kill"]["size"] or p["after_kill"]["creating"]]
    assert lost == [], f"{len(lost)} of 50 pools lost a slot: {lost[:3]}"
    assert all(p["borrow_works"] is True and _settled(p["stats"]) for p in pools)


# -- item 4: a gevent.Timeout inside a yielding destroy -------------------------


def test_timeout_in_destroy_while_keeping_the_slot_frees_it(redis_url: str) -> None:
    result = _gevent_case("timeout_in_destroy", redis_url)
    assert result["outcome"] == {"waiter": "timeout"}  # the Timeout did land in destroy
    assert result["stats"]["size"] == 0 and result["stats"]["creating"] == 0, result
    assert result["borrow_works"] is True


# -- item 5: an exception at any point of a borrow ------------------------------


class Injected(BaseException):
    """Stands for Ctrl-C or any async exception: not an ``Exception``."""


_TRACED = {
    str(ROOT / "redispool" / f"{name}.py")
    for name in ("pool", "_poolparts", "_upkeep", "_create", "_lifecycle")
}
_TRACED_REDIS = str(ROOT / "redispool" / "redis_pool.py")
# (and the leases' __enter__: connection() and client())
_REDIS_FUNCS = {"_new_connection", "_make", "_ping", "_destroy_connection", "__enter__"}


def _held(lock: Any) -> bool:
    """Is ``lock`` held (an RLock: by this thread)?"""
    owned = getattr(lock, "_is_owned", None)
    return bool(owned()) if owned is not None else bool(lock.locked())


class _Injector:
    """A ``sys.settrace`` function raising ``Injected`` at the ``n``-th call or
    line of the pool's code (0: count only), except while this thread holds the
    pool's lock, or while one of the plain locks in ``also`` is held: their short
    critical sections never yield, and a signal handler can raise there only at
    a call, after which they are consistent (see test_signals.py for those). A
    trace function can also raise at the line event of a ``with`` block's exit,
    before ``__exit__`` runs, which no signal or yield can: that left a
    ``with lock:`` held (on 3.12.1, where the step counts land there)."""

    def __init__(self, lock: Any, n: int, also: tuple[Any, ...] = ()) -> None:
        self.lock, self.n, self.count, self.fired = lock, n, 0, False
        self.also = also

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename not in _TRACED and not (
            code.co_filename == _TRACED_REDIS and code.co_name in _REDIS_FUNCS
        ):
            return None
        if (
            event in ("call", "line")
            and not self.lock._is_owned()
            and not any(_held(lock) for lock in self.also)
        ):
            self.count += 1
            if self.count == self.n:
                self.fired = True
                raise Injected(f"at {code.co_name}:{frame.f_lineno}")
        return self


SITUATIONS = ("fresh", "idle", "dead_idle", "handed", "dead_handed", "discarded")


def _trial(url: str, admin: redis.Redis, situation: str, n: int, rnd: random.Random) -> Any:
    """One borrow in ``situation``, interrupted at its ``n``-th step; returns
    how many steps it had and whether the pool then settles and works."""
    pool = RedisPool(
        url,
        min_size=0,
        max_size=rnd.choice((1, 2)),
        timeout=5,
        health_check_interval=rnd.choice((0, 30)),
    )
    try:
        held = []
        if situation != "fresh":
            held = [pool._get(5) for _ in range(pool._pool._max_size)]
        if situation.startswith("dead"):
            _kill(admin, held[0])
        if situation in ("idle", "dead_idle"):
            for conn in held:
                pool._put(conn)
            held = []

        def give_back() -> None:
            time.sleep(0.005)
            for conn in held:
                if situation == "discarded":
                    pool._pool.release(conn, discard=True)
                else:
                    pool._put(conn)

        helper = threading.Thread(target=give_back)
        helper.start()
        injector = _Injector(pool._pool._lock, n, also=(pool._stats_lock,))
        got = None
        how = rnd.choice(("get", "connection", "client"))
        wait = rnd.choice((None, 3.0))
        sys.settrace(injector)
        try:
            if how == "get":
                got = pool._get(wait)
            else:  # a lease: traced up to its block (its __exit__ is a plain _put)
                lease = getattr(pool, how)(timeout=rnd.choice((None, 1.0)), wait=wait)
                with lease:
                    sys.settrace(None)
        except Injected:
            pass
        finally:
            sys.settrace(None)
        helper.join()
        if got is not None:
            pool._put(got)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            s = pool.stats()
            if not (s.in_use or s.creating or s.closing or s.waiting):
                break
            time.sleep(0.005)
        with pool.connection(wait=5) as conn:
            conn.send_command("PING")
            works = conn.read_response() == b"PONG"
        stats = {k: getattr(s, k) for k in ("size", "idle", *SETTLED)}
        return injector.count, injector.fired, stats, works
    finally:
        pool.close(timeout=0)


def _kill(admin: redis.Redis, conn: Any) -> None:
    conn.send_command("CLIENT", "ID")
    admin.client_kill_filter(_id=conn.read_response())
    deadline = time.monotonic() + 2
    while is_alive(conn) and time.monotonic() < deadline:
        time.sleep(0.002)


def test_exception_at_any_step_of_a_borrow_loses_nothing(redis_url: str) -> None:
    """Hundreds of borrows, each interrupted at a random step (every call and
    line of the pool's code outside its lock): first borrow, idle, dead idle,
    queued for a release, for a discard, handed a dead connection."""
    rnd = random.Random(11)
    admin = redis.Redis.from_url(redis_url)
    steps = {}
    for situation in SITUATIONS:  # how many steps each takes, uninterrupted
        steps[situation], _, stats, works = _trial(redis_url, admin, situation, 0, rnd)
        assert works and stats["size"] == stats["idle"], (situation, stats)
    failures = []
    fired = 0
    for i in range(240):
        situation = SITUATIONS[i % len(SITUATIONS)]
        n = rnd.randint(1, steps[situation] + 5)
        _, hit, stats, works = _trial(redis_url, admin, situation, n, rnd)
        fired += hit
        if not works or not _settled(stats):
            failures.append((situation, n, stats, works))
    admin.close()
    assert fired >= 150
    assert failures == [], f"{len(failures)} of 240 trials lost a slot: {failures[:5]}"


def test_kill_at_any_yield_under_gevent_loses_nothing(redis_url: str) -> None:
    """The same under gevent: the borrowing greenlet is killed at its n-th switch
    (lock, wait, connect, PING, a yielding close, the upkeep thread's start)."""
    trials = _gevent_case("kill_at_each_yield", redis_url, seed=5)["trials"]
    assert sum(t["killed"] for t in trials) >= 50
    bad = [t for t in trials if t["borrow_works"] is not True or not _settled(t["stats"])]
    assert bad == [], f"{len(bad)} of {len(trials)} trials lost a slot: {bad[:3]}"


def test_random_borrows_timeouts_and_kills_under_gevent_settle(redis_url: str) -> None:
    """The oracle: random borrows, holds, discards, wait timeouts, gevent.Timeouts,
    greenlet kills and CLIENT KILLs; afterwards nothing is held and a borrow works."""
    result = _gevent_case("random_ops", redis_url, seed=7)
    counts = result["counts"]
    assert counts["ok"] > 100 and counts["killed"] > 20 and counts["gevent_timeout"] > 20
    assert result["unbalanced"] == []  # size == idle + in_use + creating + closing, always
    bad = [p for p in result["pools"] if p["borrow_works"] is not True or not _settled(p["stats"])]
    assert bad == [], f"{len(bad)} of {len(result['pools'])} pools lost a slot: {bad[:3]}"


def test_a_yield_inside_the_pools_bookkeeping_lets_no_other_greenlet_in(redis_url: str) -> None:
    """A finalizer the garbage collector runs inside the pool's bookkeeping may
    yield (its close does): other greenlets must wait for the pool's lock, not
    enter. (It was a native lock, owned by the thread: the random_ops oracle
    once saw "cannot release un-acquired lock" from a greenlet let in.)"""
    result = _gevent_case("yield_under_lock", redis_url)
    assert result["inside"] == ["a in", "a out", "b in"], result  # b waited for a
    assert result["yields"] > 50 and result["errors"] == [] and result["double"] == 0, result
    assert result["borrow_works"] is True and result["made"] == 1, result
    assert _settled(result["stats"]), result


# -- item 6: fork, then gevent: one greenlet's wait is not another's timeout ----


def test_after_fork_and_gevent_a_wait_stays_with_its_borrower(redis_url: str) -> None:
    result = _gevent_case("fork_deadline", redis_url)
    assert result["child_status"] == 0
    seen = {name: (connect, io) for name, connect, io in result["seen"]}
    assert seen["short_wait"][0] <= 0.5
    assert seen["no_wait"] == (2.0, 2.0), seen  # its own timeouts, not the other's wait


# -- item 7: a waiter handed a dead connection keeps its place and deadline -----


def test_waiter_handed_a_dead_connection_keeps_its_place_and_deadline(
    redis_server: Any, redis_url: str
) -> None:
    pool = RedisPool(redis_url, min_size=0, max_size=1, timeout=5)
    admin = redis.Redis.from_url(redis_url)
    served: list[tuple[str, float]] = []
    errors: list[BaseException] = []

    def borrower(name: str, wait: float, hold: float) -> None:
        start = time.monotonic()
        try:
            with pool.connection(wait=wait) as conn:
                served.append((name, time.monotonic() - start))
                conn.send_command("PING")
                assert conn.read_response() == b"PONG"
                time.sleep(hold)
        except BaseException as exc:
            errors.append(exc)

    try:
        holder = pool.connection()
        conn = holder.__enter__()
        first = threading.Thread(target=borrower, args=("first", 0.6, 0.0))
        first.start()
        time.sleep(0.05)
        second = threading.Thread(target=borrower, args=("second", 5.0, 1.0))
        second.start()
        time.sleep(0.05)
        _kill(admin, conn)
        holder.__exit__(None, None, None)  # handed, dead, to "first"
        first.join(5)
        second.join(5)
        assert errors == []
        assert [name for name, _ in served] == ["first", "second"]
        assert served[0][1] < 0.6  # within its original deadline
        assert pool.stats().destroyed_by_reason == {"dead": 1}
    finally:
        pool.close()
        admin.close()


def test_borrower_whose_idle_object_fails_its_check_keeps_its_turn() -> None:
    """A borrower took the idle object before anyone queued; its check fails
    while another caller queues: it creates in the same slot, ahead of them."""
    in_check, verdict = threading.Event(), threading.Event()

    def check(obj: object) -> bool:
        if not verdict.is_set():
            in_check.set()
            verdict.wait(5)
            return False
        return True

    pool: ObjectPool[object] = ObjectPool(object, check=check, max_size=1, timeout=5)
    pool.release(pool.borrow())  # one idle object, checked on every borrow
    served: list[str] = []

    def borrower(name: str) -> None:
        with pool.acquire():
            served.append(name)
            time.sleep(0.05)

    first = threading.Thread(target=borrower, args=("first",))
    first.start()
    assert in_check.wait(5)
    second = threading.Thread(target=borrower, args=("second",))
    second.start()
    deadline = time.monotonic() + 5
    while pool.stats().waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    verdict.set()  # the first borrower's object fails its check
    first.join(5)
    second.join(5)
    assert served == ["first", "second"]
    s = pool.stats()
    assert s.size == s.idle == 1 and s.destroyed_by_reason == {"check": 1}
    pool.close()


class InterruptedPoolMachine(RuleBasedStateMachine):
    """Any sequence of borrows (some interrupted at a random step), releases,
    discards, failed checks, expiries, failing creates, resizes and upkeep:
    the books balance after each step, and a borrow works at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.factory = Factory()
        self.pool: ObjectPool[Resource] = ObjectPool(
            self.factory,
            destroy=Factory.destroy,
            check=Factory.check,
            min_size=1,
            max_size=3,
            timeout=0,
            max_lifetime=100,
            check_interval=5,
            fail_fast_after=2,
            clock=self.clock,
            background=False,
        )
        self.held: list[Resource] = []

    def _borrowed(self, r: Resource) -> None:
        assert r not in self.held and not r.destroyed
        self.held.append(r)

    @rule()
    def borrow(self) -> None:
        try:
            self._borrowed(self.pool.borrow())
        except PoolTimeout:
            pass

    @rule(n=st.integers(1, 120))
    def interrupted_borrow(self, n: int) -> None:
        old = sys.gettrace()
        sys.settrace(_Injector(self.pool._lock, n))
        try:
            r = self.pool.borrow()
        except (Injected, PoolTimeout):
            return
        finally:
            sys.settrace(old)
        self._borrowed(r)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 10), discard=st.booleans())
    def release(self, i: int, discard: bool) -> None:
        self.pool.release(self.held.pop(i % len(self.held)), discard=discard)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 10))
    def break_one(self, i: int) -> None:
        self.held[i % len(self.held)].healthy = False

    @rule(seconds=st.floats(0, 60))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def upkeep(self) -> None:
        self.pool._next_retry = min(self.pool._next_retry, self.clock.now)
        self.pool.run_upkeep()

    @rule(n=st.integers(0, 3))
    def fail_creates(self, n: int) -> None:
        self.factory.fail_next = n

    @rule(hi=st.integers(1, 4))
    def resize(self, hi: int) -> None:
        self.pool.resize(min(1, hi), hi)

    @invariant()
    def books_balance(self) -> None:
        s = self.pool.stats()
        assert s.size == s.idle + s.in_use + s.creating + s.closing
        assert s.creating == 0 and s.closing == 0 and s.waiting == 0, s
        assert s.in_use == len(self.held), s
        assert s.size <= max(s.max_size, s.in_use), s
        assert not any(e.obj.destroyed for e in self.pool._idle)

    def teardown(self) -> None:
        for r in self.held:
            self.pool.release(r)
        self.factory.fail_next = 0
        self.clock.advance(1000)  # past any create backoff
        self.pool._next_retry = 0.0
        self.pool._fail_streak = 0
        self.pool.release(self.pool.borrow())  # a borrow works
        self.pool.close(timeout=0)


TestInterruptedPoolMachine = InterruptedPoolMachine.TestCase
TestInterruptedPoolMachine.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)


def test_wait_zero_means_do_not_queue_not_connect_in_no_time(redis_server: RedisServer) -> None:
    """``wait=0`` (the cluster's "do not queue") still connects within the
    configured connect timeout: over a slow link the new connection is made."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        proxy.latency(0.005)  # 5 ms each way
        with RedisPool(proxy.url, min_size=0, max_size=2) as pool:
            for wait in (0.0, 0.0, None):
                with pool.connection(wait=wait) as conn:
                    conn.send_command("PING")
                    assert conn.read_response() in (b"PONG", "PONG")
                pool.drain()
            stats = pool.stats()
            assert stats.create_errors == 0 and stats.timeouts == 0, stats
