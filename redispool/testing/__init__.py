"""Real Redis processes, fault injection and pytest fixtures for tests and benchmarks.

* ``server``: :class:`RedisServer`, a throw-away ``redis-server`` on loopback;
* ``tls``: certificates for TLS test servers;
* ``proxy``: :class:`FaultProxy`, network faults between a client and a server;
* ``cluster``: :class:`RedisClusterServer`, a throw-away Redis Cluster (3+3);
* ``sentinel``: :class:`SentinelSetup`, a primary, a replica and three sentinels;
* ``plugin``: pytest fixtures (``redis_server``, ``redis_url``,
  ``redis_server_factory``, ``redis_cluster``, ``redis_cluster_url``,
  ``redis_cluster_factory``, ``sentinel_setup``, ``sentinel_setup_factory``); load them with
  ``pytest_plugins = ["redispool.testing"]``.
"""

from __future__ import annotations

from .cluster import RedisClusterServer
from .proxy import FaultProxy
from .sentinel import SentinelServer, SentinelSetup
from .server import HOST, RedisServer, find_redis_server, server_version, tls_supported

__all__ = [
    "HOST",
    "FaultProxy",
    "RedisClusterServer",
    "RedisServer",
    "SentinelServer",
    "SentinelSetup",
    "find_redis_server",
    "server_version",
    "tls_supported",
]

try:  # the fixtures, when pytest is there: ``pytest_plugins = ["redispool.testing"]``
    from .plugin import (  # noqa: F401
        redis_cluster,
        redis_cluster_factory,
        redis_cluster_url,
        redis_server,
        redis_server_factory,
        redis_url,
        sentinel_setup,
        sentinel_setup_factory,
    )
except ImportError:  # pragma: no cover - pytest is optional
    pass
