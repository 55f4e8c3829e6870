"""Print the recovery times the fault suite measured (the fixtures come from
tests/conftest.py)."""

from __future__ import annotations

from typing import Any

from ._harness import RESULTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("fault suite: measured recovery")
    tr.write_line(f"{'failure':44} {'recovery':>10} {'bound':>6}  caller sees  [test]")
    for r in RESULTS:
        took = "n/a" if r.recovery is None else f"{r.recovery:.3f}s"
        bound = "" if r.bound is None else f"{r.bound}s"
        tr.write_line(f"{r.fault:44} {took:>10} {bound:>6}  {r.caller_sees}  [{r.test}]")
