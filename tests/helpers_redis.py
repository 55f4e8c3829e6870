"""Helpers for tests that count what reached the server."""

from __future__ import annotations

from typing import Any


def command_calls(admin: Any) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls}."""
    out: dict[str, int] = {}
    for name, fields in admin.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = int(fields["calls"])
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
