"""Run by test_hiredis.py in a fresh interpreter, where hiredis is importable (the
suite's own process hides it; see tests/__init__.py).

``python -m tests._hiredis_child URL``: checks that the pool's connections use
hiredis, that their packer writes the same bytes as hiredis's own, then packs and
sends commands with int and float arguments while a signal handler raises every
100-300 us. hiredis's own packer crashes the process there (a segmentation
fault); the pool's must raise the handler's exception and go on. One JSON line.
"""

from __future__ import annotations

import enum
import json
import sys
from typing import Any

import redis
from redis.connection import HiredisRespSerializer
from redis.exceptions import DataError

from redispool import PoolError, RedisPool

from ._signal_storm import Storm


class _Color(enum.IntEnum):
    RED = 1


def _same_bytes(packer: Any) -> list[str]:
    """Argument lists where the pool's packer and hiredis's disagree."""
    own = HiredisRespSerializer()
    cases: list[tuple[Any, ...]] = [
        ("SET", "k", 0),
        ("SET", b"k", -17, "EX", 10**30),
        ("ZADD", "z", 1.5, "m", -0.0, "n", float("inf"), "o", 1e-300, "p"),
        ("HSET", "h", "f", memoryview(b"v"), bytearray(b"w"), 3),
        ("CONFIG GET", "maxclients"),
        (b"CLIENT SETNAME", "é"),
    ]
    bad: list[tuple[Any, ...]] = [("SET", "k", True), ("SET", "k", _Color.RED), ("SET", "k", None)]
    wrong = [repr(args) for args in cases if packer.pack(*args) != own.pack(*args)]
    for args in bad:  # refused alike
        for p in (packer, own):
            try:
                p.pack(*args)
            except DataError:
                continue
            wrong.append(f"{args!r} accepted")
    return wrong


def main(url: str) -> None:
    pool = RedisPool(url, max_size=2, timeout=2)
    with pool.connection() as conn:
        parser, packer = type(conn._parser).__name__, conn._command_packer
    out: dict[str, Any] = {"hiredis": redis.utils.HIREDIS_AVAILABLE, "parser": parser, "huge": None}
    out["wrong"] = _same_bytes(packer)
    try:  # past Python's int-to-str limit: hiredis's own packer crashes here too
        packer.pack("SET", "k", 10**5000)
    except ValueError as exc:
        out["huge"] = type(exc).__name__

    def pack(n: int) -> None:  # packing alone: where hiredis's packer crashes
        for i in range(50):
            packer.pack("SET", "k", n + i, "PX", 60_000, "XX")
            packer.pack("ZADD", "z", n * 0.5, "m")

    def send(n: int) -> None:  # and through the pool, to the server
        with pool.client() as r:
            r.set("n", n, px=60_000)
            r.incrby("total", 2)
            r.zadd("z", {"m": n * 0.5})

    # raising in hiredis's packer (its frame is redis-py's), ours, and redis-py's sending
    storm = Storm(1, files=("redis/connection.py", "redispool/_packer.py"))
    out["packed"] = storm.run(pack, 0.5, (), min_raised=30)[0] * 100
    out["sent"] = storm.run(send, 0.5, (PoolError,), min_raised=60)[0] * 3
    out["raised"], out["where"] = storm.raised, storm.where
    with pool.client() as r:
        r.set("after", 12345)
        out["after"] = r.get("after").decode()
    pool.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
