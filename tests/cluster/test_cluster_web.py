"""The Flask extension, health endpoint and /metrics with a RedisClusterPool:
per-node numbers, each node named in ``pool_name``."""

from __future__ import annotations

from flask import Flask

from redispool import RedisClusterPool
from redispool.testing import RedisClusterServer
from redispool.web import pool_health, render_metrics
from redispool.web.flask import RedisPoolExtension


def test_health_and_metrics_per_node(
    redis_cluster_url: str, redis_cluster: RedisClusterServer
) -> None:
    pool = RedisClusterPool(redis_cluster_url, max_size=3)
    try:
        for i in range(30):
            pool.redis.set(f"w{i}", i)
        status, body = pool_health(pool)
        assert status == 200 and body["status"] == "up"
        primaries = {f"{n.host}:{n.port}" for n in redis_cluster.primaries()}
        # no addresses by default: the nodes are numbered
        assert set(body["nodes"]) == {f"node{i}" for i in range(1, len(body["nodes"]) + 1)}
        assert not any(node in str(body) for node in primaries), body
        status, detailed = pool_health(pool, show_details=True)
        assert primaries <= set(detailed["nodes"])
        assert body["total_commands"] >= 30 and body["max_size"] == 3 * len(body["nodes"])
        assert all(n["max_size"] == 3 for n in body["nodes"].values())
        text = render_metrics([pool])
        for node in primaries:
            assert f'pool_name="{pool.name} {node}"' in text, node
    finally:
        pool.close()


def test_flask_extension_takes_redis_cluster_url(
    redis_cluster_url: str, redis_cluster: RedisClusterServer
) -> None:
    app = Flask(__name__)
    app.config.update(REDIS_CLUSTER_URL=redis_cluster_url, REDIS_POOL_MAX_SIZE=2)
    ext = RedisPoolExtension(app)
    try:
        assert isinstance(ext.pool, RedisClusterPool)
        ext.pool.redis.set("flask", "yes")
        client = app.test_client()
        health = client.get("/api/health/redis")
        assert health.status_code == 200 and health.json is not None
        assert health.json["status"] == "up" and len(health.json["nodes"]) >= 3
        metrics = client.get("/metrics").get_data(as_text=True)
        node = redis_cluster.node_for_key("flask")
        assert f"{node.host}:{node.port}" in metrics
    finally:
        assert ext.pool is not None
        ext.pool.close()


def test_health_is_degraded_when_any_node_is_saturated(
    redis_cluster_url: str, redis_cluster: RedisClusterServer
) -> None:
    pool = RedisClusterPool(redis_cluster_url, max_size=1)
    try:
        default = pool.redis.get_default_node()  # where the health PING goes
        key = next(
            k
            for k in (f"{{busy{i}}}k" for i in range(100))
            if pool.node_of(k) != f"{default.host}:{default.port}"
        )
        assert pool_health(pool)[1]["status"] == "up"
        with pool.client(key) as c:  # the one connection of that node, held
            c.set(key, 1)
            stats = pool.stats()
            assert stats.in_use == 1 < stats.max_size  # the totals alone look fine
            assert pool_health(pool)[1]["status"] == "degraded"
        assert pool_health(pool)[1]["status"] == "up"
    finally:
        pool.close()
