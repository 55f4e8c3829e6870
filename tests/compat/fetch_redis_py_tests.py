"""Fetch redis-py's own test suite for the installed redis version.

redis-py's tests are not in its wheel but are in its sdist. This script asks pip
for the sdist of the installed version (``pip download --no-binary :all:``) and
unpacks its ``tests/`` (plus the files beside it that the tests read) into a
cache directory: ``$REDISPOOL_COMPAT_DIR`` or ``~/.cache/redispool-compat``.
Nothing third-party is committed to this repository.

    python tests/compat/fetch_redis_py_tests.py      # prints the directory
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

__all__ = ["cache_root", "fetch"]


def cache_root() -> Path:
    return Path(
        os.environ.get("REDISPOOL_COMPAT_DIR") or Path.home() / ".cache" / "redispool-compat"
    )


def fetch(redis_version: str | None = None, *, timeout: float = 300) -> Path:
    """The directory holding redis-py ``redis_version``'s ``tests/`` package
    (default: the installed version); downloaded once, then reused."""
    redis_version = redis_version or version("redis")
    target = cache_root() / f"redis-py-{redis_version}"
    if (target / "tests" / "conftest.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                tmp,
                f"redis=={redis_version}",
            ],
            check=True,
            timeout=timeout,
        )
        (sdist,) = Path(tmp).glob("redis-*.tar.gz")
        staging = Path(tmp) / "out"
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                parts = Path(member.name).parts
                # keep <top>/tests/... and <top>/pyproject.toml (pytest's settings)
                if len(parts) < 2 or ".." in parts or member.issym() or member.islnk():
                    continue
                if parts[1] == "tests" or parts[1:] == ("pyproject.toml",):
                    member.name = str(Path(*parts[1:]))
                    members.append(member)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(staging, members=members)  # members vetted above
        if not (staging / "tests" / "conftest.py").is_file():
            raise RuntimeError(f"redis {redis_version}'s sdist holds no tests/conftest.py")
        os.replace(staging, target)
    return target


if __name__ == "__main__":
    print(fetch(sys.argv[1] if len(sys.argv) > 1 else None))
