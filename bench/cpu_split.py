"""Where the two cores go: CPU per request of the load generator, the gunicorn
app and redis-server, for each worker class, mode and route, at one fixed rate.

The ladder (``bench/ladder.py``) runs the generator, gunicorn and Redis on the same
2 cores, so a capacity there is what is left after the generator's share. Here
the same demo is loaded open-loop at a rate every mode sustains, and each
process's CPU time (``/proc/<pid>/stat``: user + system, of every thread and of
reaped children) is read before and after:

    python bench/cpu_split.py [--rate 400] [--seconds 10] [--classes gevent,gthread,sync]
                              [--json bench/cpu_split.json]

``server`` is app + Redis: the cost of a request where the load comes from other
machines, and ``bound`` = 2 cores / server CPU the rate that cost allows
(an upper bound: no core is ever 100% busy). Loopback only; each run is bounded
by ``--seconds`` plus a 5 s drain.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

from redispool.demo.load import ROUTES, warm_cache
from redispool.demo.modes import MODES
from redispool.demo.openloop import run_open_loop
from redispool.demo.run import start_app, stop
from redispool.testing import RedisServer

sys.path.insert(0, os.path.dirname(__file__))
from ladder import WORKERS, _free_port

_TICK = os.sysconf("SC_CLK_TCK")
CORES = 2


def _stat(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` after the process name: field 3 (state) is item 0."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu(fields: list[str]) -> float:
    """utime, stime, cutime, cstime (fields 14-17): its threads' and its reaped
    children's CPU seconds."""
    return sum(int(v) for v in fields[11:15]) / _TICK


def session_cpu(sid: int) -> float:
    """CPU seconds of every live process in session ``sid`` (gunicorn's master and
    workers: the app runs in a new session)."""
    total = 0.0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = _stat(name)
            except OSError:
                continue  # gone meanwhile
            if int(fields[3]) == sid:  # field 6: session
                total += _cpu(fields)
    return total


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(
    port: int, app_sid: int, redis_pid: int, route: str, rate: float, seconds: float
) -> dict[str, float]:
    """One open-loop run; CPU microseconds per answered request of each process."""
    if route == "post":
        warm_cache("127.0.0.1", port, 20)
    before = (_own_cpu(), session_cpu(app_sid), _cpu(_stat(redis_pid)), time.monotonic())
    result = run_open_loop("127.0.0.1", port, ROUTES[route], rate, seconds, timeout=5.0)
    after = (_own_cpu(), session_cpu(app_sid), _cpu(_stat(redis_pid)), time.monotonic())
    answered = max(1, len(result.latencies))
    gen, app, red = (1e6 * (a - b) / answered for a, b in zip(after[:3], before[:3], strict=True))
    summary = result.summary()
    return {
        "rate": rate, "answered": answered, "errors": summary["errors"],
        "p99_ms": summary["p99_ms"], "generator_us": gen, "app_us": app, "redis_us": red,
        "server_us": app + red, "busy": (after[0] + after[1] + after[2] - sum(before[:3]))
        / (after[3] - before[3]) / CORES,
    }  # fmt: skip


def run(opts: argparse.Namespace) -> dict[str, Any]:
    os.environ["DEMO_LOGIN_LIMIT"] = "100000000/minute"
    rows: list[dict[str, Any]] = []
    with RedisServer(args=("--maxclients", "10000")) as server:
        assert server.pid is not None
        for worker_class in opts.classes.split(","):
            app_opts = argparse.Namespace(
                no_gunicorn=False, worker_class=worker_class, workers=WORKERS[worker_class]
            )
            for mode in opts.modes.split(","):
                port = _free_port()
                proc = start_app("127.0.0.1", port, server.url, app_opts, False, mode=mode)
                try:
                    warm_cache("127.0.0.1", port, 20)
                    for route in opts.routes.split(","):
                        run_open_loop("127.0.0.1", port, ROUTES[route], 100, 2.0, timeout=5.0)
                        row = measure(port, proc.pid, server.pid, route, opts.rate, opts.seconds)
                        row.update({"class": worker_class, "mode": mode, "route": route})
                        rows.append(row)
                        print(
                            f"{worker_class:<8}{mode:<12}{route:<6} gen {row['generator_us']:5.0f}"
                            f"  app {row['app_us']:6.0f}  redis {row['redis_us']:4.0f} us/req"
                            f"  p99 {row['p99_ms']:6.1f} ms  errors {row['errors']:.0f}"
                            f"  cores busy {row['busy']:.0%}",
                            flush=True,
                        )
                finally:
                    stop(proc)
    return {"rate": opts.rate, "seconds": opts.seconds, "rows": rows}


def table(results: dict[str, Any]) -> str:
    """Markdown: CPU per request by process, and per-request / pooled."""
    rows = results["rows"]
    by = {(r["class"], r["route"], r["mode"]): r for r in rows}
    out = [
        "| workers | route | mode | generator | app | Redis | server (app + Redis) "
        "| bound: 2 cores / server | server / pooled's |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pooled = by.get((r["class"], r["route"], "pooled"))
        ratio = f"{r['server_us'] / pooled['server_us']:.1f}x" if pooled else "-"
        out.append(
            f"| {r['class']} | {r['route']} | {r['mode']} | {r['generator_us']:,.0f} "
            f"| {r['app_us']:,.0f} | {r['redis_us']:,.0f} | {r['server_us']:,.0f} "
            f"| {CORES * 1e6 / r['server_us']:,.0f}/s | {ratio} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--classes", default="gevent,gthread,sync")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--json", help="write the results here")
    opts = parser.parse_args()
    bad = [c for c in opts.classes.split(",") if c not in WORKERS]
    if bad:
        parser.error(f"--classes: unknown worker class {bad[0]!r} (one of {', '.join(WORKERS)})")
    results = run(opts)
    print(table(results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
