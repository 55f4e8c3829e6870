"""Rate limiting in one atomic round trip: fixed window, sliding window, GCRA.

Each check is one Lua script that reads and updates the state and returns
everything the IETF ``RateLimit`` headers need, using the server's clock (so
many processes agree). Exact under concurrency: N allowed, never N+1; GCRA in
integers (microseconds scaled by the limit, as redis-cell), exact for any N/period.
Every script touches only the one key it is given.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import (
    MAX_IDENTITY,
    MAX_SECONDS,
    CircuitBreaker,
    HelperBase,
    HelperUnavailable,
    RedisScript,
    _identity_bytes,
    check_secret,
    default_secret,
)
from .base import hashed_key as _hashed_key

if TYPE_CHECKING:
    from ..redis_pool import RedisPool

__all__ = ["RateLimitResult", "RateLimiter", "parse_limit"]

log = logging.getLogger("redispool.helpers.ratelimit")

_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_LIMIT = re.compile(r"^\s*(\d{1,18})\s*(?:/|per)\s*(\d{1,18})?\s*([a-z]+?)s?\s*$", re.IGNORECASE)
MAX_LIMIT = 10**15  # the scripts' numbers are doubles: exact up to 2**53


def parse_limit(limit: Any) -> tuple[int, float]:
    """``"100/minute"``, ``"10 per second"``, ``"1000/5 minutes"`` -> (count, seconds)."""
    if not isinstance(limit, str):
        raise TypeError(f"limit must be a string like '100/minute', got {limit!r}")
    m = _LIMIT.match(limit)
    unit = m.group(3).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(
            f"limit must look like '100/minute', '10 per second' or '1000/5 minutes' "
            f"(units: s, m, h, d), got {limit!r}"
        )
    count = int(m.group(1))
    period = int(m.group(2) or 1) * _UNITS[unit]
    if count < 1 or period < 1:
        raise ValueError(f"limit must allow at least 1 per at least 1 second, got {limit!r}")
    if count > MAX_LIMIT or period > MAX_SECONDS:
        raise ValueError(
            f"limit must be at most {MAX_LIMIT} per at most {MAX_SECONDS:.0f} seconds, "
            f"got {limit!r}"
        )
    return count, float(period)


_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local peek = ARGV[4] == '1'
"""

_FIXED = RedisScript(
    _PRELUDE
    + """
local idx = math.floor(now / period)
local reset = (idx + 1) * period - now
local st = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
if tonumber(st[1]) == idx then count = tonumber(st[2]) end
if cost > limit then return {0, limit - count, reset, -1} end
if count + cost > limit then return {0, limit - count, reset, reset} end
if not peek then
  count = count + cost
  redis.call('HSET', KEYS[1], 'w', idx, 'c', count)
  redis.call('PEXPIRE', KEYS[1], reset)
end
return {1, limit - count, reset, 0}
"""
)

_SLIDING = RedisScript(
    _PRELUDE
    + """
local idx = math.floor(now / period)
local elapsed = now - idx * period
local st = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w, cur, prev = tonumber(st[1]), tonumber(st[2]) or 0, tonumber(st[3]) or 0
if w ~= idx then
  if w == idx - 1 then prev = cur else prev = 0 end
  cur = 0
end
-- in units of count x ms (integers: exact while under 2**53): the room left
-- is limit - prev * (period - elapsed) / period - cur, times period
local reset = period - elapsed
local room = limit * period - prev * reset - cur * period
if room < cost * period then
  local retry
  if cur + cost <= limit then  -- this window: until prev's weight is low enough
    retry = reset - math.floor((limit - cur - cost) * period / prev)
  elseif cost <= limit then  -- the next window, where cur is the previous one
    retry = reset + period - math.floor((limit - cost) * period / cur)
  else
    retry = -1
  end
  if retry ~= -1 and retry < 1 then retry = 1 end
  return {0, math.max(0, math.floor(room / period)), reset, retry}
end
if not peek then
  cur = cur + cost
  redis.call('HSET', KEYS[1], 'w', idx, 'c', cur, 'p', prev)
  redis.call('PEXPIRE', KEYS[1], 2 * period)
  room = room - cost * period
end
return {1, math.max(0, math.floor(room / period)), reset, 0}
"""
)

# GCRA in exact integers. Time is counted in ``unit`` microseconds (ARGV[5]: 1,
# 1000 or 1000000, the finest for which every number below stays under 2**53) and
# scaled by the limit N: one emission interval is ``period`` scaled units (ARGV[2],
# in units) and the tolerance is N intervals, so "N at once" is exactly N whatever
# N/period. The key holds the theoretical arrival time as "<units> <remainder/N>".
_GCRA = RedisScript(
    """
local t = redis.call('TIME')
local unit = tonumber(ARGV[5])
local now
if unit == 1 then now = tonumber(t[1]) * 1000000 + tonumber(t[2])
elseif unit == 1000 then now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else now = tonumber(t[1]) end
local n, interval, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tolerance = n * interval
local d = 0  -- how far the arrival time is ahead of now, in units / n
local tat, rem = string.match(redis.call('GET', KEYS[1]) or '', '^(%d+) (%d+)$')
if tat then d = math.max(0, (tonumber(tat) - now) * n + tonumber(rem)) end
local function ms(x)  -- scaled units -> milliseconds, rounded up
  return math.ceil(x / n * unit / 1000)
end
local function left(x)  -- whole intervals still free below the tolerance
  local room = tolerance - x
  return (room - math.fmod(room, interval)) / interval
end
if cost > n then return {0, left(d), ms(d), -1} end
local new_d = d + cost * interval
if new_d > tolerance then return {0, left(d), ms(d), ms(new_d - tolerance)} end
if ARGV[4] == '1' then return {1, left(d), ms(d), 0} end
local r = math.fmod(new_d, n)
redis.call('SET', KEYS[1], string.format('%d %d', now + (new_d - r) / n, r), 'PX', ms(new_d) + 1)
return {1, left(new_d), ms(new_d), 0}
"""
)


def _gcra_unit(limit: int, period: float) -> tuple[int, int]:
    """(unit in microseconds, period in units) for the exact GCRA script: the
    finest unit in which ``2 * limit * period`` stays exact in Lua's doubles."""
    period_us = round(period * 1_000_000)
    for unit in (1, 1000, 1_000_000):
        if period_us % unit == 0 and 2 * limit * (period_us // unit) <= 2**53:
            return unit, period_us // unit
    raise ValueError(
        f"limit {limit} per {period:g} s is too fine for algorithm='gcra' "
        "(limit x period must stay under 2**52 in microseconds, milliseconds or seconds)"
    )


_SCRIPTS = {"fixed": _FIXED, "sliding": _SLIDING, "gcra": _GCRA, "token_bucket": _GCRA}


@dataclass(frozen=True)
class RateLimitResult:
    """One check. Times are seconds; ``retry_after`` is 0 when allowed (and -1
    when ``cost`` exceeds the limit: it can never be allowed)."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    period: float
    degraded: bool = False  # Redis was unreachable: the failure policy decided

    def headers(self, legacy: bool = True) -> dict[str, str]:
        """IETF ``RateLimit-*`` (draft) headers, ``Retry-After`` when denied, and
        optionally the old ``X-RateLimit-*`` ones."""
        reset = max(0, math.ceil(self.reset_after))
        h = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(reset),
            "RateLimit-Policy": f"{self.limit};w={int(self.period)}",
        }
        if legacy:
            h["X-RateLimit-Limit"] = str(self.limit)
            h["X-RateLimit-Remaining"] = str(self.remaining)
            h["X-RateLimit-Reset"] = str(reset)
        if not self.allowed and self.retry_after > 0:
            h["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return h


class RateLimiter(HelperBase):
    """``RateLimiter(pool, "100/minute", algorithm="gcra")``.

    ``algorithm``: ``"fixed"`` (fixed window), ``"sliding"`` (sliding window,
    counter approximation) or ``"gcra"`` (token bucket: smooth, bursts up to the
    limit). ``on_error``: ``"allow"`` (fail open, the default) or ``"deny"``.
    Keys hold a hash of the caller's key (keyed with ``secret``), never the key itself.
    """

    def __init__(
        self,
        pool: RedisPool,
        limit: str | int = "100/minute",
        *,
        period: float | None = None,
        algorithm: str = "gcra",
        namespace: str = "rl",
        on_error: str = "allow",
        timeout: float = 0.1,
        breaker: CircuitBreaker | None = None,
        secret: bytes | None = None,
    ) -> None:
        super().__init__(pool, namespace=namespace, timeout=timeout, breaker=breaker)
        if isinstance(limit, bool) or not isinstance(limit, (str, int)):
            raise TypeError(f"limit must be a string like '100/minute' or an int, got {limit!r}")
        if isinstance(limit, int):
            if period is None:
                raise TypeError("period (seconds) is required when limit is a number")
            if not 1 <= limit <= MAX_LIMIT:
                raise ValueError(f"limit must be >= 1 and <= {MAX_LIMIT}, got {limit!r}")
            if (
                isinstance(period, bool)
                or not isinstance(period, (int, float))
                or not 0.001 <= period <= MAX_SECONDS
            ):
                raise ValueError(
                    f"period must be a number of seconds >= 0.001 and <= {MAX_SECONDS:.0f}, "
                    f"got {period!r}"
                )
            self.limit, self.period = limit, float(period)
        else:
            if period is not None:
                raise TypeError("period is given by the limit string; do not pass both")
            self.limit, self.period = parse_limit(limit)
        if algorithm not in _SCRIPTS:
            raise ValueError(f"algorithm must be one of {sorted(_SCRIPTS)}, got {algorithm!r}")
        if on_error not in ("allow", "deny"):
            raise ValueError(f"on_error must be 'allow' or 'deny', got {on_error!r}")
        self.algorithm = algorithm
        self.on_error = on_error
        self._script = _SCRIPTS[algorithm]
        self._secret = check_secret(secret) or default_secret()
        self._period_ms = round(self.period * 1000)  # int() made 1.005 s 1004 ms
        if algorithm in ("gcra", "token_bucket"):
            self._unit, self._period_units = _gcra_unit(self.limit, self.period)
        self.allowed = self.denied = self.failed_open = self.failed_closed = 0

    def key_for(self, key: Any) -> str:
        """``namespace:{<digest>}:<algorithm>``, the digest of the limit, the
        period and ``key``: limiters with other limits on the same key (a login
        limit and an API limit, both by client IP, in the default namespace)
        never share, or reset, each other's state."""
        _identity_bytes(key, "key")  # the caller's key: its own errors and size limit
        parts = key if isinstance(key, tuple) else (key,)
        policy = f"{self.limit}/{self.period!r}"
        return _hashed_key(
            self.namespace,
            self.algorithm[0],
            (policy, *parts),
            self._secret,
            "key",
            limit=MAX_IDENTITY + len(policy),
        )

    def hit(self, key: Any, cost: int = 1) -> RateLimitResult:
        """Count ``cost`` against ``key`` if allowed; one round trip."""
        return self._run(key, cost, peek=False)

    def peek(self, key: Any, cost: int = 1) -> RateLimitResult:
        """Would ``hit(key, cost)`` be allowed now? Counts nothing."""
        return self._run(key, cost, peek=True)

    def _run(self, key: Any, cost: int, *, peek: bool) -> RateLimitResult:
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ValueError(f"cost must be an int >= 1, got {cost!r}")
        redis_key = self.key_for(key)
        args = self._argv(cost, peek)
        try:
            raw = self._call(lambda r: self._script(r, [redis_key], args))
        except HelperUnavailable:
            return self._degraded()
        allowed, remaining, reset_ms, retry_ms = (int(x) for x in raw)
        if not peek:
            if allowed:
                self.allowed += 1
            else:
                self.denied += 1
        return RateLimitResult(
            allowed=bool(allowed),
            limit=self.limit,
            remaining=max(0, remaining),
            reset_after=reset_ms / 1000.0,
            retry_after=retry_ms / 1000.0 if retry_ms >= 0 else -1.0,
            period=self.period,
        )

    def _argv(self, cost: int, peek: bool) -> tuple[int, ...]:
        """The script's ARGV: limit, period (ms; GCRA: in its unit), cost, peek[, unit]."""
        if self._script is _GCRA:
            return (self.limit, self._period_units, cost, int(peek), self._unit)
        return (self.limit, self._period_ms, cost, int(peek))

    def _degraded(self) -> RateLimitResult:
        allow = self.on_error == "allow"
        if allow:
            self.failed_open += 1
        else:
            self.failed_closed += 1
        return RateLimitResult(
            allowed=allow,
            limit=self.limit,
            remaining=self.limit if allow else 0,
            reset_after=self.period,
            retry_after=0.0 if allow else self.period,
            period=self.period,
            degraded=True,
        )

    def reset(self, key: Any) -> None:
        """Forget ``key``'s usage."""
        redis_key = self.key_for(key)
        self._call(lambda r: r.delete(redis_key))

    def stats(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "denied": self.denied,
            "failed_open": self.failed_open,
            "failed_closed": self.failed_closed,
            "errors": self.errors,
            "rejected_by_breaker": self.rejected,
            "busy": self.busy,
            "breaker": self.breaker.as_dict(),
        }
