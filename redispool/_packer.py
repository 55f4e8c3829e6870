"""A command packer that a raising signal handler cannot crash.

With hiredis installed, redis-py packs commands with ``hiredis.pack_command``. For
an int or float argument that calls ``PyObject_Repr`` in C and uses the result
unchecked (hiredis 3.5.0, ``src/pack.c``). ``PyObject_Repr`` runs pending signal
handlers first, so one that raises there (Ctrl-C's ``KeyboardInterrupt``,
gunicorn's ``SystemExit`` on SIGQUIT, Celery's soft time limit) makes it return
NULL, and the process dies of a segmentation fault instead of raising. Here the
numbers become bytes in Python first, exactly as hiredis would write them, so
such a handler's exception is raised like any other, before anything is sent.

It is redis-py's ``HiredisRespSerializer.pack`` otherwise (tests/_hiredis_child.py
compares the two), in one pass, and skips that pass when every argument is a
str or bytes: cheaper than redis-py's for those, about 0.3 us more with numbers.
"""

from __future__ import annotations

from typing import Any

from redis.connection import HiredisRespSerializer
from redis.exceptions import DataError

_pack_command: Any
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # then redis-py never chooses HiredisRespSerializer
    _pack_command = None

__all__ = ["signal_safe"]

_PLAIN = frozenset((str, bytes))


class _SafeHiredisPacker:
    """hiredis's packer, with ints and floats turned into bytes beforehand."""

    __slots__ = ()

    def pack(self, *args: Any) -> list[bytes]:
        cmd = args[0]
        if isinstance(cmd, str):  # "CONFIG GET" is two arguments
            args = (*cmd.encode().split(), *args[1:])
        elif b" " in cmd:
            args = (*cmd.split(), *args[1:])
        if not _PLAIN.issuperset(map(type, args)):
            # hiredis takes exactly int and any float (PyLong_CheckExact,
            # PyFloat_Check: the real type, not a proxy's __class__) and writes
            # their repr() in UTF-8
            args = tuple(
                repr(a).encode()
                if (t := type(a)) is int or issubclass(t, float)
                else bytes(a)
                if isinstance(a, (bytearray, memoryview))
                else a
                for a in args
            )
        try:
            return [_pack_command(args)]
        except TypeError as exc:  # as redis-py: DataError for an argument it cannot take
            raise DataError(exc) from None


def signal_safe(packer: Any) -> Any:
    """The packer redis-py chose, or the safe one in place of hiredis's."""
    if type(packer) is HiredisRespSerializer:
        return _SafeHiredisPacker()
    return packer
