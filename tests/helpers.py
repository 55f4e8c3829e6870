"""Small test doubles for the generic pool (no Redis involved)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Resource:
    """An object that knows whether it was destroyed and who holds it."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.destroyed = False
        self.holder: object = None
        self.healthy = True

    def __repr__(self) -> str:
        return f"<Resource {self.id}>"


class Factory:
    """Makes Resources; can be told to fail the next N calls (or until told)."""

    def __init__(self) -> None:
        self.made: list[Resource] = []
        self.fail_next = 0
        self.fail_always = False
        self.calls = 0
        self.lock = threading.Lock()
        self.error: Exception = ConnectionRefusedError("server down")

    def __call__(self) -> Resource:
        with self.lock:
            self.calls += 1
            if self.fail_always or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                raise self.error
            r = Resource()
            self.made.append(r)
            return r

    @staticmethod
    def destroy(r: Resource) -> None:
        assert not r.destroyed, f"{r} destroyed twice"
        r.destroyed = True

    @staticmethod
    def check(r: Resource) -> bool:
        return r.healthy


def refuse_threads(monkeypatch: Any, prefix: str) -> Callable[..., None]:
    """Make ``threading.Thread.start`` raise, as Python 3.12+ does at interpreter
    shutdown, for threads whose name starts with ``prefix``; returns the real
    ``start`` (``monkeypatch.setattr(threading.Thread, "start", it)`` undoes it)."""
    start = threading.Thread.start

    def refused(self: threading.Thread) -> None:
        if self.name.startswith(prefix):
            raise RuntimeError("can't create new thread at interpreter shutdown")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refused)
    return start


def assert_child_ok(script: str, *args: str, timeout: float = 30) -> None:
    """Run ``python -c script *args`` with this checkout importable: it must
    exit 0 having printed ``ok`` (else its stderr is shown)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        env=env,
        timeout=timeout,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
