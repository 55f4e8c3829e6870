"""Pool sizes by default (``min_size`` follows ``max_size`` down) and the
connection budget (``redispool.budget`` and ``python -m redispool budget``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis

from redispool import RedisPool, budget
from redispool.__main__ import main as cli
from redispool.sizing import server_maxclients
from redispool.testing import RedisServer

# -- min_size follows max_size -------------------------------------------------


@pytest.mark.parametrize(("max_size", "expected_min"), [(1, 1), (3, 3), (5, 5), (20, 5)])
def test_min_size_follows_a_small_max_size(max_size: int, expected_min: int) -> None:
    pool = RedisPool("redis://127.0.0.1:1/0", max_size=max_size)
    stats = pool.stats()
    assert (stats.min_size, stats.max_size) == (expected_min, max_size)
    pool.close(timeout=0)


def test_explicit_min_size_above_max_size_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"min_size \(5\) must be <= max_size \(3\)"):
        RedisPool("redis://127.0.0.1:1/0", min_size=5, max_size=3)


def test_from_env_with_only_a_max_size() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_POOL_MAX_SIZE": "3"}
    pool = RedisPool.from_env(environ=env)
    assert (pool.stats().min_size, pool.stats().max_size) == (3, 3)
    pool.close(timeout=0)
    env["REDIS_POOL_MIN_SIZE"] = "4"
    with pytest.raises(ValueError, match=r"min_size \(4\) must be <= max_size \(3\)"):
        RedisPool.from_env(environ=env)


def test_read_pool_follows_too() -> None:
    pool = RedisPool("redis://127.0.0.1:1/0", read_url="redis://127.0.0.1:2/0", max_size=2)
    assert pool.read_pool is not None
    assert pool.read_pool.stats().min_size == 2
    pool.close(timeout=0)


# -- budget --------------------------------------------------------------------


def test_budget_arithmetic() -> None:
    # 10000 - 1000 reserved = 9000 for 3 x 8 pools
    assert budget(10000, workers_per_host=8, hosts=3) == 375
    assert budget(200, workers_per_host=2) == 90  # the compose file: 200 - 20 over 2
    assert budget(200, workers_per_host=2, reserve=0) == 100
    assert budget(200, workers_per_host=2, pools_per_worker=2, reserve=0) == 50
    assert budget(10, workers_per_host=1) == 8  # the reserve is at least 2
    # the sum never exceeds what is left
    for maxclients in (7, 64, 1000, 9999):
        for workers in (1, 3, 7):
            for hosts in (1, 2, 5):
                try:
                    size = budget(maxclients, workers_per_host=workers, hosts=hosts)
                except ValueError:
                    assert maxclients - max(2, maxclients // 10) < workers * hosts
                    continue
                left = maxclients - max(2, maxclients // 10)
                assert size * workers * hosts <= left < (size + 1) * workers * hosts


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"maxclients": 100, "workers_per_host": 0}, ValueError, ["workers_per_host", "0"]),
        ({"maxclients": 0, "workers_per_host": 1}, ValueError, ["maxclients"]),
        ({"maxclients": 100, "workers_per_host": 1, "hosts": 2.5}, TypeError, ["hosts"]),
        ({"maxclients": "100", "workers_per_host": 1}, TypeError, ["maxclients"]),
        ({"maxclients": 100, "workers_per_host": 1, "reserve": -1}, ValueError, ["reserve"]),
        (
            {"maxclients": 100, "workers_per_host": 50, "hosts": 3},
            ValueError,
            ["maxclients (100)", "reserve (10)", "150 pools"],
        ),
    ],
)
def test_budget_bad_input(kwargs: dict[str, Any], exc: type[Exception], words: list[str]) -> None:
    with pytest.raises(exc) as info:
        budget(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_budget_reads_the_servers_maxclients(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    old = admin.config_get("maxclients")["maxclients"]
    admin.config_set("maxclients", 150)
    try:
        assert server_maxclients(redis_url) == 150
    finally:
        admin.config_set("maxclients", old)
        admin.close()


def test_budget_reads_maxclients_over_a_unix_socket(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """redis.Redis(**parse_redis_url(url)) refused a unix:// URL's path (and a
    rediss:// URL's connection_class): the budget CLI failed on both."""
    server = redis_server_factory(unixsocket=True)
    assert server_maxclients(server.unix_url) == 10000
    assert cli(["budget", "--url", server.unix_url, "--workers-per-host", "9"]) == 0


def test_budget_cli(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["budget", "--maxclients", "200", "--workers-per-host", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == "REDIS_POOL_MAX_SIZE=90\n"
    assert "maxclients 200 - reserve 20 = 180 for 2 pools" in err
    assert cli(["budget", "--url", redis_url, "--workers-per-host", "4", "--hosts", "2"]) == 0
    out, _ = capsys.readouterr()
    assert out == "REDIS_POOL_MAX_SIZE=1125\n"  # 10000 - 1000 over 8
    assert cli(["budget", "--maxclients", "10", "--workers-per-host", "9"]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("budget: maxclients (10) minus reserve (2)")
    assert cli(["budget", "--url", "redis://127.0.0.1:1/0", "--workers-per-host", "1"]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("budget: could not read maxclients: ConnectionError")


def test_budget_command_line_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "redispool", "budget", "--maxclients", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--workers-per-host" in proc.stderr
