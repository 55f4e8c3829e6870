"""Read and write timeouts kept by the kernel (``SO_RCVTIMEO``/``SO_SNDTIMEO``), as
hiredis does for its blocking connections.

A Python socket with a timeout polls before every ``send`` and ``recv``: two system
calls, two GIL releases. Under many threads each release is a chance to lose the
GIL, and the pool's 1000-thread benchmark spent about 13 context switches per GET
(7 without the polls). A blocking socket whose timeouts the kernel enforces has the
same bound with one call each. A timed-out call then fails with ``EAGAIN``
(``BlockingIOError``), which the connection reports as redis-py's ``TimeoutError``.

Used on Linux only, for the standard library's own sockets: TLS sockets and
gevent's cooperative sockets (which never block the thread) keep Python timeouts.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

__all__ = ["kernel_timeouts", "set_kernel_timeout"]

_TIMEVAL = struct.Struct("@ll")  # struct timeval on Linux: (time_t, suseconds_t)
_usable: bool | None = None if sys.platform == "linux" else False


_STDLIB_SOCKET: type | None = None  # the standard library's own socket class


def _stdlib_socket() -> type:
    """Looked up once: unpatched, ``socket.socket`` is it; patched by gevent
    (before or after), ``get_original`` gives it."""
    global _STDLIB_SOCKET
    if _STDLIB_SOCKET is None:
        monkey = sys.modules.get("gevent.monkey")  # never imports gevent itself
        if monkey is not None and monkey.is_module_patched("socket"):
            _STDLIB_SOCKET = monkey.get_original("socket", "socket")
        else:
            _STDLIB_SOCKET = socket.socket
    return _STDLIB_SOCKET


def kernel_timeouts(sock: Any) -> bool:
    """True if ``sock`` can have its timeouts kept by the kernel here."""
    global _usable
    if _usable is False or type(sock) is not (_STDLIB_SOCKET or _stdlib_socket()):
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
