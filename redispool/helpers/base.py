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
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from .._poolparts import _number
from ..errors import PoolError, PoolTimeout

if TYPE_CHECKING:
    from ..redis_pool import RedisPool

__all__ = [
    "CircuitBreaker",
    "HelperBase",
    "HelperUnavailable",
    "RedisScript",
    "hashed_key",
    "key_digest",
    "slot_key",
]

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


def key_digest(
    namespace: str,
    identity: Any,
    secret: bytes | None,
    field: str = "key",
    *,
    limit: int = MAX_IDENTITY,
) -> str:
    """32 hex digits naming ``identity`` within ``namespace``: the same in every
    process, host and restart. With a ``secret``: HMAC-BLAKE2b, so that nobody
    without it can tell which input a key belongs to; without: plain BLAKE2b of
    the length-prefixed namespace and input."""
    data = _identity_bytes((namespace,), "namespace", 64) + _identity_bytes(identity, field, limit)
    if secret is None:
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    return hmac.new(secret, data, hashlib.blake2b).hexdigest()[:32]


def slot_key(namespace: str, tag: str, *suffix: str) -> str:
    """``namespace:{tag}:suffix...``. Redis Cluster hashes only what is between the
    braces, so all keys of one tag share a hash slot (and one Lua call may touch
    them together). ``tag`` must not contain braces."""
    return ":".join((namespace, "{" + tag + "}", *suffix))


def hashed_key(
    namespace: str,
    kind: str,
    identity: Any,
    secret: bytes | None,
    field: str = "key",
    *,
    limit: int = MAX_IDENTITY,
) -> str:
    """``namespace:{<digest>}:kind``: bounded in size, never the plaintext input,
    the same in every process, and in the hash slot of every other key of the
    same identity (see ``key_digest`` and ``slot_key``)."""
    return slot_key(namespace, key_digest(namespace, identity, secret, field, limit=limit), kind)


def default_secret() -> bytes | None:
    """``REDISPOOL_KEY_SECRET`` from the environment, else None (a plain hash)."""
    return os.environ.get("REDISPOOL_KEY_SECRET", "").encode() or None


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


_BREAKERS: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for breaker in list(_BREAKERS):  # a lock held by a thread that did not fork stays held
        breaker._lock = threading.Lock()
        breaker._trial = 0  # and so would a trial call it was making: no one here ends it


os.register_at_fork(after_in_child=_after_fork_in_child)


class CircuitBreaker:
    """Stops calling Redis after ``threshold`` failures in a row, for a jittered
    ``cooldown``; then lets one trial call through (half-open).

    The trial ends with ``success(ticket)``, ``failure(ticket)`` or, when the
    call ended without a verdict (no connection free in time, an interruption
    such as ``gevent.Timeout`` or ``KeyboardInterrupt``), ``leave(ticket)``:
    whatever ends the trial call ends the trial, and only that call's verdict
    does (a late verdict of a call let through before, ticket 0, still counts,
    but does not end a trial it is not).
    """

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
        self._trial = 0  # ticket of the running half-open trial; 0: none
        self._tickets = 0
        _BREAKERS.add(self)

    @property
    def state(self) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if self._clock() < self._open_until else "half-open"

    def enter(self) -> int | None:
        """May a call go to Redis now? None: no. 0: yes (closed). A positive
        ticket: yes, as the half-open trial, which the caller must end."""
        if self.failures < self.threshold:
            return 0
        granted = 0
        try:
            with self._lock:
                if self._clock() < self._open_until or self._trial:
                    return None
                self._tickets += 1
                granted = self._trial = self._tickets  # one trial call at a time
            return granted
        except BaseException:  # (a signal handler raising as the lock is let go)
            self.leave(granted)  # a trial nobody holds would keep the breaker open
            raise

    def allow(self) -> bool:
        """``enter() is not None`` (a trial it grants ends with ``success()`` or
        ``failure()``; prefer ``enter()``, whose ticket ``leave()`` can end)."""
        return self.enter() is not None

    def leave(self, ticket: int) -> None:
        """The call holding ``ticket`` ended without a verdict: if it was the
        trial and nothing ended it yet, the next call may try."""
        if ticket and self._trial == ticket:
            with self._lock:
                if self._trial == ticket:
                    self._trial = 0

    def success(self, ticket: int | None = None) -> None:
        """A call went well (``ticket``: its ``enter()``; None: unknown, as with
        ``allow()``, taken to be the trial's)."""
        if self.failures or self._trial:
            with self._lock:
                self.failures = 0
                if ticket is None or ticket == self._trial:
                    self._trial = 0

    def failure(self, ticket: int | None = None) -> None:
        """A call found Redis unable to serve (``ticket`` as for ``success``)."""
        with self._lock:
            self.failures += 1
            trial = bool(self._trial) and (ticket is None or ticket == self._trial)
            if ticket is None or ticket == self._trial:
                self._trial = 0
            if self.failures >= self.threshold:
                if self.failures == self.threshold or trial:  # (a failed trial reopens)
                    self.opened += 1
                jitter = 0.5 + random.random()  # 0.5x .. 1.5x
                self._open_until = self._clock() + self.cooldown * jitter

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures, "opened": self.opened}


# Error replies that mean "this server cannot serve now", not "this call is wrong".
_UNAVAILABLE_CLASSES: tuple[type[Exception], ...] = (
    redis.exceptions.OutOfMemoryError,  # OOM: maxmemory reached, noeviction
    redis.exceptions.ReadOnlyError,  # READONLY: a replica (a demoted primary)
    redis.exceptions.MasterDownError,  # MASTERDOWN: replica lost its primary
    redis.exceptions.TryAgainError,  # TRYAGAIN
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN
    redis.exceptions.AskError,  # MOVED and ASK: the slot is served elsewhere now
)
_UNAVAILABLE_CODES = frozenset(
    (
        "OOM", "READONLY", "MISCONF", "BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS",
        "TRYAGAIN", "MOVED", "ASK", "CLUSTERDOWN",
    )
)  # fmt: skip


def server_cannot_serve(exc: BaseException) -> bool:
    """Is ``exc`` an error reply saying Redis is unable to serve (out of memory,
    read-only, cannot persist, busy, loading; on a cluster, a slot that moved
    or is migrating), rather than a wrong call (WRONGTYPE, a script error)?
    Such replies get the helper's failure policy."""
    if isinstance(exc, _UNAVAILABLE_CLASSES):
        return True
    if not isinstance(exc, redis.ResponseError) or not exc.args:
        return False
    text = str(exc.args[0])
    if text.startswith("Command # "):  # redis-py's note on a pipeline's error
        text = text.rpartition(" of pipeline caused error: ")[2]
    return text.split(" ", 1)[0] in _UNAVAILABLE_CODES


def _unfollowed(exc: BaseException) -> BaseException | None:
    """Why an ASK in a pipeline's replies was not followed (see
    ``cluster_client.SlotLease.asked_in_pipeline``), else None."""
    if isinstance(exc, redis.exceptions.MovedError) or exc.__cause__ is None:
        return None
    return exc.__cause__ if isinstance(exc, redis.exceptions.AskError) else None


def _migrating(exc: BaseException) -> bool:
    """TRYAGAIN, or ASK (not MOVED): a cluster slot in migration, no outage."""
    if isinstance(exc, redis.exceptions.TryAgainError):
        return True
    return isinstance(exc, redis.exceptions.AskError) and not isinstance(
        exc, redis.exceptions.MovedError
    )


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

    def _call(self, fn: Callable[[redis.Redis], R], *, force: bool = False) -> R:
        """Run ``fn`` on a pinned client: wait and each command bounded by ``timeout``.
        ``force``: even if the breaker is open (a last call, such as a flush at
        close: nothing would try again).

        Raises ``HelperUnavailable`` (a ``redis.RedisError``) when Redis fails, is
        unable to serve (OOM, READONLY, MISCONF, ...) or the breaker is open; the
        caller applies its policy. Other error replies (WRONGTYPE, a script
        error: a bug, not an outage) are raised as they are.
        """
        ticket = self.breaker.enter()
        if ticket is None and force:
            ticket = 0  # not the trial: its verdict counts, it ends no trial
        if ticket is None:
            self.rejected += 1
            raise HelperUnavailable(f"{type(self).__name__}: circuit breaker open")
        try:
            result = self._pinned_call(fn)
        except (RedisError, PoolError, OSError, RedisClusterException) as exc:
            # (RedisClusterException: a cluster that cannot be reached or has
            # no node for a slot; not a RedisError)
            if (
                isinstance(exc, redis.ResponseError)
                and not isinstance(exc, NoScriptError)
                and not server_cannot_serve(exc)
            ):
                self.breaker.success(ticket)  # the server answered: it is up
                raise
            self.errors += 1
            why = _unfollowed(exc) or exc
            if isinstance(why, PoolTimeout) and why.__cause__ is None:
                # Every connection was busy: the pool is saturated, Redis is not
                # down. Apply the policy to this call, but do not trip the breaker.
                self.busy += 1
                log.debug("%s: no connection in time: %s", type(self).__name__, why)
            elif _migrating(why):
                # A cluster slot is being migrated (TRYAGAIN until the call's time
                # was up, an ASK not followed): the policy, but the nodes are up.
                log.debug("%s: slot migrating: %s", type(self).__name__, exc)
            else:
                self.breaker.failure(ticket)
                log.warning("%s: redis call failed: %r", type(self).__name__, exc)
            raise HelperUnavailable(f"{type(self).__name__}: redis unavailable: {exc}") from exc
        else:
            self.breaker.success(ticket)
            return result
        finally:
            self.breaker.leave(ticket)  # no-op unless the trial ended without a verdict

    def _pinned_call(self, fn: Callable[[redis.Redis], R]) -> R:
        """``fn`` on a pinned client; once more after MOVED (a failover, a reshard:
        nothing ran, and the pool updated its slot table as the block ended), and
        again after TRYAGAIN (a multi-key call on a slot being migrated, its keys on
        both nodes for now: nothing ran), with a short backoff, while ``timeout``
        from the start of the call allows."""
        deadline = time.monotonic() + self.timeout
        left = self.timeout  # (after TRYAGAIN: what is left of it)
        pause = 0.005
        moved = False
        while True:
            try:
                with self.pool.client(timeout=left, wait=left) as r:
                    return fn(r)
            except redis.exceptions.MovedError:
                if moved:
                    raise
                moved = True
            except redis.exceptions.TryAgainError:
                if time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                left = max(deadline - time.monotonic(), 0.001)
