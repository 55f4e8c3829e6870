"""The snapshot a pool's ``stats()`` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PoolStats"]


@dataclass(frozen=True)
class PoolStats:
    """Numbers of one pool at one instant.

    ``size == idle + in_use + creating + closing`` and ``size <= max_size``
    (except right after a shrinking ``resize()``, until the excess is returned).
    Times are seconds; counters count since the pool was made (or since a fork).
    ``wait_time_total / borrows`` is the mean wait for an object.
    """

    name: str
    size: int
    idle: int
    in_use: int
    creating: int
    closing: int
    waiting: int
    min_size: int
    max_size: int
    borrows: int
    timeouts: int
    created: int
    create_errors: int
    destroyed: int
    destroyed_by_reason: dict[str, int] = field(default_factory=dict)
    wait_time_total: float = 0.0
    wait_time_max: float = 0.0
    create_time_total: float = 0.0
    use_time_total: float = 0.0
    consecutive_create_errors: int = 0
    last_create_error: str | None = None
    closed: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A plain ``dict`` (JSON-ready) of the snapshot."""
        return asdict(self)
