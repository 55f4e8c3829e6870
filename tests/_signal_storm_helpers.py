"""The signal storm of ``_signal_storm.py`` on the helpers (cache with fallback,
rate limiter, lockout, buffered analytics) over one ``RedisPool``, raising in
the helpers' code, the pool's and redis-py's: run in a subprocess by
test_signals.py.

``python -m tests._signal_storm_helpers URL SEED``. Then, with the storm off:
no breaker stuck half-open, no single-flight leader left, background writes and
analytics flushed within their timeouts, the pool settled and lending all it
may. One JSON line.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

import redis

from redispool import PoolError, RedisPool
from redispool.helpers import Analytics, Cache, Lockout, RateLimiter

from ._signal_storm import _POOL_FILES, Storm, alongside

_FILES = (
    "redispool/helpers/base.py",
    "redispool/helpers/cache.py",
    "redispool/helpers/_singleflight.py",
    "redispool/helpers/_writer.py",
    "redispool/helpers/_cache_format.py",
    "redispool/helpers/ratelimit.py",
    "redispool/helpers/lockout.py",
    "redispool/helpers/analytics.py",
    *_POOL_FILES,
    "redispool/redis_pool.py",
    "redispool/connection.py",
    "redis/client.py",
    "redis/connection.py",
)
SECRET = b"storm-secret-0123456789abcdef0123"


def _call(helpers: dict[str, Any], rnd: random.Random, n: int) -> None:
    kind = rnd.randrange(4)
    if kind == 0:
        helpers["cache"].get_with_fallback(f"k{n % 20}", lambda: {"n": n}, ttl=5)
    elif kind == 1:
        helpers["limiter"].hit(f"ip{n % 5}")
    elif kind == 2:
        with helpers["lockout"].attempt(f"user{n % 5}") as attempt:
            if attempt.allowed:
                attempt.succeeded() if rnd.random() < 0.7 else attempt.failed()
    else:
        helpers["stats"].incr("hits")


def main(url: str, seed: int, seconds: float = 0.8) -> None:
    rnd = random.Random(seed)
    pool = RedisPool(url, min_size=0, max_size=3, timeout=2.0)
    helpers: dict[str, Any] = {
        "cache": Cache(pool, lease_wait=0.2, secret=SECRET),
        "limiter": RateLimiter(pool, "100000/minute", secret=SECRET),
        "lockout": Lockout(pool, max_attempts=50, window=5, lockout=1, secret=SECRET),
        "stats": Analytics(pool, buffered=True, flush_interval=0.05, secret=SECRET),
    }
    # The helpers use the pool as any code does: a lease's __exit__ entered from
    # their ``with`` is the window no Python code can close (see test_signals.py).
    storm = Storm(seed, files=_FILES, inside=tuple(f for f in _FILES if "/helpers/" not in f))
    r = random.Random(seed + 1)
    expected = (redis.RedisError, PoolError)
    helper, stop = alongside(lambda n: _call(helpers, r, n), expected)
    ops, errors = storm.run(lambda n: _call(helpers, rnd, n), seconds, expected)
    stop.set()
    helper.join(10)
    out: dict[str, Any] = {
        "ops": ops, "errors": errors, "raised": storm.raised, "where": storm.where,
        "other_done": not helper.is_alive(),
    }  # fmt: skip
    out["breakers_stuck"] = [
        name for name, h in helpers.items() if h.breaker._trial or h.breaker.enter() is None
    ]
    cache = helpers["cache"]
    out["flights_left"] = cache._flight.in_flight()
    t0 = time.monotonic()
    out["cache_flushed"] = cache.flush(3.0)
    out["analytics_flushed"] = helpers["stats"].flush()
    out["flush_seconds"] = round(time.monotonic() - t0, 3)
    helpers["cache"].close()  # (their background threads stop: nothing in flight)
    helpers["stats"].close()
    s = pool.stats()
    keys = ("size", "idle", "in_use", "creating", "closing", "waiting")
    out["stats"] = {k: getattr(s, k) for k in keys}
    got = []
    try:
        for _ in range(3):
            got.append(pool._get(1.0))
    except PoolError:
        pass
    out["lends"] = len(got)
    for conn in got:
        pool._put(conn)
    pool.close()
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
