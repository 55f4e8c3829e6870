"""A storm of signals whose handler raises inside the pool's code, run in a
subprocess by test_signals.py (a deadlocked pool there cannot hang the test run).

``python -m tests._signal_storm CASE SEED`` runs CASE on an ``ObjectPool`` in the
main thread while a real ``SIGALRM`` interval timer fires every few hundred
microseconds; its handler raises ``Interrupt`` when the frame it lands in is
redispool's (as a Ctrl-C, gunicorn's SIGQUIT or Celery's soft time limit would,
at any call or loop of the pool), at most once per operation: the pool's
recovery from one is not itself interrupted. A second thread borrows and returns
alongside, so hand-offs, queues and creates happen too. Then, with the timer
off: is the pool's lock free, do its numbers add up, was every object made
destroyed at most once or still idle, and does it still lend all it has? One
JSON line.
"""

from __future__ import annotations

import ast
import dis
import gc
import inspect
import json
import random
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from redispool import ObjectPool, PoolTimeout
from redispool._poolparts import _Lease, _MethodLease
from redispool.redis_pool import _ClientLease, _ConnectionLease

from .helpers import Factory, Resource

CASES = ("lease", "lease_error", "borrow", "queue", "tuned", "churn", "admin")
_POOL_FILES = tuple(
    f"redispool/{name}.py" for name in ("pool", "_poolparts", "_upkeep", "_create", "_lifecycle")
)


class Interrupt(BaseException):
    """What the handler raises (as KeyboardInterrupt or SystemExit would)."""


_RESUME: dict[Any, int] = {}


# The leases' __exit__: interrupted at their first instruction, the lease's
# finalizer hands its object back (see _poolparts._Out), so the storm raises there.
_RECLAIMED = frozenset(
    cls.__exit__.__code__ for cls in (_Lease, _MethodLease, _ConnectionLease, _ClientLease)
)


def _entered_from_outside(frame: Any, files: tuple[str, ...] = _POOL_FILES) -> bool:
    """At the first instruction of a pool function called from outside the pool
    (``release()`` from the caller's code): no Python code can catch what is
    raised there, so the storm leaves that window out. (Inside the pool, the
    caller of an interrupted function must cope; a lease's ``__exit__`` is
    reclaimed, see ``_RECLAIMED``.)"""
    code = frame.f_code
    if code in _RECLAIMED:
        return False
    if code not in _RESUME:
        first = [i.offset for i in dis.get_instructions(code) if i.opname == "RESUME"]
        _RESUME[code] = first[0] if first else 0
    if frame.f_lasti > _RESUME[code]:
        return False
    caller = frame.f_back
    return caller is None or not caller.f_code.co_filename.replace("\\", "/").endswith(files)


_BACK_EDGES: dict[Any, frozenset[int]] = {}


def _at_a_back_edge(frame: Any) -> bool:
    """Is ``frame`` at a loop's back edge, on a Python whose handler lookup for
    an exception raised there can skip the enclosing ``try``/``finally``
    (python/cpython#108214; seen on 3.13 in redis-py's cluster pipeline, whose
    ``finally`` then never gave its connections back)? redispool's own loops
    run in frames of their own (see ``_upkeep``); third-party code's cannot be
    changed here, so the storm leaves that window out."""
    if sys.version_info < (3, 12):
        return False
    code = frame.f_code
    edges = _BACK_EDGES.get(code)
    if edges is None:
        edges = _BACK_EDGES[code] = frozenset(
            i.offset for i in dis.get_instructions(code) if i.opname == "JUMP_BACKWARD"
        )
    return frame.f_lasti in edges


# code -> (lines, condition): a window of redis-py's own, left out (see _in_window)
Windows = dict[CodeType, tuple[set[int], Callable[[FrameType], bool]]]


def lines_of(node: ast.AST, first: int) -> set[int]:
    """The source lines of ``node``, parsed from a function starting at ``first``."""
    return set(range(first + node.lineno - 1, first + (node.end_lineno or node.lineno)))


def execute_command_window() -> Windows:
    """redis-py's ``Redis._execute_command``, from ``pool.get_connection()``'s
    return to the ``try`` whose ``finally`` gives the connection back (when it
    came from the pool): an exception there loses it, whatever the pool does.
    (Found by parsing the source, so it follows redis-py's changes.)"""
    import redis.client

    execute = redis.client.Redis._execute_command
    source, first = inspect.getsourcelines(execute)
    body = ast.parse(textwrap.dedent("".join(source))).body[0]
    assert isinstance(body, ast.FunctionDef)
    got = next(
        i
        for i, s in enumerate(body.body)
        if isinstance(s, ast.Assign) and "get_connection" in ast.unparse(s)
    )
    tried = next(i for i, s in enumerate(body.body) if i > got and isinstance(s, ast.Try))
    start = first + (body.body[got].end_lineno or 0)  # the line after the borrow
    lines = set(range(start, first + body.body[tried].lineno))  # to the try
    return {execute.__code__: (lines, lambda frame: frame.f_locals["self"].connection is None)}


class Storm:
    def __init__(
        self,
        seed: int,
        files: tuple[str, ...] = _POOL_FILES,
        inside: tuple[str, ...] = (),
        windows: Windows | None = None,
    ) -> None:
        self.files = files  # where it raises
        self.inside = inside or files  # whose calls into the pool are the pool's own
        self.windows = windows or {}  # where it does not (redis-py's own windows)
        self.skipped = 0
        self.rnd = random.Random(seed)
        self.raised = 0
        self.on = False
        self.armed = True
        self.busy = False
        self.where: dict[str, int] = {}

    def _in_window(self, frame: FrameType | None) -> bool:
        """Is ``frame`` or a caller of it at a line of a window?"""
        windows = self.windows
        while frame is not None:
            window = windows.get(frame.f_code)
            if window is not None and frame.f_lineno in window[0] and window[1](frame):
                return True
            frame = frame.f_back
        return False

    def handler(self, signum: int, frame: Any) -> None:
        if not self.on or not self.armed or frame is None or self.busy:
            return
        # Not within itself: a signal due while it walks the stack would run it
        # again inside, and with a short interval and a slow walk (3.13 makes a
        # frame object of each) the nesting grew until RecursionError.
        self.busy = True
        try:
            self._maybe_raise(frame)
        finally:
            self.busy = False

    def _maybe_raise(self, frame: FrameType) -> None:
        if self.windows and self._in_window(frame):
            self.skipped += 1
            return
        name = frame.f_code.co_filename.replace("\\", "/")
        if "redispool/" not in name and _at_a_back_edge(frame):
            self.skipped += 1  # (see _at_a_back_edge)
            return
        if (
            name.endswith(self.files)
            and not _entered_from_outside(frame, self.inside)
            and frame.f_code.co_name != "_make"  # see _make's docstring
        ):
            self.raised += 1
            self.armed = False  # one at a time: the loop re-arms once the operation is over
            key = f"{frame.f_code.co_name}"
            self.where[key] = self.where.get(key, 0) + 1
            raise Interrupt(key)

    def start(self) -> None:
        signal.signal(signal.SIGALRM, self.handler)
        self.on = True
        first = self.rnd.uniform(0.0001, 0.0003)
        signal.setitimer(signal.ITIMER_REAL, first, self.rnd.uniform(0.00013, 0.00041))

    def stop(self) -> None:
        self.on = False
        signal.setitimer(signal.ITIMER_REAL, 0, 0)

    def run(
        self,
        op: Callable[[int], object],
        seconds: float,
        expected: tuple[type[BaseException], ...],
        stuck: Callable[[], bool] = lambda: False,
        min_raised: int = 150,
        cap: float = 15.0,
        enough: Callable[[], bool] = lambda: True,
    ) -> tuple[int, int]:
        """Call ``op(n)`` in this thread under the storm, re-armed before each
        call, for ``seconds`` and until it raised ``min_raised`` times and
        ``enough()`` holds (a slow machine runs longer, up to ``cap`` seconds),
        or until ``stuck()``; (calls, ``expected`` errors)."""
        ops = errors = 0
        start = time.monotonic()
        self.start()
        try:
            while (elapsed := time.monotonic() - start) < seconds or (
                (self.raised < min_raised or not enough()) and elapsed < cap
            ):
                self.armed = True
                ops += 1
                try:
                    op(ops)
                except Interrupt:
                    pass
                except expected:
                    errors += 1
                if stuck():
                    break
        finally:
            self.stop()
        return ops, errors


def alongside(
    op: Callable[[int], object], expected: tuple[type[BaseException], ...]
) -> tuple[threading.Thread, threading.Event]:
    """Call ``op(n)`` in a daemon thread (no storm there) until the event is set."""
    stop = threading.Event()

    def loop() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                op(n)
            except expected:
                pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread, stop


DESTROYED_TWICE: list[Resource] = []


def _destroy(r: Resource) -> None:
    if r.destroyed:  # (Factory.destroy's assert would be caught and logged by the pool)
        DESTROYED_TWICE.append(r)
    r.destroyed = True


def _pool(case: str, factory: Factory, churn: bool) -> ObjectPool[Resource]:
    return ObjectPool(
        factory,
        destroy=_destroy,
        check=Factory.check,
        check_interval=0 if churn else 60,
        reset=(lambda r: None) if case in ("churn", "admin") else None,
        max_size=3,
        min_size=1 if case == "admin" else 0,
        timeout=0.05,
        max_uses=2 if churn else 0,
        max_lifetime=0.02 if churn else 0,
        background=False,
    )


def _op(case: str, pool: ObjectPool[Resource], rnd: random.Random, held: list[Resource]) -> None:
    if case == "lease":
        with pool.acquire() as r:
            assert not r.destroyed
    elif case == "lease_error":
        with pool.acquire():
            raise ValueError("in the block")
    elif case == "tuned":
        with pool.acquire(timeout=0.05, keep_on=(KeyError,)):
            if rnd.random() < 0.3:
                raise KeyError("kept")
    elif case == "queue":  # holds up to all three: its borrows queue for the other's
        if held and rnd.random() < 0.5:
            pool.release(held.pop())
        else:
            held.append(pool.borrow(0.05))
    elif case in ("borrow", "churn"):
        if held and (rnd.random() < 0.5 or len(held) >= 2):  # (leave one for the other)
            pool.release(held.pop(), discard=rnd.random() < 0.2)
        else:
            held.append(pool.borrow(0.05))
    else:  # admin: the slow paths
        choice = rnd.randrange(5)
        if choice == 0:
            pool.drain()
        elif choice == 1:
            pool.resize(rnd.randint(0, 2), rnd.randint(2, 4))
        elif choice == 2:
            pool.run_upkeep()
        else:
            with pool.acquire():
                pass


def _other(pool: ObjectPool[Resource]) -> Callable[[int], None]:
    rnd = random.Random(7)

    def op(n: int) -> None:  # (no timeout: a lost wake-up hangs it, and the join sees it)
        with pool.acquire(timeout=None):
            time.sleep(rnd.choice((0, 0, 0, 0.0003)))

    return op


def main(case: str, seed: int, seconds: float = 0.6) -> None:
    rnd = random.Random(seed)
    factory = Factory()
    pool = _pool(case, factory, case in ("churn", "admin"))
    storm = Storm(seed)
    other, stop = alongside(_other(pool), (PoolTimeout, ValueError))
    held: list[Resource] = []
    ops, _ = storm.run(
        lambda n: _op(case, pool, rnd, held),
        seconds,
        (PoolTimeout, ValueError, KeyError),
        stuck=pool._lock._is_owned,  # left held by this thread: the pool is stuck
    )
    stop.set()
    other.join(5)
    lock_free = not pool._lock._is_owned() and pool._lock.acquire(timeout=2)
    if lock_free:
        pool._lock.release()
    out: dict[str, Any] = {
        "case": case, "ops": ops, "raised": storm.raised, "where": storm.where,
        "lock_free": lock_free, "other_done": not other.is_alive(),
    }  # fmt: skip
    if lock_free:
        for r in held:
            pool.release(r)
        gc.collect()  # leases dropped without their __exit__ (see _RECLAIMED)
        pool._reclaim()
        s = pool.stats()  # (before any resize: its hand-outs would hide a stranded slot)
        alive = [r for r in factory.made if not r.destroyed]
        idle = {id(e.obj) for e in pool._idle}
        keys = ("size", "idle", "in_use", "creating", "closing", "waiting")
        out["stats"] = {k: getattr(s, k) for k in keys}
        out["alive"] = len(alive)
        out["destroyed_twice"] = len(DESTROYED_TWICE)
        out["made_less_destroyed"] = s.created - sum(s.destroyed_by_reason.values())
        out["alive_not_idle"] = len([r for r in alive if id(r) not in idle])
        pool.resize(0, 3)
        try:  # it still lends all it may
            got = [pool.borrow(1.0) for _ in range(3)]
            out["lends"] = len(got)
            for r in got:
                pool.release(r)
        except PoolTimeout:
            out["lends"] = -1
        pool.close(timeout=0)
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
