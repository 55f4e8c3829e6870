"""Helper keys: the same in every process without a secret (a plain hash), keyed
with one, and every key of one helper call in one Redis Cluster hash slot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.connection import AbstractConnection
from redis.crc import key_slot as _key_slot

from redispool import RedisPool
from redispool.helpers import Analytics, Cache, Lockout, RateLimiter
from redispool.helpers.base import HelperBase, key_digest

# -- the same keys in every process -----------------------------------------------------

_WORKER = """
import json, sys
from redispool import RedisPool
from redispool.helpers import Lockout, RateLimiter
with RedisPool(sys.argv[1], min_size=0, max_size=2) as pool:
    with Lockout(pool, max_attempts=2, window=60, lockout=60).attempt("shared-user") as a:
        failed = a.failed()
    hit = RateLimiter(pool, "2/minute", algorithm="fixed").hit("shared-client")
print(json.dumps({"attempts": failed.attempts, "locked": failed.locked, "allowed": hit.allowed}))
"""


def _run_worker(url: str, secret: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "REDISPOOL_KEY_SECRET"}
    if secret is not None:
        env["REDISPOOL_KEY_SECRET"] = secret
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("secret", [None, "shared-secret"])
def test_two_processes_share_lockout_and_rate_limit(
    redis_server_factory: Any, monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    url = redis_server_factory().url
    first, second = _run_worker(url, secret), _run_worker(url, secret)
    assert first == {"attempts": 1, "locked": False, "allowed": True}
    assert second == {"attempts": 2, "locked": True, "allowed": True}  # one count for both
    if secret is None:
        monkeypatch.delenv("REDISPOOL_KEY_SECRET", raising=False)
    else:
        monkeypatch.setenv("REDISPOOL_KEY_SECRET", secret)
    with RedisPool(url, min_size=0, max_size=2) as pool:  # and this process: a third
        assert not RateLimiter(pool, "2/minute", algorithm="fixed").hit("shared-client").allowed
        assert Lockout(pool).check_lockout("shared-user").locked
    if secret is not None:  # another secret: other keys, nothing shared
        assert _run_worker(url, "another-secret") == first


def test_digest_is_a_plain_hash_without_a_secret_and_keyed_with_one() -> None:
    plain = key_digest("ns", "alice", None)
    assert plain == key_digest("ns", "alice", None) and len(plain) == 32
    assert plain != key_digest("ns2", "alice", None)  # the namespace is hashed too
    assert plain != key_digest("ns", ("ali", "ce"), None)  # length-prefixed parts
    keyed = key_digest("ns", "alice", b"k1")
    assert keyed != plain and keyed != key_digest("ns", "alice", b"k2")


# -- one hash slot per call ------------------------------------------------------------


class Recorder:
    """Every command each helper round trip (``HelperBase._call``) sends, in groups."""

    def __init__(self) -> None:
        self.groups: list[list[tuple[Any, ...]]] = []
        self._local = threading.local()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        send, pack_many, call = (
            AbstractConnection.send_command,
            AbstractConnection.pack_commands,
            HelperBase._call,
        )
        local = self._local

        def note(*commands: tuple[Any, ...]) -> None:
            group = getattr(local, "group", None)
            if group is not None:
                group.extend(commands)

        def send_command(conn: Any, *args: Any, **kwargs: Any) -> Any:
            note(args)
            return send(conn, *args, **kwargs)

        def pack_commands(conn: Any, commands: Any) -> Any:
            commands = [tuple(c) for c in commands]
            note(*commands)
            return pack_many(conn, commands)

        def _call(helper: Any, fn: Any, **options: Any) -> Any:
            local.group = group = []
            self.groups.append(group)
            try:
                return call(helper, fn, **options)
            finally:
                local.group = None

        monkeypatch.setattr(AbstractConnection, "send_command", send_command)
        monkeypatch.setattr(AbstractConnection, "pack_commands", pack_commands)
        monkeypatch.setattr(HelperBase, "_call", _call)


def key_slot(key: str | bytes) -> int:
    return int(_key_slot(key.encode() if isinstance(key, str) else key))


def _keys(admin: redis.Redis, command: tuple[Any, ...]) -> list[bytes]:
    try:
        return list(admin.command_getkeys(*command))
    except redis.ResponseError:  # a command without keys (PING, CLIENT SETINFO, ...)
        return []


@pytest.fixture
def recorded(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    recorder = Recorder()
    with (
        RedisPool(redis_url, min_size=0, max_size=4) as pool,
        redis.Redis.from_url(redis_url) as admin,
    ):
        admin.flushdb()
        recorder.install(monkeypatch)
        yield pool, admin, recorder


def _assert_one_slot_per_call(admin: redis.Redis, recorder: Recorder, calls: int) -> None:
    groups = [g for g in recorder.groups if g]
    assert len(groups) >= calls, groups
    for group in groups:
        keys = [k for command in group for k in _keys(admin, command)]
        assert keys, group
        assert len({key_slot(k) for k in keys}) == 1, keys


def test_lockout_keys_of_one_call_share_a_slot(recorded: Any) -> None:
    pool, admin, recorder = recorded
    lo = Lockout(
        pool, max_attempts=2, progressive=2, max_identities_per_client=10, namespace="login"
    )
    for who in ("alice", ("bob", "10.0.0.1"), "{tag}", "x}{y"):
        with lo.attempt(who, client="10.0.0.9") as a:
            a.failed()
        lo.record_failed_attempt(who)  # the second failure: lock and level
        lo.check_lockout(who)
        with lo.attempt(who) as a:
            assert not a.allowed
        lo.clear_lockout(who)
        with lo.attempt(who) as a:
            a.release()
    _assert_one_slot_per_call(admin, recorder, calls=24)
    for key in admin.scan_iter("login:*"):  # per identity: {digest} is the hash tag
        assert key_slot(key) == key_slot(key.split(b"}")[0] + b"}"), key


@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "gcra"])
def test_rate_limiter_keys_of_one_call_share_a_slot(recorded: Any, algorithm: str) -> None:
    pool, admin, recorder = recorded
    rl = RateLimiter(pool, "5/minute", algorithm=algorithm)
    for who in ("alice", ("bob", "10.0.0.1"), "{tag}"):
        rl.hit(who)
        rl.peek(who, 2)
        rl.reset(who)
    _assert_one_slot_per_call(admin, recorder, calls=9)


def test_cache_keys_of_one_call_share_a_slot(recorded: Any) -> None:
    pool, admin, recorder = recorded
    with Cache(pool, "posts") as cache:
        keys = ("post:1", ("user", "2"), "{x}")
        for key in keys:
            cache.set(key, "v", tags=["t1", "t2"])
            cache.get(key, tags=["t1", "t2"])
            cache.get_with_fallback(f"miss-{key}", lambda: "db", tags=["t1"])
        cache.flush(5)
        # The data keys the scripts build server-side too: in the namespace's slot.
        stored = list(admin.scan_iter("posts:*"))
        assert len(stored) >= 6 and {key_slot(k) for k in stored} == {key_slot("{posts}")}, stored
        for key in keys:
            cache.invalidate(key, tags=["t1", "t2"])
        cache.invalidate_tag("t1")
        cache.invalidate_all()
    _assert_one_slot_per_call(admin, recorder, calls=14)


def test_analytics_keys_of_one_call_share_a_slot(recorded: Any) -> None:
    pool, admin, recorder = recorded
    an = Analytics(pool, namespace="stats", bucket="minute")
    for name in ("logins", "a:b", "{x}", "x}{y"):
        an.incr(name, at=600)
        an.add_unique(name, "u1", "u2", at=660)
        an.get(name, at=600)
        an.series(name, 0, 3600)  # 61 buckets, one MGET
        an.count_unique(name, 0, 3600)  # one PFCOUNT over many buckets
    _assert_one_slot_per_call(admin, recorder, calls=20)
    # A buffered flush writes many names in one pipeline: each command in one slot.
    recorder.groups.clear()
    buffered = Analytics(pool, namespace="stats", buffered=True, flush_interval=60)
    for name in ("a", "b", "{c}"):
        buffered.incr(name, at=600)
        buffered.add_unique(name, "u", at=600)
    assert buffered.flush() == 6
    buffered.close(timeout=1)
    commands = [c for g in recorder.groups for c in g if _keys(admin, c)]
    assert len(commands) == 12
    assert all(len({key_slot(k) for k in _keys(admin, c)}) == 1 for c in commands)
