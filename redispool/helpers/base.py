"""What every helper shares: keys from untrusted input, Lua scripts by SHA, a
per-call deadline and a circuit breaker."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.exceptions import NoScriptError, RedisError

from .._poolparts import _number
from ..errors import PoolError, PoolTimeout

if TYPE_CHECKING:
    from ..redis_pool import RedisPool

__all__ = ["CircuitBreaker", "HelperBase", "HelperUnavailable", "RedisScript", "hashed_key"]

log = logging.getLogger("redispool.helpers")
R = TypeVar("R")

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_IDENTITY = 4096  # bytes of user input we are willing to hash
MAX_SECONDS = 10 * 365 * 86400.0  # longest window/TTL: Redis refuses (P)EXPIRE past ~2**63 ms


class HelperUnavailable(RedisError):
    """Redis could not be reached in time (or the circuit breaker is open)."""


def check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):  # "ns\n" too
        raise ValueError(
            "namespace must be 1-64 characters of letters, digits, '_', '.', ':' or '-', "
            f"got {namespace!r}"
        )
    return namespace


def check_seconds(name: str, value: Any, minimum: float) -> Any:
    """A duration between ``minimum`` and ``MAX_SECONDS``; the error names it."""
    _number(name, value, minimum=minimum)
    if value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS:.0f} seconds, got {value!r}")
    return value


def check_secret(secret: Any) -> bytes | None:
    """A key for hashing user input: None (the default), or non-empty bytes or str."""
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes):
        raise TypeError(f"secret must be bytes or str, got {type(secret).__name__}")
    if not secret:
        raise ValueError("secret must not be empty (None: the default secret)")
    return secret


def _identity_bytes(identity: Any, field: str, limit: int = MAX_IDENTITY) -> bytes:
    """Untrusted input (str, bytes, or a tuple of them) as unambiguous bytes."""
    parts = identity if isinstance(identity, tuple) else (identity,)
    if not parts:
        raise ValueError(f"{field} must not be empty")
    out = bytearray()
    size = 0  # of the input itself (the length prefixes are ours)
    for part in parts:
        if isinstance(part, str):
            raw = part.encode("utf-8", "surrogatepass")
        elif isinstance(part, bytes):
            raw = part
        else:
            raise TypeError(f"{field} must be a str, bytes or a tuple of them, got {part!r}")
        if not raw:
            raise ValueError(f"{field} must not be empty")
        size += len(raw)
        if size > limit:
            raise ValueError(f"{field} is too long (over {limit} bytes)")
        out += len(raw).to_bytes(4, "big") + raw  # length-prefixed: ("a:b",) != ("a", "b")
    return bytes(out)


def hashed_key(
    namespace: str,
    kind: str,
    identity: Any,
    secret: bytes,
    field: str = "key",
    *,
    limit: int = MAX_IDENTITY,
) -> str:
    """``namespace:kind:<hmac>``: bounded in size, never the plaintext input, and
    keyed so that nobody can compute (or collide with) another user's key."""
    digest = hmac.new(secret, _identity_bytes(identity, field, limit), hashlib.blake2b).hexdigest()
    return f"{namespace}:{kind}:{digest[:32]}"


def default_secret() -> bytes:
    """``REDISPOOL_KEY_SECRET`` from the environment, else a per-process random key
    (fine for one process; set the variable so that all workers agree)."""
    env = os.environ.get("REDISPOOL_KEY_SECRET")
    if env:
        return env.encode()
    return _PROCESS_SECRET


_PROCESS_SECRET = os.urandom(32)


class RedisScript:
    """A Lua script called by SHA (EVALSHA), loaded with EVAL on NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, r: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return r.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return r.eval(self.source, len(keys), *keys, *args)


class CircuitBreaker:
    """Stops calling Redis after ``threshold`` failures in a row, for a jittered
    ``cooldown``; then lets one trial call through (half-open)."""

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = _number("breaker_threshold", threshold, minimum=1, integer=True)
        self.cooldown = _number("breaker_cooldown", cooldown, minimum=0)
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self.opened = 0  # how many times it opened
        self._open_until = 0.0
        self._trial = False

    @property
    def state(self) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if self._clock() < self._open_until else "half-open"

    def allow(self) -> bool:
        """May a call go to Redis now?"""
        if self.failures < self.threshold:
            return True
        with self._lock:
            if self._clock() < self._open_until or self._trial:
                return False
            self._trial = True  # one trial call at a time
            return True

    def success(self) -> None:
        if self.failures:
            with self._lock:
                self.failures = 0
                self._trial = False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            self._trial = False
            if self.failures >= self.threshold:
                if self.failures == self.threshold:
                    self.opened += 1
                jitter = 0.5 + random.random()  # 0.5x .. 1.5x
                self._open_until = self._clock() + self.cooldown * jitter

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures, "opened": self.opened}


class HelperBase:
    """A pool, a namespace, a per-call deadline and a breaker."""

    def __init__(
        self,
        pool: RedisPool,
        *,
        namespace: str,
        timeout: float = 0.25,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        from ..cluster import RedisClusterPool
        from ..redis_pool import RedisPool

        if not isinstance(pool, (RedisPool, RedisClusterPool)):
            raise TypeError(
                f"pool must be a redispool.RedisPool or RedisClusterPool, got {type(pool).__name__}"
            )
        self.pool = pool
        self.namespace = check_namespace(namespace)
        self.timeout = _number("timeout", timeout, minimum=0.001)
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker must be a CircuitBreaker or None, got {breaker!r}")
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.errors = 0
        self.busy = 0  # calls that found every connection busy (counted in errors too)
        self.rejected = 0  # calls the open breaker turned away

    def _call(self, fn: Callable[[redis.Redis], R]) -> R:
        """Run ``fn`` on a pinned client: wait and each command bounded by ``timeout``.

        Raises ``HelperUnavailable`` (a ``redis.RedisError``) when Redis fails or
        the breaker is open; the caller applies its policy.
        """
        if not self.breaker.allow():
            self.rejected += 1
            raise HelperUnavailable(f"{type(self).__name__}: circuit breaker open")
        try:
            with self.pool.client(timeout=self.timeout, wait=self.timeout) as r:
                result = fn(r)
        except (RedisError, PoolError, OSError) as exc:
            if isinstance(exc, redis.ResponseError) and not isinstance(exc, NoScriptError):
                self.breaker.success()  # the server answered: it is up
                raise
            self.errors += 1
            if isinstance(exc, PoolTimeout) and exc.__cause__ is None:
                # Every connection was busy: the pool is saturated, Redis is not
                # down. Apply the policy to this call, but do not trip the breaker.
                self.busy += 1
                log.debug("%s: no connection in time: %s", type(self).__name__, exc)
            else:
                self.breaker.failure()
                log.warning("%s: redis call failed: %r", type(self).__name__, exc)
            raise HelperUnavailable(f"{type(self).__name__}: redis unavailable: {exc}") from exc
        self.breaker.success()
        return result
