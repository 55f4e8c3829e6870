"""SENTINEL FAILOVER under gevent (monkey-patched before the pool is made): the
listener is a greenlet and follows the switch; nothing acknowledged after it is lost."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
from gevent import monkey
monkey.patch_all()
import sys, time
import gevent, redis
from redispool import RedisPool

sentinels, service, old_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
pool = RedisPool.sentinel(sentinels, service, min_size=2, max_size=4)
acked, stop = [], []

def write(n):
    i = 0
    while not stop:
        i += 1
        try:
            pool.redis.set(f"g{n}:{i}", 1)
            acked.append((time.monotonic(), f"g{n}:{i}"))
        except redis.ConnectionError:
            gevent.sleep(0.01)

writers = [gevent.spawn(write, n) for n in range(20)]
gevent.sleep(0.5)
host, port = sentinels.split(",")[0].split(":")
redis.Redis(host, int(port), protocol=2).execute_command("SENTINEL", "FAILOVER", service)
deadline = time.monotonic() + 20
while pool._sentinel.address in (None, ("127.0.0.1", old_port)):
    assert time.monotonic() < deadline, "the pool did not follow"
    gevent.sleep(0.005)
switched = time.monotonic()
gevent.sleep(1.5)
stop.append(1)
gevent.joinall(writers, timeout=10)
new = pool._sentinel.address
client = redis.Redis(new[0], new[1])
late = [k for t, k in acked if t > switched + 0.05 and not client.exists(k)]
assert not late, f"{len(late)} writes lost after the switch"
assert any(t > switched for t, _ in acked), "no write after the switch"
assert pool.stats().in_use == 0
pool.close()
print("gevent ok", len(acked))
"""


@pytest.mark.skipif(find_spec("gevent") is None, reason="gevent is not installed")
def test_failover_under_gevent(sentinel_setup):
    setup = sentinel_setup
    sentinels = ",".join(f"{h}:{p}" for h, p in setup.addresses)
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SCRIPT, sentinels, setup.service,
         str(setup.primary.port)],
        capture_output=True,
        timeout=90,
        cwd=ROOT,
    )  # fmt: skip
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out[-3000:]
    assert "gevent ok" in out
