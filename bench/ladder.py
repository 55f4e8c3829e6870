"""Latency as users feel it: the demo API under open-loop load at rising rates.

For each gunicorn worker class (gevent, gthread, sync) and each way of getting
Redis connections (``pooled`` RedisPool, redis-py's ``BlockingConnectionPool``,
a new connection ``per-request``), the login route and the cached read are
loaded at fixed rates from low to past saturation (see
``redispool.demo.openloop``: latency from the intended send time). A mode stops
climbing two steps after its p99 passes 1 s or 5% of requests fail. Capacity is
the highest rate with no errors and a p99 under 10 ms (and under 50 ms).
Each step sends at least 300 requests (low rates run longer).

    python bench/ladder.py [--seconds 3] [--workers 2] [--classes gevent,gthread,sync]
                           [--json bench/ladder.json] [--plot bench/ladder.png]

Loopback only; each step is bounded by ``--seconds`` plus a 5 s drain.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from typing import Any

from redispool.demo.load import LOAD_USERS, ROUTES, warm_cache
from redispool.demo.modes import MODES
from redispool.demo.openloop import run_open_loop
from redispool.demo.run import start_app, stop
from redispool.testing import RedisServer

RATES = (50, 100, 200, 300, 500, 700, 1000, 1400, 1700, 2000, 2400, 2800, 3400, 4000)
MIN_REQUESTS = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def capacity(steps: list[dict[str, float]], limit_ms: float) -> float:
    """The highest offered rate with no error and a p99 under ``limit_ms`` (0: none)."""
    return max(
        (s["rate"] for s in steps if not s["errors"] and s["p99_ms"] < limit_ms), default=0.0
    )


def climb(port: int, route: str, rates: tuple[float, ...], seconds: float) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    broken = 0
    for rate in rates:
        if route == "post":
            warm_cache("127.0.0.1", port, 20)
        # at least MIN_REQUESTS per step, so a low rate's p99 is not just its maximum
        duration = max(seconds, MIN_REQUESTS / rate)
        result = run_open_loop("127.0.0.1", port, ROUTES[route], rate, duration, timeout=5.0)
        step = result.summary()
        steps.append(step)
        print(
            f"    {route:<6} {rate:>6.0f}/s  p50 {step['p50_ms']:7.1f}  p99 {step['p99_ms']:8.1f}"
            f"  p99.9 {step['p999_ms']:8.1f}  errors {int(step['errors']):>5}"
            f"  non-2xx {int(step['non_2xx']):>5}"
            f"  lag p99 {step['lag_p99_ms']:5.1f} ms",
            flush=True,
        )
        if step["p99_ms"] > 1000 or step["errors"] > 0.05 * max(1, result.sent):
            broken += 1
            if broken >= 2:
                break
    return steps


def run(opts: argparse.Namespace) -> dict[str, Any]:
    os.environ["DEMO_LOGIN_LIMIT"] = "100000000/minute"  # measure, do not limit
    os.environ["DEMO_LOAD_USERS"] = str(LOAD_USERS)  # the accounts ROUTES logs in as
    results: dict[str, Any] = {"seconds": opts.seconds, "workers": opts.workers, "runs": []}
    rates = tuple(float(r) for r in opts.rates.split(","))
    with RedisServer(args=("--maxclients", "10000")) as server:
        for worker_class in opts.classes.split(","):
            app_opts = argparse.Namespace(
                no_gunicorn=False, worker_class=worker_class, workers=opts.workers
            )
            for mode in opts.modes.split(","):
                port = _free_port()
                print(f"{worker_class} / {mode}", flush=True)
                proc = start_app("127.0.0.1", port, server.url, app_opts, False, mode=mode)
                try:
                    warm_cache("127.0.0.1", port, 20)
                    for route in opts.routes.split(","):
                        steps = climb(port, route, rates, opts.seconds)
                        results["runs"].append(
                            {"class": worker_class, "mode": mode, "route": route, "steps": steps}
                        )
                finally:
                    stop(proc)
    return results


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}"


def table(results: dict[str, Any]) -> str:
    """Markdown: capacity per worker class, mode and route, then every step."""
    lines = [
        "| workers | route | mode | capacity p99<10 ms | capacity p99<50 ms |",
        "|---|---|---|---:|---:|",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {run['class']} | {run['route']} | {run['mode']} | "
            f"{capacity(run['steps'], 10):,.0f}/s | {capacity(run['steps'], 50):,.0f}/s |"
        )
    lines += [
        "",
        "| workers | route | mode | rate/s | p50 ms | p99 ms | p99.9 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        for s in run["steps"]:
            lines.append(
                f"| {run['class']} | {run['route']} | {run['mode']} | {s['rate']:,.0f} | "
                f"{_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {_ms(s['p999_ms'])} | "
                f"{int(s['errors'])} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    """p99 against offered rate, one line per mode, a panel per class and route."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["class"], r["route"]) for r in results["runs"]})
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(7, 2.8 * len(panels)), squeeze=False, sharex=True
    )
    for ax, (worker_class, route) in zip(axes[:, 0], panels, strict=True):
        for run in results["runs"]:
            if (run["class"], run["route"]) != (worker_class, route):
                continue
            steps = run["steps"]
            ax.plot(
                [s["rate"] for s in steps],
                [max(s["p99_ms"], 0.1) for s in steps],
                marker="o",
                label=run["mode"],
            )
        ax.axhline(10, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("p99 ms")
        ax.set_title(f"{route}, gunicorn {worker_class} workers", fontsize=10)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("offered rate (requests/s, open loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--classes", default="gevent,gthread,sync")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--routes", default="login,post")
    p.add_argument("--rates", default=",".join(str(r) for r in RATES))
    p.add_argument("--json", default="bench/ladder.json")
    p.add_argument("--plot", default="bench/ladder.png")
    opts = p.parse_args()
    results = run(opts)
    with open(opts.json, "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))
    if opts.plot:
        plot(results, opts.plot)
        print(f"plot: {opts.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
