"""Login lockout: count failed attempts, lock after too many, atomically.

``attempt(identity)`` reserves one password check before it happens (one round
trip: counted, then "go ahead" or "refused"), and the caller reports the outcome
after it: no more than ``max_attempts`` checks can happen in a window, however
many requests arrive at once. ``check_lockout`` / ``record_failed_attempt`` /
``clear_lockout`` remain for callers that count failures after the fact.

Keys hold a hash of the identity (a username, a client IP, or a ``(username,
ip)`` pair, as the caller chooses), so Redis never sees who tried, and an
unknown user looks exactly like a known one. Each call is one Lua script: one
round trip, exact under any concurrency; its keys share one hash slot.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from types import TracebackType
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
    key_digest,
    slot_key,
)

if TYPE_CHECKING:
    from ..redis_pool import RedisPool

__all__ = [
    "Lockout",
    "LockoutAttempt",
    "LockoutResult",
    "attempt",
    "check_lockout",
    "clear_lockout",
    "configure",
    "record_failed_attempt",
]

log = logging.getLogger("redispool.helpers.lockout")

# KEYS: attempts, lock, level, count generation. ARGV: max_attempts, window_ms, lock_ms,
# factor, cap_ms, mode, generation (release: that of the reservation).
# Returns {refused, attempts, retry_ms, newly_locked, generation}. Modes:
#   check    is it locked? (counts nothing)
#   reserve  refuse if locked or every attempt of the window is taken, else take one
#   failed   a reserved attempt failed (already counted): lock if the count is full
#   fail     count a failure now (the after-the-fact API), lock if the count is full
#   release  give a reserved attempt back (the password was not checked), if it is
#            still counted: not once a success, a lock or the window's end restarted
#            the count (a generation names each count; a new count starts a new one)
#   clear    forget attempts and lock (a success)
_SCRIPT = RedisScript(
    """
local max_attempts = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local factor = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local mode = ARGV[6]
-- The generation of the count: the server's time in microseconds when its first
-- reservation was made (above the last one's, if that is still there). It ends
-- with the count (a success, a lock, the window's end), so that a reservation
-- of an earlier count is given back to nobody.
local function new_generation()
  local t = redis.call('TIME')
  local g = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
  local last = redis.call('GET', KEYS[4])
  if last and tonumber(last) >= tonumber(g) then
    redis.call('INCR', KEYS[4])
  else
    redis.call('SET', KEYS[4], g)
  end
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('PEXPIRE', KEYS[4], ttl > 0 and ttl or window)
end
if mode == 'clear' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  return {0, 0, 0, 0}
end
local lock_ttl = redis.call('PTTL', KEYS[2])
if lock_ttl > 0 then
  return {1, max_attempts, lock_ttl, 0}
end
local attempts = tonumber(redis.call('GET', KEYS[1]) or '0')
if mode == 'check' then
  return {0, attempts, 0, 0}
end
if mode == 'release' then
  if attempts > 0 and redis.call('GET', KEYS[4]) == ARGV[7] then
    attempts = redis.call('DECR', KEYS[1])
  end
  return {0, attempts, 0, 0}
end
local level = 0
if factor > 1 then level = tonumber(redis.call('GET', KEYS[3]) or '0') end
local duration = math.floor(math.min(base * (factor ^ level), cap))
if mode == 'reserve' then
  if attempts >= max_attempts then  -- all taken, some still being checked
    return {1, attempts, math.min(duration, redis.call('PTTL', KEYS[1])), 0}
  end
  attempts = redis.call('INCR', KEYS[1])
  if attempts == 1 then redis.call('PEXPIRE', KEYS[1], window) end
  if attempts == 1 or redis.call('EXISTS', KEYS[4]) == 0 then new_generation() end
  return {0, attempts, 0, 0, redis.call('GET', KEYS[4])}
end
if mode == 'fail' or attempts == 0 then  -- 0: a success cleared it meanwhile
  attempts = redis.call('INCR', KEYS[1])
  if attempts == 1 then  -- a new count, with no reservation yet
    redis.call('PEXPIRE', KEYS[1], window)
    redis.call('DEL', KEYS[4])
  end
end
if attempts < max_attempts then
  return {0, attempts, 0, 0}
end
if factor > 1 then
  redis.call('SET', KEYS[3], level + 1, 'PX', math.max(cap, window) * 4)
end
redis.call('SET', KEYS[2], level + 1, 'PX', duration)
redis.call('DEL', KEYS[1], KEYS[4])
return {1, attempts, duration, 1}
"""
)

# KEYS: the client's set of identity digests. ARGV: cap, window_ms, identity digest.
# Returns {allowed, distinct identities, retry_ms}.
_CLIENT_SCRIPT = RedisScript(
    """
if redis.call('SISMEMBER', KEYS[1], ARGV[3]) == 1 then
  return {1, redis.call('SCARD', KEYS[1]), 0}
end
local n = redis.call('SCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then
  return {0, n, redis.call('PTTL', KEYS[1])}
end
redis.call('SADD', KEYS[1], ARGV[3])
if n == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, n + 1, 0}
"""
)


@dataclass(frozen=True)
class LockoutResult:
    """``locked``: refuse the login. ``retry_after``: seconds until it may be
    tried again. ``newly_locked``: this very call caused the lock (exactly one
    call does). ``degraded``: Redis was unreachable and the failure policy
    decided. ``reason`` (when locked): ``"identity"`` (locked, or every attempt
    of the window is taken), ``"client"`` (the client tried too many distinct
    identities) or ``"unavailable"`` (``degraded``)."""

    locked: bool
    attempts: int
    remaining_attempts: int
    retry_after: float
    newly_locked: bool = False
    degraded: bool = False
    error: str | None = None
    reason: str | None = None


class LockoutAttempt:
    """One login attempt reserved by ``Lockout.attempt()``.

    ``allowed``: check the password now; else refuse (``result`` says why and
    for how long). Then report what the check said, once: ``succeeded()``
    (clears the identity's failures and lock), ``failed()`` (locks when the
    attempts are used up) or ``release()`` (the password was NOT checked, e.g.
    the user store was down: the attempt is given back). Leaving the ``with``
    block of an allowed attempt without a verdict (an exception, a forgotten
    call) counts as ``failed()``: the password may have been checked.
    """

    __slots__ = (
        "_counted",
        "_digest",
        "_generation",
        "_lockout",
        "_verdict",
        "allowed",
        "result",
    )

    def __init__(
        self, lockout: Lockout, digest: str, result: LockoutResult, generation: str = ""
    ) -> None:
        self._lockout, self._digest = lockout, digest
        self.result = result
        self.allowed = not result.locked
        self._counted = not result.degraded  # Redis holds this attempt's reservation
        self._generation = generation  # of the count holding it (see _SCRIPT)
        self._verdict: str | None = None

    def _settle(self, verdict: str) -> None:
        if not self.allowed:
            raise RuntimeError("this attempt was refused: do not check the password")
        if self._verdict is not None:
            raise RuntimeError(f"this attempt already ended ({self._verdict})")
        self._verdict = verdict

    def succeeded(self) -> LockoutResult:
        """The password was right: forget the identity's failures and lock."""
        self._settle("succeeded")
        return self._lockout._script(self._digest, "clear")

    def failed(self) -> LockoutResult:
        """The password was wrong: the attempt stays counted; locks when the
        attempts are used up (``newly_locked``)."""
        self._settle("failed")
        return self._lockout._script(self._digest, "failed" if self._counted else "fail")

    def release(self) -> LockoutResult:
        """The password was not checked: give the attempt back (to the count
        that holds it: not to a new one, after a success, a lock or the
        window's end)."""
        self._settle("released")
        if not self._counted:
            return self.result
        return self._lockout._script(self._digest, "release", self._generation)

    def __enter__(self) -> LockoutAttempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.allowed or self._verdict is not None:
            return
        try:
            self.failed()
        except HelperUnavailable:
            if exc is None:
                raise
            log.warning("lockout: could not record the failed attempt", exc_info=True)

    def __repr__(self) -> str:
        state = "allowed" if self.allowed else f"refused ({self.result.reason})"
        return f"<LockoutAttempt {state}, {self._verdict or 'open'}>"


class Lockout(HelperBase):
    """``Lockout(pool, max_attempts=5, window=900, lockout=900)``.

    ``progressive``: each new lock of the same identity lasts ``progressive``
    times longer than the last (1: off), capped at ``max_lockout`` seconds
    (default: a day, or ``lockout`` if that is longer).
    ``max_identities_per_client``: with ``attempt(identity, client=ip)``, one
    client may try at most this many distinct identities per ``client_window``
    (default ``window``) seconds (None: no cap).
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
        max_lockout: float | None = None,
        max_identities_per_client: int | None = None,
        client_window: float | None = None,
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
        if max_lockout is None:  # a lockout longer than a day is not an error
            max_lockout = max(self.lockout, 86400)
        self.max_lockout = check_seconds("max_lockout", max_lockout, minimum=self.lockout)
        self.max_identities_per_client = (
            None
            if max_identities_per_client is None
            else _number(
                "max_identities_per_client", max_identities_per_client, minimum=1, integer=True
            )
        )
        self.client_window = (
            self.window
            if client_window is None
            else check_seconds("client_window", client_window, minimum=0.001)
        )
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

    def _digest(self, identity: Any, field: str = "identity") -> str:
        return key_digest(self.namespace, identity, self._secret, field)

    def _degraded(self, exc: HelperUnavailable) -> LockoutResult:
        if self.on_error == "raise":
            raise exc
        locked = self.on_error == "closed"
        return LockoutResult(
            locked=locked,
            attempts=0,
            remaining_attempts=0 if locked else self.max_attempts,
            retry_after=self.lockout if locked else 0.0,
            degraded=True,
            error=str(exc),
            reason="unavailable" if locked else None,
        )

    def _run(self, identity: Any, mode: str) -> LockoutResult:
        return self._script(self._digest(identity), mode)

    def _script(self, digest: str, mode: str, generation: str = "") -> LockoutResult:
        return self._reserve(digest, mode, generation)[0]

    def _reserve(self, digest: str, mode: str, generation: str = "") -> tuple[LockoutResult, str]:
        """The script's verdict, and the generation of the count (reserve mode)."""
        keys = [slot_key(self.namespace, digest, kind) for kind in ("a", "l", "n", "g")]
        try:
            raw = self._call(lambda r: _SCRIPT(r, keys, (*self._args, mode, generation)))
        except HelperUnavailable as exc:
            return self._degraded(exc), ""
        is_locked, attempts, retry_ms, newly = (int(x) for x in raw[:4])
        token = raw[4] if len(raw) > 4 else b""
        generation = token.decode() if isinstance(token, bytes) else str(token or "")
        return LockoutResult(
            locked=bool(is_locked),
            attempts=attempts,
            remaining_attempts=0 if is_locked else max(0, self.max_attempts - attempts),
            retry_after=math.ceil(retry_ms) / 1000.0,
            newly_locked=bool(newly),
            reason="identity" if is_locked else None,
        ), generation

    def _check_client(self, client: str, digest: str, cap: int) -> LockoutResult | None:
        """None if the client (digest) may try the identity (digest), else the refusal."""
        key = slot_key(self.namespace, client, "c")
        args = (cap, int(self.client_window * 1000), digest)
        try:
            allowed, _, retry_ms = self._call(lambda r: _CLIENT_SCRIPT(r, [key], args))
        except HelperUnavailable as exc:
            result = self._degraded(exc)
            return result if result.locked else None
        if allowed:
            return None
        return LockoutResult(
            locked=True,
            attempts=0,
            remaining_attempts=0,
            retry_after=math.ceil(int(retry_ms)) / 1000.0,
            reason="client",
        )

    def attempt(self, identity: Any, *, client: Any = None) -> LockoutAttempt:
        """Reserve one password check for ``identity`` (one round trip; two with
        a ``client`` and ``max_identities_per_client``)::

            with lockout.attempt(username, client=ip) as a:
                if not a.allowed:
                    return refuse(a.result.retry_after)
                if verify(username, password):
                    a.succeeded()
                else:
                    a.failed()

        Exact: at most ``max_attempts`` attempts are allowed per window (until
        a success clears them), however many arrive at once.
        """
        digest = self._digest(identity)  # bad input raises before anything is counted
        client_digest = None if client is None else self._digest(client, "client")
        cap = self.max_identities_per_client
        if client_digest is not None and cap is not None:
            refused = self._check_client(client_digest, digest, cap)
            if refused is not None:
                return LockoutAttempt(self, digest, refused)
        return LockoutAttempt(self, digest, *self._reserve(digest, "reserve"))

    def check_lockout(self, identity: Any) -> LockoutResult:
        """Is ``identity`` locked? (Counts nothing.)"""
        return self._run(identity, "check")

    def record_failed_attempt(self, identity: Any) -> LockoutResult:
        """Count a failed login; lock when it reaches ``max_attempts``. (Checks
        made between ``check_lockout`` and this call are not bounded: prefer
        ``attempt()``.)"""
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


def attempt(identity: Any, *, client: Any = None) -> LockoutAttempt:
    """``Lockout.attempt`` on the instance set by ``configure()``."""
    return _instance().attempt(identity, client=client)


def check_lockout(identity: Any) -> LockoutResult:
    """``Lockout.check_lockout`` on the instance set by ``configure()``."""
    return _instance().check_lockout(identity)


def record_failed_attempt(identity: Any) -> LockoutResult:
    """``Lockout.record_failed_attempt`` on the instance set by ``configure()``."""
    return _instance().record_failed_attempt(identity)


def clear_lockout(identity: Any) -> LockoutResult:
    """``Lockout.clear_lockout`` on the instance set by ``configure()``."""
    return _instance().clear_lockout(identity)
