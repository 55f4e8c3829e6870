"""Login lockout: count failed attempts, lock after too many, atomically.

Keys hold a keyed hash of the identity (a username, a client IP, or a
``(username, ip)`` pair, as the caller chooses: OWASP suggests both), so Redis
never sees who tried, and an unknown user looks exactly like a known one.
Each call is one Lua script: one round trip, exact under any concurrency.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._poolparts import _number
from .base import (
    CircuitBreaker,
    HelperBase,
    HelperUnavailable,
    RedisScript,
    check_seconds,
    check_secret,
    default_secret,
)
from .base import hashed_key as _hashed_key

if TYPE_CHECKING:
    from ..redis_pool import RedisPool

__all__ = [
    "Lockout",
    "LockoutResult",
    "check_lockout",
    "clear_lockout",
    "configure",
    "record_failed_attempt",
]

log = logging.getLogger("redispool.helpers.lockout")

# KEYS: attempts, lock, level. ARGV: max_attempts, window_ms, lock_ms, factor, cap_ms, mode
# mode: "check" | "fail" | "clear". Returns {locked, attempts, retry_ms, newly_locked}.
_SCRIPT = RedisScript(
    """
local max_attempts = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local factor = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local mode = ARGV[6]
if mode == 'clear' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {0, 0, 0, 0}
end
local lock_ttl = redis.call('PTTL', KEYS[2])
if lock_ttl > 0 then
  return {1, max_attempts, lock_ttl, 0}
end
if mode == 'check' then
  return {0, tonumber(redis.call('GET', KEYS[1]) or '0'), 0, 0}
end
local attempts = redis.call('INCR', KEYS[1])
if attempts == 1 then redis.call('PEXPIRE', KEYS[1], window) end
if attempts < max_attempts then
  return {0, attempts, 0, 0}
end
local level = 0
if factor > 1 then
  level = redis.call('INCR', KEYS[3]) - 1
  redis.call('PEXPIRE', KEYS[3], math.max(cap, window) * 4)
end
local duration = math.floor(math.min(base * (factor ^ level), cap))
redis.call('SET', KEYS[2], level + 1, 'PX', duration)
redis.call('DEL', KEYS[1])
return {1, attempts, duration, 1}
"""
)


@dataclass(frozen=True)
class LockoutResult:
    """``locked``: refuse the login. ``retry_after``: seconds until unlocked.
    ``newly_locked``: this very call caused the lock (exactly one call does).
    ``degraded``: Redis was unreachable and the failure policy decided."""

    locked: bool
    attempts: int
    remaining_attempts: int
    retry_after: float
    newly_locked: bool = False
    degraded: bool = False
    error: str | None = None


class Lockout(HelperBase):
    """``Lockout(pool, max_attempts=5, window=900, lockout=900)``.

    ``progressive``: each new lock of the same identity lasts ``progressive``
    times longer than the last (1: off), capped at ``max_lockout`` seconds.
    ``on_error``: ``"closed"`` (default: report locked, so a login is refused
    while Redis is unreachable), ``"open"`` (report not locked) or ``"raise"``
    (raise ``HelperUnavailable``, a ``redis.RedisError``).
    """

    def __init__(
        self,
        pool: RedisPool,
        max_attempts: int = 5,
        window: float = 900,
        lockout: float = 900,
        *,
        progressive: float = 1.0,
        max_lockout: float = 86400,
        namespace: str = "lockout",
        on_error: str = "closed",
        timeout: float = 0.25,
        breaker: CircuitBreaker | None = None,
        secret: bytes | None = None,
    ) -> None:
        super().__init__(pool, namespace=namespace, timeout=timeout, breaker=breaker)
        self.max_attempts = _number("max_attempts", max_attempts, minimum=1, integer=True)
        self.window = check_seconds("window", window, minimum=0.001)
        self.lockout = check_seconds("lockout", lockout, minimum=0.001)
        self.progressive = _number("progressive", progressive, minimum=1)
        self.max_lockout = check_seconds("max_lockout", max_lockout, minimum=self.lockout)
        if on_error not in ("closed", "open", "raise"):
            raise ValueError(f"on_error must be 'closed', 'open' or 'raise', got {on_error!r}")
        self.on_error = on_error
        self._secret = check_secret(secret) or default_secret()
        self._args = (
            self.max_attempts,
            int(self.window * 1000),
            int(self.lockout * 1000),
            self.progressive,
            int(self.max_lockout * 1000),
        )

    def _keys(self, identity: Any) -> list[str]:
        digest = _hashed_key(self.namespace, "x", identity, self._secret, "identity")
        digest = digest.rsplit(":", 1)[1]
        ns = self.namespace
        return [f"{ns}:a:{digest}", f"{ns}:l:{digest}", f"{ns}:n:{digest}"]

    def _run(self, identity: Any, mode: str) -> LockoutResult:
        keys = self._keys(identity)
        try:
            raw = self._call(lambda r: _SCRIPT(r, keys, (*self._args, mode)))
        except HelperUnavailable as exc:
            if self.on_error == "raise":
                raise
            locked = self.on_error == "closed"
            return LockoutResult(
                locked=locked,
                attempts=0,
                remaining_attempts=0 if locked else self.max_attempts,
                retry_after=self.lockout if locked else 0.0,
                degraded=True,
                error=str(exc),
            )
        is_locked, attempts, retry_ms, newly = (int(x) for x in raw)
        return LockoutResult(
            locked=bool(is_locked),
            attempts=attempts,
            remaining_attempts=0 if is_locked else max(0, self.max_attempts - attempts),
            retry_after=math.ceil(retry_ms) / 1000.0,
            newly_locked=bool(newly),
        )

    def check_lockout(self, identity: Any) -> LockoutResult:
        """Is ``identity`` locked? (Counts nothing.)"""
        return self._run(identity, "check")

    def record_failed_attempt(self, identity: Any) -> LockoutResult:
        """Count a failed login; lock when it reaches ``max_attempts``."""
        return self._run(identity, "fail")

    def clear_lockout(self, identity: Any) -> LockoutResult:
        """Forget failed attempts and any lock (after a successful login, or by an
        admin). The progressive level decays on its own."""
        return self._run(identity, "clear")


_default: Lockout | None = None


def configure(pool: RedisPool, **options: Any) -> Lockout:
    """Set the instance the module functions use."""
    global _default
    _default = Lockout(pool, **options)
    return _default


def _instance() -> Lockout:
    if _default is None:
        raise RuntimeError(
            "call redispool.helpers.lockout.configure(pool, ...) before the module functions"
        )
    return _default


def check_lockout(identity: Any) -> LockoutResult:
    """``Lockout.check_lockout`` on the instance set by ``configure()``."""
    return _instance().check_lockout(identity)


def record_failed_attempt(identity: Any) -> LockoutResult:
    """``Lockout.record_failed_attempt`` on the instance set by ``configure()``."""
    return _instance().record_failed_attempt(identity)


def clear_lockout(identity: Any) -> LockoutResult:
    """``Lockout.clear_lockout`` on the instance set by ``configure()``."""
    return _instance().clear_lockout(identity)
