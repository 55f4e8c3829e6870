"""Latency as users feel it: the demo API under open-loop load at rising rates.

For each gunicorn worker class (gevent, gthread, sync) and each way of getting
Redis connections (``pooled`` RedisPool, redis-py's ``BlockingConnectionPool``,
a new connection ``per-request``), the login route and the cached read are
loaded at fixed rates from low to past saturation (see
``redispool.demo.openloop``: latency from the intended send time). A mode stops
climbing two steps after its p99 passes 1 s or 5% of requests fail. Capacity is
the highest rate with no errors and a p99 under 10 ms (and under 50 ms): after
the climb, ``--refine`` halvings between the last step that passed and the next
one narrow it down. The per-request mode runs first, and the other modes are
also measured at its two capacities, to compare p99s at the same rate.
Each step sends at least 300 requests (low rates run longer), after 2 s of
warm-up per route that is not recorded.

    python bench/ladder.py [--seconds 3] [--workers N] [--classes gevent,gthread,sync]
                           [--refine 3] [--json bench/ladder.json] [--plot bench/ladder.png]

Workers per class are those of ``examples/gunicorn`` on 2 cores (gevent 2,
gthread 2 x 8 threads, sync 4: a sync worker serves one request at a time, so
gunicorn's advice is about 2 x cores of them); ``--workers N`` sets all three.

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

from redispool.demo.load import LOAD_USERS, ROUTES, bisect_rate, warm_cache
from redispool.demo.modes import MODES
from redispool.demo.openloop import run_open_loop
from redispool.demo.run import start_app, stop
from redispool.testing import RedisServer

WORKERS = {"gevent": 2, "gthread": 2, "sync": 4}  # examples/gunicorn/*.conf.py on 2 cores
RATES = (50, 100, 200, 300, 500, 700, 1000, 1400, 1700, 2000, 2400, 2800, 3400, 4000, 4800, 5600)
MIN_REQUESTS = 300
LIMITS = (10.0, 50.0)  # p99 bounds of the two capacities, ms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def passed(step: dict[str, float], limit_ms: float) -> bool:
    return not step["errors"] and step["p99_ms"] < limit_ms


def capacity(steps: list[dict[str, float]], limit_ms: float) -> float:
    """The highest offered rate with no error and a p99 under ``limit_ms`` (0: none)."""
    return max((s["rate"] for s in steps if passed(s, limit_ms)), default=0.0)


def step_at(port: int, route: str, rate: float, seconds: float, note: str = "") -> dict[str, Any]:
    """One open-loop step: ``rate`` for ``seconds`` (at least MIN_REQUESTS requests)."""
    if route == "post":
        warm_cache("127.0.0.1", port, 20)
    duration = max(seconds, MIN_REQUESTS / rate)
    result = run_open_loop("127.0.0.1", port, ROUTES[route], rate, duration, timeout=5.0)
    step: dict[str, Any] = result.summary()
    step["sent"] = result.sent
    if note:
        step["note"] = note
    print(
        f"    {route:<6} {rate:>6.0f}/s  p50 {step['p50_ms']:7.1f}  p99 {step['p99_ms']:8.1f}"
        f"  p99.9 {step['p999_ms']:8.1f}  errors {int(step['errors']):>5}"
        f"  non-2xx {int(step['non_2xx']):>5}"
        f"  lag p99 {step['lag_p99_ms']:5.2f} ms {note}",
        flush=True,
    )
    return step


def warm_up(port: int, route: str) -> None:
    """2 s at 100/s, not recorded: each worker's first requests of a route (script
    loads, first connections, lazy imports) would otherwise land in the first
    step's p99 (its 3 slowest of 300)."""
    result = run_open_loop("127.0.0.1", port, ROUTES[route], 100, 2.0, timeout=5.0)
    print(f"    {route:<6} warm-up: {result.sent} requests, not recorded", flush=True)


def climb(port: int, route: str, rates: tuple[float, ...], seconds: float) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    broken = 0
    for rate in rates:
        step = step_at(port, route, rate, seconds)
        steps.append(step)
        if step["p99_ms"] > 1000 or step["errors"] > 0.05 * max(1, step["sent"]):
            broken += 1
            if broken >= 2:
                break
    return steps


def refine(
    port: int, route: str, steps: list[dict[str, Any]], seconds: float, rounds: int
) -> dict[str, float]:
    """Each capacity, narrowed by ``rounds`` halvings between the highest step that
    passed and the next step up (which did not); the new steps join ``steps``."""
    for limit in LIMITS:
        low = capacity(steps, limit)
        above = [s["rate"] for s in steps if s["rate"] > low]
        if rounds and low and above:

            def passes(rate: float, limit: float = limit) -> bool:
                step = step_at(port, route, rate, seconds, f"(refining p99 < {limit:g} ms)")
                steps.append(step)
                return passed(step, limit)

            bisect_rate(passes, low, min(above), rounds)
    # (a step tried for one bound may pass the other too)
    return {f"{limit:g}": capacity(steps, limit) for limit in LIMITS}


def run(opts: argparse.Namespace) -> dict[str, Any]:
    os.environ["DEMO_LOGIN_LIMIT"] = "100000000/minute"  # measure, do not limit
    os.environ["DEMO_LOAD_USERS"] = str(LOAD_USERS)  # the accounts ROUTES logs in as
    results: dict[str, Any] = {
        "seconds": opts.seconds, "refine": opts.refine, "runs": [],
        "workers": {c: opts.workers or WORKERS.get(c, 2) for c in opts.classes.split(",")},
    }  # fmt: skip
    rates = tuple(float(r) for r in opts.rates.split(","))
    # per-request first: the other modes are measured at its capacities too
    modes = sorted(opts.modes.split(","), key=lambda m: m != "per-request")
    with RedisServer(args=("--maxclients", "10000")) as server:
        for worker_class in opts.classes.split(","):
            app_opts = argparse.Namespace(
                no_gunicorn=False,
                worker_class=worker_class,
                workers=results["workers"][worker_class],
            )
            baseline: dict[str, dict[str, float]] = {}  # route -> per-request's capacities
            for mode in modes:
                port = _free_port()
                print(f"{worker_class} / {mode}", flush=True)
                proc = start_app("127.0.0.1", port, server.url, app_opts, False, mode=mode)
                try:
                    warm_cache("127.0.0.1", port, 20)
                    for route in opts.routes.split(","):
                        warm_up(port, route)
                        extra = {r for r in baseline.get(route, {}).values() if r}
                        steps = climb(port, route, tuple(sorted({*rates, *extra})), opts.seconds)
                        caps = refine(port, route, steps, opts.seconds, opts.refine)
                        if mode == "per-request":
                            baseline[route] = caps
                        results["runs"].append({
                            "class": worker_class, "mode": mode, "route": route,
                            "capacity": caps, "steps": sorted(steps, key=lambda s: s["rate"]),
                        })  # fmt: skip
                finally:
                    stop(proc)
    return results


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}"


def _caps(run: dict[str, Any]) -> tuple[float, float]:
    caps = run.get("capacity") or {}
    return tuple(caps.get(f"{lim:g}", capacity(run["steps"], lim)) for lim in LIMITS)  # type: ignore[return-value]


def _p99_at(run: dict[str, Any] | None, rate: float) -> float:
    """The p99 of ``run``'s step at exactly ``rate`` (nan if it has none)."""
    found = [s["p99_ms"] for s in (run or {}).get("steps", []) if s["rate"] == rate]
    return found[0] if found else math.nan


def comparison(results: dict[str, Any]) -> str:
    """Markdown: per worker class and route, the capacities of every mode side by
    side, pooled's over per-request's, and each mode's p99 at per-request's own
    50 ms capacity (the rate where per-request just holds)."""
    by = {(r["class"], r["route"], r["mode"]): r for r in results["runs"]}
    lines = [
        "| workers | route | pooled | redis-py | per-request | pooled / per-request "
        "| at per-request's 50 ms capacity: p99 per-request / pooled / redis-py ms "
        "(per-request / pooled) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for cls, route in dict.fromkeys((r["class"], r["route"]) for r in results["runs"]):
        runs = {m: by.get((cls, route, m)) for m in ("pooled", "redis-py", "per-request")}
        caps = {m: _caps(r) if r else (math.nan, math.nan) for m, r in runs.items()}
        cells = [f"{caps[m][0]:,.0f} / {caps[m][1]:,.0f}" if runs[m] else "-" for m in runs]
        base = caps["per-request"]
        ratio = " / ".join(
            f"{p / b:.1f}x" if b and not math.isnan(p / b) else "-"
            for p, b in zip(caps["pooled"], base, strict=True)
        )
        at = base[1]
        if math.isnan(at) or not at:
            lines.append(f"| {cls} | {route} | {' | '.join(cells)} | {ratio} | - |")
            continue
        p99 = {m: _p99_at(r, at) for m, r in runs.items()}
        times = " / ".join(_ms(p99[m]) for m in ("per-request", "pooled", "redis-py"))
        over = p99["per-request"] / p99["pooled"] if p99["pooled"] else math.nan
        lines.append(
            f"| {cls} | {route} | {' | '.join(cells)} | {ratio} | "
            f"{at:,.0f}/s: {times} ({'-' if math.isnan(over) else f'{over:.1f}x'}) |"
        )
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    """Markdown: capacity per worker class, mode and route, then every step."""
    lines = [
        "| workers | route | mode | capacity p99<10 ms | capacity p99<50 ms |",
        "|---|---|---|---:|---:|",
    ]
    for run in results["runs"]:
        c10, c50 = _caps(run)
        lines.append(
            f"| {run['class']} | {run['route']} | {run['mode']} | {c10:,.0f}/s | {c50:,.0f}/s |"
        )
    lines += [
        "",
        "| workers | route | mode | rate/s | p50 ms | p99 ms | p99.9 ms | errors | lag p99 ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        for s in run["steps"]:
            lines.append(
                f"| {run['class']} | {run['route']} | {run['mode']} | {s['rate']:,.0f}"
                f"{' (refining)' if s.get('note') else ''} | "
                f"{_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {_ms(s['p999_ms'])} | "
                f"{int(s['errors'])} | {s['lag_p99_ms']:.2f} |"
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
        workers = results["workers"]
        n = workers.get(worker_class, "?") if isinstance(workers, dict) else workers
        ax.set_title(f"{route}, {n} gunicorn {worker_class} workers", fontsize=10)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("offered rate (requests/s, open loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--workers", type=int, help="all classes (default: gevent 2, gthread 2, sync 4)")
    p.add_argument("--classes", default="gevent,gthread,sync")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--routes", default="login,post")
    p.add_argument("--rates", default=",".join(str(r) for r in RATES))
    p.add_argument("--refine", type=int, default=3, help="halvings per capacity (0: none)")
    p.add_argument("--json", default="bench/ladder.json")
    p.add_argument("--plot", default="bench/ladder.png")
    opts = p.parse_args()
    results = run(opts)
    with open(opts.json, "w") as f:
        json.dump(results, f, indent=1)
    print(table(results), "", comparison(results), sep="\n")
    if opts.plot:
        plot(results, opts.plot)
        print(f"plot: {opts.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
