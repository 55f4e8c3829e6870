"""redis-py's own sync test suite, for the installed redis version, run through
``redispool.ConnectionPool`` (``-m compat``; about 4 minutes on 2 cores).

The suite runs twice against a private redis-server: with redis-py's own pool
(the baseline: what this server and machine allow) and with every fixture pool
replaced by ours (``redispool_compat_plugin``). A test that passes with redis-py's
pool must pass with ours, unless ``known_failures.txt`` lists it with a reason
(tests of redis-py's pool internals). Failures are re-run once before they count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from redispool.testing import RedisServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

pytestmark = [pytest.mark.compat, pytest.mark.timeout(1800)]

# Sync test files that drive a standalone server through the fixtures' pools.
FILES = [
    "test_commands.py",
    "test_pipeline.py",
    "test_pubsub.py",
    "test_lock.py",
    "test_scripting.py",
    "test_function.py",
    "test_connection_pool.py",
    "test_connection.py",
    "test_encoding.py",
    "test_retry.py",
    "test_monitor.py",
    "test_client.py",
    "test_keyspace_notifications.py",
    "test_himport_integration.py",
    "test_max_connections_error.py",
    "test_multiprocessing.py",
    "test_hash.py",
]


def known_failures() -> dict[str, str]:
    """``known_failures.txt``: test id -> why it cannot pass through the drop-in."""
    known: dict[str, str] = {}
    reason = ""
    for line in (HERE / "known_failures.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("## "):
            reason = line[3:]
        elif line and not line.startswith("#"):
            known[line] = reason
    return known


def _run(suite: Path, url: str, out: Path, args: list[str], *, ours: bool) -> set[str]:
    """Run redis-py's tests; the ids of those that failed or errored."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-o",
        "log_cli=false",
        "-W",
        "ignore",
        "-m",
        "not onlycluster and not redismod and not ssl and not replica",
        f"--redis-url={url}",
        f"--junitxml={out}",
        *(["-p", "redispool_compat_plugin"] if ours else []),
        *args,
    ]
    subprocess.run(cmd, cwd=suite, env=env, timeout=1200, capture_output=True, check=False)
    failed: set[str] = set()
    for case in ET.parse(out).iter("testcase"):
        if any(child.tag in ("failure", "error") for child in case):
            module = case.get("classname", "").replace(".", "/")
            failed.add(_node_id(f"{module}::{case.get('name')}"))
    return failed


def _node_id(test_id: str) -> str:
    """``tests/test_x/TestC::test_y`` (junit's) -> ``tests/test_x.py::TestC::test_y``."""
    path, name = test_id.split("::", 1)
    parts = path.split("/")
    for i in range(len(parts), 0, -1):
        if (Path(*parts[:i]).with_suffix(".py")).name.startswith("test_"):
            module = "/".join(parts[:i]) + ".py"
            rest = parts[i:]
            return "::".join([module, *rest, name])
    return test_id


@pytest.fixture(scope="module")
def suite() -> Path:
    sys.path.insert(0, str(HERE))
    try:
        from fetch_redis_py_tests import fetch
    finally:
        sys.path.remove(str(HERE))
    try:
        return fetch()
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        pytest.skip(f"could not fetch redis-py's tests (pip download of the sdist): {exc}")


def test_redis_py_suite_through_redispool(
    suite: Path, redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server_factory()
    url = server.url.rsplit("/", 1)[0] + "/9"
    files = [f"tests/{name}" for name in FILES if (suite / "tests" / name).is_file()]
    baseline = _run(suite, url, tmp_path / "baseline.xml", files, ours=False)
    ours = _run(suite, url, tmp_path / "ours.xml", files, ours=True)
    known = known_failures()
    suspects = sorted(ours - baseline - set(known))
    if suspects:  # once more, alone: a timing flake must fail twice to count
        again = _run(suite, url, tmp_path / "again.xml", suspects, ours=True)
        suspects = sorted(t for t in suspects if t in again)
    assert not suspects, "redis-py tests that pass with its pool but fail with ours:\n" + (
        "\n".join(suspects)
    )
    stale = sorted(t for t in known if t not in ours)
    if stale:
        print("known_failures.txt entries that passed (or did not run):", *stale, sep="\n  ")
