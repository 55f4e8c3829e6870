"""/metrics under real gunicorn with 2 workers sums both workers' pools
(prometheus_client multiprocess mode, PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(find_spec("gunicorn") is None, reason="gunicorn is not installed"),
    pytest.mark.skipif(
        find_spec("prometheus_client") is None, reason="prometheus_client is not installed"
    ),
    pytest.mark.timeout(90),
]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _sample(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_metrics_sum_over_two_workers(redis_server_factory: Any, tmp_path: Path) -> None:
    server = redis_server_factory()
    port = _free_port()
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    env = dict(
        os.environ,
        REDIS_URL=server.url,
        PROMETHEUS_MULTIPROC_DIR=str(prom_dir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    cmd = [
        sys.executable, "-m", "gunicorn", "redispool.demo.app:create_app()", "--preload",
        "--workers", "2", "--worker-class", "sync", "--bind", f"{HOST}:{port}",
        "--graceful-timeout", "5", "--no-control-socket",
    ]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(port, "/")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # Keep sending until both workers have served (and published) requests:
        # the sum of their pools' max_size (20 each) is then 40.
        deadline = time.monotonic() + 30
        while True:
            for i in range(20):
                assert _get(port, f"/api/posts/{i % 5 + 1}")[0] == 200
            status, text = _get(port, "/metrics")
            assert status == 200
            commands = _sample(text, "redispool_commands_total") or 0
            borrows = _sample(text, "db_client_connection_borrows_total") or 0
            # each worker publishes at most once a second: poll until both did
            if _sample(text, "db_client_connection_max") == 40 and min(commands, borrows) >= 20:
                break
            assert time.monotonic() < deadline, text
            time.sleep(1.1)  # past the workers' publish throttle
        assert "# TYPE db_client_connection_count gauge" in text
        assert 'state="idle"' in text and 'state="used"' in text
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
