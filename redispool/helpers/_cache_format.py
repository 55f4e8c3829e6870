"""The cache's stored format (header + serialized value), serializers and Lua scripts."""

from __future__ import annotations

import functools
import json
import pickle
import struct
from collections.abc import Callable
from typing import Any

from .base import RedisScript

__all__ = ["DELETE", "HEADER", "NONE", "READ", "VALUE", "WRITE", "encode", "serializer"]

HEADER = struct.Struct(">cI")  # kind, then the recompute time (XFetch's delta) in ms
VALUE, NONE = b"v", b"n"  # a serialized value / a cached None ("not found")

Dumps = Callable[[Any], Any]
Loads = Callable[[bytes], Any]


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def serializer(spec: Any) -> tuple[Dumps, Loads]:
    """``None``/"json", "pickle" (explicit opt-in: unpickling runs code from Redis),
    a ``(dumps, loads)`` pair or an object with both."""
    if spec is None or spec == "json":
        return _json_dumps, json.loads
    if spec == "pickle":
        return functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL), pickle.loads
    if isinstance(spec, str):
        raise ValueError(f"serializer must be 'json', 'pickle' or a dumps/loads pair, got {spec!r}")
    if isinstance(spec, tuple):
        pair = spec
    else:
        pair = (getattr(spec, "dumps", None), getattr(spec, "loads", None))
    if len(pair) != 2 or not all(callable(f) for f in pair):
        raise TypeError(f"serializer must have callable dumps and loads, got {spec!r}")
    return pair[0], pair[1]


def encode(dumps: Dumps, value: Any, delta: float) -> bytes:
    """Header + payload; TypeError (naming the value's type, never the value) if
    the serializer cannot encode it."""
    header = HEADER.pack(NONE if value is None else VALUE, min(round(delta * 1000), 2**32 - 1))
    if value is None:
        return header
    try:
        data = dumps(value)
    except (TypeError, ValueError, pickle.PicklingError, AttributeError) as exc:
        raise TypeError(
            f"value of type {type(value).__name__} cannot be serialized ({type(exc).__name__}); "
            "pass another serializer (serializer='pickle' to opt in to pickle)"
        ) from exc
    return header + (data.encode() if isinstance(data, str) else data)


# KEYS: the namespace's version key, then one per tag. ARGV[1], ARGV[2]: the data
# key around its version ("ns:v" .. "3.1" .. ":digest"); missing versions are 0.
_KEY = """
local v = {}
for i, k in ipairs(KEYS) do v[i] = redis.call('GET', k) or '0' end
local ver = table.concat(v, '.')
local key = ARGV[1] .. ver .. ARGV[2]
"""
# -> {version, value or nil, PTTL if found else 1/0 = lease won (ARGV[3] = token)}
READ = RedisScript(
    _KEY
    + """
local value = redis.call('GET', key)
if value then return {ver, value, redis.call('PTTL', key)} end
if ARGV[3] == '' then return {ver, false, 0} end
local won = redis.call('SET', key .. ':lease', ARGV[3], 'NX', 'PX', ARGV[4])
return {ver, false, won and 1 or 0}
"""
)
# ARGV[3]: the version read before loading ('' = any): a value loaded before an
# invalidation is not written after it. ARGV[4]: payload, ARGV[5]: PX ('0' = only
# release the lease), ARGV[6]: lease token to release ('' = none).
WRITE = RedisScript(
    _KEY
    + """
local expected = ARGV[3]
if expected == '' then expected = ver end
if ARGV[6] ~= '' then
  local lease = ARGV[1] .. expected .. ARGV[2] .. ':lease'
  if redis.call('GET', lease) == ARGV[6] then redis.call('DEL', lease) end
end
if ver ~= expected or ARGV[5] == '0' then return 0 end
redis.call('SET', key, ARGV[4], 'PX', ARGV[5])
return 1
"""
)
DELETE = RedisScript(_KEY + "return redis.call('DEL', key)")
