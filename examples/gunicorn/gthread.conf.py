"""gunicorn settings: gthread workers, ``threads`` requests at a time per worker process.

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c examples/gunicorn/gthread.conf.py
    gunicorn -c examples/gunicorn/gthread.conf.py 'myapp:create_app()'   # your app instead

Redis connections: up to ``threads`` requests run at once in a worker, all
sharing its one RedisPool. Give the pool ``max_size >= threads`` (+1 or 2 for
background flushes) or requests wait for a connection (fairly, in FIFO order, at
most the pool's ``timeout``). The demo uses ``max_size=20``. Keep
``workers x max_size x replicas`` below the server's ``maxclients``.

preload_app on (recommended): the app and its RedisPool are made once in the
master, then forked. Nothing to add: no ``post_fork`` hook, no reconnect call.
The pool opens no connection until first used, and a worker that inherits pool
state leaves the master's sockets alone and starts afresh with its own locks,
connections and background thread (threads do not survive a fork).
preload_app off: each worker imports the app itself; same pool behaviour, slower
boot, more memory.
"""

import os

wsgi_app = "redispool.demo.app:create_app()"  # used when no app is given on the command line
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))  # ~ CPU cores
worker_class = "gthread"
threads = 8  # concurrent requests per worker: the pool's max_size should be >= this
preload_app = True
timeout = 30  # a worker whose main loop is silent this long is killed and replaced
graceful_timeout = 20  # on SIGTERM: to finish in-flight requests (< your stop/kill delay)
keepalive = 5  # seconds an idle client keep-alive connection is kept open


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """With ``PROMETHEUS_MULTIPROC_DIR`` set (/metrics summed over workers): forget
    a dead worker's live gauges (connection counts), keep its counters."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
