"""The signal storm of ``_signal_storm.py`` on a ``RedisPool`` against a real
server, raising in redispool's code and in redis-py's command path: run in a
subprocess by test_signals.py.

``python -m tests._signal_storm_redis URL SEED``: the main thread runs random
blocks (``client()`` with and without a timeout, pipelines, ``connection()``,
the drop-in ``pool.redis``, whose borrow redis-py's window no longer holds; a
pipeline behind a health-check PING that may fail and reconnect),
each writing a value of its own and reading it back, while a second thread does
the same with no timeout. Then: nothing borrowed, creating or closing; every
idle connection alive, on db 0 with no transaction; no reply ever read by the
wrong block; once the garbage collector has run, the server sees no connection
of the pool's beyond those it holds; and it still lends all it may. One JSON line.
"""

from __future__ import annotations

import gc
import json
import random
import socket
import sys
import time
from typing import Any

import redis

from redispool import PoolError, RedisPool

from ._signal_storm import _POOL_FILES, Storm, alongside

_FILES = (
    *_POOL_FILES,
    "redispool/redis_pool.py",
    "redispool/redis_adapter.py",
    "redispool/_dropin.py",
    "redispool/connection.py",
    "redispool/_packer.py",
    "redis/client.py",
    "redis/connection.py",
)


def _block(pool: RedisPool, rnd: random.Random, tag: str, n: int, wrong: list[str]) -> None:
    key, value = f"{tag}:{n % 50}", f"{tag}-{n}"
    kind = rnd.randrange(6)
    if kind == 0:
        with pool.client(timeout=rnd.choice((None, 1.0))) as r:
            r.set(key, value)
            got = r.get(key)
    elif kind == 1:
        with pool.client() as r:
            pipe = r.pipeline(transaction=rnd.random() < 0.5)
            pipe.set(key, value)
            pipe.get(key)
            got = pipe.execute()[1]
    elif kind == 2:
        with pool.connection() as conn:
            conn.send_command("SET", key, value)
            conn.read_response()
            conn.send_command("GET", key)
            got = conn.read_response()
    elif kind == 3:
        with pool.client() as r:
            r.set(key, value)
            got = r.get(key)
    elif kind == 5:  # redis-py's health-check PING first, ahead of what is packed
        with pool.client() as r:
            r.connection.next_health_check = 0  # (due)
            if rnd.random() < 0.3:  # the PING fails: redis-py reconnects, then sends
                r.connection._sock.shutdown(socket.SHUT_RDWR)
            pipe = r.pipeline(transaction=rnd.random() < 0.5)
            pipe.set(key, value)
            pipe.get(key)
            got = pipe.execute()[1]
    else:  # the drop-in: redis-py borrows and gives back through the adapter
        pool.redis.set(key, value)
        got = pool.redis.get(key)
    if got != value.encode():
        wrong.append(f"{tag}: {value!r} read {got!r}")


def main(url: str, seed: int, seconds: float = 0.8) -> None:
    rnd = random.Random(seed)
    pool = RedisPool(
        url, min_size=0, max_size=3, timeout=2.0, health_check_interval=30, client_name="storm"
    )
    # redis-py's client calls the adapter's release() in a finally (a pinned
    # pipeline's): as for any caller, an exception at its first instruction is
    # no code of ours to catch. redis-py's own window in _execute_command
    # (execute_command_window) is not left out: pool.redis borrows around it.
    inside = tuple(f for f in _FILES if f != "redis/client.py")
    storm = Storm(seed, files=_FILES, inside=inside)
    wrong: list[str] = []
    r = random.Random(seed + 1)
    expected = (redis.RedisError, PoolError)
    helper, stop = alongside(lambda n: _block(pool, r, "other", n, wrong), expected)
    ops, errors = storm.run(
        lambda n: _block(pool, rnd, "main", n, wrong),
        seconds,
        expected,
        stuck=pool._pool._lock._is_owned,
    )
    stop.set()
    helper.join(10)
    out: dict[str, Any] = {
        "ops": ops, "errors": errors, "raised": storm.raised, "where": storm.where,
        "wrong": wrong[:5], "other_done": not helper.is_alive(),
        "lock_free": not pool._pool._lock._is_owned(),
        "hiredis": redis.utils.HIREDIS_AVAILABLE,
    }  # fmt: skip
    gc.collect()  # leases dropped without their __exit__ (see _signal_storm._RECLAIMED)
    pool._pool._reclaim()
    s = pool.stats()
    keys = ("size", "idle", "in_use", "creating", "closing", "waiting")
    out["stats"] = {k: getattr(s, k) for k in keys}
    admin = redis.Redis.from_url(url)
    fresh = True
    for conn in pool._pool.objects():  # every idle one: alive, db 0, no MULTI
        conn.send_command("CLIENT", "INFO")
        info = conn.read_response().decode()
        fresh = fresh and " db=0 " in info and " multi=-1 " in info
    out["fresh"] = fresh
    for _ in range(50):  # dropped ones (see ObjectPool._make) close when collected
        gc.collect()
        mine = [c for c in admin.client_list() if c.get("name") == "storm"]
        if len(mine) <= s.size:
            break
        time.sleep(0.02)
    out["server_connections"] = len(mine)
    got = []
    try:
        for _ in range(3):
            got.append(pool._get(1.0))
        out["lends"] = len(got)
    except PoolError:
        out["lends"] = len(got)
    # (read here: the storm may have left no connection at all, each discarded)
    out["parser"] = type(got[0]._parser).__name__ if got else None
    for conn in got:
        pool._put(conn)
    pool.close()
    admin.close()
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
