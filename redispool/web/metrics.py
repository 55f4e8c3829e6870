"""Pool numbers as Prometheus text, named after OpenTelemetry's
``db.client.connection.*`` conventions (dots become underscores).

Without ``prometheus_client`` the text is rendered here, for this process. With
it and ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn with several workers),
``PoolMetrics.update()`` publishes each worker's numbers into the multiprocess
files and ``render_metrics()`` serves the sum over live workers.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..cluster import RedisClusterPool
    from ..redis_pool import RedisPool, RedisPoolStats

__all__ = ["CONTENT_TYPE", "PoolMetrics", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
P = "db_client_connection"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value in full (as prometheus_client writes it): ``%g`` kept 6
    digits, so a counter past a million moved in steps of ten or more."""
    return str(value) if isinstance(value, int) else repr(float(value))


def _samples(s: RedisPoolStats) -> list[tuple[str, str, str, dict[str, str], float]]:
    """(name, type, help, extra labels, value) for one pool."""
    return [
        (f"{P}_count", "gauge", "Connections by state", {"state": "idle"}, s.idle),
        (f"{P}_count", "gauge", "Connections by state", {"state": "used"}, s.in_use),
        (f"{P}_max", "gauge", "Maximum open connections", {}, s.max_size),
        (f"{P}_idle_max", "gauge", "Maximum idle connections", {}, s.max_size),
        (f"{P}_idle_min", "gauge", "Minimum idle connections kept", {}, s.min_size),
        (f"{P}_pending_requests", "gauge", "Callers waiting for a connection", {}, s.waiting),
        (f"{P}_timeouts_total", "counter", "Borrows that timed out", {}, s.timeouts),
        (f"{P}_create_time_seconds_sum", "counter", "Time spent opening", {}, s.create_time_total),
        (f"{P}_create_time_seconds_count", "counter", "Connections opened", {}, s.created),
        (f"{P}_wait_time_seconds_sum", "counter", "Time spent waiting", {}, s.wait_time_total),
        (f"{P}_wait_time_seconds_count", "counter", "Borrows", {}, s.borrows),
        (f"{P}_use_time_seconds_sum", "counter", "Time borrowed", {}, s.use_time_total),
        (f"{P}_use_time_seconds_count", "counter", "Borrows", {}, s.borrows),
        ("redispool_commands_total", "counter", "Commands sent", {}, s.commands),
        ("redispool_command_errors_total", "counter", "Failed commands", {}, s.command_errors),
        ("redispool_create_errors_total", "counter", "Failed connects", {}, s.create_errors),
    ]


def _series(stats: RedisPoolStats) -> list[RedisPoolStats]:
    """The numbers published for one pool: a cluster pool's node by node
    (``pool_name`` names the node), else the pool's and its read pool's."""
    nodes: dict[str, RedisPoolStats] | None = getattr(stats, "nodes", None)
    if nodes is not None:
        return list(nodes.values())
    return [stats] + ([stats.read] if stats.read is not None else [])


def _render_plain(pools: Sequence[RedisPool | RedisClusterPool]) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    rows: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}
    for pool in pools:
        for each in _series(pool.stats()):
            for name, kind, help_, labels, value in _samples(each):
                labels = {"pool_name": each.name, **labels}
                row = rows.setdefault((name, tuple(labels.items())), [name, kind, help_, labels, 0])
                row[4] += value  # pools of one name (two on one URL): one series, summed
    for name, kind, help_, labels, value in sorted(rows.values(), key=lambda r: r[0]):
        family = name
        if "_seconds_" in name:  # a summary's _sum and _count
            family = name.removesuffix("_sum").removesuffix("_count")
        if family not in seen:
            seen.add(family)
            lines.append(f"# HELP {family} {help_}")
            lines.append(f"# TYPE {family} {'summary' if family != name else kind}")
        label_text = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{label_text}}} {_number(value)}")
    return "\n".join(lines) + "\n"


_FAMILIES: dict[str, Any] = {}


def _families() -> dict[str, Any]:
    """The prometheus_client metric objects: one set per process, shared by pools."""
    if not _FAMILIES:
        from prometheus_client import Counter, Gauge

        labels = ["pool_name"]
        live: Any = "livesum"
        _FAMILIES.update(
            count=Gauge(
                f"{P}_count", "Connections by state", [*labels, "state"], multiprocess_mode=live
            ),
            max=Gauge(f"{P}_max", "Maximum open connections", labels, multiprocess_mode=live),
            idle_max=Gauge(
                f"{P}_idle_max", "Maximum idle connections", labels, multiprocess_mode=live
            ),
            idle_min=Gauge(
                f"{P}_idle_min", "Minimum idle connections kept", labels, multiprocess_mode=live
            ),
            pending=Gauge(
                f"{P}_pending_requests", "Callers waiting", labels, multiprocess_mode=live
            ),
            counters={
                "timeouts": Counter(f"{P}_timeouts", "Borrows that timed out", labels),
                "commands": Counter("redispool_commands", "Commands sent", labels),
                "command_errors": Counter("redispool_command_errors", "Failed commands", labels),
                "create_errors": Counter("redispool_create_errors", "Failed connects", labels),
                "create_time_total": Counter(f"{P}_create_time_seconds", "Time opening", labels),
                "wait_time_total": Counter(f"{P}_wait_time_seconds", "Time waiting", labels),
                "use_time_total": Counter(f"{P}_use_time_seconds", "Time borrowed", labels),
                "borrows": Counter(f"{P}_borrows", "Borrows", labels),
                "created": Counter(f"{P}_created", "Connections opened", labels),
            },
        )
    return _FAMILIES


class PoolMetrics:
    """Publishes pool numbers through prometheus_client (multiprocess-safe)."""

    def __init__(
        self, pools: Sequence[RedisPool | RedisClusterPool], min_interval: float = 1.0
    ) -> None:
        fam = _families()
        self.pools = pools
        self.min_interval = min_interval
        self._last = 0.0
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str], float] = {}
        self._pid = os.getpid()
        self.count, self.max, self.idle_max = fam["count"], fam["max"], fam["idle_max"]
        self.idle_min, self.pending = fam["idle_min"], fam["pending"]
        self.counters: dict[str, Any] = fam["counters"]

    def update(self, force: bool = False) -> None:
        """Publish now (at most every ``min_interval`` seconds unless forced)."""
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        with self._lock:
            self._last = now
            if self._pid != os.getpid():  # a forked worker starts from zero
                self._pid = os.getpid()
                self._sent.clear()
            # One series per name: pools that share one (two pools on one URL)
            # are summed, as the exposition would show them.
            totals: dict[str, dict[str, float]] = {}
            for pool in self.pools:
                for s in _series(pool.stats()):
                    fields = ("idle", "in_use", "max_size", "min_size", "waiting", *self.counters)
                    total = totals.setdefault(s.name, dict.fromkeys(fields, 0.0))
                    for field in fields:
                        total[field] += getattr(s, field)
            for name, total in totals.items():
                self._publish(name, total)

    def _publish(self, name: str, s: dict[str, float]) -> None:
        self.count.labels(name, "idle").set(s["idle"])
        self.count.labels(name, "used").set(s["in_use"])
        self.max.labels(name).set(s["max_size"])
        self.idle_max.labels(name).set(s["max_size"])
        self.idle_min.labels(name).set(s["min_size"])
        self.pending.labels(name).set(s["waiting"])
        for field, counter in self.counters.items():
            child = counter.labels(name)  # made at 0: alert rules see it before it moves
            value = s[field]
            key = (name, field)
            sent = self._sent.get(key, 0.0)
            if value < sent:  # counted afresh: a pool made again under the name
                sent = 0.0  # (a cluster node back after a failover, a pool replaced)
            if value > sent:
                child.inc(value - sent)
            self._sent[key] = value


def render_metrics(
    pools: Sequence[RedisPool | RedisClusterPool], metrics: PoolMetrics | None = None
) -> str:
    """The Prometheus text for ``pools`` (all workers' sum in multiprocess mode)."""
    if metrics is None:
        return _render_plain(pools)
    from prometheus_client import CollectorRegistry, generate_latest

    metrics.update(force=True)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text: str = generate_latest(registry).decode()
        return text
    from prometheus_client import REGISTRY

    text = generate_latest(REGISTRY).decode()
    return text
