"""The demo app under REAL gunicorn (``--preload``, 2 workers; sync and gevent).

Checks, from the outside (nothing added to the app): both workers answer with
correct JSON; each worker has its own Redis connections and the master holds
none (server-side ``CLIENT LIST`` addresses mapped to processes through
``/proc``), their count being the sum of the workers' ``/api/health/redis``
``size``; a gevent worker serves concurrent requests concurrently (it is not
serialized by a lock made before the fork, in the master).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import redis

from redispool.demo.app import DB_LATENCY, POSTS
from redispool.testing import RedisServer

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="maps sockets via /proc"),
    pytest.mark.skipif(find_spec("gunicorn") is None, reason="gunicorn is not installed"),
    pytest.mark.timeout(90),
]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APP = "redispool.demo.app:create_app()"
LOGIN = json.dumps({"username": "alice", "password": "wonderland"}).encode()


# -- processes and sockets, through /proc ------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.add(int(entry.name))
    return kids


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_table() -> dict[tuple[int, int], int]:
    """(local port, remote port) -> socket inode, for IPv4 TCP sockets."""
    table: dict[tuple[int, int], int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        table[(int(local.split(":")[1], 16), int(remote.split(":")[1], 16))] = inode
    return table


# -- gunicorn ------------------------------------------------------------------


@dataclass
class Gunicorn:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def master(self) -> int:
        return self.proc.pid

    def workers(self) -> set[int]:
        return _children(self.master)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""


def _wait_for(what: str, check: Callable[[], bool], timeout: float, gun: Gunicorn) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if gun.proc.poll() is not None:
            pytest.fail(f"gunicorn exited ({gun.proc.returncode}):\n{gun.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s\n{gun.log_tail()}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def gunicorn(url: str, worker_class: str, log: Path) -> Iterator[Gunicorn]:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "gunicorn", APP, "--preload", "--workers", "2",
        "--worker-class", worker_class, "--bind", f"{HOST}:{port}",
        "--graceful-timeout", "5", "--timeout", "30", "--no-control-socket",
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, REDIS_URL=url, PYTHONPATH=path)
    env.pop("DEMO_PER_REQUEST", None)
    env.pop("DEMO_LOGIN_LIMIT", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    gun = Gunicorn(proc, port, log)
    try:
        _wait_for("2 workers", lambda: len(gun.workers()) == 2, 20, gun)
        _wait_for("GET / answered", lambda: _try_get(port), 20, gun)
        yield gun
    finally:
        _stop(proc)
        print(f"--- gunicorn log ({worker_class}) ---\n{gun.log_tail()}")


# -- HTTP ------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


def _request(port: int, method: str, path: str, body: bytes | None = None) -> Reply:
    """One request on a new TCP connection (``Connection: close``)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        headers = {"Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return Reply(resp.status, dict(resp.getheaders()), json.loads(raw))
    finally:
        conn.close()


def _try_get(port: int) -> bool:
    try:
        return _request(port, "GET", "/").status == 200
    except (OSError, http.client.HTTPException):
        return False


def _check_post(reply: Reply, post_id: int) -> None:
    assert reply.status == 200, reply
    assert reply.body == POSTS[post_id]


def _check_login(reply: Reply) -> None:
    assert reply.status == 200, reply
    assert reply.body["ok"] is True and reply.body["user"] == "alice"
    assert len(bytes.fromhex(reply.body["token"])) == 16
    assert int(reply.headers["RateLimit-Limit"]) > 0


class HeldRequest:
    """A request sent but for its last CRLF: the worker that accepted it is
    found in /proc and waits; ``finish()`` completes it and reads the reply."""

    def __init__(self, gun: Gunicorn, path: str) -> None:
        self.sock = socket.create_connection((HOST, gun.port), timeout=10)
        head = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
        self.sock.sendall(head.encode())
        key = (gun.port, self.sock.getsockname()[1])
        self.pid = 0
        workers = gun.workers()

        def accepted() -> bool:
            inode = _tcp_table().get(key)
            if inode:
                for pid in workers:
                    if inode in _socket_inodes(pid):
                        self.pid = pid
                        return True
            return False

        _wait_for("a worker accepts the connection", accepted, 10, gun)

    def finish(self) -> Reply:
        self.sock.sendall(b"\r\n")
        chunks = []
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        self.sock.close()
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return Reply(status, {}, json.loads(body))

    def close(self) -> None:
        self.sock.close()


def _health_per_worker(gun: Gunicorn) -> dict[int, dict[str, Any]]:
    """``/api/health/redis`` of each worker, one after the other."""
    held: dict[int, HeldRequest] = {}
    extra: list[HeldRequest] = []
    try:
        for _ in range(50):  # sync: the 2nd one goes to the other worker; gevent: random
            h = HeldRequest(gun, "/api/health/redis")
            if h.pid in held:
                extra.append(h)
            else:
                held[h.pid] = h
            if len(held) == 2:
                break
        assert len(held) == 2, f"only workers {sorted(held)} accepted 50 connections"
        out = {}
        for pid, h in held.items():
            reply = h.finish()
            assert reply.status == 200, reply
            out[pid] = reply.body
        return out
    finally:
        for h in (*held.values(), *extra):
            h.close()


def _connections_by_pid(server: RedisServer, gun: Gunicorn) -> tuple[dict[int, int], set[int]]:
    """Redis-side client connections -> (gunicorn pid -> count, inodes owned twice)."""
    procs = {gun.master, *gun.workers()}
    owners: dict[int, set[int]] = {}
    for pid in procs:
        for ino in _socket_inodes(pid):
            owners.setdefault(ino, set()).add(pid)
    with redis.Redis(host=HOST, port=server.port, single_connection_client=True) as admin:
        me = admin.client_id()
        clients = [c for c in admin.client_list() if int(c["id"]) != me]
    table = _tcp_table()
    counts: dict[int, int] = dict.fromkeys(procs, 0)
    shared: set[int] = set()
    for client in clients:
        host, _, port = client["addr"].rpartition(":")
        assert host == HOST, client
        inode = table.get((int(port), server.port))
        pids = owners.get(inode or -1, set())
        assert pids, f"connection {client['addr']} belongs to no gunicorn process: {client}"
        if len(pids) > 1:
            shared.add(inode or -1)
        for pid in pids:
            counts[pid] += 1
    return counts, shared


# -- the test ----------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["sync", "gevent"])
def test_demo_under_gunicorn_preload_two_workers(
    worker_class: str, redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    if worker_class == "gevent" and find_spec("gevent") is None:
        pytest.skip("gevent is not installed")
    server = redis_server_factory()
    with gunicorn(server.url, worker_class, tmp_path / "gunicorn.log") as gun:
        workers = gun.workers()
        # Sequential requests, a new TCP connection each.
        for i in range(100):
            post_id = 1 + i % 20
            _check_post(_request(gun.port, "GET", f"/api/posts/{post_id}"), post_id)
            _check_login(_request(gun.port, "POST", "/api/auth/login", LOGIN))
        wrong = json.dumps({"username": "bob", "password": "nope"}).encode()
        reply = _request(gun.port, "POST", "/api/auth/login", wrong)
        assert reply.status == 401 and reply.body["error"] == "invalid_credentials"
        missing = _request(gun.port, "GET", "/api/posts/100000")
        assert missing.status == 404 and missing.body["error"] == "not_found"

        # Concurrent cache misses (50 ms of "database" each) on distinct posts.
        ids = list(range(51, 101))
        replies: dict[int, Reply | BaseException] = {}
        barrier = threading.Barrier(len(ids) + 1)

        def fetch(post_id: int) -> None:
            barrier.wait(10)
            try:
                replies[post_id] = _request(gun.port, "GET", f"/api/posts/{post_id}")
            except BaseException as exc:
                replies[post_id] = exc

        threads = [threading.Thread(target=fetch, args=(i,), daemon=True) for i in ids]
        for t in threads:
            t.start()
        barrier.wait(10)
        t0 = time.monotonic()
        for t in threads:
            t.join(15)
        elapsed = time.monotonic() - t0
        assert not any(t.is_alive() for t in threads), "requests still running after 15 s"
        for post_id in ids:
            got = replies[post_id]
            assert isinstance(got, Reply), got
            _check_post(got, post_id)
        sequential = len(ids) * DB_LATENCY  # 2.5 s; 1.25 s if each worker were serialized
        if worker_class == "gevent":
            assert elapsed < sequential / 4, f"50 concurrent misses took {elapsed:.2f} s"

        # Each worker answers /api/health/redis and owns its own connections.
        health = _health_per_worker(gun)
        assert set(health) == workers == gun.workers(), "a worker was replaced"
        counts, shared = _connections_by_pid(server, gun)
        assert not shared, f"sockets held by more than one process: {shared}"
        assert counts[gun.master] == 0, "the master (preload) holds Redis connections"
        for pid, body in health.items():
            assert body["status"] == "up" and body["ping_ms"] is not None, body
            assert body["size"] >= 1 and body["borrows"] >= 1 and body["timeouts"] == 0, body
            assert counts[pid] == body["size"], (pid, counts, health)
        total = sum(body["size"] for body in health.values())
        assert sum(counts.values()) == total
        with server.client() as admin:
            assert int(admin.info("clients")["connected_clients"]) == total + 1  # + admin


# -- examples/gunicorn/*.conf.py --------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "sync": {"workers": int},
    "gthread": {"threads": 8},
    "gevent": {"worker_connections": 1000},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_example_config_loads(name: str, redis_url: str) -> None:
    path = ROOT / "examples" / "gunicorn" / f"{name}.conf.py"
    settings = runpy.run_path(str(path))
    assert settings["worker_class"] == name and settings["preload_app"] is True
    assert settings["wsgi_app"] == APP
    assert isinstance(settings["workers"], int) and settings["workers"] >= 1
    assert 0 < settings["graceful_timeout"] <= settings["timeout"]
    for key, want in CONFIGS[name].items():
        assert settings[key] == want or (want is int and isinstance(settings[key], int)), key
    if name == "gevent" and find_spec("gevent") is None:
        pytest.skip("gevent is not installed")
    # gunicorn itself: resolves the file and imports the app (exit 1 if it cannot).
    env = dict(os.environ, REDIS_URL=redis_url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--print-config", "-c", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resolved = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("=") for line in proc.stdout.splitlines())
    )
    assert resolved["worker_class"] == name and resolved["preload_app"] == "True"
    assert resolved["wsgi_app"] == APP and resolved["workers"] == str(settings["workers"])
