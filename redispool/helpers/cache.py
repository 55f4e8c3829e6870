"""A read-through cache on a RedisPool that never fails a request because Redis did.

``get_with_fallback(key, loader)`` reads with a short deadline; on a miss, a
timeout or any Redis error it calls ``loader()`` and writes the value back on a
bounded background writer. Concurrent misses of one key call the loader once per
process (single flight) and, across processes, once per lease. Optional XFetch
early recomputation; a separate TTL for cached ``None`` ("not found").

Keys: every user key is hashed (HMAC with a secret) and embeds the namespace
version (and the versions of its tags), so ``invalidate_all()`` / ``invalidate_tag()`` are one
INCR: old entries are never read again and expire on their own. Each call reads
the versions and the value in ONE round trip, with a Lua script that builds the
versioned key server-side (so an invalidation is seen at once, by every process).
All keys of a namespace carry the hash tag ``{namespace}`` (one Redis Cluster
slot). The script touches a key it does not declare (the versioned data key),
in that same slot.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import redis
from redis.exceptions import RedisError

from .._poolparts import _number
from .._quietlog import SlowLog
from . import _cache_format as fmt
from ._singleflight import SingleFlight
from ._writer import BackgroundWriter
from .base import (
    MAX_IDENTITY,
    CircuitBreaker,
    HelperBase,
    _identity_bytes,
    default_secret,
    key_digest,
    slot_key,
)

if TYPE_CHECKING:
    from ..redis_pool import RedisPool

__all__ = ["Cache"]

log = logging.getLogger("redispool.helpers.cache")
_SLOW = SlowLog(log)  # slow operations: the first, then a summary per 10 s
P = ParamSpec("P")
T = TypeVar("T")

MAX_TAGS = 8
MAX_TTL = 10 * 365 * 86400.0
_MISS: Any = object()
_COUNTERS = (
    *("hits", "misses", "errors", "fallbacks", "loader_calls", "slow_operations"),
    *("early_recomputes", "lease_waits", "lease_timeouts"),
)


class _CacheWrites(HelperBase):
    """Writes and invalidations: the cache's pool and breaker, ``set_timeout``."""


class _Loc:
    """Where a (key, tags) lives: version keys and the data key around its version."""

    __slots__ = ("flight", "keys", "prefix", "suffix")

    def __init__(self, keys: list[str], prefix: str, digest: str) -> None:
        self.keys, self.prefix, self.suffix = keys, prefix, f":{digest}"
        self.flight = f"{len(keys)}:{digest}"


class Cache(HelperBase):
    """A read-through cache over ``pool`` (see the module docstring).

    ``get_timeout`` bounds reads, ``set_timeout`` writes (each including the wait
    for a connection); ``serializer``: ``"json"`` (default), ``"pickle"`` (opt-in),
    a ``(dumps, loads)`` pair or an object with both; ``negative_ttl``: TTL of a
    cached ``None`` (0: never cache it); ``lease_ttl``: how long one process may
    hold the right to fill a key; ``lease_wait``: how long a process that lost
    it polls for the value before calling its loader; ``early_recompute_beta``:
    XFetch's beta (0: off, 1: the paper's default); ``rand``: uniform in (0, 1].
    """

    def __init__(
        self,
        pool: RedisPool,
        namespace: str = "cache",
        *,
        default_ttl: float = 300,
        get_timeout: float = 0.1,
        set_timeout: float = 0.2,
        serializer: Any = None,
        negative_ttl: float = 30,
        lease_ttl: float = 5.0,
        lease_wait: float = 1.0,
        writer_queue: int = 1000,
        slow_threshold: float = 0.01,
        early_recompute_beta: float = 0.0,
        secret: bytes | str | None = None,
        breaker: CircuitBreaker | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        _number("get_timeout", get_timeout, minimum=0.001)
        _number("set_timeout", set_timeout, minimum=0.001)
        super().__init__(pool, namespace=namespace, timeout=get_timeout, breaker=breaker)
        if pool.connection_kwargs.get("decode_responses"):
            raise ValueError("Cache needs a pool without decode_responses (values are bytes)")
        self._writes = _CacheWrites(
            pool, namespace=namespace, timeout=set_timeout, breaker=self.breaker
        )
        self.default_ttl = self._check_ttl("default_ttl", default_ttl)
        self.negative_ttl = (
            0.0 if negative_ttl == 0 else self._check_ttl("negative_ttl", negative_ttl)
        )
        self.lease_ttl = self._check_ttl("lease_ttl", lease_ttl)
        self.lease_wait = float(_number("lease_wait", lease_wait, minimum=0))
        self.slow_threshold = float(_number("slow_threshold", slow_threshold, minimum=0))
        self.beta = float(_number("early_recompute_beta", early_recompute_beta, minimum=0))
        _number("writer_queue", writer_queue, minimum=1, integer=True)
        self._dumps, self._loads = fmt.serializer(serializer)
        if rand is not None and not callable(rand):
            raise TypeError(f"rand must be callable, got {rand!r}")
        self._rand = rand or (lambda: 1.0 - random.random())
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise TypeError("secret must be non-empty bytes or str")
        self._secret = secret or default_secret()
        # Every key of a namespace shares one hash slot (Redis Cluster): each call
        # reads the namespace's version together with its data key.
        self._version_key = slot_key(namespace, namespace, "version")
        self._writer = BackgroundWriter(writer_queue, name=f"redispool-cache-{namespace}")
        self._flight = SingleFlight()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)

    # -- validation and keys -------------------------------------------------

    @staticmethod
    def _check_ttl(name: str, ttl: Any) -> float:
        _number(name, ttl, minimum=0)
        if not 0.001 <= ttl <= MAX_TTL:
            raise ValueError(f"{name} must be between 0.001 and {MAX_TTL:.0f} seconds, got {ttl!r}")
        return float(ttl)

    def _ttl_ms(self, ttl: float | None, value: Any) -> int:
        """PX for ``value``; 0 means "do not cache" (a None with negative_ttl=0)."""
        seconds = (self.negative_ttl if ttl is None else ttl) if value is None else ttl
        return round((self.default_ttl if seconds is None else seconds) * 1000)

    @staticmethod
    def _check_tags(tags: Any) -> tuple[str, ...]:
        if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
            raise TypeError(f"tags must be a sequence of str, got {tags!r}")
        tag_tuple = tuple(tags)
        for tag in tag_tuple:
            if not isinstance(tag, str):
                raise TypeError(f"tags must be a sequence of str, got an item {tag!r}")
        return tag_tuple

    def _locate(self, key: Any, tags: Iterable[str]) -> _Loc:
        tag_list = sorted(set(self._check_tags(tags)))
        if len(tag_list) > MAX_TAGS:
            raise ValueError(f"tags: at most {MAX_TAGS}, got {len(tag_list)}")
        keys = [self._version_key]
        identity = key
        limit = MAX_IDENTITY
        if tag_list:
            keys += [self._tag_key(t, "tags") for t in tag_list]
            parts = key if isinstance(key, tuple) else (key,)
            _identity_bytes(parts, "key")  # the key itself: at most MAX_IDENTITY bytes
            identity = (*parts, *tag_list, f"#{len(parts)}")  # tags are part of the identity
            limit += MAX_TAGS * MAX_IDENTITY + 16  # each tag was checked on its own above
        digest = key_digest(self.namespace, identity, self._secret, limit=limit)
        return _Loc(keys, slot_key(self.namespace, self.namespace, "v"), digest)

    def _tag_key(self, tag: str, field: str) -> str:
        digest = key_digest(self.namespace, tag, self._secret, field)
        return slot_key(self.namespace, self.namespace, "tag", digest)

    # -- Redis calls (one round trip each) -----------------------------------

    def _timed(self, op: str, helper: HelperBase, fn: Callable[[redis.Redis], T]) -> T:
        start = time.perf_counter()
        result = helper._call(fn)
        elapsed = time.perf_counter() - start
        if elapsed > self.slow_threshold:
            self._inc("slow_operations")
            _SLOW.slow(f"cache {self.namespace!r}", op, elapsed)  # count and worst per 10 s
        return result

    def _read(self, loc: _Loc, token: str = "") -> tuple[str, bytes | None, int]:
        args = (loc.prefix, loc.suffix, token, round(self.lease_ttl * 1000))
        ver, raw, n = self._timed(
            "GET+lease" if token else "GET", self, lambda r: fmt.READ(r, loc.keys, args)
        )
        return ver.decode(), raw, n

    def _store(self, loc: _Loc, payload: bytes, ttl_ms: int, ver: str, token: str) -> bool:
        args = (loc.prefix, loc.suffix, ver, payload, ttl_ms, token)
        return bool(self._timed("SET", self._writes, lambda r: fmt.WRITE(r, loc.keys, args)))

    def _write_back(self, loc: _Loc, payload: bytes, ttl_ms: int, ver: str, token: str) -> None:
        try:
            self._store(loc, payload, ttl_ms, ver, token)
        except RedisError:
            self._inc("errors")

    def _inc(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    # -- values ----------------------------------------------------------------

    def _decode(self, raw: bytes) -> tuple[Any, float]:
        """(value, delta in seconds); ``_MISS`` for an entry we cannot read."""
        if len(raw) >= fmt.HEADER.size:
            kind, delta_ms = fmt.HEADER.unpack_from(raw)
            if kind == fmt.NONE:
                return None, delta_ms / 1000
            if kind == fmt.VALUE:
                try:
                    return self._loads(raw[fmt.HEADER.size :]), delta_ms / 1000
                except Exception as exc:
                    reason = type(exc).__name__
        else:
            reason = "too short"
        self._inc("errors")
        log.warning("cache %r: unreadable entry (%s); treated as a miss", self.namespace, reason)
        return _MISS, 0.0

    # -- public API ------------------------------------------------------------

    def get(self, key: Any, default: Any = None, *, tags: Iterable[str] = ()) -> Any:
        """The cached value (``None`` if ``None`` was cached), else ``default``.

        Never raises because of Redis: an error counts and returns ``default``."""
        loc = self._locate(key, tags)
        try:
            _, raw, _ = self._read(loc)
        except RedisError:
            self._inc("errors")
            return default
        value = _MISS if raw is None else self._decode(raw)[0]
        self._inc("misses" if value is _MISS else "hits")
        return default if value is _MISS else value

    def set(
        self, key: Any, value: Any, ttl: float | None = None, *, tags: Iterable[str] = ()
    ) -> bool:
        """Store ``value`` now for ``ttl`` seconds (default: ``default_ttl``, or
        ``negative_ttl`` for a ``None``); False if Redis failed (or a ``None`` with
        ``negative_ttl=0``). TypeError if the serializer cannot encode it."""
        loc = self._locate(key, tags)
        if ttl is not None:
            self._check_ttl("ttl", ttl)
        payload = fmt.encode(self._dumps, value, 0.0)
        ttl_ms = self._ttl_ms(ttl, value)
        if not ttl_ms:
            return False
        try:
            return self._store(loc, payload, ttl_ms, "", "")
        except RedisError:
            self._inc("errors")
            return False

    def get_with_fallback(
        self,
        key: Any,
        loader: Callable[[], T],
        ttl: float | None = None,
        *,
        tags: Iterable[str] = (),
    ) -> T:
        """The cached value, else ``loader()``'s (written back in the background).

        Only the loader's own exceptions (and TypeError for a value the serializer
        cannot encode) propagate; a Redis failure just means calling the loader."""
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {loader!r}")
        if ttl is not None:
            self._check_ttl("ttl", ttl)
        loc = self._locate(key, tags)
        try:
            ver, raw, pttl = self._read(loc)
        except RedisError:
            self._inc("errors")
            self._inc("fallbacks")
            return self._load(loc, loader, ttl, None, "")
        if raw is not None:
            value, delta = self._decode(raw)
            if value is not _MISS:
                self._inc("hits")
                # XFetch: recompute early, with a probability rising near expiry.
                if self.beta and 0 < pttl <= -delta * self.beta * math.log(self._rand()) * 1000:
                    return self._flight.do(  # type: ignore[no-any-return]
                        loc.flight,
                        lambda: self._recompute(loc, loader, ttl, ver, value),
                        lambda: value,  # someone is on it: serve what we have
                        0,
                    )
                return value  # type: ignore[no-any-return]
        self._inc("misses")
        return self._flight.do(
            loc.flight,
            lambda: self._fill(loc, loader, ttl),
            lambda: self._load(loc, loader, ttl, "", ""),  # the leader failed or is slow
            self.lease_wait + self.lease_ttl,
        )

    def _recompute(self, loc: _Loc, loader: Callable[[], T], ttl: Any, ver: str, old: T) -> T:
        self._inc("early_recomputes")
        try:
            return self._load(loc, loader, ttl, ver, "")
        except Exception:  # the cached value is still valid: serve it
            log.warning("cache %r: early recompute failed", self.namespace, exc_info=True)
            return old

    def _fill(self, loc: _Loc, loader: Callable[[], T], ttl: float | None) -> T:
        """The process's leader after a miss: win the lease and load, or poll."""
        token = os.urandom(12).hex()
        deadline = time.monotonic() + self.lease_wait
        delay = 0.01
        while True:
            try:
                ver, raw, won = self._read(loc, token)
            except RedisError:
                self._inc("errors")
                self._inc("fallbacks")
                return self._load(loc, loader, ttl, None, "")
            if raw is not None:
                value = self._decode(raw)[0]
                if value is not _MISS:
                    return value  # type: ignore[no-any-return]
                return self._load(loc, loader, ttl, ver, "")
            if won:
                return self._load(loc, loader, ttl, ver, token)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._inc("lease_timeouts")
                return self._load(loc, loader, ttl, ver, "")
            if delay == 0.01:
                self._inc("lease_waits")
            time.sleep(min(delay * (0.5 + random.random()), remaining))
            delay = min(delay * 1.5, 0.1)

    def _load(self, loc: _Loc, loader: Callable[[], T], ttl: Any, ver: str | None, token: str) -> T:
        """Call the loader; queue the write-back (and the lease release). ``ver``:
        the version read ('' = unknown), None: Redis just failed, do not write."""
        self._inc("loader_calls")
        payload, ttl_ms = b"", 0
        start = time.monotonic()
        try:
            value = loader()
            ttl_ms = self._ttl_ms(None if value is None else ttl, value)  # 0: do not cache
            if ttl_ms:
                payload = fmt.encode(self._dumps, value, time.monotonic() - start)
        except BaseException:
            ttl_ms = 0  # only release the lease
            raise
        finally:
            if ver is not None and (ttl_ms or token):
                self._writer.submit(
                    functools.partial(self._write_back, loc, payload, ttl_ms, ver, token)
                )
        return value

    def invalidate(self, key: Any, *, tags: Iterable[str] = ()) -> bool:
        """Delete one key (of the current version). Raises ``HelperUnavailable``
        if Redis failed: a silently failed invalidation would serve stale data."""
        loc = self._locate(key, tags)
        args = (loc.prefix, loc.suffix)
        return bool(self._timed("DEL", self._writes, lambda r: fmt.DELETE(r, loc.keys, args)))

    def invalidate_all(self) -> int:
        """Invalidate the whole namespace (one INCR); returns its new version."""
        return int(self._timed("INCR", self._writes, lambda r: r.incr(self._version_key)))

    def invalidate_tag(self, tag: str) -> int:
        """Invalidate every key cached with ``tag`` (one INCR); returns its new version."""
        key = self._tag_key(tag, "tag")
        return int(self._timed("INCR", self._writes, lambda r: r.incr(key)))

    def cached(
        self,
        ttl: float | None = None,
        *,
        key: Callable[..., Any] | None = None,
        tags: Iterable[str] = (),
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """Decorator: ``get_with_fallback`` around the function.

        The key is ``key(*args, **kwargs)`` if given (so ``invalidate()`` can
        name it), else the function's qualified name and a hash of its JSON-encoded
        arguments (pass ``key`` for arguments JSON cannot encode, such as ``self``).
        """
        if ttl is not None:
            self._check_ttl("ttl", ttl)
        if key is not None and not callable(key):
            raise TypeError(f"key must be callable, got {key!r}")
        tag_list = self._check_tags(tags)
        self._locate("x", tag_list)  # validate now

        def decorate(fn: Callable[P, T]) -> Callable[P, T]:
            name = f"{fn.__module__}.{fn.__qualname__}"

            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                if key is not None:
                    ident = key(*args, **kwargs)
                else:
                    try:
                        encoded = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))
                    except (TypeError, ValueError) as exc:
                        raise TypeError(
                            f"cached: arguments of {name} are not JSON-serializable; pass key="
                        ) from exc
                    ident = (name, hashlib.sha256(encoded.encode()).hexdigest())
                return self.get_with_fallback(
                    ident, lambda: fn(*args, **kwargs), ttl, tags=tag_list
                )

            return wrapper

        return decorate

    # -- numbers and lifecycle ---------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters; ``hit_rate`` is hits / (hits + misses)."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
        lookups = out["hits"] + out["misses"]
        out["hit_rate"] = out["hits"] / lookups if lookups else 0.0
        out["dropped_writes"] = self._writer.dropped
        out["pending_writes"] = self._writer.pending
        out["single_flight_shared"] = self._flight.shared
        out["breaker"] = self.breaker.as_dict()
        return out

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait for queued write-backs; False if ``timeout`` ran out first."""
        return self._writer.flush(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Run the queued write-backs (at most ``timeout``) and stop the writer.
        Later write-backs are dropped; the pool is left open (it is not ours)."""
        return self._writer.close(timeout)

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
