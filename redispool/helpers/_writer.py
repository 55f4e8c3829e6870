"""A small bounded background writer: callers hand it jobs and never wait.

One daemon thread per process, started on the first job (again in a forked
child), stopped by ``close()``; where Python starts no thread (interpreter
shutdown), the caller runs the job. It uses ``threading`` and ``queue``, so under
gevent's monkey-patching it is a greenlet and cooperative.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable

__all__ = ["BackgroundWriter"]

log = logging.getLogger("redispool.helpers")

Job = Callable[[], object]


def _stop() -> None:  # the stop sentinel; never run
    """Tells the thread to exit."""


OWNER_CHECK = 5.0  # seconds idle between checks that the owner still exists


class BackgroundWriter:
    """Runs submitted jobs in order on one thread; drops them when the queue is full."""

    def __init__(
        self, maxsize: int, name: str = "redispool-writer", owner: object | None = None
    ) -> None:
        """``owner`` (held weakly): once it is collected without ``close()``, the
        thread ends when idle, instead of waiting for jobs for ever."""
        self.maxsize = maxsize
        self.name = name
        self._owner = None if owner is None else weakref.ref(owner)
        self.dropped = 0
        self.done = 0
        self._closed = False
        self._pid = -1
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._pending = 0  # submitted, not yet run (queue.Queue's own count is
        self._idle = threading.Condition()  # not there under gevent's patching)

    def _ensure_started(self) -> bool:
        """Start the thread if needed; False if Python refuses a new thread."""
        pid = os.getpid()
        if self._pid != pid:
            # A new process (or the first job): nothing of the parent's is usable,
            # not even the lock (another thread may have held it at fork time).
            self._lock = threading.Lock()
            self._queue = queue.Queue(self.maxsize)
            self._thread = None
            self._pending = 0
            self._idle = threading.Condition()
            self._pid = pid
        if self._thread is None or not self._thread.is_alive():
            # (not alive: killed, e.g. a greenlet.kill or, under gevent, a signal
            # handler's exception landing in it: a new one runs what is queued)
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread = thread
                    try:
                        thread.start()
                    except RuntimeError:
                        # No new thread: interpreter shutdown (3.12+ refuses one
                        # there, e.g. in an atexit hook) or the OS's thread limit.
                        # Nothing started, nothing queued: the caller runs the job.
                        self._thread = None
                        return False
                    except BaseException:
                        # Cut short (a signal handler raising in start()'s wait):
                        # the thread may run after all. It takes over if no other
                        # writer started meanwhile, else it ends: one writer at
                        # most, so the jobs keep their order.
                        self._thread = None
                        raise
        return True

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (and counted in ``dropped``) if full or closed.
        When no thread can be started (at interpreter shutdown), the job runs
        here, now."""
        if self._closed:
            self.dropped += 1
            return False
        if not self._ensure_started():
            try:
                job()
            except Exception:  # as on the thread: a job's failure is logged
                log.exception("%s: background job failed", self.name)
            self.done += 1
            return True
        with self._idle:
            if self._closed:  # closed since the check above: its stop is queued
                self.dropped += 1
                return False
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.dropped += 1
                return False
            self._pending += 1
        return True

    def _run(self) -> None:
        with self._lock:  # (after _ensure_started has decided: see there)
            me = threading.current_thread()
            if self._thread is None:  # its start() was cut short: it takes over
                self._thread = me
            elif self._thread is not me:  # another writer started meanwhile
                return
        q = self._queue
        owner = self._owner
        while True:
            try:
                job = q.get(timeout=None if owner is None else OWNER_CHECK)
            except queue.Empty:
                if owner is not None and owner() is None:  # (nobody left to submit)
                    with self._lock:
                        if self._thread is threading.current_thread():
                            self._thread = None
                    return
                continue
            if job is _stop:
                return
            try:
                job()
            except Exception:  # a job must not kill the writer
                log.exception("%s: background job failed", self.name)
            finally:
                job = _stop  # (not the last job: it may hold the owner while idle)
                with self._idle:
                    self.done += 1
                    self._pending -= 1
                    self._idle.notify_all()

    @property
    def pending(self) -> int:
        return self._pending if self._pid == os.getpid() else 0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued job has run; False if ``timeout`` ran out first."""
        if self._pid != os.getpid():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:  # (-1 after a submit interrupted past its put)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stop accepting jobs, run the queued ones (for at most ``timeout``), stop."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            self._closed = True
            return True
        with self._idle:  # a submit() that passed its check has queued (and counted) first
            self._closed = True
        flushed = self.flush(timeout)
        try:
            self._queue.put(_stop, timeout=0.1)
        except queue.Full:
            return False  # still busy: the daemon thread dies with the process
        thread.join(0.1 if not flushed else timeout)
        return flushed and not thread.is_alive()
