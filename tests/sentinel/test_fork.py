"""A Sentinel pool used in a forked child, gevent patched after the fork (as in
gunicorn's gevent worker with preload): no deadlock, the child listens itself."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import faulthandler, os, sys, time
from redispool import RedisPool
pool = RedisPool.sentinel(sys.argv[1], "mymaster", min_size=2)
pool.redis.set("parent", 1)
time.sleep(0.3)
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)
    if sys.argv[2] == "gevent":
        from gevent import monkey
        monkey.patch_all()
    pool.redis.set("child", 1)
    listener = pool._sentinel._listener
    assert listener is not None and listener.alive(), "no listener in the child"
    print("child ok", pool.redis.get("child"), flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
pool.close()
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("mode", ["threads", "gevent"])
def test_pool_works_in_a_forked_child(sentinel_setup_factory, mode):
    if mode == "gevent" and find_spec("gevent") is None:
        pytest.skip("gevent is not installed")
    setup = sentinel_setup_factory()
    sentinels = ",".join(f"{h}:{p}" for h, p in setup.addresses)
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", CHILD, sentinels, mode],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out[-3000:]
    assert "child ok b'1'" in out
