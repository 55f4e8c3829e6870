"""Which keys the helpers' Lua scripts touch (seen by MONITOR) against the KEYS
each script call declared: a script that builds a key name inside Lua shows up."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ALL_ARGS_ARE_KEYS = {b"del", b"unlink", b"exists", b"mget"}
_FIRST_ARG_IS_KEY = {b"get", b"set", b"pttl", b"ttl", b"incr", b"incrby", b"hmget", b"hset"}
_FIRST_ARG_IS_KEY |= {b"hget", b"hincrby", b"pexpire", b"expire", b"pfadd", b"getdel"}
_NO_KEYS = {b"time"}


def undeclared(lines: list[bytes]) -> list[str]:
    """Keys touched by script commands in ``lines`` (MONITOR output) that no
    EVAL/EVALSHA among them declared; an unknown command is reported too."""
    declared: set[bytes] = set()
    touched: list[bytes] = []
    for raw in lines:
        head, _, rest = raw.partition(b"] ")
        args = _ARG.findall(rest)
        name = args[0].lower()
        if head.endswith(b" lua"):
            if name in _ALL_ARGS_ARE_KEYS:
                touched += args[1:]
            elif name in _FIRST_ARG_IS_KEY:
                touched.append(args[1])
            elif name not in _NO_KEYS:
                touched.append(b"<unknown command " + name + b">")
        elif name in (b"eval", b"evalsha"):
            declared.update(args[3 : 3 + int(args[2])])
    return [k.decode() for k in touched if k not in declared]


@contextmanager
def script_keys(url: str) -> Iterator[Callable[[Callable[[], Any]], list[str]]]:
    """``check(op)`` runs ``op`` and returns the undeclared keys its scripts touched."""
    marker = redis.Redis.from_url(url)
    with redis.Redis.from_url(url).monitor() as m:

        def check(op: Callable[[], Any]) -> list[str]:
            op()
            token = uuid.uuid4().hex.encode()
            marker.echo(token)
            lines: list[bytes] = []
            while token not in (raw := m.connection.read_response()):
                lines.append(raw)
            return undeclared(lines)

        yield check
    marker.close()
