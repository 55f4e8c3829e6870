"""A 5-minute memory soak (marked slow: ``pytest -m slow``; not in CI)."""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest

from redispool import RedisPool


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_memory_is_flat_over_a_five_minute_soak(redis_url: str) -> None:
    pool = RedisPool(redis_url, min_size=4, max_size=4)
    pool.redis.set("k", "v")
    tracemalloc.start()
    samples: list[int] = [0] * 11
    seconds = 300.0
    start = time.monotonic()
    for i in range(11):
        while time.monotonic() < start + i * seconds / 10:
            for _ in range(500):
                with pool.client() as r:
                    r.get("k")
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        samples[i] = sum(stat.size for stat in snap.statistics("filename"))
    tracemalloc.stop()
    pool.close()
    assert samples[-1] - samples[1] < 4096, samples  # flat after warm-up
