"""Run the demo API: on ``REDIS_URL``, on the Sentinel service named by
``REDIS_SENTINELS`` and ``REDIS_SENTINEL_SERVICE``, or on a redis-server it starts itself.

Under gunicorn when it is installed (``--no-gunicorn``: Flask's threaded
server). Ctrl-C or SIGTERM stops the workers and the embedded server, at
whatever moment it arrives: the signal only sets a flag, so no start is
interrupted halfway and everything started is stopped. ``--load`` runs a
short, bounded open-loop load against the pooled, redis-py and per-request
modes at one rate and prints the latency table.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

__all__ = [
    "DemoError",
    "Stopping",
    "main",
    "spawn_app",
    "start_app",
    "stop",
    "wait_until_serving",
]

PROG = "python -m redispool demo"


class DemoError(RuntimeError):
    """A reason the demo cannot run, said in one line (exit status 1)."""


class Stopping:
    """SIGTERM and SIGINT set this flag; the demo checks it at every step and
    while it waits, instead of being interrupted by an exception midway."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)  # no lock, no exception: safe at any moment

    def __bool__(self) -> bool:
        return bool(self.signals)

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (early) once a stop was asked for."""
        deadline = time.monotonic() + seconds
        while not self.signals and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, left))
        return bool(self.signals)


def check_redis_url() -> None:
    """A malformed ``REDIS_URL`` is one line naming it, before anything starts."""
    from ..config import parse_redis_url

    url = os.environ.get("REDIS_URL")
    if url is not None:
        try:
            parse_redis_url(url)
        except (TypeError, ValueError) as exc:  # its messages are redacted
            raise DemoError(f"the environment variable REDIS_URL is malformed: {exc}") from None


def check_port_free(host: str, port: int) -> None:
    """Fail at once when something already listens there (say, another demo),
    rather than printing the URL of someone else's server."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DemoError(f"--host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(
                    f"port {port} on {host} is already in use (another demo?); "
                    "stop it or choose another with --port"
                ) from None
            raise DemoError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@contextlib.contextmanager
def redis_url(stopping: Stopping) -> Iterator[str | None]:
    """``REDIS_URL``, or an embedded redis-server for the duration (None:
    stopped before it was up; none with ``REDIS_SENTINELS``: Sentinel gives the
    address, ``REDIS_URL`` the credentials)."""
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

    server = RedisServer(args=("--maxclients", "1000"))  # a few ms; a signal waits for it
    try:
        if not stopping:
            print(f"embedded redis-server {server.binary} on {server.url}", flush=True)
        yield None if stopping else server.url
    finally:
        server.close()


def _gunicorn_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("gunicorn").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 0


# gunicorn's gevent worker patches after the fork; with --preload the master has
# imported ssl by then ("MonkeyPatchWarning"): patch first thing in the master.
_GEVENT_GUNICORN = (
    "from gevent import monkey; monkey.patch_all(); import sys; "
    "from gunicorn.app.wsgiapp import run; sys.argv[0] = 'gunicorn'; sys.exit(run())"
)


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
    launcher = ["-c", _GEVENT_GUNICORN] if worker_class == "gevent" else ["-m", "gunicorn"]
    cmd = [
        sys.executable, *launcher, "redispool.demo.app:create_app()",
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


def spawn_app(
    host: str, port: int, url: str, opts: argparse.Namespace, per_request: bool, mode: str = ""
) -> subprocess.Popen[bytes]:
    """Start the server process (in its own session); see ``wait_until_serving``.
    ``mode`` (``DEMO_POOL``: pooled, redis-py, per-request) overrides ``per_request``."""
    env = dict(os.environ, REDIS_URL=url, DEMO_PER_REQUEST="1" if per_request else "0")
    if mode:
        env.update(DEMO_POOL=mode, DEMO_PER_REQUEST="0")
    return subprocess.Popen(_command(host, port, opts), env=env, start_new_session=True)


def start_app(
    host: str, port: int, url: str, opts: argparse.Namespace, per_request: bool, mode: str = ""
) -> subprocess.Popen[bytes]:
    """``spawn_app`` and ``wait_until_serving`` (stopped again if it never answers)."""
    proc = spawn_app(host, port, url, opts, per_request, mode)
    try:
        wait_until_serving(proc, host, port, Stopping())
    except BaseException:
        stop(proc)
        raise
    return proc


def wait_until_serving(
    proc: subprocess.Popen[bytes], host: str, port: int, stopping: Stopping, timeout: float = 30
) -> bool:
    """True once it answers; False when a stop was asked for first."""
    deadline = time.monotonic() + timeout
    while not stopping:
        if proc.poll() is not None:
            raise DemoError(f"the demo server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=1):
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DemoError(f"the demo server did not answer on {host}:{port} within {timeout} s")
        stopping.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (gunicorn and its workers), then
    SIGKILL after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _banner(base: str, per_request: bool) -> str:
    mode = "per-request connections" if per_request else "pooled"
    return (
        f"\nredispool demo API on {base} ({mode})\n"
        f"  curl -X POST {base}/api/auth/login -H 'Content-Type: application/json' "
        '-d \'{"username": "alice", "password": "wonderland"}\'\n'
        f"  curl {base}/api/posts/1\n"
        f"  curl {base}/api/stats\n"
        f"  curl {base}/api/health/redis\n"
        f"  curl {base}/metrics\n"
        "Ctrl-C stops it."
    )


def serve(opts: argparse.Namespace, url: str, stopping: Stopping) -> int:
    proc = spawn_app(opts.host, opts.port, url, opts, opts.per_request)
    try:
        if not wait_until_serving(proc, opts.host, opts.port, stopping):
            return 0
        print(_banner(f"http://{opts.host}:{opts.port}", opts.per_request), flush=True)
        while proc.poll() is None:
            if stopping.sleep(0.2):
                return 0
        raise DemoError(f"the demo server exited with code {proc.returncode}")
    finally:
        stop(proc)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="gevent", choices=["sync", "gthread", "gevent"])
    parser.add_argument("--per-request", action="store_true", help="no pool: connect per request")
    parser.add_argument("--no-gunicorn", action="store_true")
    parser.add_argument("--load", action="store_true", help="measure the three connection modes")
    from .load import add_arguments

    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    stopping = Stopping()
    stopping.install()
    try:
        check_redis_url()
        check_port_free(opts.host, opts.port)
        with redis_url(stopping) as url:
            if url is None or stopping:
                return 0
            if opts.load:
                from .load import compare

                return compare(opts, url, stopping)
            return serve(opts, url, stopping)
    except DemoError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
