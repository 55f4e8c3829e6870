"""A queued borrower's wake-up under gevent (``redispool._greenwait``): it does
what a pre-acquired lock does, from greenlets, the hub and other OS threads."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from redispool._greenwait import new_signal

pytest.importorskip("gevent")

CASES = r"""
from gevent import monkey; monkey.patch_all()
import json, time
import gevent
from gevent.hub import get_hub
from redispool._greenwait import new_signal, _GreenSignal

out = {}

# (first: nothing has run the loop yet) the timeout counts from the call,
# though the greenlet ran 0.3 s without yielding (the loop's cached time is
# that stale)
s = new_signal()
t0 = time.monotonic()
while time.monotonic() - t0 < 0.3:
    pass
t0 = time.monotonic()
out["after_busy"] = s.acquire(True, 0.2)
out["after_busy_waited"] = time.monotonic() - t0

# released before the wait: returns at once, and the queued wake-up that lands
# later does not disturb the greenlet's next wait
s = new_signal()
out["kind"] = type(s).__name__
s.release()
out["early"] = s.acquire(True, 5)
t0 = time.monotonic(); gevent.sleep(0.05); out["sleep_after_early"] = time.monotonic() - t0

# nobody releases: False once the timeout passed, not before
s = new_signal()
t0 = time.monotonic()
out["timed_out"] = s.acquire(True, 0.1)
out["timed_out_after"] = time.monotonic() - t0

# a release after the timeout (the pool's race) leaves the greenlet alone
s.release()
t0 = time.monotonic(); gevent.sleep(0.05); out["sleep_after_late"] = time.monotonic() - t0

# released by another greenlet while waiting (forever)
s = new_signal()
gevent.spawn_later(0.02, s.release)
out["woken"] = s.acquire()

# released from another OS thread (not a greenlet): the thread-safe path
real_thread = monkey.get_original("threading", "Thread")
s = new_signal()
real_thread(target=lambda: (time.sleep(0.05), s.release())).start()
t0 = time.monotonic()
out["woken_by_thread"] = s.acquire(True, 5)
out["woken_by_thread_after"] = time.monotonic() - t0

# something else switches into the waiting greenlet: it waits on
s = new_signal()
waiting = gevent.getcurrent()
get_hub().loop.run_callback(waiting.switch, "junk")
gevent.spawn_later(0.1, s.release)
t0 = time.monotonic()
out["after_junk"] = s.acquire(True, 5)
out["after_junk_waited"] = time.monotonic() - t0

# a stray switch(False) is not the timer: it waits on
s = new_signal()
get_hub().loop.run_callback(waiting.switch, False)
gevent.spawn_later(0.1, s.release)
out["after_false"] = s.acquire(True, 5)

# an exception thrown into the wait propagates, and its timer is gone
s = new_signal()
try:
    with gevent.Timeout(0.02):
        s.acquire(True, 0.2)
    out["thrown"] = "no exception"
except gevent.Timeout:
    out["thrown"] = "Timeout"
t0 = time.monotonic(); gevent.sleep(0.4); out["sleep_after_throw"] = time.monotonic() - t0

# released twice: no error (release() is one C-level call, for signal safety);
# the waiter is woken once and the second wake-up lands in a spent Waiter
try:
    s.release(); s.release()
    out["double"] = "no error"
except RuntimeError:
    out["double"] = "RuntimeError"

# in another OS thread's hub (a threadpool task): gevent's own lock, which can
# wait natively there; a borrow with no timeout gets the object when released
from redispool.pool import ObjectPool
pool = ObjectPool(object, max_size=1, timeout=None, background=False)
held = pool.borrow()
kinds = []
def task():
    kinds.append(type(new_signal()).__name__)
    obj = pool.borrow()
    pool.release(obj)
    return obj is held
job = get_hub().threadpool.spawn(task)
gevent.sleep(0.2)
pool.release(held)
out["threadpool_borrow"] = job.get(timeout=5)
out["threadpool_kind"] = kinds[0]

# made in the hub (which cannot wait): a plain (gevent) lock
made = []
get_hub().loop.run_callback(lambda: made.append(type(new_signal()).__name__))
gevent.sleep(0.01)
out["in_hub"] = made[0]
print(json.dumps(out))
"""


def test_green_signal_wakes_like_a_lock() -> None:
    proc = subprocess.run([sys.executable, "-c", CASES], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kind"] == "_GreenSignal"
    assert out["early"] is True
    assert out["sleep_after_early"] >= 0.045  # not cut short by the stale wake-up
    assert out["timed_out"] is False
    assert out["timed_out_after"] >= 0.095
    assert out["sleep_after_late"] >= 0.045
    assert out["woken"] is True
    assert out["woken_by_thread"] is True
    assert out["woken_by_thread_after"] < 4  # woken, not timed out
    assert out["after_junk"] is True and out["after_junk_waited"] >= 0.09
    assert out["after_false"] is True
    assert out["after_busy"] is False and out["after_busy_waited"] >= 0.19
    assert out["threadpool_borrow"] is True and out["threadpool_kind"] != "_GreenSignal"
    assert out["thrown"] == "Timeout"
    assert out["sleep_after_throw"] >= 0.39  # the wait's own timer did not fire into it
    assert out["double"] == "no error"
    assert out["in_hub"] != "_GreenSignal"


def test_without_gevent_a_held_lock() -> None:
    # (this process is not patched)
    signal = new_signal()
    assert type(signal) is type(threading.Lock())
    assert signal.locked() and not signal.acquire(False)
    threading.Timer(0.05, signal.release).start()
    assert signal.acquire(True, 5)
