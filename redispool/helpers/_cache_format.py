"""The cache's stored format (header + serialized value), serializers and Lua scripts."""

from __future__ import annotations

import functools
import json
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any

from .base import RedisScript

__all__ = [
    *("BUMP", "DELETE", "HEADER", "NONE", "READ", "VALUE", "WRITE"),
    *("encode", "fresh_version", "serializer"),
]

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


def fresh_version() -> int:
    """A version for a missing version key: random, so that no entry was made
    under it (the last ARGV of every script)."""
    return 2**48 + int.from_bytes(os.urandom(6), "big")


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


# Every script gets KEYS = the namespace's version key, one per tag, the data key,
# the lease key; it touches no other key. An entry and a lease are stored behind
# the version they were made under ("3.1|"): a version bump hides both at once.
# A missing version key (never set, expired, or evicted under an allkeys-*
# maxmemory policy) becomes a fresh version no entry was made under: the last
# ARGV, a random number from the caller (read as 0, an eviction brought back
# every entry made before the key's first bump). So a version key may expire: it
# lives a day, and at least as long as every entry stored under it (WRITE).
_PRELUDE = """
local n = #KEYS - 2
local parts = {}
for i = 1, n do
  parts[i] = redis.call('GET', KEYS[i])
  if not parts[i] then
    parts[i] = ARGV[#ARGV]
    redis.call('SET', KEYS[i], parts[i], 'PX', 86400000)
  end
end
local function outlive(px)
  for i = 1, n do
    local left = redis.call('PTTL', KEYS[i])
    if left >= 0 and left < tonumber(px) then redis.call('PEXPIRE', KEYS[i], px) end
  end
end
local ver = table.concat(parts, '.') .. '|'
local data, lease = KEYS[n + 1], KEYS[n + 2]
local function current(s)
  if s and string.sub(s, 1, #ver) == ver then return string.sub(s, #ver + 1) end
  return false
end
"""
# ARGV[1]: lease token ('' = only read), ARGV[2]: lease PX, ARGV[3]: '1' = take
# the lease even on a hit (early recompute). -> {version, value or nil, PTTL,
# lease: 1 won / 0 held elsewhere / -1 the holder's loader failed, its error name}
READ = RedisScript(
    _PRELUDE
    + """
local value = current(redis.call('GET', data))
local pttl = value and redis.call('PTTL', data) or 0
if ARGV[1] == '' or (value and ARGV[3] ~= '1') then return {ver, value, pttl, 0} end
local held = current(redis.call('GET', lease))
if held then
  if string.sub(held, 1, 1) == '!' then return {ver, value, pttl, -1, string.sub(held, 2)} end
  return {ver, value, pttl, 0}
end
redis.call('SET', lease, ver .. ARGV[1], 'PX', ARGV[2])
return {ver, value, pttl, 1}
"""
)
# ARGV[1]: lease token ('' = set(): store now, and revoke any fill in flight),
# ARGV[2]: the version the lease was won under, ARGV[3]: payload, ARGV[4]: PX ('0'
# = store nothing: just release the lease; '-1' = a value not to be cached, such
# as a None with negative_ttl=0: delete the entry it makes out of date, store
# nothing), ARGV[5]: the loader's error name ('' = it succeeded), ARGV[6]:
# how long to keep that failure for other callers. A fill is written only if its
# lease is still held under the version it was won under: an invalidation of the
# key, its tags or its namespace since the lease was won refuses it.
# -> 1 stored, 0 nothing to store, -1 refused. A SET comes before any DEL: once a
# script has written, Redis lets its later writes through even when out of memory.
WRITE = RedisScript(
    _PRELUDE
    + """
if ARGV[4] == '-1' and ARGV[1] == '' then
  redis.call('DEL', data, lease)
  return 0
end
if ARGV[1] == '' then
  redis.call('SET', data, ver .. ARGV[3], 'PX', ARGV[4])
  redis.call('DEL', lease)
  outlive(ARGV[4])
  return 1
end
if redis.call('GET', lease) ~= ARGV[2] .. ARGV[1] then return -1 end
if ver ~= ARGV[2] then
  redis.call('DEL', lease)
  return -1
end
if ARGV[5] ~= '' and ARGV[6] ~= '0' then
  redis.call('SET', lease, ver .. '!' .. ARGV[5], 'PX', ARGV[6])
  return 0
end
if ARGV[4] == '0' then
  redis.call('DEL', lease)
  return 0
end
if ARGV[4] == '-1' then
  redis.call('DEL', data, lease)
  return 0
end
redis.call('SET', data, ver .. ARGV[3], 'PX', ARGV[4])
redis.call('DEL', lease)
outlive(ARGV[4])
return 1
"""
)
# Bump a version key (KEYS[1]); one that is missing starts from ARGV[1], a fresh
# version (see _PRELUDE). -> the new version.
BUMP = RedisScript(
    """
if not redis.call('GET', KEYS[1]) then redis.call('SET', KEYS[1], ARGV[1], 'PX', 86400000) end
return redis.call('INCR', KEYS[1])
"""
)
# Invalidate one key: its entry and its lease (so a fill in flight is refused).
# -> 1 if it held an entry of the current version.
DELETE = RedisScript(
    _PRELUDE
    + """
local value = current(redis.call('GET', data))
redis.call('DEL', data, lease)
return value and 1 or 0
"""
)
