"""docker-compose.yml and Dockerfile (no Docker engine needed): the api service
talks to the redis service through ``REDIS_URL``, which the app really reads,
and the Dockerfile starts an app that exists, with what its worker class needs."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.test import TestResponse

from redispool.demo.app import create_app

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _argv(value: str | list[str]) -> list[str]:
    """A compose ``command`` or Dockerfile ``CMD``: exec (list / JSON) or shell form."""
    if isinstance(value, list):
        return [str(x) for x in value]
    if value.startswith("["):
        return [str(x) for x in json.loads(value)]
    return shlex.split(value)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _option(argv: list[str], *names: str) -> str:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {argv}")


def body(resp: TestResponse) -> dict[str, Any]:
    """The JSON object of a response."""
    data = resp.get_json()
    assert isinstance(data, dict), resp.get_data(as_text=True)
    return data


def _cmd(dockerfile: list[tuple[str, str]]) -> list[str]:
    cmds = [args for word, args in dockerfile if word in ("CMD", "ENTRYPOINT")]
    assert cmds, "the Dockerfile has no CMD"
    return _argv(cmds[-1])


def test_redis_service(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert str(redis["image"]).startswith("redis:7")
    argv = _argv(redis["command"])
    assert argv[0] == "redis-server"
    assert int(_option(argv, "--maxclients")) >= 100
    assert _option(argv, "--save") == "" and _option(argv, "--appendonly") == "no"
    test = redis["healthcheck"]["test"]
    assert "redis-cli" in _argv(test) and "ping" in _argv(test)


def test_api_service_points_redis_url_at_the_redis_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = services["api"]
    build = api["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / name).is_file()
    url = urlsplit(_env(api)["REDIS_URL"])
    assert url.scheme == "redis" and url.hostname == "redis" and url.hostname in services
    assert (url.port or 6379) == 6379
    depends = api["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert any(str(p).split(":")[-1] == "8000" for p in api["ports"])


def test_the_app_reads_redis_url(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    compose_url = _env(compose["services"]["api"])["REDIS_URL"]
    monkeypatch.setenv("REDIS_URL", compose_url)
    app = create_app()  # the pool connects lazily: "redis" need not resolve here
    pool = app.extensions["redispool"].pool
    assert app.config["REDIS_URL"] == compose_url
    pool.close()
    # And it is the server it talks to.
    monkeypatch.setenv("REDIS_URL", redis_url)
    app = create_app()
    app.config["REDISPOOL_HEALTH_SHOW_DETAILS"] = "always"  # the address is hidden by default
    try:
        resp = app.test_client().get("/api/health/redis")
        assert resp.status_code == 200 and body(resp)["status"] == "up"
        assert body(resp)["name"] == body(resp)["server"]["url"] == redis_url
    finally:
        app.extensions["redispool"].pool.close()


def test_dockerfile_runs_the_demo_app_under_gunicorn_gevent(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    installs = " ".join(args for word, args in dockerfile if word == "RUN")
    assert re.search(r"pip install [^&]*\.\[web\]", installs), installs
    for word, args in dockerfile:  # what is copied exists
        if word == "COPY" and not args.startswith("--from"):
            for src in _argv(args)[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
    argv = _cmd(dockerfile)
    assert argv[0] == "gunicorn"
    apps = [a for a in argv[1:] if ":" in a and not a[0].isdigit()]
    assert apps == ["redispool.demo.app:create_app()"], argv
    module, _, call = apps[0].partition(":")
    assert callable(getattr(importlib.import_module(module), call.removesuffix("()")))
    assert _option(argv, "-b", "--bind") == "0.0.0.0:8000"
    exposed = [args for word, args in dockerfile if word == "EXPOSE"]
    assert exposed == ["8000"]
    assert "--preload" in argv and int(_option(argv, "-w", "--workers")) == 2
    worker_class = _option(argv, "-k", "--worker-class")
    assert worker_class == "gevent"
    assert "gevent" in installs, "-k gevent needs gevent installed (not in the web extra)"
    # Redis must accept every worker's full pool.
    maxclients = int(_option(_argv(compose["services"]["redis"]["command"]), "--maxclients"))
    app = create_app("redis://127.0.0.1:1/0")
    per_worker = app.extensions["redispool"].pool.stats().max_size
    app.extensions["redispool"].pool.close()
    assert 2 * per_worker < maxclients


def test_gunicorn_accepts_the_dockerfile_command(
    dockerfile: list[tuple[str, str]], redis_url: str
) -> None:
    pytest.importorskip("gunicorn")
    argv = _cmd(dockerfile)
    env = dict(os.environ, REDIS_URL=redis_url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", *argv, "--check-config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
