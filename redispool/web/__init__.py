"""Web glue: health endpoint, Prometheus metrics, WSGI rate limiting, Flask."""

from __future__ import annotations

from .health import pool_health
from .metrics import render_metrics

__all__ = ["pool_health", "render_metrics"]
