"""Session state never leaks to the next borrower (issue 11, items 1 and 2).

The regression tests replay the reported cases; the oracle at the end drives
random blocks of plain and stateful commands, error replies, timeouts, CLIENT
KILL, redis-py retries and exceptions, and after every block checks that the
next borrower of the same slot sees exactly a fresh connection's session
(``SESSION_ORACLE_EXAMPLES=20000`` for a longer run than CI's).
"""

from __future__ import annotations

import collections
import enum
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from redispool import RedisPool
from redispool.testing import RedisServer

RETRY = {"retry": Retry(NoBackoff(), 1), "retry_on_error": [redis.ConnectionError]}


@pytest.fixture
def make_pool(redis_url: str) -> Iterator[Callable[..., RedisPool]]:
    pools: list[RedisPool] = []

    def make(**options: Any) -> RedisPool:
        pool = RedisPool(redis_url, min_size=0, max_size=1, timeout=5, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def side(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client(protocol=2)
    yield client
    client.close()


def _timed_out_blpop(r: redis.Redis) -> None:
    with pytest.raises(redis.TimeoutError):
        r.blpop(["nothing-comes"], 5)  # redis-py disconnects on the timeout


def test_select_after_a_caught_timeout_stays_in_its_block(
    make_pool: Callable[..., RedisPool], side: redis.Redis, redis_server: RedisServer
) -> None:
    """The reconnect inside SELECT's send used to wipe the mark set just before."""
    pool = make_pool()
    with pool.client(timeout=0.1) as r:
        _timed_out_blpop(r)
        assert r.select(1)
    with pool.client() as r:
        r.set("where", "here")
    assert side.get("where") == b"here"
    with redis.Redis.from_url(redis_server.url_for(1)) as db1:
        assert db1.get("where") is None


def test_multi_after_a_caught_timeout_then_an_exception(
    make_pool: Callable[..., RedisPool],
) -> None:
    pool = make_pool()
    with pytest.raises(KeyError):
        with pool.client(timeout=0.1) as r:
            _timed_out_blpop(r)
            r.execute_command("MULTI")
            raise KeyError("app bug")
    with pool.client() as r:
        r.rpush("list", "a")
        assert r.lrange("list", 0, -1) == [b"a"]  # not b"QUEUED"
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


def test_multi_resent_by_redis_py_retry_after_client_kill(
    make_pool: Callable[..., RedisPool], side: redis.Redis
) -> None:
    """No user ``try``: redis-py's own retry re-sends MULTI on a new session."""
    pool = make_pool(**RETRY)
    side.set("k", "v")
    with pool.client() as r:
        assert side.client_kill_filter(_id=r.client_id()) == 1
        assert r.execute_command("MULTI")  # retried on a new connection
    with pool.client() as r:
        assert r.get("k") == b"v"  # not b"QUEUED"


def test_pipeline_packed_before_a_reconnect_keeps_its_marks(
    make_pool: Callable[..., RedisPool],
) -> None:
    """pack_commands counts the commands; the reconnect happens in the send after."""
    pool = make_pool()
    with pool.connection() as conn:
        conn.disconnect()
        conn.send_packed_command(conn.pack_commands([("MULTI",), ("SET", "k", "1")]))
        assert conn.read_response() == b"OK"
        assert conn.read_response() == b"QUEUED"
    with pool.client() as r:
        assert r.get("k") is None and r.set("k", "2")


@pytest.mark.parametrize("command", ["EXEC", "DISCARD"])
def test_exec_or_discard_without_multi_keeps_the_watch(
    make_pool: Callable[..., RedisPool], side: redis.Redis, command: str
) -> None:
    """The server refuses them and keeps watching: the tracker must not forget."""
    pool = make_pool()
    with pool.client() as r:
        r.execute_command("WATCH", "watched")
        with pytest.raises(redis.ResponseError, match="without MULTI"):
            r.execute_command(command)
    side.set("watched", "changed")
    with pool.client() as r:
        with r.pipeline() as pipe:
            pipe.set("x", "1")
            assert pipe.execute() == [True]  # no WatchError from someone else's WATCH
        assert _client_info(r)["flags"] == "N"


def test_exec_abort_ends_the_transaction_and_the_watch(
    make_pool: Callable[..., RedisPool], side: redis.Redis
) -> None:
    """EXECABORT (a queued command was refused) discards the transaction and
    unwatches: the connection stays in the pool."""
    pool = make_pool()
    with pool.client() as r:
        conn = r.connection
        r.execute_command("WATCH", "watched")
        with r.pipeline() as pipe:
            pipe.set("k", "1").execute_command("SET", "k")  # wrong number of arguments
            with pytest.raises(redis.ResponseError):
                pipe.execute()
    side.set("watched", "changed")
    with pool.client() as r:
        assert r.connection is conn
        with r.pipeline() as pipe:
            assert pipe.set("x", "1").execute() == [True]
        assert _client_info(r)["flags"] == "N"


def test_handshake_is_not_user_state(make_pool: Callable[..., RedisPool]) -> None:
    """A reconnect inside a block (SELECT of the configured db, CLIENT SETNAME,
    a redis_connect_func) leaves a connection that may be reused."""

    def connect_func(conn: Any) -> None:
        conn.on_connect()
        conn.send_command("CLIENT", "NO-EVICT", "OFF")  # what the app's setup wants
        assert conn.read_response() == b"OK"

    pool = make_pool(db=2, client_name="app", redis_connect_func=connect_func)
    with pool.client(timeout=0.1) as r:
        conn = r.connection
        _timed_out_blpop(r)
        r.set("k", "v")  # reconnects: the handshake runs again
    with pool.client() as r:
        assert r.connection is conn
        info = _client_info(r)
        assert (info["db"], info["name"], info["flags"]) == ("2", "app", "N")
    assert pool.stats().destroyed == 0


class Interrupt(BaseException):
    """Stands for an asynchronous exception (gevent.Timeout, KeyboardInterrupt)."""


def test_handshake_cut_short_is_discarded(make_pool: Callable[..., RedisPool]) -> None:
    """redis-py closes the socket only on a RedisError in the handshake."""
    cut = []

    def connect_func(conn: Any) -> None:
        conn.on_connect()
        if cut:
            conn.send_command("PING")  # its reply never read
            raise Interrupt

    pool = make_pool(redis_connect_func=connect_func)
    with pytest.raises(Interrupt):
        with pool.client() as r:
            r.connection.disconnect()
            cut.append(True)
            r.get("k")
    cut.clear()
    with pool.client() as r:
        assert r.echo("mine") == b"mine"
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


@pytest.mark.parametrize("command", [("WATCH", "watched"), ("MULTI",)])
def test_an_interruption_once_a_stateful_reply_is_read_discards_it(
    make_pool: Callable[..., RedisPool], side: redis.Redis, command: tuple[str, ...]
) -> None:
    """Interrupted after the reply of WATCH or MULTI was read, before its effect
    was noted: the connection went back clean, the next borrower's EXEC aborted
    by someone else's WATCH, its commands QUEUED in someone else's MULTI."""
    pool = make_pool()

    def interrupted(error: Any) -> None:
        raise Interrupt  # a signal handler raising at _rp_settle's first line

    with pytest.raises(Interrupt):
        with pool.client() as r:
            conn: Any = r.connection
            conn._rp_settle = interrupted
            try:
                r.execute_command(*command)
            finally:
                del conn._rp_settle
    side.set("watched", "changed")
    with pool.client() as r:
        assert r.echo("mine") == b"mine"
        with r.pipeline() as pipe:
            pipe.set("x", "1")
            assert pipe.execute() == [True]
        assert _client_info(r)["flags"] == "N"
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


def test_bytes_packed_elsewhere_make_it_dirty(make_pool: Callable[..., RedisPool]) -> None:
    pool = make_pool()
    with pool.connection() as conn:
        conn.send_packed_command([b"*1\r\n$5\r\nMULTI\r\n"])
        assert conn.read_response() == b"OK"
    with pool.client() as r:
        assert r.echo("mine") == b"mine"
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


_RAW_SELECT = [b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n"]


@pytest.mark.parametrize("before", ["packed-unsent", "data-error"])
def test_raw_bytes_after_a_command_never_sent_make_it_dirty(
    make_pool: Callable[..., RedisPool], before: str
) -> None:
    """Raw bytes were taken for the commands already counted but never sent (one
    packed and kept, one whose packing raised DataError): SELECT went unseen."""
    pool = make_pool()
    with pool.connection() as conn:
        if before == "packed-unsent":
            conn.pack_command("GET", "k")
        else:
            with pytest.raises(redis.DataError):
                conn.send_command("SET", "k", None)
        conn.send_packed_command(_RAW_SELECT)
        assert conn.read_response() == b"OK"
    with pool.client() as r:
        assert _client_info(r)["db"] == "0"
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


def test_connect_callbacks_make_it_dirty(make_pool: Callable[..., RedisPool]) -> None:
    """Connect callbacks (PubSub's re-subscription) run after the handshake: user state."""

    class Subscriber:  # what PubSub registers: a bound method, held weakly
        def on_connect(self, conn: Any) -> None:
            conn.send_command("CLIENT", "SETNAME", "sub")
            conn.read_response()

    subscriber = Subscriber()
    pool = make_pool()
    with pool.client() as r:
        conn: Any = r.connection
        conn.register_connect_callback(subscriber.on_connect)
        conn.disconnect()
        assert r.ping()  # reconnects: the callback names the connection
    with pool.client() as r:
        assert r.echo("mine") == b"mine"
        assert _client_info(r)["name"] == ""
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


@pytest.mark.parametrize(
    "command",
    [
        ("SELECT", "0"),  # even the same db: not worth tracking values
        ("CLIENT", "SETNAME", "x"),
        ("client setname", "x"),  # redis-py's own spelling: one string
        ("CLIENT", "TRACKING", "ON"),
        ("CLIENT", "NO-EVICT", "ON"),
        ("CLIENT", "REPLY", "ON"),
        ("HELLO", "2"),
        ("RESET",),
        ("UNSUBSCRIBE",),
        ("READONLY",),  # refused without cluster mode: an error reply is doubt too
        ("WATCH", "k"),
        ("MULTI",),
        ("CLIENT", "CAPA", "redirect"),  # Valkey 8 (refused here: still in doubt)
        ("CLIENT", "MAINT_NOTIFICATIONS", "ON"),  # Redis 8 (refused here: in doubt)
        ("SCRIPT", "DEBUG", "YES"),
        ("script debug", "sync"),
    ],
    ids=lambda c: " ".join(c),
)
def test_each_stateful_command_once_answered_makes_it_dirty(
    make_pool: Callable[..., RedisPool], command: tuple[str, ...]
) -> None:
    pool = make_pool(protocol=2)
    with pool.client() as r:
        try:
            r.execute_command(*command)
        except redis.ResponseError:
            pass
    with pool.client() as r:
        assert r.echo("mine") == b"mine"
        assert _client_info(r)["flags"] == "N"
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


@pytest.mark.parametrize("mode", ["YES", "SYNC"])
def test_script_debug_does_not_reach_the_next_borrowers_eval(
    make_pool: Callable[..., RedisPool], mode: str
) -> None:
    """SCRIPT DEBUG shows nowhere in CLIENT INFO; kept, the next borrower's EVAL
    opened a Lua debugging session and got the debugger's output (SYNC: blocking
    the server)."""
    pool = make_pool()
    with pool.client() as r:
        assert r.execute_command("SCRIPT", "DEBUG", mode) == b"OK"
    with pool.client() as r:
        assert r.eval("return 7", 0) == 7
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


class _Command(str, enum.Enum):  # str() is "_Command.SELECT"; redis-py sends "SELECT"
    SELECT = "SELECT"
    SETNAME = "SETNAME"


@pytest.mark.parametrize(
    "command",
    [
        (_Command.SELECT, 1),
        ("CLIENT", _Command.SETNAME, "x"),
        (memoryview(b"SELECT"), 1),  # sent as its bytes (redis-py fails after the reply)
    ],
    ids=["str-enum", "str-enum-subcommand", "memoryview"],
)
def test_a_command_word_of_another_type_is_classified_as_sent(
    make_pool: Callable[..., RedisPool], command: tuple[Any, ...]
) -> None:
    pool = make_pool(protocol=2)
    with pool.client() as r:
        try:
            r.execute_command(*command)
        except AttributeError:  # redis-py's reply callback lookup on a memoryview
            pass
    with pool.client() as r:
        info = _client_info(r)
        assert (info["db"], info["name"]) == ("0", "")
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


@pytest.mark.parametrize("mode", ["SKIP", "OFF"])
def test_client_reply_skip_or_off_is_never_balanced(
    make_pool: Callable[..., RedisPool], mode: str
) -> None:
    """No reply comes for CLIENT REPLY SKIP/OFF (nor for the command after):
    the count of owed replies never returns to zero."""
    pool = make_pool()
    with pool.connection() as conn:
        conn.send_command("CLIENT", "REPLY", mode)
        conn.send_command("SET", "k", "1")
        conn.send_command("CLIENT", "REPLY", "ON")
        assert conn.read_response() == b"OK"  # the only reply: for REPLY ON
    with pool.client() as r:
        assert r.echo("mine") == b"mine"
    assert pool.stats().destroyed_by_reason == {"dirty": 1}


def _client_info(r: redis.Redis) -> dict[str, str]:
    """``CLIENT INFO`` as a dict; fails loudly on any other reply (b'QUEUED', ...)."""
    reply = r.execute_command("CLIENT", "INFO")
    text = reply.decode() if isinstance(reply, bytes) else reply
    assert isinstance(text, str) and text.startswith("id="), reply
    return dict(field.split("=", 1) for field in text.split())


# -- the oracle --------------------------------------------------------------

# What a fresh connection's CLIENT INFO must show again after any block.
_SESSION_FIELDS = ("db", "name", "flags", "sub", "psub", "ssub", "multi", "resp", "redir", "user")
_KEYS = [f"k{i}" for i in range(3)]
_DBS = range(3)


class Boom(Exception):
    """An application bug inside the block."""


def _kill(r: redis.Redis, side: redis.Redis) -> None:
    sock = r.connection._sock  # type: ignore[union-attr]
    if sock is not None:
        host, port = sock.getsockname()[:2]
        side.client_kill_filter(addr=f"{host}:{port}")


def _tx(r: redis.Redis, n: int) -> None:
    with r.pipeline() as pipe:
        pipe.set(_KEYS[n], n).get(_KEYS[n])
        if n == 2:
            pipe.execute_command("SET", "k0")  # refused when queued: EXECABORT
        pipe.execute()


def _watch_tx(r: redis.Redis, n: int) -> None:
    with r.pipeline() as pipe:
        pipe.watch(_KEYS[n])
        pipe.multi()
        pipe.incr("counter")
        pipe.execute()


def _unread(r: redis.Redis, n: int) -> None:
    r.connection.send_command("PING")  # type: ignore[union-attr]


def _raise(r: redis.Redis, n: int) -> None:
    raise Boom


Op = Callable[[redis.Redis, int], Any]
OPS: dict[str, Op] = {
    "set": lambda r, n: r.set(_KEYS[n], n),
    "get": lambda r, n: r.get(_KEYS[n]),
    "rpush": lambda r, n: r.rpush(_KEYS[n], n),  # WRONGTYPE on a string
    "multi": lambda r, n: r.execute_command("MULTI"),
    "exec": lambda r, n: r.execute_command("EXEC"),
    "discard": lambda r, n: r.execute_command("DISCARD"),
    "watch": lambda r, n: r.execute_command("WATCH", _KEYS[n]),
    "unwatch": lambda r, n: r.execute_command("UNWATCH"),
    "select": lambda r, n: r.execute_command("SELECT", _DBS[n]),
    "setname": lambda r, n: r.execute_command("CLIENT", "SETNAME", f"user{n}"),
    "reply": lambda r, n: r.execute_command("CLIENT", "REPLY", ("ON", "SKIP", "OFF")[n]),
    "tracking": lambda r, n: r.execute_command("CLIENT", "TRACKING", "ON" if n else "OFF"),
    "no-evict": lambda r, n: r.execute_command("CLIENT", "NO-EVICT", "ON" if n else "OFF"),
    "subscribe": lambda r, n: r.execute_command(("SUBSCRIBE", "PSUBSCRIBE")[n % 2], f"c{n}"),
    "blpop": lambda r, n: r.blpop([f"empty{n}"], 5),  # times out: the op timeout is short
    "tx": _tx,
    "watch-tx": _watch_tx,
    "unread": _unread,
    "raise": _raise,
}
# Plain commands more often than the rest, as in real blocks.
_OP_NAMES = ["set", "get", "set", "get", *OPS]
_block = st.lists(st.tuples(st.sampled_from([*_OP_NAMES, "kill"]), st.integers(0, 2)), max_size=7)
_EXAMPLES = int(os.environ.get("SESSION_ORACLE_EXAMPLES", "800"))  # x1-3 blocks
OP_TIMEOUT = 0.003  # per command in the blocks: timeouts are cheap and frequent


def _probe(r: redis.Redis) -> dict[str, str]:
    """The session's fields, in one round trip: ECHO, CLIENT INFO, MULTI, ECHO,
    EXEC. A stray reply shifts the replies, a leaked MULTI nests, a leaked WATCH
    of a touched key makes EXEC nil: each fails here."""
    token = uuid.uuid4().hex.encode()
    with r.pipeline(transaction=False) as pipe:
        pipe.echo(token).execute_command("CLIENT", "INFO")
        pipe.execute_command("MULTI").echo(token).execute_command("EXEC")
        echo, info, multi, queued, result = pipe.execute()
    assert (echo, multi, queued, result) == (token, b"OK", b"QUEUED", [token])
    fields = dict(field.split("=", 1) for field in info.decode().split())
    return {key: fields.get(key, "") for key in _SESSION_FIELDS}


def _fresh_session(pool: RedisPool) -> dict[str, str]:
    with pool.client() as r:
        fields = _probe(r)
    pool.drain()
    return fields


def _touch_watchable_keys(side: redis.Redis) -> None:
    """Modify every key a block may have watched: a WATCH that leaked then shows
    as flag ``d`` and fails the next transaction."""
    with side.pipeline(transaction=False) as pipe:
        for db in _DBS:
            pipe.execute_command("SELECT", db).mset(dict.fromkeys(_KEYS, "touched"))
        pipe.execute_command("SELECT", 0).execute()


def test_next_borrower_always_gets_a_fresh_session(
    redis_url: str, redis_server: RedisServer
) -> None:
    """The oracle: after any block, whatever happened in it, the next borrower of
    the same slot (max_size=1) sees a fresh connection's session and its own replies."""
    side = redis_server.client(protocol=2, single_connection_client=True)
    configs: list[dict[str, Any]] = [
        {"protocol": 2},
        {"protocol": 3, "db": 1, "client_name": "oracle"},
        {"protocol": 2, "db": 2, **RETRY},
        {"protocol": 3, "retry": Retry(NoBackoff(), 1), "retry_on_timeout": True},
    ]
    pools = [RedisPool(redis_url, min_size=0, max_size=1, timeout=5, **c) for c in configs]
    fresh = [_fresh_session(pool) for pool in pools]
    seen: collections.Counter[str] = collections.Counter()

    def run_block(r: redis.Redis, ops: list[tuple[str, int]]) -> None:
        for name, n in ops:
            try:
                if name == "kill":
                    _kill(r, side)
                else:
                    OPS[name](r, n)
            except Boom:
                raise
            except Exception:
                # Error replies, timeouts, killed connections; after an unread
                # reply even redis-py's own parsing fails: all in this block only.
                pass

    def check_next_borrower(pool: RedisPool, before: Any, expected: dict[str, str]) -> None:
        with pool.client(timeout=2) as r:
            seen["reused" if r.connection is before else "fresh"] += 1
            try:
                assert _probe(r) == expected
            except BaseException:
                pool.drain()  # the next example starts clean
                raise

    @settings(
        max_examples=_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(which=st.integers(0, len(pools) - 1), blocks=st.lists(_block, min_size=1, max_size=3))
    def run(which: int, blocks: list[list[tuple[str, int]]]) -> None:
        pool = pools[which]
        for ops in blocks:
            before = None
            try:
                with pool.client(timeout=OP_TIMEOUT) as r:
                    before = r.connection
                    run_block(r, ops)
            except Boom:
                pass
            if any(name in ("watch", "watch-tx") for name, _ in ops):
                _touch_watchable_keys(side)
            check_next_borrower(pool, before, fresh[which])

    try:
        run()
    finally:
        for pool in pools:
            pool.close()
        side.close()
    # Not vacuous: clean connections were reused, dirty ones replaced.
    assert seen["reused"] > _EXAMPLES // 4 and seen["fresh"] > _EXAMPLES // 4, seen


# -- command words in every form redis-py sends --------------------------------


class _Word(str, enum.Enum):
    SELECT = "SELECT"
    CLIENT = "CLIENT"
    SCRIPT = "SCRIPT"


def _word_forms(word: str, first: bool) -> st.SearchStrategy[Any]:
    """``word`` as a caller may write it; each one reaches the server as ``word``
    (redis-py splits the first argument at whitespace)."""
    forms: list[Any] = [word, word.lower(), word.title()]
    forms += [word.encode(), word.lower().encode(), memoryview(word.encode())]
    if first:
        forms.append(f" {word.lower()}\t")
    if word in _Word.__members__:
        forms.append(_Word[word])
    return st.sampled_from(forms)


# (words, arguments): stateful ones and a plain one
_WORD_COMMANDS = [
    (("SELECT",), ("1",)),
    (("CLIENT", "SETNAME"), ("who",)),
    (("CLIENT", "TRACKING"), ("ON",)),
    (("SCRIPT", "DEBUG"), ("YES",)),
    (("HELLO",), ("3",)),
    (("ECHO",), ("plain",)),
]


@st.composite
def _word_command(draw: st.DrawFn) -> tuple[Any, ...]:
    words, args = draw(st.sampled_from(_WORD_COMMANDS))
    return (*(draw(_word_forms(w, i == 0)) for i, w in enumerate(words)), *args)


def test_command_words_in_any_form_never_reach_the_next_borrower(
    redis_url: str,
) -> None:
    """Random blocks of commands whose words are str (any case, padded), bytes,
    memoryview or a (str, Enum) member, sent raw, packed or in a pipeline: the
    next borrower sees a fresh session and its EVAL is not debugged."""
    pool = RedisPool(redis_url, min_size=0, max_size=1, timeout=5, protocol=2)
    fresh = _fresh_session(pool)

    def send(conn: Any, how: str, command: tuple[Any, ...]) -> None:
        try:
            if how == "raw":
                conn.send_command(*command)
            else:
                conn.send_packed_command(conn.pack_command(*command))
            conn.read_response()
        except Exception:  # HELLO 3 on a RESP2 parser: that block's own trouble
            pass

    @settings(max_examples=120, deadline=None, derandomize=True, database=None)
    @given(
        st.lists(
            st.tuples(st.sampled_from(["raw", "packed", "pipeline"]), _word_command()),
            min_size=1,
            max_size=4,
        )
    )
    def run(block: list[tuple[str, tuple[Any, ...]]]) -> None:
        with pool.connection() as conn:
            for how, command in block:
                if how == "pipeline":
                    continue
                send(conn, how, command)
        with pool.client() as r:
            for how, command in block:
                if how == "pipeline" and not isinstance(command[0], memoryview):
                    with r.pipeline(transaction=False) as pipe:
                        try:
                            pipe.execute_command(*command).execute()
                        except Exception:
                            pass
        with pool.client() as r:
            try:
                assert _probe(r) == fresh
                assert r.eval("return 7", 0) == 7
            except BaseException:
                pool.drain()
                raise

    try:
        run()
    finally:
        pool.close()
