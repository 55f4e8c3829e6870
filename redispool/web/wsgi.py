"""Framework-free WSGI rate limiting with IETF ``RateLimit-*`` headers."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..helpers.ratelimit import RateLimiter, RateLimitResult

__all__ = ["RateLimitMiddleware", "Rule", "api_key", "client_ip"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
KeyFunc = Callable[[Environ], "str | None"]


def client_ip(environ: Environ) -> str:
    """The peer address (``REMOTE_ADDR``). Behind a proxy, use werkzeug's
    ``ProxyFix`` (or equivalent) so that this is the real client."""
    return str(environ.get("REMOTE_ADDR") or "unknown")


def api_key(header: str = "X-API-Key") -> KeyFunc:
    """A key function reading an API key header (None when absent: falls back)."""
    var = "HTTP_" + header.upper().replace("-", "_")

    def key(environ: Environ) -> str | None:
        value = environ.get(var)
        return f"key:{value}" if value else None

    return key


@dataclass(frozen=True)
class Rule:
    """Requests whose path matches ``path`` (a regex, anchored at the start)
    and whose method is in ``methods`` (all when empty) are counted by
    ``limiter`` under ``key(environ)`` (falling back to the client IP)."""

    path: str
    limiter: RateLimiter
    methods: Sequence[str] = ()
    key: KeyFunc | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise TypeError(f"path must be a regex str, got {self.path!r}")
        try:
            re.compile(self.path)
        except re.error as exc:
            raise ValueError(f"path must be a valid regex, got {self.path!r}: {exc}") from None
        if not isinstance(self.limiter, RateLimiter):
            raise TypeError(f"limiter must be a RateLimiter, got {self.limiter!r}")
        if isinstance(self.methods, str) or not all(isinstance(m, str) for m in self.methods):
            raise TypeError(
                f"methods must be a sequence of str such as ('POST',), got {self.methods!r}"
            )
        if self.key is not None and not callable(self.key):
            raise TypeError(f"key must be callable or None, got {self.key!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name must be a str or None, got {self.name!r}")

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return re.match(self.path, path) is not None


def _bounded(who: str) -> str:
    """A client-supplied key (an API key header can be kilobytes) made short enough
    for the limiter, which refuses over 4 KB: a digest keeps it distinct."""
    if isinstance(who, str) and len(who) > 256:
        return "sha256:" + hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()
    return who


class RateLimitMiddleware:
    """``app = RateLimitMiddleware(app, rules=[Rule("/api/auth/login", limiter)])``.

    The first matching rule applies (``default`` when none matches, if given).
    Over the limit: 429 with ``Retry-After``, ``RateLimit-*`` (and
    ``X-RateLimit-*`` unless ``legacy_headers=False``) headers and a JSON body.
    Allowed responses carry the same headers. When Redis is down the limiter's
    policy decides (fail open by default: the request passes).
    """

    def __init__(
        self,
        app: Callable[[Environ, StartResponse], Iterable[bytes]],
        rules: Sequence[Rule] = (),
        *,
        default: RateLimiter | None = None,
        key: KeyFunc = client_ip,
        legacy_headers: bool = True,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, got {app!r}")
        if isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
            raise TypeError(f"rules must be a sequence of Rule objects, got {rules!r}")
        rules = list(rules)
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"rules must be Rule objects, got {rule!r}")
        if default is not None and not isinstance(default, RateLimiter):
            raise TypeError(f"default must be a RateLimiter or None, got {default!r}")
        if not callable(key):
            raise TypeError(f"key must be callable, got {key!r}")
        self.app = app
        self.rules = list(rules)
        self.default = default
        self.key = key
        self.legacy_headers = legacy_headers
        self.limited = 0

    def _limit(self, environ: Environ) -> RateLimitResult | None:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        for i, rule in enumerate(self.rules):
            if rule.matches(method, path):
                who = (rule.key(environ) if rule.key else None) or self.key(environ) or "-"
                return rule.limiter.hit((rule.name or f"rule{i}:{rule.path}", _bounded(who)))
        if self.default is not None:
            return self.default.hit(("default", _bounded(self.key(environ) or "-")))
        return None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        result = self._limit(environ)
        if result is None:
            return self.app(environ, start_response)
        headers = list(result.headers(legacy=self.legacy_headers).items())
        if not result.allowed:
            self.limited += 1
            body = json.dumps(
                {
                    "error": "rate_limited",
                    "message": "Too many requests; retry later.",
                    "retry_after": max(1, round(result.retry_after))
                    if result.retry_after >= 0
                    else None,
                }
            ).encode()
            start_response(
                "429 Too Many Requests",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    *headers,
                ],
            )
            return [body]
        if "Retry-After" in dict(headers):
            headers = [h for h in headers if h[0] != "Retry-After"]

        def start_with_headers(status: str, response_headers: list[Any], *exc: Any) -> Any:
            return start_response(status, list(response_headers) + headers, *exc)

        return self.app(environ, start_with_headers)
