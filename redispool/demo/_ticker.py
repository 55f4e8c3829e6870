"""A precise wake-up for the open-loop generator: a Linux ``timerfd``.

asyncio's own timers wait in ``epoll_wait``, whose timeout is in whole
milliseconds (rounded up), so a request due in 0.3 ms goes out up to a
millisecond late, and that lateness counts in its latency. A timerfd armed at
an absolute ``CLOCK_MONOTONIC`` time (``loop.time()`` is ``time.monotonic()``,
the same clock) becomes readable at that time to the microsecond, and the loop
watches it with the sockets: no thread, no spinning.

``os.timerfd_*`` (Python 3.13+) when present, else libc through ctypes; None
where neither exists (the generator then sleeps as before).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["Ticker"]

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.timerfd_settime.argtypes = (
            ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p,
        )  # fmt: skip
    except (OSError, AttributeError):
        return None
    return libc


class Ticker:
    """A one-shot timer on a file descriptor: ``arm(when)``, then the fd is
    readable from ``when`` (a ``time.monotonic()`` value) on."""

    def __init__(self, fd: int, libc: ctypes.CDLL | None) -> None:
        self.fd = fd
        self._libc = libc
        self._spec = _Itimerspec()

    @classmethod
    def open(cls) -> Ticker | None:
        """A new ticker, or None where there is no timerfd."""
        if not sys.platform.startswith("linux"):
            return None
        if hasattr(os, "timerfd_create"):
            flags = _TFD_NONBLOCK | _TFD_CLOEXEC
            return cls(os.timerfd_create(_CLOCK_MONOTONIC, flags=flags), None)
        libc = _libc()
        if libc is None:
            return None
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        return None if fd < 0 else cls(fd, libc)

    def arm(self, when: float) -> None:
        """Readable at ``when`` (at once if that has passed). Replaces any earlier arming."""
        when = max(when, 1e-9)  # 0 would disarm
        if self._libc is None:
            os.timerfd_settime(self.fd, flags=_TFD_TIMER_ABSTIME, initial=when)  # type: ignore[attr-defined]
            return
        sec = int(when)
        self._spec.it_value.tv_sec = sec
        self._spec.it_value.tv_nsec = int((when - sec) * 1e9)
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None):
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def clear(self) -> None:
        """Consume the expiry (the fd stops being readable until armed again)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
