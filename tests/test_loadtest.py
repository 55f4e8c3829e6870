"""The load benchmark runs end to end (tiny numbers: a smoke test, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("mode", ["threads", "gevent"])
def test_bench_command_reports_every_case(mode: str) -> None:
    cmd = [sys.executable, "-m", "redispool", "bench", "--workers", "30", "--ops", "5"]
    cmd += ["--size", "4", "--rounds", "2", "--json"]
    if mode == "gevent":
        pytest.importorskip("gevent")
        cmd.append("--gevent")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    results = {r["case"]: r for r in json.loads(out.stdout)}
    assert set(results) == {
        "per-request",
        "redis-py BlockingConnectionPool",
        "redis-py ConnectionPool",
        "RedisPool",
    }
    ours = results["RedisPool"]
    assert ours["ops"] == 150 and ours["errors"] == 0
    assert ours["accepted"] <= 4  # never more connections than the pool's size
    assert results["per-request"]["accepted"] >= 150  # one per operation
    for r in results.values():
        assert r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput"] > 0
        assert len(r["round_throughputs"]) == 2  # the lower of two is shown
        assert r["throughput"] == min(r["round_throughputs"])


def test_median_round_and_round_lines() -> None:
    from redispool.loadtest import median_round, round_lines

    runs = [{"case": "a", "throughput": t} for t in (900.0, 700.0, 800.0)]
    assert median_round(runs)["throughput"] == 800.0
    theirs = median_round(runs)
    ours = median_round([{"case": "b", "throughput": t} for t in (1800.0, 1400.0, 1200.0)])
    text = round_lines([theirs, ours])
    assert "1,800 (2.00x), 1,400 (2.00x), 1,200 (1.50x)" in text


def test_bench_refuses_unbounded_or_remote_runs() -> None:
    from redispool.loadtest import main

    with pytest.raises(SystemExit, match="workers x ops"):
        main(["--workers", "100000", "--ops", "100"])
    with pytest.raises(SystemExit, match="--rounds"):
        main(["--rounds", "0", "--workers", "1", "--ops", "1"])
    with pytest.raises(SystemExit, match="loopback"):
        main(["--url", "redis://10.1.2.3:6379/0", "--workers", "1", "--ops", "1"])
