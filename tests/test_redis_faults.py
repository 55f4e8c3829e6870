"""RedisPool against real redis-server processes under faults.

Timeouts (``DEBUG SLEEP`` from another client), crashes and restarts, server-side
closes (``CLIENT KILL``, the ``timeout`` directive), blocks that raise half-way,
leave a MULTI open or a reply unread: no reply may ever reach the wrong caller, the
server never sees more than ``max_size`` connections, and borrowing after a
server-side close just works.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redispool import PoolTimeout, RedisPool, RedisPoolTimeout
from redispool.connection import PooledUnixConnection, io_timeout
from redispool.testing import RedisServer, find_redis_server, tls_supported

Factory = Callable[..., RedisServer]

DEAD = "dead"
DIRTY = "dirty"


class _Abort(Exception):
    """Raised on purpose inside a ``with`` block."""


# What a caller may see while the server sleeps, dies and restarts (RedisPoolTimeout
# is a redis ConnectionError too).
EXPECTED = (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError, _Abort)


def _side_client(server: RedisServer, **kwargs: Any) -> redis.Redis:
    """A client outside the pool, failing fast (no retries)."""
    opts: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": 1,
        "socket_timeout": 5,
    }
    opts.update(kwargs)
    return server.client(**opts)


def _pool_clients(side: redis.Redis, name: str) -> list[dict[str, Any]]:
    """The server's view of the pool's live connections (by client name).

    ``side`` itself is excluded, and so are connections the client already closed
    that the server has not reaped yet (flag ``A``: close ASAP).
    """
    me = side.client_id()
    return [
        c
        for c in side.client_list()
        if c.get("name") == name and int(c["id"]) != me and "A" not in c.get("flags", "")
    ]


def _sock_timeout(conn: Any) -> float | None:
    """The socket timeout a connection's reads and writes use right now."""
    return io_timeout(conn)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _start_debug_sleep(server: RedisServer, seconds: float) -> threading.Thread:
    """Make the whole server sleep ``seconds`` (from another client); return at once
    once the server got the command."""
    side = _side_client(server)
    side.ping()

    def run() -> None:
        try:
            side.execute_command("DEBUG", "SLEEP", str(seconds))
        finally:
            side.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.05)  # let the server pick the command up
    return thread


# -- 1. no reply ever reaches the wrong caller --------------------------------


class _Counts:
    """One worker's tally (merged after the run)."""

    def __init__(self) -> None:
        self.checked = 0  # replies read and matched against their own request
        self.ops = 0
        self.lost = 0  # GETs that found nothing because the server restarted in between
        self.errors: Counter[str] = Counter()
        self.misdelivered: list[str] = []
        self.unexpected: list[str] = []

    def check(self, got: Any, want: Any, what: str) -> None:
        if got == want:
            self.checked += 1
        else:
            self.misdelivered.append(f"{what}: expected {want!r}, got {got!r}")


class _Chaos:
    """Background faults: DEBUG SLEEP 0.1 now and then, two crashes + restarts."""

    def __init__(self, server: RedisServer, stop: threading.Event) -> None:
        self.server = server
        self.stop = stop
        self.restarts = 0  # bumped *before* each crash
        self.sleeps = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def _run(self) -> None:
        rnd = random.Random(1234)
        start = time.monotonic()
        crashes = [start + 2.0, start + 4.5]
        side = _side_client(self.server)
        try:
            while not self.stop.is_set():
                if crashes and time.monotonic() >= crashes[0]:
                    crashes.pop(0)
                    self.restarts += 1
                    self.server.kill()
                    time.sleep(0.05)
                    self.server.restart()
                    continue
                try:
                    side.execute_command("DEBUG", "SLEEP", "0.1")
                    self.sleeps += 1
                except redis.ConnectionError:  # just restarted: reconnect
                    side.close()
                    side = _side_client(self.server)
                self.stop.wait(rnd.uniform(0.05, 0.25))
        except BaseException as exc:
            self.errors.append(repr(exc))
        finally:
            side.close()


_Op = Callable[[_Counts, random.Random, str], None]


def _workload(pool: RedisPool, chaos: _Chaos) -> list[_Op]:
    """Operations through every API; each checks every reply it reads."""

    def client(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v, tok = f"rp:{tag}", f"v:{tag}".encode(), f"e:{tag}".encode()
        with pool.client() as r:
            c.check(r.set(k, v), True, "client SET")
            c.check(r.get(k), v, "client GET")
            c.check(r.echo(tok), tok, "client ECHO")

    def client_timeout(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v = f"rp:{tag}", f"v:{tag}".encode()
        with pool.client(timeout=0.05) as r:
            tok = f"e1:{tag}".encode()
            try:
                c.check(r.echo(tok), tok, "client(timeout) ECHO")
            except redis.TimeoutError:
                c.errors["TimeoutError"] += 1
                # Retry on the same client: redis-py reconnects its connection.
                tok = f"e2:{tag}".encode()
                c.check(r.echo(tok), tok, "client(timeout) ECHO retried")
            c.check(r.set(k, v), True, "client(timeout) SET")
            c.check(r.get(k), v, "client(timeout) GET")

    def connection(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v, tok = f"rp:{tag}", f"v:{tag}".encode(), f"e:{tag}".encode()
        with pool.connection() as conn:  # three commands pipelined by hand
            conn.send_command("SET", k, v)
            conn.send_command("GET", k)
            conn.send_command("ECHO", tok)
            c.check(conn.read_response(), b"OK", "conn SET")
            c.check(conn.read_response(), v, "conn GET")
            c.check(conn.read_response(), tok, "conn ECHO")

    def connection_timeout(c: _Counts, rnd: random.Random, tag: str) -> None:
        k = f"rp:{tag}"
        with pool.connection(timeout=0.05) as conn:
            tok = f"e1:{tag}".encode()
            conn.send_command("ECHO", tok)
            try:
                c.check(conn.read_response(), tok, "conn(timeout) ECHO")
            except redis.TimeoutError:
                c.errors["TimeoutError"] += 1
                if rnd.random() < 0.7:
                    # Retry a blocking pop on the same connection (redis-py
                    # reconnects it), then give up before its reply arrives.
                    conn.send_command("BLPOP", k, "0.05")
                    raise _Abort() from None
                tok = f"e2:{tag}".encode()
                conn.send_command("ECHO", tok)
                c.check(conn.read_response(), tok, "conn(timeout) ECHO retried")

    def via_redis(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v, tok = f"rp:{tag}", f"v:{tag}".encode(), f"e:{tag}".encode()
        r = pool.redis  # every command borrows and returns
        restarts = chaos.restarts
        c.check(r.echo(tok), tok, "pool.redis ECHO")
        c.check(r.set(k, v), True, "pool.redis SET")
        got = r.get(k)  # maybe on another connection
        if got is None and chaos.restarts != restarts:
            c.lost += 1  # the data went down with the server
        else:
            c.check(got, v, "pool.redis GET")

    def pipeline(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v, tok = f"rp:{tag}", f"v:{tag}".encode(), f"e:{tag}".encode()
        timeout = rnd.choice((None, 0.05))
        with pool.client(timeout=timeout) as r:
            p = r.pipeline(transaction=rnd.random() < 0.5)
            p.set(k, v)
            p.get(k)
            p.echo(tok)
            c.check(p.execute(), [True, v, tok], "client pipeline")

    def redis_pipeline(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v, tok = f"rp:{tag}", f"v:{tag}".encode(), f"e:{tag}".encode()
        with pool.redis.pipeline(transaction=rnd.random() < 0.5) as p:
            p.set(k, v)
            p.get(k)
            p.echo(tok)
            c.check(p.execute(), [True, v, tok], "pool.redis pipeline")

    def abort_mid_pipeline(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v, tok = f"rp:{tag}", f"v:{tag}".encode(), f"e:{tag}".encode()
        if rnd.random() < 0.5:
            with pool.client() as r:
                conn = r.connection
                assert conn is not None
                packed = conn.pack_commands([("SET", k, v), ("GET", k), ("ECHO", tok)])
                conn.send_packed_command(packed)
                c.check(conn.read_response(), b"OK", "hand pipeline SET")
                raise _Abort()  # two replies still owed
        with pool.connection() as conn:
            conn.send_command("SET", k, v)
            conn.send_command("GET", k)
            c.check(conn.read_response(), b"OK", "hand pipeline SET")
            raise _Abort()  # the GET reply is still owed

    def raise_after_command(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v = f"rp:{tag}", f"v:{tag}".encode()
        with pool.client() as r:  # the connection is clean: it may be reused
            c.check(r.execute_command("SET", k, v), True, "SET then raise")
            raise _Abort()

    def leave_multi_open(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, v, tok = f"rp:{tag}", f"v:{tag}".encode(), f"e:{tag}".encode()
        if rnd.random() < 0.5:
            with pool.connection() as conn:
                conn.send_command("MULTI")
                c.check(conn.read_response(), b"OK", "MULTI")
                conn.send_command("SET", k, v)
                c.check(conn.read_response(), b"QUEUED", "SET in MULTI")
            return  # never EXECed
        with pool.client() as r:
            c.check(r.execute_command("MULTI"), b"OK", "client MULTI")
            c.check(r.execute_command("ECHO", tok), b"QUEUED", "client ECHO in MULTI")
            if rnd.random() < 0.5:
                raise _Abort()

    def leave_watch(c: _Counts, rnd: random.Random, tag: str) -> None:
        k = f"rp:{tag}"
        with pool.client() as r:
            c.check(r.execute_command("WATCH", k), True, "WATCH")

    def leave_reply_unread(c: _Counts, rnd: random.Random, tag: str) -> None:
        k, tok = f"rp:{tag}", f"e:{tag}".encode()
        if rnd.random() < 0.5:
            with pool.client() as r:
                c.check(r.echo(tok), tok, "ECHO before unread")
                assert r.connection is not None
                r.connection.send_command("ECHO", b"unread:" + tok)
            return
        with pool.connection() as conn:  # a reply that comes later: the nasty case
            conn.send_command("BLPOP", k, "0.02")

    weighted = [
        (client, 4),
        (client_timeout, 3),
        (connection, 4),
        (connection_timeout, 5),
        (via_redis, 4),
        (pipeline, 3),
        (redis_pipeline, 2),
        (abort_mid_pipeline, 1),
        (raise_after_command, 1),
        (leave_multi_open, 1),
        (leave_watch, 1),
        (leave_reply_unread, 1),
    ]
    return [op for op, weight in weighted for _ in range(weight)]


def test_no_reply_ever_reaches_the_wrong_caller(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    name = "rp-faults"
    pool = RedisPool(
        server.url,
        min_size=2,
        max_size=6,
        timeout=2.0,
        connect_timeout=0.5,
        socket_timeout=1.0,
        client_name=name,
        name="faults",
    )
    stop = threading.Event()
    chaos = _Chaos(server, stop)
    ops = _workload(pool, chaos)
    tallies: list[_Counts] = []
    done_at: list[float] = []

    def worker(tid: int) -> None:
        rnd = random.Random(tid)
        counts = _Counts()
        tallies.append(counts)
        seq = 0
        while not stop.is_set():
            seq += 1
            op = rnd.choice(ops)
            try:
                op(counts, rnd, f"{tid}:{seq}")
                counts.ops += 1
                done_at.append(time.monotonic())
            except EXPECTED as exc:
                counts.errors[type(exc).__name__] += 1
                if isinstance(exc, RedisPoolTimeout):
                    stop.wait(0.005)  # failing fast while the server is down: back off
            except Exception as exc:
                counts.unexpected.append(f"{op.__name__}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(16)]
    with pool:
        chaos.thread.start()
        for t in threads:
            t.start()
        time.sleep(7.0)
        stop.set()
        deadline = time.monotonic() + 10
        for t in [*threads, chaos.thread]:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in [*threads, chaos.thread] if t.is_alive()]
        assert stuck == [], f"threads still running (stuck waiter?): {stuck}"

        checked = sum(c.checked for c in tallies)
        misdelivered = [m for c in tallies for m in c.misdelivered]
        unexpected = [u for c in tallies for u in c.unexpected]
        errors: Counter[str] = Counter()
        for c in tallies:
            errors.update(c.errors)
        done_at.sort()
        outage = max((b - a for a, b in itertools.pairwise(done_at)), default=0.0)
        s = pool.stats()
        summary = (
            f"checked={checked} ops={sum(c.ops for c in tallies)} errors={dict(errors)} "
            f"lost={sum(c.lost for c in tallies)} restarts={chaos.restarts} "
            f"sleeps={chaos.sleeps} destroyed={s.destroyed_by_reason} "
            f"longest stretch without a successful op={outage:.2f}s"
        )
        print(summary)  # shown with -s
        assert misdelivered == [], f"{len(misdelivered)} misdelivered: {misdelivered[:5]}"
        assert unexpected == [], f"{summary}\n{unexpected[:5]}"
        assert chaos.errors == []
        assert chaos.restarts == 2 and chaos.sleeps >= 5, summary
        assert checked >= 3000, summary
        assert errors["TimeoutError"] > 0, summary  # the faults really happened
        assert s.destroyed_by_reason.get(DIRTY, 0) > 0, summary
        assert s.in_use == 0 and s.waiting == 0, s
        assert s.size <= s.max_size, s

        # The pool recovers, and what it keeps is clean server-side too.
        def works() -> bool:
            try:
                with pool.client(wait=0.5) as r:
                    return bool(r.echo(b"after") == b"after")
            except redis.ConnectionError:
                return False

        _wait_for(works, 10.0, "the pool to recover")
        with _side_client(server) as side:
            for info in _pool_clients(side, name):  # idle: no MULTI, not blocked
                assert info["flags"] == "N" and info["multi"] == "-1", info
                assert info.get("watch", "0") == "0", info
        s = pool.stats()
        assert s.in_use == 0 and s.size <= s.max_size, s


# -- 2. borrowing after server-side closes -------------------------------------


@contextlib.contextmanager
def _hold_all(pool: RedisPool, n: int) -> Iterator[list[redis.Redis]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(pool.client(wait=2.0)) for _ in range(n)]


def _borrow_n_first_try(pool: RedisPool, n: int, tag: str) -> None:
    """The next ``n`` borrows (held together, so each gets its own connection)
    succeed on the first try and read their own data."""
    before = pool.stats()
    with _hold_all(pool, n) as clients:
        for i, r in enumerate(clients):
            assert r.set(f"{tag}:{i}", i) is True
            assert r.get(f"{tag}:{i}") == str(i).encode()
    after = pool.stats()
    assert after.timeouts == before.timeouts
    assert after.create_errors == before.create_errors


@pytest.mark.parametrize("close_by", ["client_kill", "restart", "server_timeout"])
def test_borrow_after_server_side_close(redis_server_factory: Factory, close_by: str) -> None:
    server = redis_server_factory()
    n = 4
    name = "rp-closes"
    pool = RedisPool(server.url, min_size=n, max_size=n, client_name=name, socket_timeout=2.0)
    with pool:
        pool.open(wait=True, timeout=5)
        with _hold_all(pool, n):  # all n connections exist and have been used
            pass
        assert pool.stats().size == n
        if close_by == "client_kill":
            with _side_client(server) as side:
                assert side.client_kill_filter(_type="normal", skipme=True) >= n
                _wait_for(lambda: not _pool_clients(side, name), 2.0, "the kill")
        elif close_by == "restart":
            server.restart()
        else:
            with _side_client(server) as side:
                side.config_set("timeout", 1)
                # The side client stays busy, the pool's connections idle past 1 s.
                _wait_for(lambda: not _pool_clients(side, name), 5.0, "the idle timeout")
                side.config_set("timeout", 0)
        time.sleep(0.05)  # let the FINs arrive
        assert pool.stats().destroyed_by_reason == {}
        _borrow_n_first_try(pool, n, close_by)
        s = pool.stats()
        assert s.destroyed_by_reason == {DEAD: n}, s
        assert s.size == n and s.in_use == 0
        _borrow_n_first_try(pool, n, close_by + "-again")  # the new ones are kept
        assert pool.stats().destroyed_by_reason == {DEAD: n}


# -- 3. the server never sees more than max_size ------------------------------


def test_server_never_sees_more_than_max_size(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    name = "rp-test"
    max_size = 5
    pool = RedisPool(
        server.url, min_size=1, max_size=max_size, timeout=5.0, client_name=name, name="cap"
    )
    stop = threading.Event()
    problems: list[str] = []
    seen: list[int] = []
    kills = [0]

    def hammer(tid: int) -> None:
        rnd = random.Random(tid)
        i = 0
        while not stop.is_set():
            i += 1
            k = f"cap:{tid}:{i}"
            try:
                roll = rnd.random()
                if roll < 0.4:
                    assert pool.redis.set(k, i) is True
                elif roll < 0.9:
                    with pool.client() as r:
                        assert r.incr(k) == 1
                        if roll > 0.8:
                            r.execute_command("MULTI")  # left open: discarded as dirty
                else:
                    with pool.connection() as conn:
                        conn.send_command("ECHO", k)  # unread: discarded as dirty
            except redis.ConnectionError:
                pass  # its connection was killed under it
            except Exception as exc:
                problems.append(repr(exc))

    def sample() -> None:
        with _side_client(server) as side:
            while not stop.is_set():
                seen.append(len(_pool_clients(side, name)))

    def killer() -> None:
        rnd = random.Random(7)
        with _side_client(server) as side:
            while not stop.wait(0.05):
                victims = _pool_clients(side, name)
                if victims:
                    side.client_kill_filter(_id=rnd.choice(victims)["id"])
                    kills[0] += 1

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(50)]
    threads += [threading.Thread(target=f, daemon=True) for f in (sample, killer)]
    with pool:
        for t in threads:
            t.start()
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert problems == []
        s = pool.stats()
        assert len(seen) > 20, "too few CLIENT LIST samples"
        assert max(seen) <= max_size, f"server saw {max(seen)} pool connections: {Counter(seen)}"
        assert max(seen) == max_size  # the hammering really used the whole pool
        assert kills[0] > 10 and s.destroyed_by_reason.get(DIRTY, 0) > 0, s
        assert s.in_use == 0 and s.size <= max_size, s


# -- 4. per-operation timeout ---------------------------------------------------


def test_per_operation_timeout(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    pool = RedisPool(server.url, min_size=1, max_size=1, socket_timeout=2.0)
    with pool:
        with pool.client(timeout=0.1) as r:  # no timeout fires: the connection stays
            assert r.set("k", "v") is True
            first = r.connection
            assert first is not None and _sock_timeout(first) == 0.1
        with pool.client() as r:  # the default timeout is back for the next borrower
            assert r.connection is first and _sock_timeout(first) == 2.0

        sleeper = _start_debug_sleep(server, 0.5)
        with pool.client(timeout=0.1) as r:
            t0 = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                r.get("k")
            elapsed = time.monotonic() - t0
        assert elapsed < 0.4, elapsed
        assert pool.stats().destroyed_by_reason == {DIRTY: 1}

        with pool.client() as r:  # waits out the sleep on a new connection
            assert r.connection is not first
            assert _sock_timeout(r.connection) == 2.0
            assert r.get("k") == b"v"
            assert r.echo(b"next") == b"next"
        sleeper.join(5)
        assert pool.stats().destroyed_by_reason == {DIRTY: 1}
        assert pool.stats().in_use == 0


def test_reconnect_inside_a_block_keeps_owed_replies_and_timeout(
    redis_server_factory: Factory,
) -> None:
    """After a timeout, a command retried on the same connection makes redis-py
    reconnect it; the reply that command owes must still make the connection
    dirty (else the next borrower reads it), and the block's timeout still holds."""
    server = redis_server_factory()
    pool = RedisPool(server.url, min_size=1, max_size=1, socket_timeout=2.0)
    with pool:
        pool.open(wait=True)
        sleeper = _start_debug_sleep(server, 0.3)
        with pytest.raises(_Abort):
            with pool.connection(timeout=0.1) as conn:
                conn.send_command("ECHO", b"first")
                with pytest.raises(redis.TimeoutError):
                    conn.read_response()
                conn.send_command("BLPOP", "nothing", "0.2")  # reconnects; reply later
                assert _sock_timeout(conn) == 0.1  # still the block's timeout
                raise _Abort()
        assert pool.stats().destroyed_by_reason == {DIRTY: 1}
        with pool.connection() as conn:
            conn.send_command("ECHO", b"mine")
            assert conn.read_response() == b"mine"
        sleeper.join(5)

        # The same through a pinned client and a pipeline.
        sleeper = _start_debug_sleep(server, 0.3)
        with pytest.raises(_Abort):
            with pool.client(timeout=0.1) as r:
                with pytest.raises(redis.TimeoutError):
                    r.echo(b"first")
                pinned = r.connection
                assert pinned is not None
                pinned.send_packed_command(pinned.pack_commands([("BLPOP", "x", "0.2"), ("PING",)]))
                raise _Abort()
        assert pool.stats().destroyed_by_reason == {DIRTY: 2}
        with pool.client() as r:
            assert r.echo(b"mine") == b"mine"
        sleeper.join(5)


# -- 5. wait timeout error; no password anywhere --------------------------------


def test_wait_timeout_error_message(redis_server_factory: Factory) -> None:
    server = redis_server_factory()
    pool = RedisPool(server.url, min_size=0, max_size=1, name="tiny")
    with pool, pool.client() as held:
        held.ping()
        t0 = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            with pool.client(wait=0.05):
                pass
        assert 0.04 <= time.monotonic() - t0 < 1.0
        assert isinstance(info.value, RedisPoolTimeout)
        message = str(info.value)
        assert "1 of 1 in use" in message, message
        waited = re.search(r"no connection available after (\d+\.\d+)s", message)
        assert waited is not None and 0.05 <= float(waited.group(1)) < 1.0, message
        assert "'tiny'" in message, message


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def test_password_never_shown(redis_server_factory: Factory, caplog: Any) -> None:
    secret = "Sup3r-s3cret-pw"
    server = redis_server_factory(password=secret)
    assert secret in server.url
    shown: list[str] = []
    caplog.set_level(logging.DEBUG)
    pool = RedisPool(server.url, min_size=1, max_size=2, timeout=1.0, connect_timeout=0.5)
    with pool:
        with pool.client() as r:
            assert r.set("k", "v") is True
            shown += [repr(r), repr(r.connection)]
        with pool.connection() as conn:
            shown.append(repr(conn))
        shown += [repr(pool), pool.url, pool.name, repr(pool.redis), repr(pool.as_redis_pool())]

        server.stop()  # now every connection attempt fails
        for _ in range(3):
            with pytest.raises(redis.exceptions.ConnectionError) as info:
                with pool.client(wait=0.3) as r:
                    r.ping()
            shown += [f"{e!r} {e}" for e in _chain(info.value)]
        s = pool.stats()
        assert s.create_errors > 0 and s.last_create_error
        shown += [str(s.as_dict()), repr(s), repr(pool)]

        # A wrong password in the URL is not shown either.
        server.start()
        wrong = server.url.replace(secret, "Wr0ng-pw-value")
        bad = RedisPool(wrong, min_size=0, max_size=1, timeout=0.5)
        with bad:
            with pytest.raises(redis.exceptions.RedisError) as bad_info:
                with bad.client() as r:
                    r.ping()
            shown += [f"{e!r} {e}" for e in _chain(bad_info.value)]
            shown += [repr(bad), str(bad.stats().as_dict())]
    assert caplog.records, "expected log records about the failed connections"
    shown += [rec.getMessage() for rec in caplog.records]
    shown.append(caplog.text)
    for text in shown:
        assert secret not in text, text
        assert "Wr0ng-pw-value" not in text, text


# -- 6. TLS -------------------------------------------------------------------------


def _tls_server(factory: Factory) -> RedisServer:
    try:
        binary = find_redis_server(tls=True)
    except RuntimeError as exc:
        pytest.skip(f"no TLS-capable redis-server: {exc}")
    if not tls_supported(binary):
        pytest.skip(f"{binary} was built without TLS support")
    return factory(tls=True, binary=binary)


def test_tls_pool(redis_server_factory: Factory) -> None:
    server = _tls_server(redis_server_factory)
    url = f"rediss://127.0.0.1:{server.port}/0"
    pool = RedisPool(url, min_size=1, max_size=2, ssl_ca_certs=server.ca_file)
    with pool:
        pool.open(wait=True)
        for i in range(30):
            with pool.client() as r:
                assert r.set(f"k{i}", i) is True
                assert r.get(f"k{i}") == str(i).encode()
            if i % 10 == 9:
                time.sleep(0.2)  # idle: TLS housekeeping (session tickets) is not "dead"
        with pool.connection() as conn:
            conn.send_command("ECHO", b"tls")
            assert conn.read_response() == b"tls"
        with pool.redis.pipeline() as p:
            p.set("a", 1)
            p.get("a")
            assert p.execute() == [True, b"1"]
        s = pool.stats()
        assert s.destroyed_by_reason == {}, s
        assert s.created == 1, s  # the same connection all along

        # A server-side close is still noticed on TLS connections.
        with _side_client(server, ssl_ca_certs=server.ca_file) as side:
            side.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.1)
        with pool.client() as r:
            assert r.echo(b"after kill") == b"after kill"
        assert pool.stats().destroyed_by_reason.get(DEAD, 0) >= 1


def test_tls_without_ca_fails_with_certificate_error(redis_server_factory: Factory) -> None:
    server = _tls_server(redis_server_factory)
    url = f"rediss://127.0.0.1:{server.port}/0"
    pool = RedisPool(url, min_size=0, max_size=1, timeout=1.0)
    with pool:
        t0 = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            with pool.client() as r:
                r.ping()
        assert time.monotonic() - t0 < 3.0
    chain = _chain(info.value)
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    assert "certificate verify failed" in text.lower(), text
    if isinstance(info.value, PoolTimeout):  # the pool's error names its cause
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError), text


def test_tls_cert_reqs_none(redis_server_factory: Factory) -> None:
    server = _tls_server(redis_server_factory)
    url = f"rediss://127.0.0.1:{server.port}/0"
    pool = RedisPool(url, min_size=0, max_size=1, ssl_cert_reqs="none")
    with pool:
        for i in range(5):
            with pool.client() as r:
                assert r.set("k", i) is True
                assert r.get("k") == str(i).encode()
        assert pool.stats().destroyed_by_reason == {}


# -- 7. unix socket -------------------------------------------------------------------


def test_unix_socket(redis_server_factory: Factory) -> None:
    server = redis_server_factory(unixsocket=True)
    pool = RedisPool(server.unix_url, min_size=1, max_size=3, client_name="rp-unix")
    with pool:
        pool.open(wait=True)
        with pool.connection() as conn:
            assert isinstance(conn, PooledUnixConnection)
            conn.send_command("ECHO", b"unix")
            assert conn.read_response() == b"unix"
        for i in range(10):
            with pool.client() as r:
                assert r.set("k", i) is True
                assert r.get("k") == str(i).encode()
        assert pool.redis.echo(b"x") == b"x"
        assert pool.stats().destroyed_by_reason == {}

        with _side_client(server) as side:  # over TCP: kills the unix-socket clients
            assert side.client_kill_filter(_type="normal", skipme=True) >= 1
            _wait_for(lambda: not _pool_clients(side, "rp-unix"), 2.0, "the kill")
        time.sleep(0.05)
        with pool.client() as r:
            assert r.echo(b"after kill") == b"after kill"
        assert pool.stats().destroyed_by_reason.get(DEAD, 0) >= 1
