"""A read-through cache on a RedisPool that never fails a request because Redis did.

``get_with_fallback(key, loader)`` reads with a short deadline; on a miss, a
timeout or any Redis error it calls ``loader()`` and writes the value back on a
bounded background writer. Concurrent misses of one key call the loader once per
process (single flight) and, across processes, once per lease. Optional XFetch
early recomputation; a separate TTL for cached ``None`` ("not found").

Keys: every user key is hashed (see ``helpers.base.key_digest``; HMAC with a
secret). An entry is stored with the namespace's version (and its tags'
versions), so ``invalidate_all()`` / ``invalidate_tag()`` are one INCR: older
entries are never served again and expire on their own. A version key that is
missing (never set, or evicted under an ``allkeys-*`` maxmemory policy) starts
at a random version, under which no older entry was made. Each call reads the
versions and the value in ONE round trip, with a Lua script given every key it
touches (version keys, data key, lease key). All keys of a namespace carry the
hash tag ``{namespace}``: one Redis Cluster slot (spread a large cache over
several namespaces).

No stale fill: a loaded value is written back only by the caller that won the
key's lease before loading, and only if the lease is still its own under the
same versions. ``invalidate(key)`` deletes the entry and the lease, ``set()``
replaces both, a version bump changes the versions: a value loaded before any of
them returns is never stored after it (memcache's leases). Callers that did not
win the lease wait for the winner's outcome (its value, or its failure for
``error_ttl``) and never write back.
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
import types
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

import redis
from redis.exceptions import RedisError

from .._poolparts import _number
from .._quietlog import SlowLog
from . import _cache_format as fmt
from ._singleflight import Flight, SingleFlight
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

__all__ = ["Cache", "LoaderError"]

log = logging.getLogger("redispool.helpers.cache")
_SLOW = SlowLog(log)  # slow operations: the first, then a summary per 10 s
P = ParamSpec("P")
T = TypeVar("T")

MAX_TAGS = 8
MAX_TTL = 10 * 365 * 86400.0
_MISS: Any = object()
_COUNTERS = (
    *("hits", "misses", "errors", "fallbacks", "loader_calls", "slow_operations"),
    *("early_recomputes", "lease_waits", "lease_timeouts", "refused_writes", "shared_failures"),
)
MAX_ERROR_NAME = 64
_CACHES: weakref.WeakSet[Cache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_CACHES):  # a lock held by a thread that did not fork stays held
        cache._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _one_function(a: Any, b: Any) -> bool:
    """Are ``a`` and ``b`` one function for ``cached()``'s default key (its
    qualified name)? The same object; the same code with the same closure and
    defaults (a factory or a test fixture making it again from the same
    values); a module-level function without a closure made again (a module
    reloaded); a method of the same object. Not: a factory's functions made
    from other values, two lambdas, the methods of two objects."""
    if a is b:
        return True
    if isinstance(a, types.MethodType) and isinstance(b, types.MethodType):
        return a.__self__ is b.__self__ and _one_function(a.__func__, b.__func__)
    if not (isinstance(a, types.FunctionType) and isinstance(b, types.FunctionType)):
        return False
    code = b.__code__
    if a.__closure__ is None and b.__closure__ is None and "<" not in b.__qualname__:
        return True
    if a.__code__ is not code:
        return False
    try:
        cells = [
            (x.cell_contents, y.cell_contents)
            for x, y in zip(a.__closure__ or (), b.__closure__ or (), strict=True)
        ]
    except ValueError:  # an empty cell
        return False
    da, db = a.__defaults__ or (), b.__defaults__ or ()
    kw_a, kw_b = a.__kwdefaults__ or {}, b.__kwdefaults__ or {}
    return (
        len(da) == len(db)
        and all(x is y for x, y in (*cells, *zip(da, db, strict=True)))
        and kw_a.keys() == kw_b.keys()
        and all(kw_a[k] is kw_b[k] for k in kw_a)
    )


class LoaderError(Exception):
    """The loader for this key failed in another process moments ago (within the
    cache's ``error_ttl``); this caller did not run its own."""


class _CacheWrites(HelperBase):
    """Writes and invalidations: the cache's pool and breaker, ``set_timeout``."""


class _Read(NamedTuple):
    version: bytes  # the versions the value (or lease) is under
    value: bytes | None
    pttl: int  # of the value, if any
    lease: int  # 1: won, 0: not asked or held elsewhere, -1: the holder's loader failed
    failed: str  # that loader's error name


class _Loc:
    """Where a (key, tags) lives: KEYS for the scripts (version keys, data, lease)."""

    __slots__ = ("flight", "keys")

    def __init__(self, versions: list[str], data: str) -> None:
        self.keys = [*versions, data, f"{data}:lease"]
        self.flight = data


class Cache(HelperBase):
    """A read-through cache over ``pool`` (see the module docstring).

    ``get_timeout`` bounds reads, ``set_timeout`` writes (each including the wait
    for a connection); ``serializer``: ``"json"`` (default), ``"pickle"`` (opt-in),
    a ``(dumps, loads)`` pair or an object with both; ``negative_ttl``: TTL of a
    cached ``None`` (0: never cache it); ``lease_ttl``: how long one process may
    hold the right to fill a key (a load that takes longer is returned but not
    written back); ``lease_wait``: how long a process that lost it polls for the
    value before calling its loader (not written back either); ``error_ttl``: how
    long a loader's failure is shared with callers in other processes (they raise
    ``LoaderError``; 0: not shared, they load); ``early_recompute_beta``:
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
        error_ttl: float = 1.0,
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
        self.error_ttl = 0.0 if error_ttl == 0 else self._check_ttl("error_ttl", error_ttl)
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
        self._writer = BackgroundWriter(
            writer_queue, name=f"redispool-cache-{namespace}", owner=self
        )
        self._flight = SingleFlight()
        self._cached_names: dict[str, Any] = {}  # cached() without key=: see there
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        _CACHES.add(self)
        pool.on_close(self.close)  # queued write-backs go out before the pool closes

    # -- validation and keys -------------------------------------------------

    @staticmethod
    def _check_ttl(name: str, ttl: Any) -> float:
        _number(name, ttl, minimum=0)
        if not 0.001 <= ttl <= MAX_TTL:
            raise ValueError(f"{name} must be between 0.001 and {MAX_TTL:.0f} seconds, got {ttl!r}")
        return float(ttl)

    def _ttl_ms(self, ttl: float | None, value: Any) -> int:
        """PX for ``value``; -1 means "do not cache" (a None with negative_ttl=0:
        the write deletes the entry instead, which that None makes out of date)."""
        seconds = (self.negative_ttl if ttl is None else ttl) if value is None else ttl
        return round((self.default_ttl if seconds is None else seconds) * 1000) or -1

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
        return _Loc(keys, slot_key(self.namespace, self.namespace, "v", digest))

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

    def _read(self, loc: _Loc, token: str = "", renew: bool = False) -> _Read:
        """One round trip: the value, and with ``token`` an attempt at the lease
        (on a miss, or always with ``renew``)."""
        args = (token, round(self.lease_ttl * 1000), int(renew), fmt.fresh_version())
        row = self._timed(
            "GET+lease" if token else "GET", self, lambda r: fmt.READ(r, loc.keys, args)
        )
        failed = row[4].decode(errors="replace") if len(row) > 4 else ""
        return _Read(row[0], row[1], int(row[2]), int(row[3]), failed)

    def _store(self, loc: _Loc, args: tuple[Any, ...]) -> int:
        args = (*args, fmt.fresh_version())
        return int(self._timed("SET", self._writes, lambda r: fmt.WRITE(r, loc.keys, args)))

    def _write_back(
        self, loc: _Loc, lease: tuple[bytes, str], payload: bytes, ttl_ms: int, failed: str
    ) -> int:
        """1 stored, 0 nothing to store, -1 refused (invalidated or the lease lost
        meanwhile), -2 Redis failed."""
        ver, token = lease
        error_ms = round(self.error_ttl * 1000)
        try:
            done = self._store(loc, (token, ver, payload, ttl_ms, failed, error_ms))
        except RedisError:
            self._inc("errors")
            return -2
        if done < 0:
            self._inc("refused_writes")
        return done

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
            if kind != fmt.VALUE:  # (a later version's format, say)
                reason = f"unknown kind {kind!r}"
            else:
                try:
                    return self._loads(raw[fmt.HEADER.size :]), delta_ms / 1000
                except Exception as exc:
                    reason = type(exc).__name__
        else:
            reason = "too short"
        self._inc("errors")
        log.warning("cache %r: unreadable entry (%s); treated as a miss", self.namespace, reason)
        return _MISS, 0.0

    def _copy(self, value: T) -> T:
        """A follower's own copy of the leader's value, as a hit would decode it:
        what one request changes in its value must not show in another's."""
        if value is None or type(value) in (str, bytes, int, float, bool):  # immutable
            return value
        raw = fmt.encode(self._dumps, value, 0.0)
        return self._loads(raw[fmt.HEADER.size :])  # type: ignore[no-any-return]

    # -- public API ------------------------------------------------------------

    def get(self, key: Any, default: Any = None, *, tags: Iterable[str] = ()) -> Any:
        """The cached value (``None`` if ``None`` was cached), else ``default``.

        Never raises because of Redis: an error counts and returns ``default``."""
        loc = self._locate(key, tags)
        try:
            raw = self._read(loc).value
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
        ``negative_ttl`` for a ``None``); False if Redis failed, or for a ``None``
        with ``negative_ttl=0``: the key's entry is then deleted, not replaced.
        TypeError if the serializer cannot encode it."""
        loc = self._locate(key, tags)
        if ttl is not None:
            self._check_ttl("ttl", ttl)
        payload = fmt.encode(self._dumps, value, 0.0)
        ttl_ms = self._ttl_ms(ttl, value)
        try:
            return self._store(loc, ("", "", payload, ttl_ms, "", 0)) == 1
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
        """The cached value, else ``loader()``'s (written back in the background,
        or at once when other callers of this process wait for it).

        Only loader exceptions propagate (this caller's loader's, or the one it
        waited for; ``LoaderError`` if it failed in another process within
        ``error_ttl``), and TypeError for a value the serializer cannot encode; a
        Redis failure just means calling the loader."""
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {loader!r}")
        if ttl is not None:
            self._check_ttl("ttl", ttl)
        loc = self._locate(key, tags)
        try:
            raw, pttl = self._read(loc)[1:3]
        except RedisError:
            self._inc("errors")
            self._inc("fallbacks")
            return self._load(loc, loader, ttl, None)
        if raw is not None:
            value, delta = self._decode(raw)
            if value is not _MISS:
                self._inc("hits")
                # XFetch: recompute early, with a probability rising near expiry.
                if self.beta and 0 < pttl <= -delta * self.beta * math.log(self._rand()) * 1000:
                    return self._flight.do(  # type: ignore[no-any-return]
                        loc.flight,
                        lambda flight: self._recompute(loc, loader, ttl, value, flight),
                        lambda: value,  # someone is on it: serve what we have
                        0,
                        self._copy,
                    )
                return value  # type: ignore[no-any-return]
        self._inc("misses")
        return self._flight.do(
            loc.flight,
            lambda flight: self._fill(loc, loader, ttl, flight),
            lambda: self._fill(loc, loader, ttl, None),  # the leader is slow, or its value
            self.lease_wait + self.lease_ttl,  # is older than this caller's miss
            self._copy,
        )

    def _recompute(
        self, loc: _Loc, loader: Callable[[], T], ttl: Any, old: T, flight: Flight[T]
    ) -> T:
        """XFetch: take the lease even though the value is there; if another caller
        has it (or Redis fails), serve the cached value. Followers keep their own
        (``old`` may predate their miss) unless the new value was stored."""
        flight.share_upto = 0
        token = os.urandom(12).hex()
        try:
            read = self._read(loc, token, renew=True)
        except RedisError:
            self._inc("errors")
            return old
        if read.lease != 1:
            return old
        self._inc("early_recomputes")
        try:
            lease = (read.version, token)
            return self._load(loc, loader, ttl, lease, share_failure=False, flight=flight)
        except Exception:  # the cached value is still valid: serve it
            flight.share_upto = 0
            log.warning("cache %r: early recompute failed", self.namespace, exc_info=True)
            return old

    def _fill(
        self, loc: _Loc, loader: Callable[[], T], ttl: float | None, flight: Flight[T] | None
    ) -> T:
        """After a miss: win the lease and load, or wait for the holder's outcome
        (at most ``lease_wait``, then load without writing back). As the leader of
        ``flight``, let only the followers that joined before a value was read
        (or, for a loaded value, before its write-back was accepted) share it."""
        token = os.urandom(12).hex()
        deadline = time.monotonic() + self.lease_wait
        delay = 0.01
        renew = False
        while True:
            joined = flight.followers if flight is not None else 0
            try:
                read = self._read(loc, token, renew)
            except RedisError:
                self._inc("errors")
                self._inc("fallbacks")
                if flight is not None:  # loaded after this attempt: fresh for them
                    flight.share_upto = joined
                return self._load(loc, loader, ttl, None)
            if read.value is not None:
                value = self._decode(read.value)[0]
                if value is not _MISS:
                    if flight is not None:
                        flight.share_upto = joined
                    return value  # type: ignore[no-any-return]
                if not renew:  # unreadable: take the lease to replace it
                    renew = True
                    continue
            if read.lease == 1:
                return self._load(loc, loader, ttl, (read.version, token), flight=flight)
            if read.lease == -1:
                self._inc("shared_failures")
                raise LoaderError(
                    f"cache {self.namespace!r}: the loader for this key failed in another "
                    f"process ({read.failed}); not retried for {self.error_ttl:g} s"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._inc("lease_timeouts")
                if flight is not None:  # loaded after this read: fresh for them
                    flight.share_upto = joined
                return self._load(loc, loader, ttl, None)
            if delay == 0.01:
                self._inc("lease_waits")
            time.sleep(min(delay * (0.5 + random.random()), remaining))
            delay = min(delay * 1.5, 0.1)

    def _load(
        self,
        loc: _Loc,
        loader: Callable[[], T],
        ttl: Any,
        lease: tuple[bytes, str] | None,
        *,
        share_failure: bool = True,
        flight: Flight[T] | None = None,
    ) -> T:
        """Call the loader. With the ``lease`` (version, token) won before loading,
        queue the write-back: the value, or the failure for ``error_ttl``, or just
        the lease's release. Without it, write nothing. If followers of ``flight``
        wait for the value, write it now and share it only if Redis accepted it
        (else it predates an invalidation they may have seen)."""
        self._inc("loader_calls")
        start = time.monotonic()
        try:
            value = loader()
            ttl_ms = self._ttl_ms(None if value is None else ttl, value)  # -1: do not cache
            payload = (
                fmt.encode(self._dumps, value, time.monotonic() - start) if ttl_ms > 0 else b""
            )
        except BaseException as exc:
            if lease is not None:
                name = type(exc).__name__[:MAX_ERROR_NAME]
                failed = name if share_failure and isinstance(exc, Exception) else ""
                self._writer.submit(functools.partial(self._write_back, loc, lease, b"", 0, failed))
            raise
        if lease is None:
            return value
        if flight is not None and flight.seal():
            flight.share_upto = 0
            if self._write_back(loc, lease, payload, ttl_ms, "") >= 0:
                flight.share_upto = flight.followers
        else:
            self._writer.submit(
                functools.partial(self._write_back, loc, lease, payload, ttl_ms, "")
            )
        return value

    def invalidate(self, key: Any, *, tags: Iterable[str] = ()) -> bool:
        """Delete one key and revoke its lease: a value being loaded now is not
        written back. True if it held an entry. Raises ``HelperUnavailable`` if
        Redis failed: a silently failed invalidation would serve stale data."""
        loc = self._locate(key, tags)
        args = [fmt.fresh_version()]
        return bool(self._timed("DEL", self._writes, lambda r: fmt.DELETE(r, loc.keys, args)))

    def invalidate_all(self) -> int:
        """Invalidate the whole namespace (one INCR); returns its new version."""
        return self._bump(self._version_key)

    def invalidate_tag(self, tag: str) -> int:
        """Invalidate every key cached with ``tag`` (one INCR); returns its new version."""
        return self._bump(self._tag_key(tag, "tag"))

    def _bump(self, key: str) -> int:
        args = [fmt.fresh_version()]
        return int(self._timed("INCR", self._writes, lambda r: fmt.BUMP(r, [key], args)))

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
        Without ``key``, a second function of the same qualified name made by a
        factory from other values (or a second lambda of one module) is refused
        on this cache (``TypeError``): such functions share that name, and would
        read each other's values. The same function decorated again, one a
        factory or fixture makes again from the same values, or a module-level
        function made again (a module reloaded), is not refused.
        """
        if ttl is not None:
            self._check_ttl("ttl", ttl)
        if key is not None and not callable(key):
            raise TypeError(f"key must be callable, got {key!r}")
        tag_list = self._check_tags(tags)
        self._locate("x", tag_list)  # validate now

        def decorate(fn: Callable[P, T]) -> Callable[P, T]:
            name = f"{fn.__module__}.{fn.__qualname__}"
            if key is None:
                with self._lock:
                    taken = not _one_function(self._cached_names.get(name, fn), fn)
                    if not taken:
                        self._cached_names[name] = fn
                if taken:
                    raise TypeError(
                        f"cached: {name} is already cached here without key=: two "
                        "functions of one name (made by a factory, say) would share "
                        "entries; pass key="
                    )

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
        out["single_flight_shared_errors"] = self._flight.shared_errors
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
