"""The demo (and the Flask extension) on REDIS_SENTINELS / REDIS_SENTINEL_SERVICE."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest

from ._harness import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _env(setup):
    return {
        "REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in setup.addresses),
        "REDIS_SENTINEL_SERVICE": setup.service,
    }


def test_demo_app_runs_on_sentinel_and_follows_a_failover(sentinel_setup_factory, monkeypatch):
    from redispool.demo.app import create_app

    setup = sentinel_setup_factory()
    for key, value in _env(setup).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("REDIS_URL", raising=False)
    app = create_app(per_request=False)
    pool = app.extensions["redispool"].pool
    try:
        client = app.test_client()
        assert client.get("/api/health/redis").status_code == 200
        assert client.get("/api/posts/1").status_code == 200
        old = setup.primary_address()
        setup.failover()
        setup.wait_for_primary(old)

        def healthy() -> bool:
            return client.get("/api/posts/2").status_code == 200

        wait_until(healthy, 10, "the demo on the new primary")
        wait_until(lambda: pool._sentinel.address != old, 5, "the pool to follow")
        body = client.get("/api/health/redis").get_json()
        assert body["status"] in ("up", "degraded")
        assert body["destroyed_by_reason"].get("drain", 0) >= 1
    finally:
        pool.close()
    # the anti-pattern mode works on Sentinel too
    per_request = create_app(per_request=True)
    try:
        assert per_request.test_client().get("/api/posts/1").status_code == 200
    finally:
        per_request.extensions["redispool"].pool.close()


def _pids_serving(port: int) -> list[int]:
    """Processes whose command line names our port (the demo's gunicorn)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"127.0.0.1:{port}".encode() in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.skipif(find_spec("gunicorn") is None, reason="gunicorn is not installed")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="looks for processes in /proc")
@pytest.mark.timeout(120)
def test_demo_command_on_sentinel(sentinel_setup_factory, tmp_path):
    setup = sentinel_setup_factory()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(_env(setup), PYTHONPATH=str(ROOT))
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "redispool", "demo", "--port", str(port), "--workers", "1"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def health() -> dict[str, object] | None:
            try:
                url = f"http://127.0.0.1:{port}/api/health/redis"
                with urllib.request.urlopen(url, timeout=2) as r:
                    return json.loads(r.read())  # type: ignore[no-any-return]
            except OSError:
                return None

        wait_until(lambda: health() is not None, 60, "the demo to answer")
        body = health()
        assert body is not None and body["status"] == "up"
        # the demo's cache and counters went to the primary Sentinel named
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/posts/1", timeout=5).read()
        with setup.current_primary().client() as r:
            wait_until(lambda: r.dbsize() > 0, 10, "the demo's keys on the primary")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _pids_serving(port):  # what the demo started, if it did not stop it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log.read_text(errors="replace")
    assert "on Sentinel service 'mymaster'" in text
    assert "embedded redis-server" not in text
