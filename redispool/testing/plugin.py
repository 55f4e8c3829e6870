"""pytest fixtures: ``redis_server`` (session), ``redis_url`` and
``redis_server_factory``; ``redis_cluster`` (session), ``redis_cluster_url`` and
``redis_cluster_factory``; ``sentinel_setup`` and ``sentinel_setup_factory``
(each started only by the tests that ask for it).
Load with ``pytest_plugins = ["redispool.testing"]``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .server import RedisServer

if TYPE_CHECKING:
    from .cluster import RedisClusterServer
    from .sentinel import SentinelSetup


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server shared by the whole test session."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared server, flushed (and restarted if a test killed it)."""
    if not redis_server.is_running():
        redis_server.start()
    with redis_server.client() as c:
        c.flushall()
    return redis_server.url


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private servers (``**kwargs`` as for :class:`RedisServer`); all stopped after."""
    servers: list[RedisServer] = []

    def factory(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """One real 3 primaries + 3 replicas cluster shared by the session (about 2.5 s
    to start, paid only if a test uses it)."""
    from .cluster import RedisClusterServer

    cluster = RedisClusterServer()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServer) -> str:
    """A startup-node URL of the shared cluster: healthy again (if a test broke
    it), flushed, command stats reset."""
    if not redis_cluster.is_ready():
        redis_cluster.restore()
    redis_cluster.flushall()
    redis_cluster.reset_stats()
    return redis_cluster.url


@pytest.fixture
def redis_cluster_factory() -> Iterator[Callable[..., RedisClusterServer]]:
    """Start private clusters (``**kwargs`` as for ``RedisClusterServer``), for
    tests that damage them; all stopped after."""
    from .cluster import RedisClusterServer

    clusters: list[RedisClusterServer] = []

    def factory(**kwargs: Any) -> RedisClusterServer:
        cluster = RedisClusterServer(**kwargs)
        clusters.append(cluster)
        return cluster

    yield factory
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def sentinel_setup(sentinel_setup_factory: Callable[..., SentinelSetup]) -> SentinelSetup:
    """A fresh Sentinel setup (no passwords) for one test, stopped after it."""
    return sentinel_setup_factory()


@pytest.fixture
def sentinel_setup_factory() -> Iterator[Callable[..., SentinelSetup]]:
    """Start fresh Sentinel setups (a primary, a replica, three sentinels; ``**kwargs``
    as for :class:`~redispool.testing.sentinel.SentinelSetup`); all stopped after.
    Cheap (well under a second), so each failover test takes a fresh one."""
    from .sentinel import SentinelSetup  # only the tests that use it pay the import

    setups: list[SentinelSetup] = []

    def factory(**kwargs: Any) -> SentinelSetup:
        setup = SentinelSetup(**kwargs)
        setups.append(setup)
        return setup

    yield factory
    for setup in setups:
        setup.close()
