"""Connection settings from a URL and from the environment; passwords redacted."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from redis.connection import parse_url

__all__ = ["env_options", "parse_redis_url", "redact_url"]

_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and errors)."""
    if not isinstance(url, str):
        return "<not a url>"
    # scheme://user:password@host -> scheme://user:***@host (the last @ ends userinfo)
    out = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:]*):[^/?#]*@", r"\1:***@", url)
    # query-string secrets (?password=...)
    return re.sub(r"(?i)(password|ssl_password)=[^&#]*", r"\1=***", out)


def parse_redis_url(url: str) -> dict[str, Any]:
    """redis-py connection kwargs for ``redis://``, ``rediss://`` or ``unix://`` URLs."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    if not url.strip():
        raise ValueError("url must not be empty")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise ValueError(
            f"url must start with redis://, rediss:// or unix://, got {redact_url(url)!r}"
        )
    try:
        return dict(parse_url(url))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"url {redact_url(url)!r} is invalid: {exc}") from None


# Environment variable (after the prefix) -> (option name, type)
_ENV: dict[str, tuple[str, type]] = {
    "POOL_MIN_SIZE": ("min_size", int),
    "POOL_MAX_SIZE": ("max_size", int),
    "POOL_TIMEOUT": ("timeout", float),
    "POOL_MAX_WAITING": ("max_waiting", int),
    "POOL_MAX_IDLE_TIME": ("max_idle_time", float),
    "POOL_MAX_LIFETIME": ("max_lifetime", float),
    "HEALTH_CHECK_INTERVAL": ("health_check_interval", float),
    "CONNECT_TIMEOUT": ("connect_timeout", float),
    "SOCKET_TIMEOUT": ("socket_timeout", float),
    "DNS_TTL": ("dns_ttl", float),
    "CLIENT_NAME": ("client_name", str),
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_options(prefix: str = "REDIS_", environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``RedisPool`` options from environment variables.

    ``{prefix}URL`` (or ``WRITE_{prefix}URL``), ``READ_{prefix}URL``,
    ``{prefix}POOL_MIN_SIZE``, ``{prefix}POOL_MAX_SIZE``, ``{prefix}POOL_TIMEOUT``,
    ``{prefix}POOL_MAX_WAITING``, ``{prefix}POOL_MAX_IDLE_TIME``,
    ``{prefix}POOL_MAX_LIFETIME``, ``{prefix}HEALTH_CHECK_INTERVAL``,
    ``{prefix}CONNECT_TIMEOUT``, ``{prefix}SOCKET_TIMEOUT``, ``{prefix}DNS_TTL``,
    ``{prefix}CLIENT_NAME``; ``ENABLE_{prefix}TLS_MODE=1`` turns ``redis://`` into
    ``rediss://``. A malformed value raises ``ValueError`` naming the variable.
    """
    env = os.environ if environ is None else environ
    opts: dict[str, Any] = {}
    url = env.get(f"WRITE_{prefix}URL") or env.get(f"{prefix}URL")
    read_url = env.get(f"READ_{prefix}URL")
    tls_var = f"ENABLE_{prefix}TLS_MODE"
    tls_raw = env.get(tls_var, "").strip().lower()
    if tls_raw not in _TRUE | _FALSE:
        raise ValueError(f"{tls_var} must be true or false, got {env[tls_var]!r}")
    tls = tls_raw in _TRUE
    for key, value in (("url", url), ("read_url", read_url)):
        if value:
            if tls and value.lower().startswith("redis://"):
                value = "rediss://" + value[len("redis://") :]
            opts[key] = value
    for suffix, (option, kind) in _ENV.items():
        var = prefix + suffix
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            opts[option] = kind(raw.strip())
        except ValueError:
            raise ValueError(
                f"{var} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
            ) from None
    return opts
