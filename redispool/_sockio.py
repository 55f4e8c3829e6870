"""Read and write timeouts kept by the kernel (``SO_RCVTIMEO``/``SO_SNDTIMEO``), as
hiredis does for its blocking connections.

A Python socket with a timeout polls before every ``send`` and ``recv``: two system
calls, two GIL releases. Under many threads each release is a chance to lose the
GIL, and the pool's 1000-thread benchmark spent about 13 context switches per GET
(9 without the polls). A blocking socket whose timeouts the kernel enforces has the
same bound with one call each. A timed-out call then fails with ``EAGAIN``
(``BlockingIOError``), which the connection reports as redis-py's ``TimeoutError``.

Where the kernel's bound would not hold, Python's timeouts stay:

* not Linux; TLS sockets; any socket class but the standard library's own (gevent's
  and eventlet's cooperative sockets never block the thread, so the kernel's bound
  would never apply to them);
* a periodic interval timer (``signal.setitimer``: watchdogs, sampling profilers)
  that fires within the timeout: CPython retries a call interrupted by a signal,
  and each retry would start the kernel's timeout afresh (checked whenever a
  connection's timeout is set);
* ``REDISPOOL_KERNEL_TIMEOUTS=0`` in the environment (read once).

Writes larger than ``LARGE_WRITE`` use Python's timeout, which bounds the whole
``sendall``; the kernel's bounds each ``send``, so a slowly draining peer could
stretch a large write (a small one is taken by the socket buffer in one call).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
from typing import Any

__all__ = ["LARGE_WRITE", "kernel_timeouts", "set_kernel_timeout"]

LARGE_WRITE = 64 * 1024
_TIMEVAL = struct.Struct("@ll")  # struct timeval on Linux: (time_t, suseconds_t)
_usable: bool | None = None
if sys.platform != "linux" or os.environ.get("REDISPOOL_KERNEL_TIMEOUTS", "").strip().lower() in (
    "0",
    "false",
    "no",
    "off",
):
    _usable = False
_TIMERS = tuple(
    getattr(signal, name)
    for name in ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")
    if hasattr(signal, name)
)


class _NoSocket:
    """Matches no socket: the standard library's class is not to be had."""


_STDLIB_SOCKET: type | None = None  # the standard library's own socket class


def _stdlib_socket() -> type:
    """Looked up once: unpatched, ``socket.socket`` is it; patched by gevent
    (before or after), ``get_original`` gives it; replaced by anything else
    (eventlet), none."""
    global _STDLIB_SOCKET
    if _STDLIB_SOCKET is None:
        cls: type = socket.socket
        monkey = sys.modules.get("gevent.monkey")  # never imports gevent itself
        if monkey is not None and monkey.is_module_patched("socket"):
            cls = monkey.get_original("socket", "socket")
        ok = cls.__module__ == "socket" and cls.__qualname__ == "socket"
        _STDLIB_SOCKET = cls if ok else _NoSocket
    return _STDLIB_SOCKET


def _signals_within(timeout: float) -> bool:
    """A periodic interval timer fires at least once per ``timeout`` seconds."""
    for which in _TIMERS:
        try:
            interval = signal.getitimer(which)[1]
        except (OSError, ValueError):
            return True  # unknown: assume the worst
        if 0 < interval <= timeout:
            return True
    return False


def kernel_timeouts(sock: Any, timeout: float) -> bool:
    """True if the kernel can keep a ``timeout`` for ``sock`` here (see the module doc)."""
    global _usable
    if _usable is False or type(sock) is not (_STDLIB_SOCKET or _stdlib_socket()):
        return False
    if _signals_within(timeout):
        return False
    if _usable is None:  # once a process: does the kernel read our timeval as we mean it?
        _usable = _probe(sock)
    return _usable


def _probe(sock: Any) -> bool:
    try:
        old = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(1, 500_000))
        sec, usec = _TIMEVAL.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.size)
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, old)
    except (OSError, struct.error):
        return False
    return bool(1.5 <= sec + usec / 1e6 < 1.6)  # (the kernel rounds up to its tick)


def set_kernel_timeout(sock: Any, timeout: float | None) -> None:
    """Bound each ``send`` and ``recv`` on the (blocking) socket by ``timeout``
    seconds in the kernel; ``None`` or 0 removes the bound."""
    if timeout is None or timeout <= 0:
        value = _TIMEVAL.pack(0, 0)
    else:
        sec = int(timeout)
        usec = max(1, round((timeout - sec) * 1e6)) if sec == 0 else round((timeout - sec) * 1e6)
        if usec >= 1_000_000:
            sec, usec = sec + 1, 0
        value = _TIMEVAL.pack(sec, usec)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
