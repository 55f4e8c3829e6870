"""Framework-free WSGI rate limiting with IETF ``RateLimit-*`` headers."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..helpers.ratelimit import RateLimiter, RateLimitResult

__all__ = ["RateLimitMiddleware", "Rule", "api_key", "client_ip", "routed_path"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
KeyFunc = Callable[[Environ], "str | tuple[str, ...] | None"]
"""``key(environ)``: the bucket (a str), several buckets that must all allow
(a tuple), or None to fall back to the middleware's ``key``."""


IPV6_PREFIX = 64  # the smallest block any IPv6 host is given: one client


def client_ip(environ: Environ) -> str:
    """The peer address (``REMOTE_ADDR``) as a rate-limit key. Behind a proxy,
    use werkzeug's ``ProxyFix`` (or equivalent) so that this is the real client.

    An IPv6 client is its ``/64`` network (``2001:db8::/64``): every host gets a
    whole /64 and may send from any of its 2**64 addresses, so keying by the
    full address gave an attacker a fresh bucket per request. An IPv4-mapped
    address (``::ffff:192.0.2.1``) is the IPv4 client."""
    addr = str(environ.get("REMOTE_ADDR") or "unknown")
    if ":" not in addr:
        return addr
    try:
        ip = ipaddress.IPv6Address(addr.split("%", 1)[0])  # without a zone (fe80::1%eth0)
    except ValueError:
        return addr
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))


def api_key(header: str = "X-API-Key", *, verify: Callable[[str], bool] | None = None) -> KeyFunc:
    """A key function for an API key header (None when absent: the client IP).

    The header is whatever the client sent, and the limit runs before your
    app checks it: rotating made-up keys would get a fresh bucket each. So
    without ``verify`` a request counts against its key *and* its client IP
    (both must allow). With ``verify(key) -> bool`` (e.g. a lookup in your key
    store, cached), a verified key has its own bucket and any other request
    counts against its client IP only.
    """
    if not isinstance(header, str) or not header:
        raise TypeError(f"header must be a header name such as 'X-API-Key', got {header!r}")
    if verify is not None and not callable(verify):
        raise TypeError(f"verify must be callable or None, got {verify!r}")
    var = "HTTP_" + header.upper().replace("-", "_")

    def key(environ: Environ) -> str | tuple[str, ...] | None:
        value = environ.get(var)
        if not value or not isinstance(value, str):
            return None
        if verify is None:
            return (f"key:{value}", client_ip(environ))
        return f"key:{value}" if verify(value) else None

    return key


def routed_path(path_info: str) -> str:
    """``PATH_INFO`` as a router sees the request: decoded as Werkzeug does
    (the server already percent-decoded it; its latin-1 text is UTF-8 bytes;
    ``%2F`` stays decoded once, never twice), runs of slashes collapsed and
    ``.``/``..`` segments resolved (RFC 3986, 5.2.4), trailing slash kept."""
    try:
        path = path_info.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # already text (some servers, test clients)
        path = path_info
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    routed = "/" + "/".join(segments)
    if segments and (path.endswith("/") or path.rsplit("/", 1)[-1] in (".", "..")):
        routed += "/"
    return routed


@dataclass(frozen=True)
class Rule:
    """Requests whose path matches ``path`` (a regex, anchored at the start)
    and whose method is in ``methods`` (all when empty) are counted by
    ``limiter`` under ``key(environ)`` (falling back to the client IP).

    The path is matched both as sent and as the router sees it
    (``routed_path``: ``//api/auth/login`` and ``/api/x/../auth/login`` are
    ``/api/auth/login``); methods match in any case, and ``HEAD`` counts as
    ``GET`` (frameworks run the GET view for it).
    """

    path: str
    limiter: RateLimiter
    methods: Sequence[str] = ()
    key: KeyFunc | None = None
    name: str | None = None
    _methods: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

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
        methods = {m.upper() for m in self.methods}
        if "GET" in methods:
            methods.add("HEAD")
        object.__setattr__(self, "_methods", frozenset(methods))
        if self.key is not None and not callable(self.key):
            raise TypeError(f"key must be callable or None, got {self.key!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name must be a str or None, got {self.name!r}")

    def matches(self, method: str, path: str) -> bool:
        """Does a request (method and ``PATH_INFO``) fall under this rule?"""
        if self._methods and method.upper() not in self._methods:
            return False
        return any(re.match(self.path, p) is not None for p in {path, routed_path(path)})


def _bounded(who: str) -> str:
    """A client-supplied key (an API key header can be kilobytes) made short enough
    for the limiter, which refuses over 4 KB: a digest keeps it distinct."""
    if isinstance(who, str) and len(who) > 256:
        return "sha256:" + hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()
    return who


def _hit(limiter: RateLimiter, rule: str, who: str | tuple[str, ...] | None) -> RateLimitResult:
    """Count the request in each of its buckets; the first that refuses, or
    the one with the least left, answers. With several buckets, a request one
    of them refuses counts in none: each is asked first (``peek``)."""
    buckets = who if isinstance(who, tuple) and who else (who or "-",)
    keys = [(rule, _bounded(str(bucket))) for bucket in buckets]
    if len(keys) > 1:
        for key in keys:
            result = limiter.peek(key)
            if not result.allowed:
                return result
    tightest: RateLimitResult | None = None
    for key in keys:
        result = limiter.hit(key)
        if not result.allowed:
            return result
        if tightest is None or result.remaining < tightest.remaining:
            tightest = result
    assert tightest is not None
    return tightest


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
        method = str(environ.get("REQUEST_METHOD") or "GET")
        path = str(environ.get("PATH_INFO") or "/")
        for i, rule in enumerate(self.rules):
            if rule.matches(method, path):
                who = (rule.key(environ) if rule.key else None) or self.key(environ)
                return _hit(rule.limiter, rule.name or f"rule{i}:{rule.path}", who)
        if self.default is not None:
            return _hit(self.default, "default", self.key(environ))
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
                    "retry_after": max(1, math.ceil(result.retry_after))  # as Retry-After
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
