"""HTTP load on the demo API: login and a cached read, pooled vs a new Redis
connection per request, under gunicorn gevent workers, driven by ``wrk``
(Debian package ``wrk``) with 1000 connections. Loopback only, bounded.

    python bench/http_load.py [--connections 1000] [--seconds 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

from redispool.demo.load import warm_cache
from redispool.demo.run import start_app, stop
from redispool.testing import RedisServer

LOGIN_LUA = """
wrk.method = "POST"
wrk.body = '{"username": "alice", "password": "wonderland"}'
wrk.headers["Content-Type"] = "application/json"
"""
POSTS_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/posts/" .. (counter % 100 + 1))
end
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(url: str, script: str, connections: int, seconds: int) -> dict[str, float | int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency",
             "--timeout", "10s", "-s", f.name, url],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
        ).stdout  # fmt: skip
    finally:
        os.unlink(f.name)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": _ms(lat.get("50", "")),
        "p99_ms": _ms(lat.get("99", "")),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--port", type=int, default=8077)
    opts = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    os.environ["DEMO_LOGIN_LIMIT"] = "100000000/minute"  # measure, do not limit
    app_opts = argparse.Namespace(no_gunicorn=False, worker_class="gevent", workers=opts.workers)
    rows = []
    with RedisServer(args=("--maxclients", "10000")) as server:
        for per_request in (False, True):
            proc = start_app("127.0.0.1", opts.port, server.url, app_opts, per_request)
            try:
                warm_cache("127.0.0.1", opts.port, 20)
                base = f"http://127.0.0.1:{opts.port}"
                for name, path, script in (
                    ("login", "/api/auth/login", LOGIN_LUA),
                    ("post", "/", POSTS_LUA),
                ):
                    r = run_wrk(base + path, script, opts.connections, opts.seconds)
                    rows.append(("per-request" if per_request else "pooled", name, r))
            finally:
                stop(proc)
    print(f"wrk -c {opts.connections} -d {opts.seconds}s, gunicorn {opts.workers} gevent workers")
    print(f"{'mode':<12} {'route':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
          f"{'sock err':>8}")  # fmt: skip
    for mode, name, r in rows:
        print(
            f"{mode:<12} {name:<6} {r['rps']:>8.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{r['non2xx']:>8} {r['socket_errors']:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
