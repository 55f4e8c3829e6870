"""Run the demo API: on ``REDIS_URL``, on the Sentinel service named by
``REDIS_SENTINELS`` and ``REDIS_SENTINEL_SERVICE``, or on a redis-server it starts itself.

Under gunicorn when it is installed (``--no-gunicorn``: Flask's threaded
server). Ctrl-C or SIGTERM stops the workers and the embedded server.
``--load`` runs a short bounded load against pooled and per-request mode and
prints the latency table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

__all__ = ["main"]


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """``REDIS_URL``, or an embedded redis-server for the duration (none with
    ``REDIS_SENTINELS``: Sentinel gives the address, ``REDIS_URL`` the credentials)."""
    url = os.environ.get("REDIS_URL")
    if os.environ.get("REDIS_SENTINELS"):
        print(
            f"on Sentinel service {os.environ.get('REDIS_SENTINEL_SERVICE')!r} "
            f"via {os.environ['REDIS_SENTINELS']}",
            flush=True,
        )
        yield url or ""
        return
    if url:
        yield url
        return
    from ..testing import RedisServer

    server = RedisServer(args=("--maxclients", "1000"))
    print(f"embedded redis-server {server.binary} on {server.url}", flush=True)
    try:
        yield server.url
    finally:
        server.close()


def _gunicorn_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("gunicorn").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 0


def _command(host: str, port: int, opts: argparse.Namespace) -> list[str]:
    if opts.no_gunicorn or importlib.util.find_spec("gunicorn") is None:
        code = (
            "from redispool.demo.app import create_app; "
            f"create_app().run(host={host!r}, port={port}, threaded=True)"
        )
        return [sys.executable, "-c", code]
    worker_class = opts.worker_class
    if worker_class == "gevent" and importlib.util.find_spec("gevent") is None:
        worker_class = "gthread"
    cmd = [
        sys.executable, "-m", "gunicorn", "redispool.demo.app:create_app()",
        "--bind", f"{host}:{port}", "--workers", str(opts.workers),
        "--worker-class", worker_class, "--preload", "--graceful-timeout", "5",
        "--log-level", "warning",
    ]  # fmt: skip
    if _gunicorn_major() >= 27:  # its control socket is one path per user: several demos clash
        cmd.append("--no-control-socket")
    if worker_class == "gthread":
        cmd += ["--threads", "8"]
    if worker_class == "gevent":
        cmd += ["--worker-connections", "1000"]
    return cmd


def start_app(host: str, port: int, url: str, opts: argparse.Namespace, per_request: bool) -> Any:
    env = dict(os.environ, REDIS_URL=url, DEMO_PER_REQUEST="1" if per_request else "0")
    proc = subprocess.Popen(_command(host, port, opts), env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"the demo server did not answer on {host}:{port} within 30 s")


def stop(proc: Any) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m redispool demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="gevent", choices=["sync", "gthread", "gevent"])
    parser.add_argument("--per-request", action="store_true", help="no pool: connect per request")
    parser.add_argument("--no-gunicorn", action="store_true")
    parser.add_argument("--load", action="store_true", help="measure pooled vs per-request")
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per case")
    parser.add_argument("--concurrency", type=int, default=50)
    opts = parser.parse_args(argv)

    stopping = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    with redis_url() as url:
        if opts.load:
            from .load import compare

            return compare(opts, url)
        proc = start_app(opts.host, opts.port, url, opts, opts.per_request)
        base = f"http://{opts.host}:{opts.port}"
        mode = "per-request connections" if opts.per_request else "pooled"
        print(
            f"\nredispool demo API on {base} ({mode})\n"
            f"  curl -X POST {base}/api/auth/login -H 'Content-Type: application/json' "
            '-d \'{"username": "alice", "password": "wonderland"}\'\n'
            f"  curl {base}/api/posts/1\n"
            f"  curl {base}/api/stats\n"
            f"  curl {base}/api/health/redis\n"
            f"  curl {base}/metrics\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        try:
            while proc.poll() is None:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            stop(proc)
    return 0
