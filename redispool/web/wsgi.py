"""Framework-free WSGI rate limiting with IETF ``RateLimit-*`` headers."""

from __future__ import annotations

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

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return re.match(self.path, path) is not None


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
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"rules must be Rule objects, got {rule!r}")
            re.compile(rule.path)
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
                return rule.limiter.hit((rule.name or f"rule{i}:{rule.path}", who))
        if self.default is not None:
            return self.default.hit(("default", self.key(environ) or "-"))
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
