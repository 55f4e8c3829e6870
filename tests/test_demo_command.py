"""``python -m redispool demo``: embedded redis-server + gunicorn, stopped by SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="looks for processes in /proc"),
    pytest.mark.skipif(find_spec("gunicorn") is None, reason="gunicorn is not installed"),
    pytest.mark.timeout(120),
]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
Proc = tuple[int, str]  # (pid, start time): a pid is not reused under the same start time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _descendants(root: int) -> set[Proc]:
    parents: dict[int, list[tuple[int, str]]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[0] != "Z":
            parents.setdefault(st[1], []).append((pid, st[2]))
    found: set[Proc] = set()
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def _alive(proc: Proc) -> bool:
    st = _stat(proc[0])
    return st is not None and st[0] != "Z" and st[2] == proc[1]


def _mentioning(*needles: str) -> list[tuple[int, str]]:
    """Live processes whose command line mentions one of ``needles`` (not followed by
    a digit: ":1234" does not match ":12345")."""
    pattern = re.compile("|".join(f"{re.escape(n)}(?!\\d)" for n in needles))
    me = os.getpid()
    out = []
    for pid in _pids():
        cmd = _cmdline(pid)
        st = _stat(pid)
        if pid != me and st is not None and st[0] != "Z" and pattern.search(cmd):
            out.append((pid, cmd))
    return out


def _wait_for(what: str, check: Callable[[], bool], timeout: float, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s; output:\n{log()}")
        time.sleep(0.05)


class Demo:
    """``python -m redispool demo ...`` in its own session, output to a file."""

    def __init__(self, args: list[str], out: Path, **extra_env: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(extra_env)
        for name in ("DEMO_PER_REQUEST", "DEMO_LOGIN_LIMIT"):
            env.pop(name, None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.out = out
        with open(out, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "redispool", "demo", *args],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.seen: set[Proc] = set()

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def track(self) -> set[Proc]:
        """Remember the command's descendants (gunicorn, its workers, redis-server)."""
        self.seen |= _descendants(self.proc.pid)
        return self.seen

    def cleanup(self) -> None:
        """Kill whatever of ours is left (after a failure)."""
        self.track()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        for proc in self.seen:
            if _alive(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc[0], signal.SIGKILL)


@contextlib.contextmanager
def demo(args: list[str], out: Path, **extra_env: str) -> Iterator[Demo]:
    d = Demo(args, out, **extra_env)
    try:
        yield d
    finally:
        d.cleanup()


def _get(url: str, data: dict[str, Any] | None = None) -> tuple[int, Any]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_demo_command_serves_then_stops_everything_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://{HOST}:{port}"
    args = ["--port", str(port), "--workers", "1", "--worker-class", "sync"]
    with demo(args, tmp_path / "out.txt") as d:
        _wait_for("the API URL is printed", lambda: base in d.output(), 30, d.output)
        out = d.output()
        found = re.search(r"embedded redis-server \S+ on redis://127\.0\.0\.1:(\d+)/0", out)
        assert found, out
        redis_port = int(found.group(1))
        for line in (f"redispool demo API on {base} (pooled)", f"curl {base}/api/posts/1"):
            assert line in out
        assert f"curl -X POST {base}/api/auth/login" in out

        status, index = _get(f"{base}/")
        assert status == 200 and "GET /api/posts/1" in index["try"]
        alice = {"username": "alice", "password": "wonderland"}
        status, body = _get(f"{base}/api/auth/login", alice)
        assert status == 200 and body["user"] == "alice"
        assert _get(f"{base}/api/health/redis")[1]["status"] == "up"

        running = d.track()
        cmds = {pid: _cmdline(pid) for pid, _ in running}
        assert any("gunicorn" in c for c in cmds.values()), cmds
        redis_pids = [pid for pid, c in cmds.items() if "redis-server" in c]
        assert len(redis_pids) == 1, cmds
        redis_dir = Path(os.readlink(f"/proc/{redis_pids[0]}/cwd"))
        assert redis_dir.name.startswith("redispool-") and redis_dir.is_dir()
        assert len(running) >= 3, cmds  # redis-server, gunicorn master, 1 worker

        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)  # to the command only, not to its group
        try:
            rc = d.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 15 s after SIGTERM; output:\n{d.output()}")
        assert rc == 0, d.output()
        assert time.monotonic() - t0 < 15
        _wait_for("children gone", lambda: not any(map(_alive, running)), 5, d.output)
        assert not _port_open(port) and not _port_open(redis_port)
        assert not _mentioning(f":{port}", f":{redis_port}", str(redis_dir))
        assert not redis_dir.exists(), "the embedded server's temp dir was left behind"
        assert "Traceback" not in d.output(), d.output()


def test_demo_load_prints_the_comparison(tmp_path: Path) -> None:
    port = _free_port()
    args = ["--load", "--seconds", "1", "--probe-seconds", "0.3", "--workers", "1"]
    args += ["--worker-class", "sync", "--port", str(port)]
    with demo(args, tmp_path / "out.txt") as d:
        try:
            rc = d.proc.wait(120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"--load still running after 120 s; output:\n{d.output()}")
        out = d.output()
        assert rc == 0, out
        probed = re.search(r"^probe: pooled login keeps p99 < 50 ms up to (\d+)/s", out, re.M)
        assert probed, out
        rate = max(10, round(int(probed.group(1)) * 0.7))
        assert f"open loop at {rate} requests/s x 1 s per mode and route, 1 sync workers" in out
        assert re.search(r"mode\s+route\s+rate/s\s+done/s\s+p50 ms\s+p99 ms\s+p99.9 ms", out)
        for mode in ("pooled", "redis-py", "per-request"):
            for route in ("login", "post"):
                row = re.search(rf"^{mode}\s+{route}\s+(\d+)\s+(\d+)\s", out, re.MULTILINE)
                assert row and int(row.group(1)) == rate and int(row.group(2)) > 0, out
                cells = out[row.start() :].splitlines()[0].split()
                assert cells[-2] == "0", out  # non-2xx: the load's logins all succeed
        # slow cache operations: at most the first per 10 s and server process, then a summary
        assert len(re.findall(r": \S+ took [\d.]+ ms", out)) <= 3, out
        assert not _mentioning(f"127.0.0.1:{port}"), "a server of the load run is still running"


def _finish(d: Demo, timeout: float = 30) -> int:
    try:
        return d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s; output:\n{d.output()}")


def test_busy_port_fails_at_once_saying_so(tmp_path: Path) -> None:
    """Another server (here: any HTTP server answering 200) holds the port."""
    import http.server
    import threading

    busy = http.server.HTTPServer((HOST, 0), http.server.SimpleHTTPRequestHandler)
    port = busy.server_address[1]
    thread = threading.Thread(target=busy.serve_forever, daemon=True)
    thread.start()
    try:
        with demo(["--port", str(port), "--workers", "1"], tmp_path / "out.txt") as d:
            rc = _finish(d)
            out = d.output()
            assert rc == 1, out
            assert f"port {port} on {HOST} is already in use" in out, out
            assert "demo API on" not in out and "Traceback" not in out, out
            assert "embedded redis-server" not in out, out  # checked before starting anything
            assert not [p for p in d.track() if _alive(p)]
    finally:
        busy.shutdown()
        busy.server_close()


@pytest.mark.parametrize("url", ["localhost:6379", "redis://127.0.0.1:notaport/0"])
def test_malformed_redis_url_is_one_line_naming_the_variable(tmp_path: Path, url: str) -> None:
    with demo(["--port", str(_free_port())], tmp_path / "out.txt", REDIS_URL=url) as d:
        rc = _finish(d)
        out = d.output()
        assert rc == 1, out
        lines = out.strip().splitlines()
        assert len(lines) == 1, out
        assert "environment variable REDIS_URL is malformed" in lines[0], out
        assert "app.config" not in out


def _gunicorn(procs: set[Proc]) -> list[Proc]:
    return [p for p in procs if "gunicorn" in _cmdline(p[0]) and _alive(p)]


def _worker_of(master: Proc) -> bool:
    return any(_alive(p) for p in _descendants(master[0]))


STARTUP_MOMENTS: dict[str, Callable[[Demo], bool]] = {
    "redis-server-running": lambda d: any("redis-server" in _cmdline(p[0]) for p in d.track()),
    "gunicorn-spawned": lambda d: bool(_gunicorn(d.track())),
    "gunicorn-forked-a-worker": lambda d: any(_worker_of(m) for m in _gunicorn(d.track())),
}


@pytest.mark.parametrize("moment", list(STARTUP_MOMENTS))
def test_sigterm_during_startup_stops_what_was_started(tmp_path: Path, moment: str) -> None:
    """SIGTERM at several moments of startup (before the API answers): every
    process the command started is gone and the port is free afterwards."""
    port = _free_port()
    args = ["--port", str(port), "--workers", "1", "--worker-class", "sync"]
    with demo(args, tmp_path / "out.txt") as d:
        reached = STARTUP_MOMENTS[moment]
        _wait_for(moment, lambda: reached(d) or d.proc.poll() is not None, 30, d.output)
        d.proc.send_signal(signal.SIGTERM)
        seen = d.track()
        rc = _finish(d, 20)
        assert rc == 0, d.output()
        assert "demo API on" not in d.output() or moment == "gunicorn-forked-a-worker"
        _wait_for("children gone", lambda: not any(map(_alive, seen)), 10, d.output)
        assert not _port_open(port)
        assert not _mentioning(f"{HOST}:{port}"), d.output()
        assert "Traceback" not in d.output(), d.output()


@pytest.mark.skipif(find_spec("gevent") is None, reason="gevent is not installed")
def test_gevent_demo_starts_without_monkey_patch_warning(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://{HOST}:{port}"
    with demo(["--port", str(port), "--workers", "1"], tmp_path / "out.txt") as d:
        _wait_for("the API URL is printed", lambda: base in d.output(), 60, d.output)
        assert _get(f"{base}/api/posts/1")[0] == 200
        d.proc.send_signal(signal.SIGTERM)
        assert _finish(d) == 0
        out = d.output()
        assert "MonkeyPatchWarning" not in out and "Traceback" not in out, out
