"""Bounded chaos: 16 workers (threads, or greenlets under gevent) doing tagged
reads and writes through ``pool.client()``, pipelines, ``pool.connection()`` and
``pool.redis`` while a seeded random schedule of faults runs: proxy latency,
stall, cut, drop_after and refuse, server kill -9 + restart, CLIENT KILL and
DEBUG SLEEP. Zero misdelivered replies, thousands of checked ones, recovery
after every fault within ``chaos.RECOVERY_BOUND``, and the usual end state.

Set ``REDISPOOL_CHAOS_SEED`` to replay a schedule (the seed is printed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from . import chaos
from ._harness import record

SEED = int(os.environ.get("REDISPOOL_CHAOS_SEED", "20240611"))
ROOT = Path(__file__).resolve().parents[2]
SHORT = 15.0
LONG = 300.0


def _record(summary: dict[str, object], label: str) -> None:
    rec = summary["recoveries"]
    assert isinstance(rec, dict)
    worst = max((v["max"] for v in rec.values()), default=0.0)
    record(
        label,
        f"{summary['checked']} checked replies, 0 misdelivered; errors {summary['errors']}",
        worst,
        chaos.RECOVERY_BOUND,
    )


def test_chaos_short() -> None:
    summary = chaos.run_chaos(SHORT, SEED)
    print(chaos.report(summary))
    chaos.check(summary, min_checked=5000)
    _record(summary, f"chaos {SHORT:.0f}s, threads (worst recovery)")


@pytest.mark.slow
@pytest.mark.timeout(LONG + 120)
def test_chaos_long() -> None:
    summary = chaos.run_chaos(LONG, SEED)
    print(chaos.report(summary))
    chaos.check(summary, min_checked=60_000)
    _record(summary, f"chaos {LONG:.0f}s, threads (worst recovery)")


def test_chaos_short_under_gevent() -> None:
    if find_spec("gevent") is None:
        pytest.fail("gevent is a test dependency (setup.cfg [test]); install it")
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import logging; logging.getLogger('redispool').setLevel(logging.ERROR)\n"
        "from tests.faults.chaos import main\n"
        f"main({SHORT}, {SEED})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SHORT + 90,
    )
    sys.stdout.write(proc.stderr[-20_000:])
    assert proc.returncode == 0, proc.stderr[-5000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(chaos.report(summary))
    assert summary["greenlets"] is True, "the child did not run on greenlets"
    chaos.check(summary, min_checked=5000)
    _record(summary, f"chaos {SHORT:.0f}s, gevent greenlets (worst recovery)")
