"""gunicorn settings: gevent workers, up to ``worker_connections`` requests per worker.

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c examples/gunicorn/gevent.conf.py
    gunicorn -c examples/gunicorn/gevent.conf.py 'myapp:create_app()'   # your app instead

(``pip install gevent``.) Redis connections: hundreds of greenlets share the
worker's one RedisPool; ``max_size`` (20 in the demo), not ``worker_connections``,
bounds the connections to Redis. When all are busy, requests wait in FIFO order
(at most the pool's ``timeout``, then ``RedisPoolTimeout``) instead of opening
more connections. Keep ``workers x max_size x replicas`` below ``maxclients``.

preload_app on (recommended): the app and its RedisPool are made once in the
master, then forked; gunicorn's gevent worker monkey-patches *after* the fork.
Nothing to add (no ``post_fork`` hook): the pool opens no connection until first
used, and in the worker it starts afresh: its locks, waits and background thread
are made again from the (now patched) ``threading`` module, so a waiting request
yields to other greenlets instead of blocking the worker. gevent then warns
"Monkey-patching ssl after ssl has already been imported": harmless for
``redis://``; for ``rediss://`` (TLS) either turn preload_app off or patch first
thing in the master (``from gevent import monkey; monkey.patch_all()`` at the top
of this file). preload_app off: each worker imports the app after patching.
"""

import os

wsgi_app = "redispool.demo.app:create_app()"  # used when no app is given on the command line
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))  # ~ CPU cores
worker_class = "gevent"
worker_connections = 1000  # concurrent requests (greenlets) per worker
preload_app = True
timeout = 30  # a worker whose hub is blocked this long is killed and replaced
graceful_timeout = 20  # on SIGTERM: to finish in-flight requests (< your stop/kill delay)
keepalive = 5  # seconds an idle client keep-alive connection is kept open


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """With ``PROMETHEUS_MULTIPROC_DIR`` set (/metrics summed over workers): forget
    a dead worker's live gauges (connection counts), keep its counters."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
