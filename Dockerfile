# The demo API (redispool.demo.app) under gunicorn with gevent workers.
#   docker compose up --build      (see docker-compose.yml: it also starts Redis)
#   curl http://localhost:8000/api/posts/1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package build needs (no .git, tests or virtualenvs in the image).
COPY setup.py setup.cfg pyproject.toml README.md ./
COPY redispool ./redispool
# The `web` extra (Flask, gunicorn, prometheus_client), and gevent for `-k gevent`.
RUN pip install ".[web]" "gevent>=23.9" \
    && useradd --create-home --uid 10001 app
USER app

# REDIS_URL (e.g. redis://redis:6379/0) is read by create_app().
EXPOSE 8000
# Exec form: gunicorn is PID 1 and gets `docker stop`'s SIGTERM itself.
CMD ["gunicorn", "redispool.demo.app:create_app()", "-b", "0.0.0.0:8000", "-k", "gevent", "-w", "2", "--preload"]
