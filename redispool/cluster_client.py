"""``RedisClusterPool.client()``: a ``redis.Redis`` pinned to one checked
connection of the primary that serves a hash slot.

With a key the slot is known at once. Without one (what the helpers use) the
client pins itself at its first command, to the primary serving that
command's keys (any primary for a keyless command); every later command of the
block goes to the same connection, so keys of another slot get MOVED or
CROSSSLOT, as on any single node. Give the keys of one piece of work one
``{hash tag}``.

A command answered ASK (its slot is migrating, and its keys are not, or no
longer, on the pinned node) is sent once more, after ASKING, on a connection
of the node named, borrowed for that command alone; so are a pipeline's
commands answered ASK (not a transaction's: one queued command refused aborts
it). As redis-py's ``RedisCluster`` does; the pinned connection stays pinned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis
from redis.client import Pipeline
from redis.cluster import SLOT_ID, RedisCluster
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError

from .connection import IN_MULTI, WATCHING
from .errors import PoolError

if TYPE_CHECKING:
    from .redis_pool import _ClientLease

__all__ = ["SlotLease", "SlotPipeline", "SlotRedis"]

_SCRIPTED = frozenset(["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"])
_SESSION = frozenset(["WATCH", "UNWATCH", "MULTI", "EXEC", "DISCARD"])


def slot_of(cluster: RedisCluster, args: Sequence[Any]) -> int | None:
    """The hash slot of a command's keys; None for a keyless command."""
    name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    if name.upper() in _SCRIPTED or cluster.command_flags.get(name) == SLOT_ID:
        slot: int | None = cluster.determine_slot(*args)
        return slot
    keys = cluster._get_command_keys(*args)
    if not keys:
        return None
    slots = {cluster.keyslot(key) for key in keys}
    if len(slots) > 1:
        raise RedisClusterException(
            f"{name}: keys in {len(slots)} hash slots (give them one {{hash tag}})"
        )
    return int(slots.pop())


class SlotLease:
    """``with pool.client() as r:``; pins on the first command."""

    __slots__ = ("_ask_for", "_client", "_inner", "_lease_for", "_pinned", "_slot_of")

    def __init__(
        self,
        lease_for: Callable[[int | None], _ClientLease],
        slot_of: Callable[[Sequence[Any]], int | None],
        ask_for: Callable[[AskError], _ClientLease],
    ) -> None:
        self._lease_for = lease_for  # slot (None: any primary) -> a node pool's lease
        self._slot_of = slot_of
        self._ask_for = ask_for  # an ASK -> a lease of the node it names
        self._client: SlotRedis | None = None
        self._inner: _ClientLease | None = None
        self._pinned: redis.Redis | None = None

    def pin(self, args: Sequence[Any], slot: int | None = None) -> redis.Redis:
        """The pinned client, borrowing on first use for ``args``' slot."""
        pinned = self._pinned
        if pinned is not None:
            return pinned
        if self._client is None:
            raise PoolError(
                "this client was borrowed with `with pool.client()` and its block has "
                "ended; borrow again instead of keeping the client"
            )
        inner = self._lease_for(slot)
        pinned = inner.__enter__()
        self._inner, self._pinned = inner, pinned
        return pinned

    def follows(self, exc: BaseException, name: Any = None) -> bool:
        """Is ``exc`` an ASK to follow: not MOVED, not for WATCH, MULTI, EXEC, ...,
        and the pinned connection neither in MULTI nor watching?"""
        if not isinstance(exc, AskError) or isinstance(exc, MovedError):
            return False
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        if isinstance(name, str) and name.upper() in _SESSION:
            return False
        conn: Any = self._pinned.connection if self._pinned is not None else None
        return conn is not None and not conn._rp_state & (IN_MULTI | WATCHING)

    def asked(self, exc: AskError, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """ASKING, then the command, on a connection of the node ``exc`` names,
        given back at once (ASKING allows the next command only: if that is
        never sent, the connection goes back marked, and is not reused as is)."""
        with self._ask_for(exc) as r:
            r.execute_command("ASKING")
            return r.execute_command(*args, **options)

    def asked_in_pipeline(self, stack: list[Any], replies: list[Any]) -> None:
        """Each command of a pipeline (no MULTI) answered ASK, once more after
        ASKING on the node named (one pipeline per node); its reply replaces the
        ASK in ``replies``. (Per key, the commands answered ASK are the last ones:
        once a key is not on the migrating node, every command for it is.) When
        that fails (no connection free in time, the node unreachable), they keep
        their ASK, with the failure as its ``__cause__``: the others were applied,
        and the caller must know which."""
        by_node: dict[tuple[str, int], list[int]] = {}
        for i, reply in enumerate(replies):
            if self.follows(reply, stack[i][0][0]):
                by_node.setdefault((reply.host, reply.port), []).append(i)
        for asked in by_node.values():
            try:
                with self._ask_for(replies[asked[0]]) as r:
                    pipe = r.pipeline(transaction=False)
                    for i in asked:
                        pipe.execute_command("ASKING")
                        pipe.execute_command(*stack[i][0], **stack[i][1])
                    again = pipe.execute(raise_on_error=False)
            except (RedisError, PoolError, OSError, RedisClusterException) as exc:
                for i in asked:
                    if replies[i] is not exc:  # (the ASK itself: a node still unknown)
                        replies[i].__cause__ = exc
                continue
            for i, reply in zip(asked, again[1::2], strict=True):
                replies[i] = reply

    def __enter__(self) -> SlotRedis:
        client = SlotRedis.__new__(SlotRedis)
        client._rp_lease = self
        client._rp_slot = self._slot_of
        self._client = client
        return client

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        # (Cut short at this line or the inner __exit__'s first, before the
        # connection is back: RedisClusterPool.client()'s wrapper gives it back.)
        self._client = None
        inner, self._inner, self._pinned = self._inner, None, None
        if inner is not None:
            inner.__exit__(et, ev, tb)


class SlotRedis(redis.Redis):
    """What ``RedisClusterPool.client()`` yields without a key (never built:
    every command goes to the pinned client)."""

    _rp_lease: SlotLease
    _rp_slot: Callable[[Sequence[Any]], int | None]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        lease = self._rp_lease
        pinned = lease._pinned or lease.pin(args, self._rp_slot(args))
        try:
            return pinned.execute_command(*args, **options)
        except AskError as exc:
            if not lease.follows(exc, args[0]):
                raise
            return lease.asked(exc, args, options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> SlotPipeline:
        pipe = SlotPipeline.__new__(SlotPipeline)
        Pipeline.__init__(pipe, None, {}, transaction, shard_hint)  # type: ignore[arg-type]
        pipe._rp_client = self
        return pipe

    def pubsub(self, **kwargs: Any) -> Any:
        raise NotImplementedError("use pool.redis.pubsub() on a cluster")

    def __del__(self) -> None:
        """Nothing to close: the connection goes back to the pool with the block."""

    def close(self) -> None:
        """Ignored: the connection goes back to the pool when the block ends."""

    def __repr__(self) -> str:
        return f"<SlotRedis pinned={self._rp_lease._pinned is not None}>"


class SlotPipeline(Pipeline):
    """Buffers commands; on ``execute()`` pins (by its first command) and runs
    them as one pipeline on the pinned connection. No WATCH: use
    ``pool.client(key)`` for optimistic transactions."""

    _rp_client: SlotRedis

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        raise NotImplementedError("WATCH needs the slot first: use pool.client(key)")

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack, self.command_stack = self.command_stack, []
        if not stack:
            return []
        client = self._rp_client
        lease = client._rp_lease
        first = stack[0][0]
        pinned = lease._pinned or lease.pin(first, client._rp_slot(first))
        transaction = bool(self.transaction or self.explicit_transaction)  # type: ignore[truthy-function]
        self.explicit_transaction = False  # (as redis-py's execute: multi() once)
        pipe = pinned.pipeline(transaction=transaction)
        pipe.command_stack = stack
        if transaction:
            result: list[Any] = pipe.execute(raise_on_error)
            return result
        result = pipe.execute(raise_on_error=False)
        lease.asked_in_pipeline(stack, result)
        if raise_on_error:
            pipe.raise_first_error(stack, result)
        return result

    def reset(self) -> None:  # type: ignore[override]
        self.command_stack = []
        self.scripts = set()
        self.watching = False
        self.explicit_transaction = False
