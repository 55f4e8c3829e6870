"""redis-py connections that know when they are dirty, plus the cheap liveness test.

A pooled connection keeps, per server session, what the session owes and holds:

* ``_rp_sent`` counts the commands packed (their sequence numbers), ``_rp_flushed``
  the ones handed to the socket, ``_rp_pending`` the replies still owed;
* commands that change the session (MULTI, WATCH, SELECT, SUBSCRIBE, CLIENT
  TRACKING, ...) wait in ``_rp_marks`` as (sequence number, kind) and take effect
  on ``_rp_state`` when *their reply* is read: a success applies the effect, an
  error reply marks the connection dirty (when in doubt, discard);
* a (re)connect starts a fresh session: the handshake (AUTH, HELLO, SELECT of the
  configured db, CLIENT SETNAME, a ``redis_connect_func``) is not the user's, the
  replies of commands sent before are gone, and only commands packed but not yet
  sent are still owed, their marks still pending.

``is_clean()`` says whether the next borrower may have it; ``is_alive()`` says,
without a round trip, whether the server closed it or sent bytes nobody asked for.
"""

from __future__ import annotations

import select
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._packer import signal_safe
from ._sockio import LARGE_WRITE, kernel_timeouts, set_kernel_timeout
from .dns import DNSCache

__all__ = [
    "PooledConnection",
    "PooledSSLConnection",
    "PooledUnixConnection",
    "io_timeout",
    "is_alive",
    "pooled_class",
    "set_io_timeout",
]

# Session state bits (``_rp_state``): anything set means "not clean".
IN_MULTI, WATCHING, DIRTY, TIMEOUT_SET = 1, 2, 4, 8

# What a command does to the session once the server accepts it: 0 nothing, else
# one of these (``_CLIENT``: resolved by its subcommand, see ``_SUBCOMMANDS``).
_MULTI, _EXEC, _WATCH, _UNWATCH, _DIRTY, _CLIENT = 1, 2, 3, 4, 5, 6
_NAMES = {
    "MULTI": _MULTI,
    "EXEC": _EXEC,
    "DISCARD": _EXEC,
    "WATCH": _WATCH,
    "UNWATCH": _UNWATCH,
    "CLIENT": _CLIENT,
    "SCRIPT": _CLIENT,
}
_STATEFUL = (
    "SELECT SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE MONITOR "
    "AUTH HELLO RESET QUIT READONLY READWRITE SYNC PSYNC REPLCONF ASKING"
)
for _name in _STATEFUL.split():
    _NAMES[_name] = _DIRTY
# CLIENT subcommands that change what this connection sees or is (CAPA: Valkey 8's
# -REDIRECT replies; MAINT_NOTIFICATIONS: Redis 8's maintenance pushes).
_CLIENT_DIRTY = frozenset(
    [
        "TRACKING",
        "REPLY",
        "SETNAME",
        "SETINFO",
        "NO-EVICT",
        "NO-TOUCH",
        "CACHING",
        "KILL",
        "CAPA",
        "MAINT_NOTIFICATIONS",
    ]
)
_SUBCOMMANDS = {
    "CLIENT": _CLIENT_DIRTY,
    # SCRIPT DEBUG YES|SYNC: this connection's next EVAL opens a Lua debugging session
    "SCRIPT": frozenset(["DEBUG"]),
}
_cache: dict[Any, int] = {}


def _classify(name: Any) -> int:
    """Classify a command name (str or bytes, any case); cached, bounded."""
    exact = type(name) is str or type(name) is bytes  # (a subclass may hash as another)
    kind = _cache.get(name) if exact else None
    if kind is not None:
        return kind
    try:
        text = _text(name)
    except Exception:
        return 0
    words = text.upper().split()
    kind = _NAMES.get(words[0], 0) if words else 0
    if kind == _CLIENT and len(words) > 1:
        kind = _DIRTY if words[1] in _SUBCOMMANDS[words[0]] else 0
    if len(_cache) < 4096 and exact:
        _cache[name] = kind
    return kind


def _text(arg: Any) -> str:
    """A command word as redis-py sends it: bytes-like as its bytes, a str
    subclass (a ``(str, Enum)`` member) as its str value, not its ``str()``."""
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg).decode("latin-1")
    if isinstance(arg, str):
        return str.__str__(arg)
    return str(arg)


class _PooledMixin:
    """Session tracking on top of a redis-py connection class (see the module doc)."""

    _sock: Any
    _connect_callbacks: list[Any]
    socket_timeout: float | None
    health_check_interval: Any
    next_health_check: Any
    host: Any
    port: Any
    _rp_sent = 0  # commands packed, ever: the sequence number of the last one
    _rp_flushed = 0  # of those, the ones handed to the socket (or given up)
    _rp_pending = 0  # replies the current session owes
    _rp_marks: deque[tuple[int, int]] | None = None  # (sequence, kind) awaiting a reply
    _rp_state = 0  # IN_MULTI | WATCHING | DIRTY | TIMEOUT_SET bits; 0 is clean
    _rp_base = 0  # ``_rp_sent`` when the command count was last set
    _rp_errors = 0  # error replies and failed reads
    _rp_poll: Any = None
    _rp_own = False  # inside our send_command: what it sends is the command it counted
    _rp_packed: Any = None  # what pack_command(s) last returned, until it is sent
    _rp_timeout: float | None = None  # the per-operation timeout while TIMEOUT_SET
    _rp_kernel = 0.0  # the socket's timeout when the kernel keeps it (see _sockio), or 0
    _rp_dns: DNSCache | None = None

    @property
    def _rp_commands(self) -> int:
        """Commands sent (for the pool's stats); the handshake is not counted."""
        return self._rp_sent - self._rp_base

    @_rp_commands.setter
    def _rp_commands(self, value: int) -> None:
        self._rp_base = self._rp_sent - value

    # -- sending: count, and note what the command will do to the session

    def _construct_command_packer(self, packer: Any) -> Any:
        # hiredis's own packer crashes the process if a signal handler raises in it
        return signal_safe(super()._construct_command_packer(packer))  # type: ignore[misc]

    def _rp_note(self, args: Any) -> None:
        """Remember a stateful command (the last one counted) until its reply."""
        kind = _classify(args[0]) if args else 0
        if kind == _CLIENT:
            kind = _DIRTY if len(args) > 1 and _classify_sub(args[0], args[1]) else 0
        if kind:
            self._rp_mark(kind)

    def _rp_mark(self, kind: int) -> None:
        marks = self._rp_marks
        if marks is None:
            marks = self._rp_marks = deque()
        marks.append((self._rp_sent, kind))

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._rp_sent += 1
        self._rp_pending += 1
        if not args or not isinstance(args[0], (str, bytes)) or args[0] not in _PLAIN:
            self._rp_note(args)
        own, self._rp_own = self._rp_own, True
        try:
            super().send_command(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._rp_own = own

    def pack_command(self, *args: Any) -> Any:
        packed = super().pack_command(*args)  # type: ignore[misc]
        self._rp_sent += 1  # (counted once packed: a DataError packs nothing)
        self._rp_pending += 1
        self._rp_note(args)
        self._rp_packed = packed
        return packed

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        packed = super().pack_commands(commands)  # type: ignore[misc]
        for cmd in commands:
            self._rp_sent += 1
            self._rp_pending += 1
            self._rp_note(cmd)
        self._rp_packed = packed
        return packed

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if command is self._rp_packed:
            self._rp_packed = None
        elif not self._rp_own:  # bytes we did not pack: effect unknown
            # (not the commands packed before and still unsent: those stay owed)
            self._rp_sent += 1
            self._rp_pending += 1
            self._rp_mark(_DIRTY)
        sock, kernel = self._sock, self._rp_kernel
        # A large write: Python's timeout bounds the whole of it, the kernel's each send().
        whole = bool(kernel) and sock is not None and _size(command) > LARGE_WRITE
        whole = whole and sock.gettimeout() is None
        if whole:
            sock.settimeout(kernel)
        try:
            # May reconnect first (see _rp_connect): these commands go to the new session.
            super().send_packed_command(command, check_health)  # type: ignore[misc]
        except RedisConnectionError as exc:
            self._rp_give_up()
            # the kernel's write timeout (EAGAIN) on the socket we had, not a reconnect
            if kernel and sock is not None and isinstance(exc.__context__, BlockingIOError):
                raise RedisTimeoutError("Timeout writing to socket") from exc
            raise
        except BaseException:
            self._rp_give_up()
            raise
        finally:
            if whole and self._sock is sock:
                sock.settimeout(None)
        self._rp_flushed = self._rp_sent

    def check_health(self) -> None:
        """redis-py's PING after ``health_check_interval`` without a reply goes out
        ahead of the commands packed (and counted) but not yet sent: not counted, as
        the handshake. If it reconnects, those commands are owed by the new session."""
        if not self.health_check_interval or time.monotonic() <= self.next_health_check:
            return  # (redis-py's own test: no PING due, as before nearly every command)
        sock, sent, flushed, marks = self._sock, self._rp_sent, self._rp_flushed, self._rp_marks
        self._rp_marks = None  # (its reply settles none of theirs)
        done = False
        try:
            super().check_health()  # type: ignore[misc]
            done = True
        finally:
            self._rp_sent, self._rp_flushed, self._rp_marks = sent, flushed, marks
            if self._sock is not sock:  # a new session (or none), its state already set
                self._rp_pending = sent - flushed
                while marks and marks[0][0] <= flushed:
                    marks.popleft()
            elif not done:  # cut short: its reply may be unread
                self._rp_state |= DIRTY

    def _rp_give_up(self) -> None:
        """A send failed. Disconnected (redis-py closes on a failed write), its
        commands reach no session: nothing is owed. Still connected (a handshake
        cut short): nobody knows what the server got."""
        if self._sock is None:
            self._rp_flushed = self._rp_sent
            self._rp_new_session()
        else:
            self._rp_state |= DIRTY

    # -- reading: a reply settles the oldest owed command

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self._rp_kernel and "timeout" in kwargs and kwargs["timeout"] is None:
            return self._rp_read_unbounded(*args, **kwargs)
        try:
            response = super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as exc:
            if self._rp_marks:  # (settled while still owed: interrupted, it stays dirty)
                self._rp_settle(exc)
            self._rp_pending -= 1  # an error reply is still a reply
            if not isinstance(exc, NoScriptError):  # EVALSHA's normal first miss
                self._rp_errors += 1
            raise
        except RedisConnectionError as exc:
            self._rp_errors += 1
            if self._rp_kernel and isinstance(exc.__context__, BlockingIOError):  # its timeout
                where = self._host_error() if hasattr(self, "_host_error") else "socket"
                raise RedisTimeoutError(f"Timeout reading from {where}") from exc
            raise
        except BaseException:
            self._rp_errors += 1  # no reply read (redis-py disconnects, by default)
            raise
        if not kwargs.get("push_request"):  # a pushed message answers no command
            if self._rp_marks:
                self._rp_settle(None)
            self._rp_pending -= 1
        return response

    def _rp_read_unbounded(self, *args: Any, **kwargs: Any) -> Any:
        """A read asked to wait for ever (redis-py's blocking pub/sub read): lift
        the kernel's read timeout for it."""
        sock, kept = self._sock, self._rp_kernel
        self._rp_kernel = 0.0  # first: interrupted now, the next set_io_timeout re-applies it
        try:
            set_kernel_timeout(sock, None)
            return self.read_response(*args, **kwargs)
        finally:
            if self._sock is sock and not self._rp_kernel:  # not closed nor reconnected
                set_kernel_timeout(sock, kept)
                self._rp_kernel = kept

    def _rp_settle(self, error: ResponseError | None) -> None:
        """The reply just read (still counted as owed) may be a stateful command's:
        apply its effect."""
        marks = self._rp_marks
        seq = self._rp_sent - self._rp_pending + 1  # the command this reply answers
        while marks and marks[0][0] <= seq:
            mark, kind = marks[0]  # popped once applied: an interruption leaves doubt
            state = self._rp_state
            if mark < seq:  # its reply went unseen: nobody knows what it did
                state |= DIRTY
            elif error is not None and not (kind == _EXEC and isinstance(error, ExecAbortError)):
                state |= DIRTY  # refused (EXEC without MULTI keeps the WATCH): in doubt
            elif kind == _MULTI:
                state |= IN_MULTI
            elif kind == _EXEC:  # EXEC, DISCARD, EXECABORT: transaction and WATCH over
                state &= ~(IN_MULTI | WATCHING)
            elif kind == _WATCH:
                state |= WATCHING
            elif kind == _UNWATCH:
                state &= ~WATCHING
            else:
                state |= DIRTY
            self._rp_state = state
            marks.popleft()

    # -- sessions: a connect starts one, a disconnect ends it

    def _rp_new_session(self) -> None:
        """A new server session (or none): no state; the replies of commands
        already sent are gone; commands packed but not yet sent are still owed."""
        flushed = self._rp_flushed
        self._rp_pending = self._rp_sent - flushed
        self._rp_state &= TIMEOUT_SET
        marks = self._rp_marks
        while marks and marks[0][0] <= flushed:
            marks.popleft()

    def _rp_connect(self, connect: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Connect and shake hands, then start tracking the new session. redis-py
        connects from connect(), and inside send_packed_command after the commands
        to send were packed (and counted)."""
        if self._sock is not None:
            connect(*args, **kwargs)  # redis-py returns at once
            return
        saved = self._rp_sent, self._rp_flushed, self._rp_marks, self._rp_errors
        self._rp_marks = None
        try:
            connect(*args, **kwargs)
        except BaseException:
            self._rp_connected(saved, complete=False)
            raise
        self._rp_connected(saved, complete=True)

    if hasattr(Connection, "connect_check_health"):  # newer redis-py: connect() calls it

        def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
            self._rp_connect(super().connect_check_health, *args, **kwargs)  # type: ignore[misc]

    else:  # pragma: no cover - older redis-py connects (sends included) in connect()

        def connect(self, *args: Any, **kwargs: Any) -> None:
            self._rp_connect(super().connect, *args, **kwargs)  # type: ignore[misc]

    def _rp_connected(self, saved: tuple[Any, ...], *, complete: bool) -> None:
        """Forget the handshake's commands; start the new session's tracking."""
        self._rp_sent, self._rp_flushed, self._rp_marks, errors = saved
        if complete:
            self._rp_errors = errors  # e.g. CLIENT SETINFO refused by an older server
        self._rp_new_session()
        sock = self._sock
        if sock is None:
            return
        if not complete or self._connect_callbacks:
            # A handshake cut short (a BaseException: redis-py only closes on
            # RedisError), or callbacks that subscribe again (PubSub): never clean.
            self._rp_state |= DIRTY
        self._rp_kernel = 0.0  # a new socket
        # the configured timeout, or a lease's per-operation one
        if self._rp_state & TIMEOUT_SET:
            set_io_timeout(self, self.socket_timeout)  # the kernel's, then the block's
            set_io_timeout(self, self._rp_timeout, temporary=True)
        else:
            set_io_timeout(self, self.socket_timeout)
        poll_class = _raw_poll_class()
        if poll_class is not None:
            poller = poll_class()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            self._rp_poll = poller
        else:
            self._rp_poll = None

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        super().disconnect(*args, **kwargs)  # type: ignore[misc]
        self._rp_new_session()  # the old session's replies will never come

    def is_clean(self) -> bool:
        """True when the next borrower can have it: connected, nothing owed, no state."""
        return self._sock is not None and not self._rp_pending and not self._rp_state

    def _connect(self) -> Any:
        dns = self._rp_dns
        if dns is None or not isinstance(self, Connection):
            return super()._connect()  # type: ignore[misc]
        host = self.host
        last: BaseException | None = None
        for address in dns.resolve(host, self.port):
            self.host = address  # Connection._connect looks up self.host
            try:
                sock = Connection._connect(self)
                break
            except OSError as exc:
                last = exc
            finally:
                self.host = host
        else:
            raise last or OSError(f"no address for {host!r}")
        if isinstance(self, SSLConnection):  # handshake with the real name (SNI, cert check)
            try:
                return self._wrap_socket_with_ssl(sock)
            except (OSError, RedisError):
                sock.close()
                raise
        return sock


def _size(command: Any) -> int:
    """Bytes in a packed command (one buffer, or a list of them)."""
    if isinstance(command, (list, tuple)):
        return sum(len(part) for part in command)
    return len(command)


def _classify_sub(name: Any, sub: Any) -> bool:
    """Whether subcommand ``sub`` of ``name`` (CLIENT, SCRIPT) changes the session."""
    try:
        command, text = _text(name).upper().split()[0], _text(sub)
    except Exception:
        return True
    return text.upper() in _SUBCOMMANDS.get(command, ())


# The commands most sent: skip classification for them.
_PLAIN = frozenset(
    name
    for base in ("GET", "SET", "INCR", "DEL", "EXPIRE", "MGET", "EVALSHA", "HGET", "PING")
    for name in (base, base.lower(), base.encode(), base.lower().encode())
)


class PooledConnection(_PooledMixin, Connection):
    """A TCP connection that tracks its own dirtiness."""


class PooledSSLConnection(_PooledMixin, SSLConnection):
    """A TLS connection that tracks its own dirtiness."""


class PooledUnixConnection(_PooledMixin, UnixDomainSocketConnection):
    """A unix-socket connection that tracks its own dirtiness."""


def pooled_class(cls: type) -> type:
    """The tracking subclass for a redis-py connection class."""
    if issubclass(cls, _PooledMixin):
        return cls
    if issubclass(cls, SSLConnection):
        base: type = SSLConnection
    elif issubclass(cls, UnixDomainSocketConnection):
        base = UnixDomainSocketConnection
    elif issubclass(cls, Connection):
        base = Connection
    else:
        raise TypeError(f"connection_class must be a redis-py Connection class, got {cls!r}")
    if cls is base:
        return {
            SSLConnection: PooledSSLConnection,
            UnixDomainSocketConnection: PooledUnixConnection,
            Connection: PooledConnection,
        }[base]
    return type(f"Pooled{cls.__name__}", (_PooledMixin, cls), {})


def _raw_poll_class() -> Any:
    """The OS's ``select.poll``, even under gevent's monkey-patching: our polls
    never wait (timeout 0), and gevent's cooperative version costs several
    microseconds a call in watchers for nothing."""
    monkey = sys.modules.get("gevent.monkey")  # never imports gevent itself
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return getattr(select, "poll", None)


def set_io_timeout(conn: Any, timeout: float | None, *, temporary: bool = False) -> None:
    """The timeout of every read and write on ``conn``: on the socket (kept by
    the kernel where it can, see ``_sockio``), and where redis-py's parser keeps
    the value it restores after its own short reads (``can_read``, PING checks,
    pub/sub ``get_message``). ``temporary`` (a block's own timeout) no longer
    than the kernel's is set on the Python socket alone: one cheap call each
    way, where changing the kernel's two costs four."""
    sock = conn._sock
    # None: not one of our connections, which turn the kernel's EAGAIN into TimeoutError
    kept = getattr(conn, "_rp_kernel", None)
    if sock is not None:
        if kept is not None and timeout:
            if temporary and kept and timeout <= kept:
                pass  # Python's timeout fires first; the kernel's stays for after
            elif kept == timeout or kernel_timeouts(sock, timeout):
                if kept != timeout:  # noted first: interrupted now, the next call re-applies it
                    conn._rp_kernel = timeout
                    set_kernel_timeout(sock, timeout)
                timeout = None  # a blocking socket: one system call per read or write
            elif kept:
                conn._rp_kernel = 0.0
                set_kernel_timeout(sock, None)
        elif kept:
            conn._rp_kernel = 0.0
            set_kernel_timeout(sock, None)
        if sock.gettimeout() != timeout:  # (settimeout is a system call, even unchanged)
            sock.settimeout(timeout)
    parser = getattr(conn, "_parser", None)
    buffer = getattr(parser, "_buffer", None)
    if buffer is not None and hasattr(buffer, "socket_timeout"):
        buffer.socket_timeout = timeout
    if parser is not None and hasattr(parser, "_socket_timeout"):
        parser._socket_timeout = timeout


def io_timeout(conn: Any) -> float | None:
    """The timeout each read and write on ``conn`` has now (None: none)."""
    timeout: float | None = conn._sock.gettimeout()
    if timeout is None:  # blocking: the kernel's bound, if any
        return getattr(conn, "_rp_kernel", 0.0) or None
    return timeout


def is_alive(conn: Any) -> bool:
    """Zero-round-trip liveness: False if closed, or if bytes arrived unasked.

    A healthy idle connection has nothing to read: readable means EOF (the server
    closed it: CLIENT KILL, restart, idle timeout) or a stray reply.
    """
    sock = conn._sock
    if sock is None:
        return False
    poller = conn._rp_poll
    if poller is not None:
        if not poller.poll(0):
            return True
    else:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return True
    if isinstance(sock, ssl.SSLSocket):
        return _ssl_quiet(sock)
    return False


def _ssl_quiet(sock: ssl.SSLSocket) -> bool:
    """The raw socket is readable; is that TLS housekeeping (a session ticket)
    or application data / EOF?"""
    if sock.pending():
        return False
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0)
        sock.recv(1)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return True
    except (OSError, ValueError):
        return False
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass
    return False  # EOF (b"") or application data nobody asked for
