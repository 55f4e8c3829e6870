"""Connection settings from a URL and from the environment; passwords redacted."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from redis.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url

__all__ = ["env_options", "parse_redis_url", "redact_url"]

_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and errors)."""
    if not isinstance(url, str):
        return "<not a url>"
    # scheme://user:password@host -> scheme://user:***@host (the last @ ends userinfo);
    # also without the scheme (user:password@host: a URL missing its redis://)
    out = re.sub(r"^((?:[a-zA-Z][a-zA-Z0-9+.-]*://)?[^/?#@:]*):[^/?#]*@", r"\1:***@", url)
    if out == url:
        # A password with an unencoded '/', '?' or '#' (a malformed URL): hide
        # everything up to the last '@' rather than show a piece of it.
        out = re.sub(r"^((?:[a-zA-Z][a-zA-Z0-9+.-]*://)?[^/?#@:]*):.*@", r"\1:***@", url)
    # query-string secrets (?password=...), their names percent-encoded too
    # (?passwor%64=...: redis-py's parser decodes the names)
    out = re.sub(r"([?&])([^=&#]*)=([^&#]*)", _hide_query_secret, out)
    return re.sub(r"(?i)(password|ssl_password)=[^&#]*", r"\1=***", out)


def _hide_query_secret(match: re.Match[str]) -> str:
    if unquote_plus(match.group(2)).lower() in ("password", "ssl_password"):
        return f"{match.group(1)}{match.group(2)}=***"
    return match.group(0)


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
    shown = redact_url(url)
    try:
        kwargs = dict(parse_url(url))
    except (ValueError, TypeError) as exc:
        detail = str(exc)
    else:
        problem = _check_url_parts(scheme, url, kwargs)
        if problem is None:
            return kwargs
        detail = problem
    if shown != url:  # the parser quotes pieces of the URL: maybe of the password
        named = re.fullmatch(r"Invalid value for '(\w+)' in connection URL\.", detail)
        if named is None or named.group(1) not in URL_QUERY_ARGUMENT_PARSERS:
            detail = re.sub(r"'[^']*'", "'***'", detail)  # (but not the bad option's name)
    # Raised outside the except block: no __context__ holding the raw URL text.
    raise ValueError(f"url {shown!r} is invalid: {detail}")


def _check_url_parts(scheme: str, url: str, kwargs: dict[str, Any]) -> str | None:
    """What redis-py's parser lets through but cannot work; None if fine."""
    decode = kwargs.get("decode_responses")
    if isinstance(decode, str):  # redis-py passes the text on: "false" is truthy
        if decode.strip().lower() not in _TRUE | _FALSE:
            return f"decode_responses must be true or false, got {decode!r}"
        kwargs["decode_responses"] = decode.strip().lower() in _TRUE
    if scheme == "unix":
        if not kwargs.get("path"):  # redis-py leaves it out; every connect fails
            return "a unix:// url needs the socket's path (unix:///path/to/redis.sock)"
    else:
        if urlsplit(url).port == 0:  # redis-py silently takes 6379 instead
            return "the port must be between 1 and 65535, got 0"
        path = urlsplit(url).path
        # redis-py silently ignores "/abc" and reads "/1/2" as db 12
        if path not in ("", "/") and not re.fullmatch(r"/\d{1,9}", path):
            return "the path must be empty or /<db number>"
        host = kwargs.get("host") or ""
        if len(host) > 253:
            return f"the host name is too long ({len(host)} characters, at most 253)"
    return None


# Environment variable (after the prefix) -> (option name, type, minimum)
_ENV: dict[str, tuple[str, type, float]] = {
    "POOL_MIN_SIZE": ("min_size", int, 0),
    "POOL_MAX_SIZE": ("max_size", int, 1),
    "POOL_TIMEOUT": ("timeout", float, 0),
    "POOL_MAX_WAITING": ("max_waiting", int, 0),
    "POOL_MAX_IDLE_TIME": ("max_idle_time", float, 0),
    "POOL_MAX_LIFETIME": ("max_lifetime", float, 0),
    "HEALTH_CHECK_INTERVAL": ("health_check_interval", float, 0),
    "CONNECT_TIMEOUT": ("connect_timeout", float, 0.001),
    "SOCKET_TIMEOUT": ("socket_timeout", float, 0.001),
    "DNS_TTL": ("dns_ttl", float, 0),
    "CLIENT_NAME": ("client_name", str, 0),
}
# What RedisPool refuses beyond the minimum: checked here, so the error names the variable.
_MAXIMUM = {"CONNECT_TIMEOUT": 1e7, "SOCKET_TIMEOUT": 1e7}  # (redis_pool.MAX_SOCKET_TIMEOUT)
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
    ``rediss://`` (the default URL too; a ``unix://`` URL is refused). A malformed
    value raises ``ValueError`` naming the variable.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r} ({type(prefix).__name__})")
    if environ is not None and not isinstance(environ, Mapping):
        raise TypeError(f"environ must be a mapping or None, got {type(environ).__name__}")
    env = os.environ if environ is None else environ

    def get(var: str) -> str | None:
        raw = env.get(var)
        if raw is not None and not isinstance(raw, str):
            raise TypeError(f"{var} must be a str, got {type(raw).__name__}")
        return raw

    opts: dict[str, Any] = {}
    url_var = f"WRITE_{prefix}URL" if get(f"WRITE_{prefix}URL") else f"{prefix}URL"
    tls_var = f"ENABLE_{prefix}TLS_MODE"
    tls_raw = (get(tls_var) or "").strip().lower()
    if tls_raw not in _TRUE | _FALSE:
        raise ValueError(f"{tls_var} must be true or false, got {env[tls_var]!r}")
    tls = tls_raw in _TRUE
    for key, var in (("url", url_var), ("read_url", f"READ_{prefix}URL")):
        value = get(var)
        if value:
            if tls and value.lower().startswith("redis://"):
                value = "rediss://" + value[len("redis://") :]
            elif tls and value.strip().lower().startswith("unix://"):
                raise ValueError(f"{tls_var} is set but {var} is a unix:// socket (no TLS there)")
            try:
                parse_redis_url(value)  # messages are redacted
            except ValueError as exc:
                detail = str(exc)
            else:
                opts[key] = value
                continue
            raise ValueError(f"{var}: {detail}")
    if tls and "url" not in opts:  # RedisPool's default URL (Sentinel: its scheme), with TLS
        opts["url"] = "rediss://localhost:6379/0"
    for suffix, (option, kind, minimum) in _ENV.items():
        var = prefix + suffix
        raw = get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ValueError(
                f"{var} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
            ) from None
        if kind is not str and not (math.isfinite(value) and value >= minimum):
            what = "an integer" if kind is int else "a finite number"
            raise ValueError(f"{var} must be {what} >= {minimum:g}, got {raw!r}")
        if suffix in _MAXIMUM and value > _MAXIMUM[suffix]:
            raise ValueError(f"{var} must be <= {_MAXIMUM[suffix]:g} seconds, got {raw!r}")
        if kind is str and not all(33 <= ord(c) <= 126 for c in value):
            raise ValueError(
                f"{var} ({option}) must be printable ASCII without spaces, got {raw!r}"
            )
        opts[option] = value
    return opts


def parse_sentinels(value: Any, name: str = "sentinels") -> list[tuple[str, int]]:
    """Sentinel addresses from ``"host:port,host:port"`` or a sequence of
    ``"host:port"`` / ``(host, port)``; ``[::1]:26379`` for IPv6. Errors name ``name``."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise TypeError(
            f"{name} must be a list of (host, port) or 'host:port', got {value!r}"
        ) from None
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            m = re.fullmatch(r"\s*(\[[^\]]+\]|[^:\s]+):(\d{1,5})\s*", item)
            if m is None:
                raise ValueError(f"{name}: {item!r} is not host:port")
            host, port = m.group(1).strip("[]"), int(m.group(2))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            host, port = item[0], item[1]
            if isinstance(port, str) and port.isdigit():
                port = int(port)
        else:
            raise TypeError(f"{name}: {item!r} is not (host, port) or 'host:port'")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"{name}: port of {item!r} must be between 1 and 65535")
        if not host:
            raise ValueError(f"{name}: {item!r} has no host")
        out.append((host, port))
    if not out:
        raise ValueError(f"{name} must name at least one sentinel, got {value!r}")
    return out


def sentinel_env(
    prefix: str = "REDIS_", environ: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """``RedisPool.sentinel`` arguments from ``{prefix}SENTINELS`` (``host:port,...``),
    ``{prefix}SENTINEL_SERVICE`` and, for the sentinels' own credentials,
    ``{prefix}SENTINEL_USERNAME`` / ``{prefix}SENTINEL_PASSWORD``; None without
    ``{prefix}SENTINELS``. The data nodes' credentials, db and TLS come from
    ``{prefix}URL`` as usual (its host and port are ignored)."""
    env = os.environ if environ is None else environ
    for suffix in ("SENTINELS", "SENTINEL_SERVICE", "SENTINEL_USERNAME", "SENTINEL_PASSWORD"):
        value = env.get(prefix + suffix)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{prefix}{suffix} must be a str, got {type(value).__name__}")
    raw = (env.get(f"{prefix}SENTINELS") or "").strip()
    if not raw:
        return None
    sentinels = parse_sentinels(raw, f"{prefix}SENTINELS")
    service = (env.get(f"{prefix}SENTINEL_SERVICE") or "").strip()
    if not service:
        raise ValueError(f"{prefix}SENTINELS is set but {prefix}SENTINEL_SERVICE is empty")
    kwargs = {
        key: env[var]
        for key, var in (
            ("username", f"{prefix}SENTINEL_USERNAME"),
            ("password", f"{prefix}SENTINEL_PASSWORD"),
        )
        if env.get(var)
    }
    return {"sentinels": sentinels, "service_name": service, "sentinel_kwargs": kwargs or None}
