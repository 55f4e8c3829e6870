"""redis-py's cluster command answered TRYAGAIN once, just after another thread
queued for the node's one connection (a pool of ``max_size=1``): the command's
``finally`` hands the connection to that thread, which holds it until told."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from redis.exceptions import TryAgainError

from redispool import RedisClusterPool


class TryAgainToAWaiter:
    def __init__(self, pool: RedisClusterPool, key: str) -> None:
        r = pool.redis
        self.node_redis = r.get_redis_connection(r.get_node_from_key(key))
        self.node_pool = pool.node_pools()[pool.node_of(key)]
        self.held: list[Any] = []  # the other thread's connection, once it has it
        self.socks: list[Any] = []  # and its socket then
        self.done = threading.Event()  # set: it gives it back
        self.tried: list[threading.Thread] = []  # the other thread, once TRYAGAIN came

    def _other(self) -> None:  # queues for the node's one connection, then holds it
        conn = self.node_redis.connection_pool.get_connection()
        self.socks.append(conn._sock)
        self.held.append(conn)
        self.done.wait(5)
        self.node_redis.connection_pool.release(conn)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = redis.Redis.parse_response

        def try_again_once(self_: redis.Redis, connection: Any, command: str, **kw: Any) -> Any:
            if threading.current_thread() is threading.main_thread() and not self.tried:
                self.tried.append(threading.Thread(target=self._other, daemon=True))
                self.tried[0].start()
                while self.node_pool.stats().waiting < 1:  # it waits behind this command
                    time.sleep(0.001)
                real(self_, connection, command, **kw)  # (the reply, read)
                raise TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot")
            return real(self_, connection, command, **kw)

        monkeypatch.setattr(redis.Redis, "parse_response", try_again_once)

    def wait_held(self, timeout: float = 2.0) -> None:
        """Until the other thread has the connection (woken by the hand-off)."""
        deadline = time.monotonic() + timeout
        while not self.held and time.monotonic() < deadline:
            time.sleep(0.001)

    def finish(self) -> None:
        self.done.set()
        self.tried[0].join(5)
