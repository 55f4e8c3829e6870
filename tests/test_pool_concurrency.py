"""ObjectPool under real concurrency: threads, gevent (in a subprocess), fork."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from redispool import ObjectPool, PoolTimeout

from .helpers import Factory, FakeClock, Resource, assert_child_ok


def test_thread_stress_never_lends_twice_and_leaks_nothing() -> None:
    factory = Factory()
    pool = ObjectPool(factory, destroy=Factory.destroy, check=Factory.check, max_size=8, timeout=10)
    errors: list[BaseException] = []
    peak = [0]
    peak_lock = threading.Lock()

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(300):
                try:
                    with pool.acquire() as r:
                        assert r.holder is None, f"{r} lent twice"
                        assert not r.destroyed, f"{r} lent after destroy"
                        r.holder = threading.current_thread()
                        with peak_lock:
                            peak[0] = max(peak[0], pool.stats().size)
                        if rnd.random() < 0.3:
                            threading.Event().wait(0.0005)
                        r.holder = None
                        if rnd.random() < 0.05:
                            raise KeyError("discard me")
                        if rnd.random() < 0.03:
                            r.healthy = False  # the next borrower's check drops it
                except KeyError:
                    pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = pool.stats()
    assert s.in_use == 0 and s.waiting == 0 and s.creating == 0 and s.closing == 0
    assert s.size == s.idle <= 8 and peak[0] <= 8
    assert s.borrows == 64 * 300
    assert s.created - s.destroyed == s.size
    assert s.timeouts == 0
    alive = [r for r in factory.made if not r.destroyed]
    assert len(alive) == s.size
    pool.close()
    assert all(r.destroyed for r in factory.made)


class PoolMachine(RuleBasedStateMachine):
    """Random single-threaded operations; the invariants must hold after each."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.factory = Factory()
        self.pool: ObjectPool[Resource] = ObjectPool(
            self.factory,
            destroy=Factory.destroy,
            check=Factory.check,
            max_size=4,
            min_size=1,
            timeout=0,
            max_idle_time=30,
            max_lifetime=100,
            check_interval=5,
            fail_fast_after=2,
            clock=self.clock,
            background=False,
        )
        self.held: list[Resource] = []

    @rule()
    def borrow(self) -> None:
        try:
            r = self.pool.borrow()
        except PoolTimeout:
            s = self.pool.stats()
            assert s.in_use >= s.max_size or s.consecutive_create_errors
            return
        assert r not in self.held, "lent twice"
        assert not r.destroyed
        self.held.append(r)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 10), discard=st.booleans())
    def release(self, i: int, discard: bool) -> None:
        r = self.held.pop(i % len(self.held))
        self.pool.release(r, discard=discard)

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

    @rule(lo=st.integers(0, 3), hi=st.integers(1, 6))
    def resize(self, lo: int, hi: int) -> None:
        if lo <= hi:
            self.pool.resize(lo, hi)

    @invariant()
    def consistent(self) -> None:
        s = self.pool.stats()
        assert s.size == s.idle + s.in_use + s.creating + s.closing
        assert s.creating == 0 and s.closing == 0 and s.waiting == 0
        assert s.in_use == len(self.held)
        # Above max_size only while borrowed objects from before a shrink are out.
        assert s.size <= max(s.max_size, s.in_use)
        idle = list(self.pool._idle)
        assert not any(e.obj.destroyed for e in idle)
        assert not {id(e.obj) for e in idle} & {id(r) for r in self.held}
        alive = [r for r in self.factory.made if not r.destroyed]
        assert len(alive) == s.size

    def teardown(self) -> None:
        for r in self.held:
            self.pool.release(r)
        self.pool.close(timeout=0)
        assert all(r.destroyed for r in self.factory.made)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import itertools, json, random, sys
    import gevent
    from redispool import ObjectPool

    ids = itertools.count()
    destroyed = []

    class Obj:
        def __init__(self):
            self.id = next(ids); self.holder = None

    pool = ObjectPool(Obj, destroy=destroyed.append, max_size=20, timeout=30)
    lent_twice = []
    order = []

    def worker(i):
        for _ in range(5):
            with pool.acquire() as o:
                if o.holder is not None:
                    lent_twice.append(o.id)
                o.holder = i
                gevent.sleep(random.random() * 0.002)
                o.holder = None

    gs = [gevent.spawn(worker, i) for i in range(1000)]
    gevent.joinall(gs, raise_error=True)
    s1 = pool.stats()

    # A gevent.Timeout landing while waiting must not leak a slot, nor lose an
    # object handed over at the same moment.
    small = ObjectPool(Obj, destroy=destroyed.append, max_size=2, timeout=30)
    held = [small.borrow(), small.borrow()]
    def impatient():
        try:
            with gevent.Timeout(0.01):
                with small.acquire():
                    gevent.sleep(0.001)
        except gevent.Timeout:
            pass
    def racer(k):
        g = gevent.spawn(impatient)
        gevent.sleep(0.0)          # let it enqueue
        small.release(held.pop())  # hand off ...
        g.kill(KeyboardInterrupt, block=False)  # ... and interrupt it at once
        try:
            g.join()
        except KeyboardInterrupt:
            pass
        held.append(small.borrow())
    for k in range(200):
        racer(k)
    late = [gevent.spawn(impatient) for _ in range(50)]
    gevent.joinall(late)
    for o in held:
        small.release(o)
    s2 = small.stats()
    print(json.dumps({"s1": s1.as_dict(), "s2": s2.as_dict(), "lent_twice": lent_twice}))
    """
)


def test_gevent_1000_greenlets_share_20_objects() -> None:
    pytest.importorskip("gevent")
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    s1, s2 = data["s1"], data["s2"]
    assert data["lent_twice"] == []
    assert s1["borrows"] == 5000 and s1["in_use"] == 0 and s1["waiting"] == 0
    assert s1["size"] == s1["idle"] <= 20 and s1["timeouts"] == 0
    assert s2["in_use"] == 0 and s2["waiting"] == 0 and s2["creating"] == 0
    assert s2["size"] == s2["idle"] <= 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_never_receives_or_closes_the_parents_objects() -> None:
    factory = Factory()
    destroyed_in: list[tuple[int, int]] = []

    def destroy(r: Resource) -> None:
        destroyed_in.append((os.getpid(), r.id))

    pool = ObjectPool(factory, destroy=destroy, min_size=2, max_size=4)
    pool.open(wait=True, timeout=5)
    borrowed = pool.borrow()
    parent_ids = {r.id for r in factory.made}
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(rfd)
            got = [pool.borrow(timeout=2) for _ in range(3)]
            pool.release(borrowed)  # inherited: silently left alone
            for r in got:
                pool.release(r)
            s = pool.stats()
            pool.close(timeout=1)
            report = {
                "got": [r.id for r in got],
                "destroyed": [rid for p, rid in destroyed_in if p == os.getpid()],
                "size": s.size,
                "idle": s.idle,
                "in_use": s.in_use,
            }
            os.write(wfd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    report = json.loads(data)
    assert not set(report["got"]) & parent_ids
    assert not set(report["destroyed"]) & parent_ids
    assert report["in_use"] == 0 and report["size"] == report["idle"] == 3
    # The parent's pool is untouched and still works.
    pool.release(borrowed)
    s = pool.stats()
    assert s.size == 2 and s.in_use == 0
    assert destroyed_in == []
    pool.close()


_GEVENT_FORK_MID_CREATE = """
from gevent import monkey; monkey.patch_all()
import os
import gevent, gevent.event
from redispool import ObjectPool

gate = gevent.event.Event()
made = []


def factory():
    if made:  # the upkeep's refill waits here (for a handshake, say)
        gate.wait()
    made.append(object())
    return made[-1]


pool = ObjectPool(factory, min_size=0, max_size=4)
pool.release(pool.borrow())  # (starts the upkeep)
pool.resize(min_size=2)
gevent.sleep(0.05)
assert pool.stats().creating == 1, pool.stats()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        pool.stats()  # the child starts afresh
        gate.set()  # the parent's create goes on in the upkeep greenlet fork copied
        gevent.sleep(0.05)
        s = pool.stats()
        code = 2 if (s.size, s.idle, s.creating) != (0, 0, 0) or pool.objects() else 0
        pool.release(pool.borrow(timeout=1))  # (and the child's upkeep refills)
        gevent.sleep(0.05)
        s = pool.stats()
        code = code or (3 if (s.size, s.idle, s.creating) != (2, 2, 0) else 0)
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
gate.set()
gevent.sleep(0.05)
s = pool.stats()
assert (s.size, s.idle, s.creating) == (2, 2, 0), s
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_under_gevent_a_create_a_fork_cut_short_stays_out_of_the_childs_pool() -> None:
    """gevent copies every greenlet into a forked child: the upkeep's, caught in
    the factory (a connect), went on there and booked the parent's half-made
    object in the child's fresh pool (creating -1, one object too many: a
    connection on a socket both processes read)."""
    pytest.importorskip("gevent")
    assert_child_ok(_GEVENT_FORK_MID_CREATE)


_GEVENT_FORK_MID_BORROW = """
from gevent import monkey; monkey.patch_all()
import os, sys
import gevent, gevent.event
from redispool import ObjectPool

made = {}  # object -> pid that made it


def factory():
    obj = object()
    made[obj] = os.getpid()
    return obj


def mine(obj):
    return obj is not None and made.get(obj) == os.getpid()


gates = [gevent.event.Event(), gevent.event.Event()]


def checker(i):
    def check(obj):
        gates[i].wait()
        return os.getpid() == parent or i == 0  # the second fails in the child
    return check


parent = os.getpid()
got = {}


def borrower(name, pool):
    try:
        got[name] = pool.borrow(timeout=2)
    except Exception as exc:
        got[name] = exc


# 1, 2: a borrower whose check yields when the fork comes; 3: a queued waiter;
# 4: a waiter handed an object just before the fork.
checked = [ObjectPool(factory, max_size=2, check=checker(i), check_interval=0, background=False)
           for i in range(2)]
for pool in checked:
    pool.release(pool.borrow())  # idle, due a check at its next borrow
queued = ObjectPool(factory, max_size=1, background=False)
held = queued.borrow()
handed = ObjectPool(factory, max_size=1, background=False)
held2 = handed.borrow()
lets = [gevent.spawn(borrower, "check-pass", checked[0]),
        gevent.spawn(borrower, "check-fail", checked[1]),
        gevent.spawn(borrower, "queued", queued),
        gevent.spawn(borrower, "handed", handed)]
gevent.sleep(0.05)
assert queued.stats().waiting == 1 and handed.stats().waiting == 1
handed.release(held2)  # handed to the waiter, which has not run yet
pid = os.fork()
if pid == 0:
    bad = []
    if "handed" in got:
        bad.append("handed: borrowed before the fork")
    try:
        for gate in gates:
            gate.set()
        gevent.joinall(lets, timeout=3)
        for name, pool in [("check-pass", checked[0]), ("check-fail", checked[1]),
                           ("queued", queued), ("handed", handed)]:
            obj = got.get(name)
            if not mine(obj):
                bad.append(f"{name}: got {obj!r}, not an object of the child's")
                continue
            s = pool.stats()
            if (s.size, s.in_use, s.idle, s.creating, s.closing, s.waiting) != (1, 1, 0, 0, 0, 0):
                bad.append(f"{name}: {s}")
            pool.release(obj)
            s = pool.stats()
            if (s.size, s.in_use, s.idle) != (1, 0, 1):
                bad.append(f"{name} after release: {s}")
    except BaseException as exc:
        bad.append(repr(exc))
    finally:
        if bad:
            sys.stderr.write("\\n".join(bad) + "\\n")
            sys.stderr.flush()
        os._exit(1 if bad else 0)
_, status = os.waitpid(pid, 0)
queued.release(held)
code = os.waitstatus_to_exitcode(status)
assert code == 0, code
for gate in gates:
    gate.set()
gevent.joinall(lets, timeout=3)
for name in got:
    assert mine(got[name]), (name, got[name])
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_under_gevent_a_borrow_a_fork_cut_short_starts_afresh_in_the_child() -> None:
    """gevent copies every greenlet into a forked child: a borrower caught in its
    check (a PING), queued, or handed an object it had not yet taken went on
    there with the parent's object, slot or queue: it lent the parent's object
    (a socket both processes read), discarded it on the child's fresh books
    (one slot too many for good) or timed out on a queue nobody served. It now
    borrows afresh on the child's pool; the parent's borrows are unchanged."""
    pytest.importorskip("gevent")
    assert_child_ok(_GEVENT_FORK_MID_BORROW)


_GEVENT_RETRY_WITHOUT_SLEEP = """
from gevent import monkey; monkey.patch_all()
import time
import gevent
from redispool import ObjectPool, PoolTimeout

down_until = time.monotonic() + 0.3  # the server comes back after 0.3 s
tries = []


def factory():
    tries.append(time.monotonic())
    if time.monotonic() < down_until:
        raise ConnectionError("down")
    return object()


pool = ObjectPool(factory, max_size=2, fail_fast_after=1, backoff_base=0.01, backoff_cap=0.05)
for _ in range(2):
    try:
        pool.borrow(timeout=0.05)
    except PoolTimeout:
        pass
assert pool.stats().consecutive_create_errors >= 1
# A retry loop with no sleep of its own (as in many apps): under gevent the pool's
# background reconnect must still get to run, or this spins for ever.
start = time.monotonic()
obj = None
spins = 0
while obj is None and time.monotonic() - start < 3:
    spins += 1
    try:
        obj = pool.borrow(timeout=1)
    except PoolTimeout:
        pass
assert obj is not None, (spins, len(tries), pool.stats())
pool.release(obj)
pool.close()
print("ok")
"""


def test_under_gevent_a_retry_loop_without_a_sleep_lets_the_reconnect_run() -> None:
    """A borrow failing fast (creates failing, nothing borrowed) raised without
    ever yielding: under gevent an app that retries straight away never let the
    pool's background reconnect run, and spun for ever once the server was back."""
    pytest.importorskip("gevent")
    assert_child_ok(_GEVENT_RETRY_WITHOUT_SLEEP)
