"""The README's note on client options, as written: they belong to the pool."""

from __future__ import annotations

import redis

from redispool import RedisPool


def test_client_options_go_to_the_pool_not_the_client(redis_url: str) -> None:
    plain = RedisPool(redis_url, min_size=0, max_size=2)
    plain.redis.set("greeting", "hello")
    ignored = redis.Redis(connection_pool=plain.as_redis_pool(), decode_responses=True)
    assert ignored.get("greeting") == b"hello"  # as redis-py does: the option is ignored
    decoding = RedisPool(redis_url, min_size=0, max_size=2, decode_responses=True)
    assert redis.Redis(connection_pool=decoding.as_redis_pool()).get("greeting") == "hello"
    assert decoding.redis.get("greeting") == "hello"
    with decoding.client() as r:
        assert r.get("greeting") == "hello"
    plain.close()
    decoding.close()
