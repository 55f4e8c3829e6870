"""Counters and unique counts per time bucket, optionally buffered in memory.

Keys: ``<ns>:c:{<name>}:<bucket_start>`` (INCRBY) and ``<ns>:u:{<name>}:<bucket_start>``
(HyperLogLog; ``%``, ``:``, ``{`` and ``}`` in a name are written ``%25``, ``%3A``,
``%7B`` and ``%7D``, so that no name can spell a key of another namespace; all
buckets of a name share a Redis Cluster hash slot), with a TTL of ``retention`` seconds
from the last write (EXPIRE, not EXPIREAT: an injected clock never makes an
expired key). Buckets are aligned to the epoch (``"day"`` = UTC days); use one
bucket width per namespace (widths share keys).

Names are validated, not hashed (readable keys): 1-200 printable characters, no
whitespace. Unique members are hashed (16-byte BLAKE2b): user input never reaches
Redis. The hash is keyed with ``secret`` (default ``REDISPOOL_KEY_SECRET``, else
unkeyed), which every process counting into the same keys must share.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import redis
from redis.exceptions import RedisClusterException, RedisError

from .._poolparts import _number
from .base import (
    CircuitBreaker,
    HelperBase,
    HelperUnavailable,
    check_seconds,
    server_cannot_serve,
)

if TYPE_CHECKING:
    from ..redis_pool import RedisPool

__all__ = ["Analytics"]

log = logging.getLogger("redispool.helpers.analytics")
R = TypeVar("R")
When = float | datetime

BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_NAME = 200
MAX_BUCKETS = 10_000  # buckets one series() / count_unique() may read
FLUSH_CHUNK = 10_000  # buffered entries per pipeline (a normal flush is one pipeline)
_INT64 = 2**63
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z, the last second datetime can show


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r} ({type(name).__name__})")
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"name must be 1-{MAX_NAME} characters, got {len(name)}")
    if not name.isprintable() or any(ch.isspace() for ch in name):
        raise ValueError(f"name must be printable without whitespace, got {name!r}")
    return name


def _timestamp(value: Any, field: str) -> float:
    given = value
    if isinstance(value, datetime):
        try:  # (a naive datetime is local time: near year 1 or 9999 it may not map)
            value = value.timestamp()
        except (ValueError, OverflowError, OSError) as exc:
            raise ValueError(f"{field} is out of range, got {given!r}: {exc}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field} must be a Unix time or a datetime, got {value!r}")
    if not 0 <= value <= MAX_TIME:  # also rejects NaN and inf, and a datetime before 1970
        raise ValueError(f"{field} must be a Unix time between 0 and {MAX_TIME}, got {given!r}")
    return float(value)


def _member_bytes(member: Any) -> bytes:
    if isinstance(member, str):
        return member.encode("utf-8", "surrogatepass")
    if isinstance(member, bytes):
        return member
    if isinstance(member, int) and not isinstance(member, bool):
        return str(member).encode()  # 42 and "42" are the same member
    raise TypeError(f"members must be str, bytes or int, got {member!r}")


class Analytics(HelperBase):
    """Counters and HyperLogLog unique counts per time bucket.

    Unbuffered, every write is one pipeline (one round trip). With
    ``buffered=True`` writes only touch memory and a background thread flushes
    them in one pipeline every ``flush_interval`` seconds or after
    ``flush_items`` writes; data survives a Redis outage in memory (at least
    once: a flush that timed out after Redis applied it is written again) up to
    ``max_buffer`` entries (counter keys + unique members). Reads only see
    flushed data.

    ``on_error="ignore"`` (default): a failing call counts the error and returns
    None (``flush()``: 0); ``"raise"``: ``HelperUnavailable`` (or the
    ``redis.ResponseError``) reaches the caller.
    """

    def __init__(
        self,
        pool: RedisPool,
        *,
        namespace: str = "stats",
        bucket: int | str = 60,
        retention: int = 7 * 86400,
        timeout: float = 0.25,
        buffered: bool = False,
        flush_interval: float = 0.5,
        flush_items: int = 1000,
        max_buffer: int = 100_000,
        on_error: Literal["ignore", "raise"] = "ignore",
        secret: bytes | str | None = None,
        clock: Callable[[], float] = time.time,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        super().__init__(pool, namespace=namespace, timeout=timeout, breaker=breaker)
        if isinstance(bucket, str):
            if bucket not in BUCKETS:
                raise ValueError(
                    f"bucket must be seconds or one of {sorted(BUCKETS)}, got {bucket!r}"
                )
            bucket = BUCKETS[bucket]
        self.bucket: int = _number("bucket", bucket, minimum=1, integer=True)
        self.retention: int = _number("retention", retention, minimum=1, integer=True)
        for label, value in (("bucket", self.bucket), ("retention", self.retention)):
            check_seconds(label, value, minimum=1)  # EXPIRE refuses more than 2**63 ms
        self.flush_interval = check_seconds("flush_interval", flush_interval, minimum=0.001)
        self.flush_items: int = _number("flush_items", flush_items, minimum=1, integer=True)
        self.max_buffer: int = _number("max_buffer", max_buffer, minimum=1, integer=True)
        if on_error not in ("ignore", "raise"):
            raise ValueError(f"on_error must be 'ignore' or 'raise', got {on_error!r}")
        if secret is None:
            secret = os.environ.get("REDISPOOL_KEY_SECRET", "")
        if not isinstance(secret, (bytes, str)):
            raise TypeError(f"secret must be bytes or str, got {type(secret).__name__}")
        raw = secret.encode() if isinstance(secret, str) else secret
        self._secret = hashlib.blake2b(raw).digest() if raw else b""
        if not isinstance(buffered, bool):
            raise TypeError(f"buffered must be a bool, got {buffered!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.buffered = buffered
        self.on_error = on_error
        self._clock = clock
        # calls accepted; pipelines and keys flushed; buffered entries dropped (buffer full)
        self.increments = self.unique_adds = self.flushes = self.flushed_keys = self.dropped = 0
        self._closed = False
        self._reset_buffer()
        if self.buffered:
            _LIVE.add(self)
            pool.on_close(self.close)  # flushed before the pool closes, whatever the exit order

    def _reset_buffer(self) -> None:
        """Fresh buffer state (at start, and in a forked child). The pid comes
        last: a thread of the child that sees it uses the new state (see
        _after_fork)."""
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time (see flush)
        self._buf: dict[str, int | set[bytes]] = {}  # counter key -> n, HLL key -> members
        self._entries = 0  # counter keys + unique members in _buf
        self._pending = 0  # writes since the last flush started
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made_with = threading.Lock  # (gevent's once patched: see _after_fork)
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        """Forked: the parent's buffer and thread are not ours. Replaced once,
        by the first thread of the child to get here (the others wait). So are
        locks and events made before gevent's monkey-patching, if no flush thread
        uses them yet: native ones, they would block the whole process (the
        flush greenlet holds ``_flushing`` across its I/O, waits on ``_wake``)."""
        if self._pid != os.getpid() or self._made_with is not threading.Lock:
            with _FORK_LOCK:
                if self._pid != os.getpid():
                    self._reset_buffer()
                elif self._made_with is not threading.Lock and self._thread is None:
                    self._reset_buffer()  # (nothing buffered: no thread flushes yet)

    # -- keys and input --------------------------------------------------------

    def bucket_start(self, at: When | None = None) -> int:
        """Start (Unix seconds) of the bucket holding ``at`` (default: now)."""
        t = self._clock() if at is None else _timestamp(at, "at")
        return int(t // self.bucket) * self.bucket

    def _key(self, kind: str, name: str, start: int) -> str:
        for ch in "%:{}":  # "%" first; no name spells another key or a hash tag
            if ch in name:
                name = name.replace(ch, f"%{ord(ch):02X}")
        return f"{self.namespace}:{kind}:{{{name}}}:{start}"  # a name's buckets: one slot

    def _range(self, start: When, end: When) -> list[int]:
        last = self.bucket_start(_timestamp(end, "end"))
        first = self.bucket_start(_timestamp(start, "start"))
        if first > last:
            raise ValueError(f"start must not be after end, got start={start!r} end={end!r}")
        n = (last - first) // self.bucket + 1
        if n > MAX_BUCKETS:
            raise ValueError(
                f"start..end covers {n} buckets (at most {MAX_BUCKETS}); narrow the range"
            )
        return list(range(first, last + 1, self.bucket))

    def _digest(self, member: Any) -> bytes:
        return hashlib.blake2b(_member_bytes(member), digest_size=16, key=self._secret).digest()

    # -- the public API --------------------------------------------------------

    def incr(self, name: str, amount: int = 1, *, at: When | None = None) -> int | None:
        """Add ``amount`` to ``name``'s counter in the bucket of ``at`` (default: now).

        Returns the new count, or None when buffered or when Redis failed.
        """
        key = self._key("c", _check_name(name), self.bucket_start(at))
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"amount must be an int, got {amount!r} ({type(amount).__name__})")
        if not -_INT64 <= amount < _INT64:
            raise ValueError(f"amount must fit in 64 bits, got {amount!r}")
        if self.buffered and self._buffer(key, amount, 1):
            return None
        with self._lock:
            self.increments += 1

        def op(r: redis.Redis) -> int:
            pipe = r.pipeline(transaction=False)
            pipe.incrby(key, amount)
            pipe.expire(key, self.retention)
            return int(pipe.execute()[0])

        return self._policy(op)

    def get(self, name: str, *, at: When | None = None) -> int | None:
        """The count of ``name`` in the bucket of ``at`` (default: now)."""
        key = self._key("c", _check_name(name), self.bucket_start(at))
        return self._policy(lambda r: int(r.get(key) or 0))

    def series(self, name: str, start: When, end: When) -> list[tuple[int, int]] | None:
        """``[(bucket_start, count), ...]`` for every bucket from ``start`` to ``end``
        (both included, zeros for empty buckets), in one MGET."""
        name = _check_name(name)
        starts = self._range(start, end)
        keys = [self._key("c", name, s) for s in starts]

        def op(r: redis.Redis) -> list[tuple[int, int]]:
            return [(s, int(v or 0)) for s, v in zip(starts, r.mget(keys), strict=True)]

        return self._policy(op)

    def add_unique(self, name: str, *members: Any, at: When | None = None) -> bool | None:
        """Add ``members`` (str, bytes or int; hashed) to ``name``'s HyperLogLog in
        the bucket of ``at``. Returns whether the estimate changed, or None when
        buffered or when Redis failed."""
        key = self._key("u", _check_name(name), self.bucket_start(at))
        digests = {self._digest(m) for m in members}
        if not digests:
            return False
        if self.buffered and self._buffer(key, digests, len(digests)):
            return None
        with self._lock:
            self.unique_adds += 1

        def op(r: redis.Redis) -> bool:
            pipe = r.pipeline(transaction=False)
            pipe.pfadd(key, *digests)
            pipe.expire(key, self.retention)
            return bool(pipe.execute()[0])

        return self._policy(op)

    def count_unique(
        self, name: str, start: When | None = None, end: When | None = None
    ) -> int | None:
        """Estimated distinct members of ``name`` over the buckets from ``start`` to
        ``end`` (one PFCOUNT). Defaults: ``end`` = now, ``start`` = ``end``."""
        name = _check_name(name)
        end_t = self._clock() if end is None else end
        starts = self._range(end_t if start is None else start, end_t)
        keys = [self._key("u", name, s) for s in starts]
        return self._policy(lambda r: int(r.pfcount(*keys)))

    def stats(self) -> dict[str, Any]:
        """Counters of this helper, plus the breaker's state."""
        return {
            "increments": self.increments,
            "unique_adds": self.unique_adds,
            "flushes": self.flushes,
            "flushed_keys": self.flushed_keys,
            "buffered": len(self._buf) if self._pid == os.getpid() else 0,
            "buffered_entries": self._entries if self._pid == os.getpid() else 0,
            "dropped": self.dropped,
            "errors": self.errors,
            "rejected": self.rejected,
            "breaker": self.breaker.as_dict(),
        }

    def _policy(self, fn: Callable[[redis.Redis], R]) -> R | None:
        try:
            return self._call(fn)
        except RedisError as exc:
            if not isinstance(exc, HelperUnavailable):  # e.g. WRONGTYPE: _call did not count it
                self.errors += 1
                log.error("Analytics: redis error: %r", exc)
            if self.on_error == "raise":
                raise
            return None

    # -- buffering -------------------------------------------------------------

    def _buffer(self, key: str, value: int | set[bytes], weight: int) -> bool:
        """Add a write to the buffer; False if closed (the caller writes directly)."""
        self._after_fork()
        with self._lock:
            if self._closed:
                return False
            if self._thread is None or not self._thread.is_alive():
                # (not alive: killed, e.g. a greenlet.kill or, under gevent, a
                # signal handler's exception landing in it: a new one flushes)
                thread = threading.Thread(
                    target=_flusher,
                    args=(weakref.ref(self), self._wake, self._stop, self.flush_interval),
                    name=f"redispool-analytics-flush[{self.namespace}]",
                    daemon=True,
                )
                try:
                    thread.start()
                except RuntimeError:
                    # No new thread (interpreter shutdown on 3.12+, e.g. an atexit
                    # hook after ours; the OS's thread limit): nothing would
                    # flush this write, so it goes straight to Redis. Tried again
                    # next time.
                    return False
                self._thread = thread
            if isinstance(value, int):
                self.increments += 1
            else:
                self.unique_adds += 1
            self._merge(key, value)
            self._pending += weight
            wake = self._pending >= self.flush_items and not self._wake.is_set()
        if wake:
            self._wake.set()
        return True

    def _merge(self, key: str, value: int | set[bytes]) -> None:
        """Aggregate into the buffer, within ``max_buffer`` entries (lock held)."""
        buf = self._buf
        old = buf.get(key)
        if isinstance(value, int):
            if isinstance(old, int):
                buf[key] = old + value
            elif self._entries < self.max_buffer:
                buf[key] = value
                self._entries += 1
            else:
                self.dropped += 1
            return
        members: set[bytes] = old if isinstance(old, set) else set()
        room = self.max_buffer - self._entries
        new = value - members
        if len(new) > room:
            self.dropped += len(new) - room
            new = set(list(new)[:room])
        if new:
            members |= new
            self._entries += len(new)
            buf[key] = members

    def flush(self) -> int:
        """Write the buffer now, one pipeline (one round trip) per ``FLUSH_CHUNK``
        entries (and, on a Redis Cluster, per node); returns how many keys were
        written. What could not be written goes back into the buffer. A flush
        in progress (the background thread's) is waited for first, so what was
        buffered before the call is in Redis (or back in the buffer) when it
        returns."""
        self._after_fork()
        with self._flushing:
            return self._flush()

    def _flush(self, force: bool = False) -> int:
        with self._lock:
            items = list(self._buf.items())
            self._buf, self._entries, self._pending = {}, 0, 0
        try:
            items, nodes = self._by_node(items)
        except BaseException as exc:  # the cluster is unreachable (or an interruption)
            with self._lock:
                for k, v in items:
                    self._merge(k, v)
                if not isinstance(exc, (RedisError, RedisClusterException)):
                    raise
                self.errors += 1
            if self.on_error == "raise":
                raise HelperUnavailable(f"Analytics: redis unavailable: {exc}") from exc
            return 0
        written = 0
        chunk: list[tuple[str, int | set[bytes]]] = []
        weight = 0
        for i, (key, value) in enumerate(items):
            chunk.append((key, value))
            weight += 1 if isinstance(value, int) else len(value)
            if weight < FLUSH_CHUNK and i < len(items) - 1 and nodes[i + 1] == nodes[i]:
                continue
            todo = list(chunk)  # what Redis has not applied yet (see _write)
            try:
                failed = self._call(functools.partial(self._write, chunk=todo), force=force)
            except RedisError:
                with self._lock:
                    # Only what was not applied: a pipeline refused in part (OOM
                    # reached mid-way, MOVED for some slots) applied the rest.
                    self.flushed_keys += len(chunk) - len(todo)
                    for k, v in (*todo, *items[i + 1 :]):
                        self._merge(k, v)
                if self.on_error == "raise":
                    raise
                return written + len(chunk) - len(todo)
            except BaseException:  # Ctrl-C, SystemExit, gevent.Timeout, a bug: keep the rest
                with self._lock:
                    for k, v in (*todo, *items[i + 1 :]):
                        self._merge(k, v)
                raise
            with self._lock:
                self.flushes += 1
                self.flushed_keys += len(chunk)
                self.errors += failed
            written += len(chunk)
            chunk, weight = [], 0
        return written

    def _by_node(
        self, items: list[tuple[str, int | set[bytes]]]
    ) -> tuple[list[tuple[str, int | set[bytes]]], list[str]]:
        """The items, and the node serving each: on a Redis Cluster, sorted by node
        (one pipeline per node); on one server, as they are."""
        node_of = getattr(self.pool, "node_of", None)
        if node_of is None:
            return items, [""] * len(items)
        nodes = [node_of(key) for key, _ in items]
        order = sorted(range(len(items)), key=nodes.__getitem__)
        return [items[i] for i in order], [nodes[i] for i in order]

    def _write(self, r: redis.Redis, chunk: list[tuple[str, int | set[bytes]]]) -> int:
        """One pipeline writing ``chunk``; returns how many commands Redis refused
        (e.g. WRONGTYPE): those are not retried, as the rest was applied. When
        Redis could not serve some (OOM, READONLY, MOVED, ...), raises, and
        ``chunk`` keeps only the items it did not apply (so that neither a retry
        nor the buffer writes an applied INCRBY twice)."""
        pipe = r.pipeline(transaction=False)
        for key, value in chunk:
            if isinstance(value, int):
                pipe.incrby(key, value)
            else:
                pipe.pfadd(key, *value)
            pipe.expire(key, self.retention)
        replies = pipe.execute(raise_on_error=False)
        refused = [x for x in replies if isinstance(x, Exception)]
        unavailable = [x for x in refused if server_cannot_serve(x)]
        if unavailable:  # OOM, READONLY, ...: the policy, and keep what was not applied
            written = replies[::2]  # INCRBY or PFADD, then EXPIRE, per item
            chunk[:] = [
                item
                for item, reply in zip(chunk, written, strict=True)
                if isinstance(reply, Exception) and server_cannot_serve(reply)
            ]
            if len(refused) > len(unavailable):
                with self._lock:
                    self.errors += len(refused) - len(unavailable)
            raise unavailable[0]
        if refused:
            log.error("Analytics: flush: redis refused %d commands: %r", len(refused), refused[0])
        return len(refused)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the flush thread and flush what is left; later writes go straight
        to Redis. Data still unwritten (Redis down) is logged and stays pending."""
        self._after_fork()
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout)
        _LIVE.discard(self)
        # A flush still running (the thread's, past the join's timeout) ends
        # first: it holds items the buffer does not show, and may put some back.
        with self._flushing:
            if self._buf:  # the last flush: tried even if the breaker is open
                self._flush(force=True)
            if self._buf:
                log.warning("Analytics: %d buffered keys not written at close", len(self._buf))

    def __enter__(self) -> Analytics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = " buffered" if self.buffered else ""
        return f"<Analytics {self.namespace!r} bucket={self.bucket}s{mode}>"


def _flusher(
    ref: weakref.ref[Analytics], wake: threading.Event, stop: threading.Event, interval: float
) -> None:
    """The flush loop; holds its Analytics weakly, so an abandoned one can be collected."""
    while not stop.is_set():
        wake.wait(interval)
        wake.clear()
        analytics = ref()
        if stop.is_set() or analytics is None:
            return
        try:
            analytics.flush()
        except Exception as exc:  # keep flushing whatever happens
            log.debug("Analytics: background flush failed: %r", exc)
        del analytics


_LIVE: weakref.WeakSet[Analytics] = weakref.WeakSet()
_FORK_LOCK = threading.Lock()  # one reset of a buffer in a forked child


def _new_fork_lock() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()  # a thread that did not fork may have held it


os.register_at_fork(after_in_child=_new_fork_lock)


@atexit.register
def _close_all() -> None:
    """Flush every buffered Analytics still open at interpreter exit."""
    for analytics in list(_LIVE):
        try:
            analytics.close(timeout=1.0)
        except Exception as exc:
            log.warning("Analytics: flush at exit failed: %r", exc)
