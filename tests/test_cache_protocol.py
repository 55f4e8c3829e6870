"""The cache's Redis protocol (leases, versions, invalidations) under every
interleaving hypothesis finds: fills of several processes (several caches) split
into their steps (win the lease, load, write back), against invalidations of a
key, a tag or everything, set(), lease expiry and version keys evicted.

Oracle: a value loaded before an invalidation (or a set()) returned is never
readable after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from redispool import RedisPool
from redispool.helpers import _cache_format as fmt
from redispool.helpers.cache import Cache

KEYS = ("a", "b")
TAGS = {"a": ["t"], "b": []}


@dataclass
class Fill:
    cache: int
    key: str
    version: bytes
    token: str
    loaded: int | None = None


@pytest.fixture
def env(redis_url: str) -> Iterator[tuple[RedisPool, redis.Redis]]:
    pool = RedisPool(redis_url, min_size=0, max_size=2)
    admin = redis.Redis.from_url(redis_url)
    with pool, admin:
        yield pool, admin


def test_no_interleaving_of_fills_and_invalidations_serves_stale(
    env: tuple[RedisPool, redis.Redis],
) -> None:
    pool, admin = env

    class Protocol(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            admin.flushdb()
            self.caches = [Cache(pool, secret=b"p", error_ttl=0.5) for _ in range(2)]
            self.db = dict.fromkeys(KEYS, 0)
            self.floor = dict.fromkeys(KEYS, 0)
            self.fills: list[Fill] = []

        def teardown(self) -> None:
            for c in getattr(self, "caches", []):
                c.close(1)

        def _loc(self, key: str) -> Any:
            return self.caches[0]._locate(key, TAGS[key])

        @rule(c=st.integers(0, 1), key=st.sampled_from(KEYS), renew=st.booleans())
        def win_lease(self, c: int, key: str, renew: bool) -> None:
            token = os.urandom(6).hex()
            read = self.caches[c]._read(self._loc(key), token, renew)
            if read.lease == 1:
                self.fills.append(Fill(c, key, read.version, token))

        @rule(i=st.integers(0, 5))
        def load(self, i: int) -> None:
            if i < len(self.fills) and self.fills[i].loaded is None:
                self.fills[i].loaded = self.db[self.fills[i].key]

        @rule(i=st.integers(0, 5), outcome=st.sampled_from(["value", "none", "error"]))
        def write_back(self, i: int, outcome: str) -> None:
            if i >= len(self.fills) or self.fills[i].loaded is None:
                return
            f = self.fills.pop(i)
            cache = self.caches[f.cache]
            loc, lease = self._loc(f.key), (f.version, f.token)
            if outcome == "value":
                payload = fmt.encode(cache._dumps, f.loaded, 0.0)
                cache._write_back(loc, lease, payload, 60_000, "")
            elif outcome == "none":
                cache._write_back(loc, lease, b"", -1, "")
            else:
                cache._write_back(loc, lease, b"", 0, "ValueError")

        @rule(key=st.sampled_from(KEYS), how=st.sampled_from(["key", "tag", "all", "set"]))
        def invalidate(self, key: str, how: str) -> None:
            self.db[key] += 1
            cache = self.caches[1]
            if how == "key":
                cache.invalidate(key, tags=TAGS[key])
            elif how == "tag" and TAGS[key]:
                cache.invalidate_tag(TAGS[key][0])
            elif how in ("tag", "all"):
                cache.invalidate_all()
            else:
                assert cache.set(key, self.db[key], tags=TAGS[key])
            self.floor[key] = self.db[key]

        @rule(key=st.sampled_from(KEYS))
        def lease_expires(self, key: str) -> None:
            admin.delete(self._loc(key).keys[-1])

        @rule(which=st.sampled_from(["namespace", "tag"]))
        def version_key_evicted(self, which: str) -> None:
            cache = self.caches[0]
            admin.delete(cache._version_key if which == "namespace" else cache._tag_key("t", "tag"))

        @invariant()
        def nothing_stale(self) -> None:
            for key in getattr(self, "db", {}):
                for cache in self.caches:
                    got = cache.get(key, tags=TAGS[key])
                    assert got is None or got >= self.floor[key], (key, got, self.floor[key])

    Protocol.TestCase.settings = settings(
        max_examples=150,
        stateful_step_count=25,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    Protocol.TestCase().runTest()
