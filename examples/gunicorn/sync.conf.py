"""gunicorn settings: sync workers, one request at a time per worker process.

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c examples/gunicorn/sync.conf.py
    gunicorn -c examples/gunicorn/sync.conf.py 'myapp:create_app()'   # your app instead

Redis connections: a sync worker serves one request at a time, so its pool needs
about 1 connection (+1 for background flushes: ``max_size=2..4`` is plenty).
Keep ``workers x max_size x replicas`` below the server's ``maxclients``.

preload_app on (recommended): the app and its RedisPool are made once in the
master, then forked. Nothing to add: no ``post_fork`` hook, no reconnect call.
The pool opens no connection until first used, and a worker that inherits pool
state (the master used it) leaves the master's sockets alone (never reads,
writes or closes them) and starts afresh with its own locks and connections.
preload_app off: each worker imports the app itself; the pool behaves the same,
boot is slower and uses more memory. (With preload, ``kill -HUP`` restarts the
workers but does not reload changed code.)
"""

import os

wsgi_app = "redispool.demo.app:create_app()"  # used when no app is given on the command line
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))  # ~ 2 x CPU cores for I/O-bound apps
worker_class = "sync"
preload_app = True
timeout = 30  # a worker busy (or stuck) this long on one request is killed and replaced
graceful_timeout = 20  # on SIGTERM: to finish in-flight requests (< your stop/kill delay)
max_requests = 0  # > 0 recycles workers; a recycled worker's pool closes at exit, the new one
max_requests_jitter = 0  # starts empty (set both, e.g. 10000 and 1000, to bound slow leaks)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """With ``PROMETHEUS_MULTIPROC_DIR`` set (/metrics summed over workers): forget
    a dead worker's live gauges (connection counts), keep its counters."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
